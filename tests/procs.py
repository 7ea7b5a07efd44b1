"""`tunekit` as a separate process, for the tests that kill it: started, watched, killed, rerun."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import ROOT

WAIT_S = 300.0  # per wait; a loaded 2-core machine needs ~15 s for a whole tiny run


def env(home: Path, **extra: str) -> dict[str, str]:
    """Offline, one thread, wide lines (stage banners and messages are matched in the output)."""
    return {**os.environ, "TUNEKIT_HOME": str(home), "TUNEKIT_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "COLUMNS": "400", **extra}


def tunekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunekit", *args]


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"


def run_to_end(cmd: list[str], environ: dict, log: Path) -> str:
    """Run `cmd` to completion (output to `log`); returns its output."""
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, timeout=WAIT_S).returncode
    assert rc == 0, f"{cmd} exited {rc}:\n{tail(log)}"
    return log.read_text(errors="replace")


@contextlib.contextmanager
def started(cmd: list[str], environ: dict, log: Path) -> Iterator[subprocess.Popen]:
    """A background process that is killed if the test leaves early."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, poll: float = 0.01) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {WAIT_S:.0f}s:\n{tail(log)}")
        time.sleep(poll)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # it died by the signal, not by finishing
