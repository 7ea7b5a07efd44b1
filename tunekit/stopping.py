"""SIGTERM and SIGINT: a clean stop that a rerun resumes from.

Clusters preempt with SIGTERM and give a grace period before SIGKILL; Ctrl-C is SIGINT. By
default Python dies on SIGTERM at once, without running `finally` blocks, so atomic writes
leave their temporary files and training loses everything since the last `save_every`.

- Everywhere (`stop_on_signals`, installed by the CLI): SIGTERM raises `Interrupted` where the
  program is, as SIGINT raises KeyboardInterrupt (which chat uses to cut an answer short), so
  cleanup runs; the CLI exits 128 + the signal's number.
- In the training loop (`deferred`): the first signal is only recorded; the loop writes a
  checkpoint at the next step boundary and then raises `Interrupted`. A second signal stops
  at once, as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Stopped by a signal. A BaseException like KeyboardInterrupt: no `except Exception` swallows it."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal.signal works only there


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM raises as SIGINT does, for the block (a whole command); the handler before comes back after."""
    if not _main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class Pending:
    """The signal received during a `deferred` block, if any."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def deferred() -> Iterator[Pending]:
    """Record the first SIGTERM/SIGINT instead of stopping; the second stops at once."""
    pending = Pending()
    if not _main_thread():
        yield pending
        return

    def record(signum: int, _frame) -> None:
        if pending.requested:
            raise Interrupted(signum)
        pending.signum = signum

    before = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield pending
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
