"""`crashing.py ARGS...` is `tunekit ARGS...`, except that process $TK_CRASH_RANK dies at once
(os._exit, no handler runs) at optimiser step $TK_CRASH_STEP (1-based), either when the step
starts ($TK_CRASH_IN=step) or in the middle of writing that step's checkpoint ($TK_CRASH_IN=save:
after its own DCP shards are written, before the checkpoint is published). Only in the first
attempt: torchrun's restarts (TORCHELASTIC_RESTART_COUNT > 0) run normally. $TK_CRASH_IN=slow
kills nothing: every process sleeps $TK_STEP_SLEEP seconds before each step, so that a test can
signal the job in the middle of the tiny model's few steps.
"""

from __future__ import annotations

import os
import sys
import time

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tunekit.train import loop

STEP, WHERE = int(os.environ.get("TK_CRASH_STEP", "0")), os.environ["TK_CRASH_IN"]


def _ours() -> bool:
    return dist.get_rank() == int(os.environ["TK_CRASH_RANK"]) and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def _die(what: str) -> None:
    print(f"crashing.py: rank {dist.get_rank()} exits {what}", file=sys.stderr, flush=True)
    os._exit(9)


_steps = {"n": 0}
_real_step, _real_save = loop.optimizer_step, dcp.save


def _step(*a, **k):
    _steps["n"] += 1
    if WHERE == "slow":
        time.sleep(float(os.environ["TK_STEP_SLEEP"]))
    if WHERE == "step" and _steps["n"] == STEP and _ours():
        _die(f"at the start of step {STEP}")
    return _real_step(*a, **k)


def _save(state, *, checkpoint_id, **k):
    out = _real_save(state, checkpoint_id=checkpoint_id, **k)
    if WHERE == "save" and f".step-{STEP}." in str(checkpoint_id) and _ours():
        _die(f"inside the write of checkpoint step-{STEP}")
    return out


if __name__ == "__main__":
    loop.optimizer_step = _step  # looked up at call time by the loop
    dcp.save = _save  # checkpoint_dcp calls dcp.save through the module
    from tunekit.cli import main

    sys.exit(main(sys.argv[1:]))
