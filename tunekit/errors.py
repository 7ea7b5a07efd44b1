"""Errors a user can cause. Each message says what was wrong, where, and what to do.

The CLI maps every TunekitError to exit code 2 and prints only its message
(`--debug` shows the traceback); anything else is a bug and keeps its traceback.
"""


class TunekitError(Exception):
    """Base class for errors caused by input, configuration or environment."""

    kind = "error"


class ConfigError(TunekitError):
    kind = "config error"


class DataError(TunekitError):
    kind = "data error"


class ModelError(TunekitError):
    kind = "model error"


class CheckpointError(TunekitError):
    kind = "checkpoint error"


class OutOfMemory(TunekitError):
    """The device ran out of memory: says what was estimated and which settings lower it."""

    kind = "out of memory"


class DiskFull(TunekitError):
    """A write would not fit: says how much it needs, how much is free, and where."""

    kind = "not enough disk space"
