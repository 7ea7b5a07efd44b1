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
the group reaches it and nothing it starts. On Linux it also asks the kernel for SIGTERM
when the server dies, even by SIGKILL: it then saves its checkpoint and stops, and the
restarted server queues the job again. Elsewhere the restarted server stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent` exits (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


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
