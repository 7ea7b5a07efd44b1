"""One job's worker process: `python -m tunekit.serve.worker JOB.yaml --runs-dir DIR --parent PID`.

It runs the job's stages through tunekit/api.py, the functions `tunekit run` and notebooks
call: prepare and train, then eval and report when the job has held-out items (a
validation file). It knows nothing of the server's database: it reports by its exit code
and, on failure, a JSON file beside the config (`<job>.error.json`: kind and message).

- exit 0: every stage done;
- exit 143 (128 + SIGTERM): stopped by a pause, a cancel or the server going away; training
  saved a checkpoint at the step boundary, and running it again resumes there;
- exit 2: a TunekitError (bad data, a model that cannot be found, ...), or out of memory;
- exit 1: anything else (a bug: the traceback is in the job's log).

The scheduler starts it in a session of its own (its own process group), so a signal to
the group reaches it and nothing it starts. When the server dies, even by SIGKILL, the
worker notices within half a second and stops as on SIGTERM (its checkpoint saved); the
restarted server queues the job again, and training resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

_WATCH_S = 0.5  # how soon a worker notices that the server died


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process, once, when `parent` (the server) is gone.

    A thread watching the parent pid rather than Linux's PR_SET_PDEATHSIG: the kernel sends
    that signal again each time an exiting thread of the dying server hands its children to
    another, and a second SIGTERM stops training at once, without its checkpoint."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def error_file(config: Path) -> Path:
    return config.with_suffix(".error.json")


def _write_error(config: Path, kind: str, message: str) -> None:
    from tunekit import atomic

    atomic.write_json(error_file(config), {"kind": kind, "message": message})


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_job(config: Path, runs_dir: Path) -> None:
    """The job's stages, in order; each one already done is skipped (a resumed job)."""
    from tunekit import api

    cfg = api.load(config)
    api.prepare(config, runs_dir)
    api.train(config, runs_dir)
    if cfg.data.eval:
        api.evaluate(config, runs_dir)
        api.report(config, runs_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunekit.serve.worker")
    p.add_argument("config")
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    config = Path(args.config)
    error_file(config).unlink(missing_ok=True)
    import torch

    from tunekit.errors import TunekitError
    from tunekit.stopping import Interrupted, stop_on_signals

    try:
        _quiet_libraries()
        with stop_on_signals():
            run_job(config, Path(args.runs_dir))
    except Interrupted as e:
        print(f"worker: {e}; the job resumes from its checkpoint when queued again", file=sys.stderr)
        return e.exit_code
    except TunekitError as e:
        _write_error(config, e.kind, str(e))
        print(f"worker: {e.kind}: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as e:
        from tunekit.hardware import oom_message

        _write_error(config, "out of memory", f"out of memory: {oom_message()} ({str(e).splitlines()[0]})")
        return 2
    except Exception as e:  # a bug: the caller gets its last line, the log its traceback
        traceback.print_exc()
        _write_error(config, "internal", f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
