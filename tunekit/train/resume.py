"""Where a training run starts: the checkpoint it continues from (or none), loaded into the
model and optimiser, and whether the disk can hold the checkpoints it will write."""

from __future__ import annotations

import json
from pathlib import Path

from tunekit import atomic, hardware, runfolder
from tunekit.config import Config
from tunekit.errors import CheckpointError
from tunekit.progress import console
from tunekit.train import checkpoint, checkpoint_dcp
from tunekit.train.distributed import Ranks


def resume_from(ckpt_root: Path, model, optimizer, scheduler, scaler, resume: bool, config_hash: str,
                ranks: Ranks | None = None) -> tuple[int, dict]:
    """(step to continue after, that checkpoint's state); (0, {}) for a fresh start. In a job of
    several processes rank 0 picks the checkpoint and every process loads it."""
    found = hardware.agree(_checkpoint_to_resume, ckpt_root, resume, config_hash)
    if found is None:
        return 0, {}
    step, path = found
    if checkpoint_dcp.is_sharded(path):  # written by several processes: any number of them resumes it
        state = checkpoint_dcp.load(path, model, optimizer, scheduler, scaler)
    elif ranks is not None and ranks.strategy == "fsdp2":
        raise CheckpointError(f"checkpoint {path} was written by a single process, and FSDP2 resumes only checkpoints "
                              "written by several; resume it with train.distributed=ddp, or in one process")
    else:  # one process's checkpoint; under DDP every process loads the whole of it
        state = checkpoint.load(path, model, optimizer, scheduler, scaler)
    console.print(f"resuming from {path} (step {step})")
    return step, state


def _checkpoint_to_resume(ckpt_root: Path, resume: bool, config_hash: str) -> tuple[int, Path] | None:
    """The newest checkpoint this run continues from, or None; checkpoints it cannot continue are set aside."""
    found = checkpoint.list_checkpoints(ckpt_root)
    if not found:
        return None
    step, path = found[-1]
    theirs = json.loads((path / "state.json").read_text()).get("config_hash")
    if not resume or (config_hash and theirs not in ("", config_hash)):
        # Checkpoints of another config cannot be continued, and a fresh start numbers its own from
        # step 1: left in place, the old ones would be mixed with the new and pruned in their stead.
        # (The pipeline sets them aside before this stage runs; this is for callers of train() alone.)
        kept = runfolder.set_aside(ckpt_root.parent, [ckpt_root], f"checkpoints-{theirs or 'unknown'}")
        why = "you asked for a fresh start" if not resume else "they come from a different config"
        console.print(f"checkpoints in {ckpt_root} are not continued ({why}); moved to {kept}")
        return None
    return step, path


def check_checkpoint_space(cfg: Config, ckpt_root: Path, model, optimizer) -> None:
    """Before the first step: refuse when the disk cannot hold one checkpoint, and warn when it cannot
    hold the most this run keeps at once (keep_last, the best, and the one being written)."""
    one = checkpoint.checkpoint_bytes(model, optimizer)
    atomic.require_space(ckpt_root, one, "a checkpoint of this run", checkpoint.SPACE_HINT)
    at_once = cfg.train.keep_last + 1 + int(cfg.train.keep_best)
    have = len(checkpoint.list_checkpoints(ckpt_root))
    free = atomic.free_bytes(ckpt_root)
    if one * max(at_once - have, 1) > free:
        console.print(f"[yellow]warning[/] this run keeps up to {at_once} checkpoints of about {one / 2**20:,.0f} MB, "
                      f"and {free / 2**20:,.0f} MB are free: it will stop at the first checkpoint that does not fit "
                      f"(the one before stays). Lower train.keep_last or free space.")
