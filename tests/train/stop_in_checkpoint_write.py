"""`python stop_in_checkpoint_write.py ARGS...` is `tunekit ARGS...`, except that it stops
dead in the middle of writing checkpoint $TK_STOP_AT (e.g. "step-4") and waits to be killed.

A test cannot hit the few milliseconds a checkpoint write takes by polling; this makes the
moment deterministic without touching the training code. $TK_STOP_WHEN picks the moment:
"empty" right after the temporary `.partial` folder is created, "filled" after every file
of the checkpoint is written into it but before it is renamed into place. The path of the
`.partial` folder is written to $TK_STOP_FILE, then the process sleeps.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from tunekit import atomic

_real_directory = atomic.directory


def _stop(tmp: Path) -> None:
    # Written under another name and renamed: the test reads the file as soon as it exists.
    stop_file = Path(os.environ["TK_STOP_FILE"])
    stop_file.with_suffix(".tmp").write_text(str(tmp))
    os.replace(stop_file.with_suffix(".tmp"), stop_file)
    # The test kills us within moments; should the test itself die first, do not linger.
    parent, deadline = os.getppid(), time.monotonic() + 600
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(3)


@contextlib.contextmanager
def _stopping_directory(final: str | Path) -> Iterator[Path]:
    ours = Path(final).name == os.environ["TK_STOP_AT"]
    with _real_directory(final) as tmp:
        if ours and os.environ["TK_STOP_WHEN"] == "empty":
            _stop(tmp)
        yield tmp
        if ours and os.environ["TK_STOP_WHEN"] == "filled":
            _stop(tmp)


if __name__ == "__main__":
    # The checkpoint code looks `atomic.directory` up at call time, so this reaches it.
    atomic.directory = _stopping_directory
    from tunekit.cli import main

    sys.exit(main(sys.argv[1:]))
