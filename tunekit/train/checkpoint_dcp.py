"""Checkpoints of a job of several processes: torch.distributed.checkpoint (DCP) inside the
same `checkpoints/step-N/` folders one process writes, published atomically.

    step-N/
      adapter_model.safetensors, adapter_config.json   (a full fine-tune: the model's weights)
      dcp/                 the trainable weights and the optimiser state (AdamW's moments), sharded
      trainer_state.pt     scheduler, RNG and gradient scaler (rank 0's; every process has the same)
      state.json           written last: the step, which is the data position (the plan is pure
                           in (seed, step)), the held-out history and the number of processes

The weights beside dcp/ are gathered from every process's shards into one whole state dict
(`get_model_state_dict(full_state_dict=True, cpu_offload=True)`, which every process must call:
rank 0 receives the tensors, the others nothing) and written by rank 0, so eval, export, chat
and PEFT read the folder as any checkpoint, and never a slice of it: FSDP2 + PEFT tools that
saved rank 0's shard only lost the rest of the adapter on resume (accelerate#4206, axolotl#3772).

dcp/ is what a resume loads: each process writes its own shards, and DCP reshards on load, so
a job resumes with another number of processes, with the other strategy, or in one process.

Publishing: rank 0 makes the temporary folder (atomic.directory) and tells the others its name;
every process writes into it; after a barrier rank 0 renames it into place. A crash before the
rename leaves only the temporary folder (removed by the next save), and the checkpoint before it
as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunekit import atomic, hardware
from tunekit.errors import CheckpointError
from tunekit.train import checkpoint

DCP_DIR = "dcp"


def is_sharded(path: Path) -> bool:
    """Whether checkpoint `path` was written by a job of several processes (it holds dcp/)."""
    return (path / DCP_DIR).is_dir()


def _shards(model, optimizer) -> dict:
    """This process's part of what a resume needs. Frozen weights are left out: they come from the base model."""
    return {"model": get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=True)),
            "optimizer": get_optimizer_state_dict(model, optimizer)}


def gathered_weights(model) -> dict[str, torch.Tensor]:
    """The whole trainable state (an adapter's weights; a full fine-tune's every weight) on rank 0's CPU,
    gathered from every process; {} on the others. Every process must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=checkpoint.is_adapter(model))
    whole = get_model_state_dict(model, options=options)
    # A tied matrix (SmolLM2's embeddings and output layer) is one tensor under two names here;
    # one process's save_pretrained writes it once, under its first name, and so does this.
    first = {n for n, _ in model.named_parameters()}
    again = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in whole.items() if k not in again}


@contextlib.contextmanager
def _published(final: Path) -> Iterator[Path]:
    """A temporary folder every process writes into, renamed to `final` by rank 0 once all are done."""
    with contextlib.ExitStack() as rank0:
        # Rank 0 makes the folder; a failure there reaches the others as the same error (hardware.agree).
        tmp = hardware.agree(lambda: rank0.enter_context(atomic.directory(final)))
        yield tmp
        dist.barrier()  # every process has written its part; rank 0 leaving atomic.directory renames


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict, keep_last: int, scaler=None) -> Path:
    """Write checkpoint `step-N` with every process, then (rank 0) prune as checkpoint.save does.
    `model` is the PEFT or transformers model inside the DDP or FSDP2 wrapper."""
    final = ckpt_root / f"step-{step}"
    need = checkpoint.checkpoint_bytes(model, optimizer) + sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)  # the weights in dcp/ too
    hardware.agree(atomic.require_space, ckpt_root, need, f"checkpoint {final}", checkpoint.SPACE_HINT)
    whole = gathered_weights(model)
    try:
        with _published(final) as tmp:
            dcp.save(_shards(model, optimizer), checkpoint_id=tmp / DCP_DIR)
            hardware.agree(_write_rank0_files, tmp, model, whole, scheduler, scaler, {**state, "step": step})
    except OSError as e:
        raise CheckpointError(checkpoint.write_failure(final, e)) from e
    except CheckpointException as e:  # DCP's: a process failed writing its shards; every process gets it
        cause = next((exc for exc, _ in e.failures.values() if isinstance(exc, OSError)), None)
        if cause is not None:
            raise CheckpointError(checkpoint.write_failure(final, cause)) from e
        raise
    hardware.agree(checkpoint.prune, ckpt_root, keep_last, state.get("best"))
    return final


def _write_rank0_files(tmp: Path, model, whole: dict, scheduler, scaler, state: dict) -> None:
    model.save_pretrained(tmp, safe_serialization=True, state_dict=whole)
    trainer = {"scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state()}
    if scaler is not None:
        trainer["scaler"] = scaler.state_dict()
    torch.save(trainer, tmp / "trainer_state.pt")
    state = {**state, "processes": dist.get_world_size() if dist.is_initialized() else 1}
    # state.json last inside the folder: a folder without it is not a checkpoint.
    (tmp / "state.json").write_text(json.dumps(state, indent=2))


def load(path: Path, model, optimizer, scheduler, scaler=None) -> dict:
    """Restore a sharded checkpoint into `model` (wrapped for DDP or FSDP2, or alone) and its optimiser;
    every process calls it. Without a process group DCP reads every shard itself."""
    try:
        state = json.loads((path / "state.json").read_text())
        trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
        shards = _shards(model, optimizer)
        dcp.load(shards, checkpoint_id=path / DCP_DIR)
    except (OSError, ValueError, KeyError, RuntimeError, CheckpointException) as e:
        if isinstance(e, CheckpointException):  # a process failed reading: its error, not DCP's summary
            e = next(iter(e.failures.values()))[0]
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "delete it to resume from the one before") from None
    set_model_state_dict(model, shards["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, shards["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and "scaler" in trainer:
        scaler.load_state_dict(trainer["scaler"])
    checkpoint.set_rng_state(trainer["rng"])
    return state
