"""Checkpoints: `checkpoints/step-N/` with weights (or adapter), optimiser, scheduler,
RNG states and data position, written atomically; the last K are kept, and the one with
the best held-out loss (named by the `best` field of each checkpoint's state.json).

An adapter checkpoint is PEFT's own folder format (adapter_config.json +
adapter_model.safetensors), so any checkpoint can be loaded by `peft` directly.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from tunekit import atomic
from tunekit.errors import CheckpointError

_STEP = re.compile(r"^step-(\d+)$")


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def final_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished train stage recorded in train_state.json."""
    state = run_dir / "train_state.json"
    if not state.is_file():
        raise CheckpointError(f"no finished training in {run_dir}; run `tunekit train` first")
    return run_dir / json.loads(state.read_text())["final_checkpoint"]


def tuned_checkpoint(run_dir: Path) -> tuple[Path, float | None]:
    """The checkpoint later stages evaluate, with the held-out loss training measured on it:
    the best one when training kept it (train.keep_best), else the final one."""
    final = final_checkpoint(run_dir)
    state = json.loads((run_dir / "train_state.json").read_text())
    if state.get("best_checkpoint"):
        return run_dir / state["best_checkpoint"], state.get("best_valid_loss")
    return final, state.get("valid_loss")


def rng_state() -> dict:
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config")


def checkpoint_bytes(model, optimizer) -> int:
    """About what one checkpoint takes on disk: the saved weights (an adapter's trainable ones, or
    every weight) and the optimiser's state (AdamW's two fp32 moments per trainable weight until
    its first step has made them)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = trainable if is_adapter(model) else list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in saved)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    moments = sum(t.numel() * t.element_size() for t in state) if state else sum(2 * 4 * p.numel() for p in trainable)
    return weights + moments


SPACE_HINT = " (or lower train.keep_last)"


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict, keep_last: int, scaler=None) -> Path:
    """Write checkpoint `step-N` atomically, then prune to the newest `keep_last` and the
    one `state["best"]` names (a step, or None). Refused before writing when the disk cannot hold it."""
    final = ckpt_root / f"step-{step}"
    atomic.require_space(ckpt_root, checkpoint_bytes(model, optimizer), f"checkpoint {final}",
                         f"{SPACE_HINT}; {_kept(final)}")
    try:
        with atomic.directory(final) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
            if scaler is not None:
                trainer["scaler"] = scaler.state_dict()
            torch.save(trainer, tmp / "trainer_state.pt")
            # state.json is written last inside the folder: a folder without it is not a checkpoint.
            (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    except OSError as e:
        raise CheckpointError(write_failure(final, e)) from e
    prune(ckpt_root, keep_last, state.get("best"))
    return final


def prune(ckpt_root: Path, keep_last: int, best: int | None) -> None:
    """After a checkpoint is written: keep the newest `keep_last`, the `best` step and those a finished
    training named; remove the others, and the temporary folders of writes that were killed."""
    # A killed earlier write leaves its temporary folder (up to a whole model's size);
    # this write succeeded, so none of them can be in use by this run any more.
    for stale in ckpt_root.glob(".step-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    found = list_checkpoints(ckpt_root)
    keep = {s for s, _ in found[-keep_last:]} | {best} | _named_by_train_state(ckpt_root.parent)
    for s, old in found:
        if s not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _named_by_train_state(run_dir: Path) -> set[int]:
    """Steps of the checkpoints a finished training recorded: later stages load them, so pruning
    never removes them, whatever their step number."""
    state = run_dir / "train_state.json"
    if not state.is_file():
        return set()
    try:
        named = json.loads(state.read_text())
    except ValueError:
        return set()
    steps = set()
    for key in ("final_checkpoint", "best_checkpoint"):
        m = _STEP.match(Path(named.get(key) or "").name)
        if m:
            steps.add(int(m.group(1)))
    return steps


def _kept(final: Path) -> str:
    """What a rerun has to resume from when checkpoint `final` is not written."""
    before = [p for _, p in list_checkpoints(final.parent) if p != final]
    return (f"the previous checkpoint {before[-1]} is intact and a rerun resumes from it" if before
            else "no earlier checkpoint exists, so a rerun starts over")


def write_failure(final: Path, e: OSError) -> str:
    """What went wrong writing `final`, and that the checkpoint before it is untouched."""
    kept = _kept(final)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full: no space left to write checkpoint {final}; {kept}. "
                f"Free space on the disk holding {final.parent} (or lower train.keep_last) and rerun.")
    return f"cannot write checkpoint {final} ({e}); {kept}."


def load(path: Path, model, optimizer, scheduler, scaler=None) -> dict:
    """Restore weights, optimiser, scheduler, gradient scaler and RNG from a checkpoint; returns its state.

    Saved tensors come back on the CPU whatever device wrote them (a run moves between a GPU
    and a CPU machine): the optimiser moves its state to its parameters' device, and the RNG
    states must be CPU tensors."""
    try:
        state = json.loads((path / "state.json").read_text())
        trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
        load_weights(path, model)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({e}); delete it to resume from the one before") from None
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and "scaler" in trainer:
        scaler.load_state_dict(trainer["scaler"])
    set_rng_state(trainer["rng"])
    return state


def load_weights(path: Path, model) -> None:
    """Load checkpoint weights into `model` (adapter weights into a PEFT model)."""
    from safetensors.torch import load_file

    if is_adapter(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        return
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no weights (*.safetensors) in {path}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings are saved once; anything else missing means a wrong model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
