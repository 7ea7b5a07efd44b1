"""The training loop: one loop for every method, readable in one sitting.

Each optimiser step takes `grad_accum` micro-batches; every micro-batch's loss is a
sum over its supervised tokens divided by the supervised tokens of the *whole step*,
so accumulated gradients equal those of one large batch.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.config import Config
from tunekit.data.batches import Batch, collate, epoch_batches, load_examples
from tunekit.data.pack import collate_packed
from tunekit.data.template import Tokenized
from tunekit.errors import TunekitError
from tunekit.models.loading import load_model, set_threads
from tunekit.progress import Bar, console
from tunekit.train import checkpoint
from tunekit.train.loss import supervised_loss_sum
from tunekit.train.methods import apply_method
from tunekit.train.optim import make_optimizer, make_scheduler


class TrainingDiverged(TunekitError):
    kind = "training error"


@dataclass
class Plan:
    """How many steps a run takes, and which examples each micro-batch holds."""

    examples: list[Tokenized]
    batch_size: int
    seed: int
    batches_per_epoch: int
    total_steps: int
    grad_accum: int
    _epoch: int = field(default=-1, repr=False)
    _order: list[list[int]] = field(default_factory=list, repr=False)

    def micro_batches(self, step: int) -> list[list[int]]:
        """Index lists of the micro-batches of optimiser step `step` (0-based); pure in (seed, step)."""
        out = []
        for m in range(step * self.grad_accum, (step + 1) * self.grad_accum):
            epoch, i = divmod(m, self.batches_per_epoch)
            if epoch != self._epoch:  # one shuffle per epoch, not per micro-batch
                self._epoch, self._order = epoch, epoch_batches(self.examples, self.batch_size, self.seed, epoch)
            out.append(self._order[i])
        return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_plan(cfg: Config, examples: list[Tokenized]) -> Plan:
    bpe = math.ceil(len(examples) / cfg.train.batch_size)
    steps = max(1, math.ceil(cfg.train.epochs * bpe / cfg.train.grad_accum))
    return Plan(examples, cfg.train.batch_size, cfg.seed, bpe, steps, cfg.train.grad_accum)


def make_batch(examples: list[Tokenized], indices: list[int], pad_id: int, pack_to: int | None = None) -> Batch:
    """The examples `indices` padded to the longest, or with `pack_to` packed into rows of that many tokens.

    Packing changes only the tensors' shape, not which examples a micro-batch holds, so
    the step plan, the examples per optimiser step and resuming are the same either way.
    """
    return collate_packed(examples, indices, pack_to, pad_id) if pack_to else collate(examples, indices, pad_id)


def optimizer_step(model, batches: list[Batch], params, optimizer, scheduler, max_grad_norm: float) -> tuple[float, float]:
    """One optimiser step over micro-batches; returns (loss per supervised token, grad norm).

    Each micro-batch's loss sum is divided by the supervised tokens of the whole step,
    so the accumulated gradient is that of one batch holding them all.
    """
    n_sup = max(sum(b.supervised for b in batches), 1)
    step_loss = 0.0
    for b in batches:
        loss_sum, _ = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels, b.position_ids)
        (loss_sum / n_sup).backward()
        step_loss += float(loss_sum.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if math.isfinite(step_loss):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss / n_sup, grad_norm


@torch.no_grad()
def evaluate_loss(model, examples, pad_id: int, batch_size: int, pack_to: int | None = None) -> float:
    """Mean cross-entropy per supervised token over `examples` (packed into rows of `pack_to` if given)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        b = make_batch(examples, order[s : s + batch_size], pad_id, pack_to)
        loss, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels, b.position_ids)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def train(cfg: Config, run_dir: Path, model_path: Path, tokenizer, resume: bool = True, config_hash: str = "") -> dict:
    """Train into `run_dir/checkpoints`; returns the summary written to train_state.json."""
    set_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    train_ex = load_examples(run_dir / "data" / "train.jsonl", tokenizer, cfg.data.train_on)
    valid_ex = load_examples(run_dir / "data" / "valid.jsonl", tokenizer, cfg.data.train_on)
    model, summary = apply_method(load_model(model_path, cfg.model.dtype), cfg.method)
    console.print(f"[bold]method[/] {cfg.method.kind}: {summary.describe()}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    plan = make_plan(cfg, train_ex)
    optimizer = make_optimizer(model, cfg.train, cfg.method.lora_plus_ratio if cfg.method.kind == "lora" else None)
    scheduler = make_scheduler(optimizer, cfg.train, plan.total_steps)
    ckpt_root = run_dir / "checkpoints"
    start, tokens_seen = _maybe_resume(ckpt_root, model, optimizer, scheduler, resume, config_hash)
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start)

    pad = tokenizer.pad_token_id
    pack_to = cfg.data.max_length if cfg.data.packing else None
    t0, tokens_at_start, last_loss = time.time(), tokens_seen, float("nan")
    with Bar("train", plan.total_steps) as bar, open(metrics_path, "a") as log:
        if start:
            bar.update(start)
        for step in range(start, plan.total_steps):
            batches = [make_batch(train_ex, idx, pad, pack_to) for idx in plan.micro_batches(step)]
            last_loss, grad_norm = optimizer_step(model, batches, params, optimizer, scheduler, cfg.train.max_grad_norm)
            tokens_seen += sum(b.tokens for b in batches)
            if not math.isfinite(last_loss):
                raise TrainingDiverged(
                    f"loss became {last_loss} at step {step + 1}; the last good checkpoint is kept in {ckpt_root}. "
                    "Lower train.lr or check the data for broken records."
                )
            done = step + 1
            rate = (tokens_seen - tokens_at_start) / max(time.time() - t0, 1e-9)
            if done % cfg.train.log_every == 0 or done == plan.total_steps:
                row = {"step": done, "epoch": round(done * plan.grad_accum / plan.batches_per_epoch, 3), "loss": round(last_loss, 5),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": round(grad_norm, 4), "tokens": tokens_seen,
                       "tokens_per_s": round(rate, 1), "elapsed_s": round(time.time() - t0, 1), "peak_rss_mb": round(peak_rss_mb())}
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.update(1, info=f"loss {last_loss:.3f}  {rate:.0f} tok/s")
            if cfg.train.save_every and done % cfg.train.save_every == 0 and done < plan.total_steps:
                checkpoint.save(ckpt_root, done, model, optimizer, scheduler, {"tokens_seen": tokens_seen, "config_hash": config_hash}, cfg.train.keep_last)

    final = checkpoint.save(ckpt_root, plan.total_steps, model, optimizer, scheduler,
                            {"tokens_seen": tokens_seen, "config_hash": config_hash}, cfg.train.keep_last)
    valid_loss = evaluate_loss(model, valid_ex, pad, cfg.eval.batch_size, pack_to) if valid_ex else None
    result = {
        "final_checkpoint": str(final.relative_to(run_dir)),
        "method": cfg.method.kind,
        "trainable_params": summary.trainable,
        "total_params": summary.total,
        "steps": plan.total_steps,
        "train_examples": len(train_ex),
        "tokens_seen": tokens_seen,
        "seconds": round(time.time() - t0, 1),
        "tokens_per_s": round((tokens_seen - tokens_at_start) / max(time.time() - t0, 1e-9), 1),
        "final_train_loss": last_loss,
        "valid_loss": valid_loss,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    atomic.write_json(run_dir / "train_state.json", result)
    return result


def _maybe_resume(ckpt_root: Path, model, optimizer, scheduler, resume: bool, config_hash: str) -> tuple[int, int]:
    found = checkpoint.list_checkpoints(ckpt_root)
    if not found or not resume:
        return 0, 0
    step, path = found[-1]
    if config_hash and json.loads((path / "state.json").read_text()).get("config_hash") not in ("", config_hash):
        # Checkpoints of another config cannot be continued; keeping them would mix two runs.
        console.print(f"checkpoints in {ckpt_root} come from a different config; starting training over")
        shutil.rmtree(ckpt_root, ignore_errors=True)
        return 0, 0
    state = checkpoint.load(path, model, optimizer, scheduler)
    console.print(f"resuming from {path} (step {step})")
    return step, int(state.get("tokens_seen", 0))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after `step`: a resumed run rewrites them."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut by a kill
    atomic.write_text(path, "".join(line + "\n" for line in keep))
