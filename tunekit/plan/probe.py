"""The probe: a few real optimiser steps of this run on this machine, timed, and the run's
time and peak memory extrapolated from them (the arithmetic is in estimate.py).

It sets up exactly what train() sets up (model with the method applied, precision,
activation checkpointing, optimiser, scheduler, the run's step plan) and runs steps of
that plan chosen across its widths, after one untimed warm-up step. Around the steps it
times what the loop also does: one held-out evaluation, one checkpoint write and the
loss plot. Nothing it does is kept: the steps change only the weights in memory, and the
checkpoint is written to a temporary folder and deleted, so a later `tunekit train`
starts from scratch as it would have.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.config import Config
from tunekit.hardware import cuda_device_count, sync
from tunekit.plan.estimate import (
    Costs,
    choose_probe_steps,
    duration,
    eval_steps,
    fit_line,
    padded_tokens,
    relative_spread,
    save_count,
    step_sizes,
    train_seconds,
)
from tunekit.progress import Bar
from tunekit.train import checkpoint
from tunekit.train.distributed import auto_strategy, free_per_process
from tunekit.train.loop import evaluate_loss, make_batch, optimizer_step, replay_state, setup_training
from tunekit.train.memory import available_bytes, estimate_memory
from tunekit.train.metrics import peak_memory_mb
from tunekit.train.plot import loss_curve_png

PROBE_STEPS = 6
# Padded tokens of the held-out subset the probe evaluates, then scales up: a forward pass
# over a large valid set would take longer than all the timed steps together.
EVAL_PROBE_TOKENS = 4096


def probe(cfg: Config, run_dir: Path, model_path: Path, tokenizer, steps: int = PROBE_STEPS) -> dict:
    """Time `steps` representative steps of the run; returns the plan, also written to <run>/plan/plan.json."""
    # From the model load on, as in a `tunekit train` process: model load, steps, evaluation.
    s = setup_training(cfg, run_dir, model_path, tokenizer, before_model=_reset_peak)
    replayed = replay_state(cfg, s)
    train_ex, valid_ex, device, precision, model, summary = s.train_ex, s.valid_ex, s.device, s.precision, s.model, s.summary
    params, plan, optimizer, scheduler, scaler = s.params, s.plan, s.optimizer, s.scheduler, s.scaler
    pack_to = cfg.data.max_length if cfg.data.packing else None
    estimate = estimate_memory(model, cfg.method, cfg.train, cfg.data, precision=precision, length=s.widest)
    processes = _per_process(cfg, model, precision, s.widest, estimate["total"])
    sizes = step_sizes(plan, pack_to)
    picks = choose_probe_steps(sizes, steps)
    pad = tokenizer.pad_token_id

    def timed_step(step: int) -> float:
        t = time.perf_counter()
        batches = [make_batch(train_ex, idx, pad, pack_to) for idx in plan.micro_batches(step)]
        optimizer_step(model, batches, params, optimizer, scheduler, cfg.train.max_grad_norm, precision, scaler,
                       cfg.train.replay.kl)
        sync(device)
        return time.perf_counter() - t

    warm_step = picks[len(picks) // 2]
    with Bar("probe", len(picks) + 1) as bar:
        warm_s = timed_step(warm_step)
        bar.update(1)
        samples = []
        for s in picks:
            samples.append((sizes.padded[s], timed_step(s)))
            bar.update(1, info=f"{sizes.padded[s]} tokens {samples[-1][1]:.2f}s")
    a, b = fit_line(samples)
    costs = Costs(a=a, b=b, spread=relative_spread(samples, a, b),
                  warmup_s=max(0.0, warm_s - (a + b * sizes.padded[warm_step])),
                  eval_s=_time_eval(model, valid_ex, pad, cfg.eval.batch_size, pack_to, precision) if valid_ex else 0.0,
                  save_s=_time_save(run_dir / "plan", model, optimizer, scheduler), plot_s=_time_plot(plan.total_steps))
    evals = eval_steps(plan.total_steps, cfg.train.eval_every) if valid_ex else []
    saves = save_count(plan.total_steps, cfg.train.save_every, evals, cfg.train.keep_best)
    seconds = train_seconds(costs, sizes.padded, len(evals), saves)
    avail = available_bytes()
    result = {
        "steps": plan.total_steps,
        "micro_batches": plan.total_steps * plan.grad_accum,
        "batch_size": cfg.train.batch_size,
        "grad_accum": plan.grad_accum,
        "epochs": cfg.train.epochs,
        "train_examples": len(train_ex),
        "valid_examples": len(valid_ex),
        "tokens": sum(sizes.tokens),
        "padded_tokens": sum(sizes.padded),
        "evaluations": len(evals),
        "checkpoints": saves,
        "probe": [{"step": s + 1, "padded_tokens": n, "seconds": round(x, 4)} for s, (n, x) in zip(picks, samples, strict=True)],
        "costs": costs.as_dict(),
        "train_seconds": seconds,
        "tokens_per_s": round(sum(sizes.tokens) / max(seconds["total"], 1e-9), 1),
        "memory": {**_peak(device), "estimated_mb": round(estimate["total"] / 2**20), "estimate": estimate["description"],
                   "available_mb": round(avail[0] / 2**20) if avail else None,
                   "processes": processes},
        "machine": {"device": device.type, "threads": torch.get_num_threads(), "precision": precision.name,
                    "precision_reason": precision.reason,
                    "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
        "method": summary.describe(),
        "replay": replayed,
    }
    atomic.write_json(run_dir / "plan" / "plan.json", result)
    return result


def describe(plan: dict) -> list[str]:
    """The plan in a few lines for the console."""
    t, m, c = plan["train_seconds"], plan["memory"], plan["costs"]
    probe = plan["probe"]
    accum = f" x {plan['grad_accum']} accumulated" if plan["grad_accum"] > 1 else ""
    lines = [
        f"[bold]run[/] {plan['steps']:,} steps of batch {plan['batch_size']}{accum} ({plan['train_examples']:,} examples, "
        f"{_count(plan['epochs'], 'epoch')}), {plan['tokens']:,} tokens ({plan['padded_tokens']:,} with padding)",
        f"[bold]probe[/] {len(probe)} steps of {min(p['padded_tokens'] for p in probe):,}-{max(p['padded_tokens'] for p in probe):,} "
        f"padded tokens took {min(p['seconds'] for p in probe):.2f}-{max(p['seconds'] for p in probe):.2f}s each "
        f"(fit: {c['a']:.2f}s + {c['b'] * 1000:.2f}s per 1k tokens; load average {plan['machine']['load_average']})",
        f"[bold]estimated train time[/] {duration(t['total'])} ({duration(t['low'])} to {duration(t['high'])}): "
        f"steps {duration(t['steps'])}, {_count(plan['evaluations'], 'held-out evaluation')} {duration(t['heldout'])}, "
        f"{_count(plan['checkpoints'], 'checkpoint')} {duration(t['checkpoints'])}, warm-up and plot {duration(t['other'])}",
        f"[bold]throughput[/] {plan['tokens_per_s']:,.0f} tokens/s",
        f"[bold]peak memory[/] {m['peak_rss_mb']:,} MB measured (resident, model load and probe steps including the widest batch)"
        + (f", {m['cuda_max_allocated_mb']:,} MB on the GPU" if "cuda_max_allocated_mb" in m else "")
        + f"; {m['estimated_mb']:,} MB estimated for the tensors of a step"
        + (f"; {m['available_mb']:,} MB available" if m["available_mb"] else ""),
    ]
    r = plan.get("replay")
    if r:
        paid = "generated just now" if r["generated_now"] else "cached"
        cost = (f"; generating them took {duration(r['generation_seconds'])}, once per base model"
                if r.get("generation_seconds") else "")
        lines.insert(1, f"[bold]replay[/] {r['examples']:,} of the {plan['train_examples']:,} examples are general "
                        f"conversations (train.replay.fraction {r['fraction']}) from "
                        + ("the base model's own answers" if r["source"] == "self-distillation" else r["source"])
                        + f" ({paid}{cost})")
    procs = m.get("processes")
    if procs:
        lines.append(f"[bold]in {procs['count']} processes[/] (--nproc-per-node {procs['count']}): ddp {procs['ddp_mb']:,} MB "
                     f"each, fsdp2 {procs['fsdp2_mb']:,} MB each (sharded); train.distributed=auto would pick "
                     f"{procs['auto']} ({procs['auto_reason'].removeprefix('auto: ')})")
    need = max(m.get("cuda_max_allocated_mb", m["peak_rss_mb"]), m["estimated_mb"])
    if m["available_mb"] and need > m["available_mb"]:
        lines.append(f"[yellow]warning[/] the run needs about {need:,} MB but only {m['available_mb']:,} MB are available: "
                     "lower train.batch_size or data.max_length, train fewer blocks (method.layers), or set "
                     "train.gradient_checkpointing=true")
    return lines


def _per_process(cfg: Config, model, precision, widest: int | None, replica: int) -> dict:
    """Memory per process of a job of several (torchrun): as many as this machine has GPUs, at least 2.
    DDP keeps a whole replica in each; FSDP2 shards weights, gradients and optimiser state."""
    n = max(2, cuda_device_count())
    sharded = estimate_memory(model, cfg.method, cfg.train, cfg.data, precision=precision, length=widest, shards=n)["total"]
    # What `auto` would pick if every process had this machine's memory for itself on a GPU, or its share on a CPU.
    free = free_per_process(precision.device)
    if free is not None and precision.device.type == "cpu":
        free = (free[0] // n, free[1])
    pick, why = auto_strategy(cfg.method.kind, replica, free)
    return {"count": n, "ddp_mb": round(replica / 2**20), "fsdp2_mb": round(sharded / 2**20), "auto": pick, "auto_reason": why}


def _count(n: float, noun: str) -> str:
    return f"{n:g} {noun}" + ("" if n == 1 else "s")


def _time_eval(model, valid_ex, pad: int, batch_size: int, pack_to: int | None, precision) -> float:
    """Seconds of one evaluate_loss over all of `valid_ex`, measured on every k-th example by length
    (the longest included) and scaled by padded tokens."""
    total = _eval_padded(valid_ex, batch_size, pack_to)
    stride = max(1, math.ceil(total / EVAL_PROBE_TOKENS))
    by_length = sorted(range(len(valid_ex)), key=lambda i: -len(valid_ex[i].input_ids))
    subset = [valid_ex[i] for i in by_length[::stride]]
    t = time.perf_counter()
    evaluate_loss(model, subset, pad, batch_size, pack_to, precision)
    sync(next(model.parameters()).device)
    return (time.perf_counter() - t) * total / _eval_padded(subset, batch_size, pack_to)


def _eval_padded(examples, batch_size: int, pack_to: int | None) -> int:
    """Padded tokens evaluate_loss computes on: examples sorted by length, in batches."""
    lengths = sorted(len(e.input_ids) for e in examples)
    return sum(padded_tokens(lengths[s : s + batch_size], pack_to) for s in range(0, len(lengths), batch_size))


def _time_save(plan_dir: Path, model, optimizer, scheduler) -> float:
    """Seconds to write one checkpoint, written beside the run's (same disk) and deleted at once."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".probe-save-", dir=plan_dir))
    try:
        t = time.perf_counter()
        checkpoint.save(tmp, 0, model, optimizer, scheduler, {"config_hash": "probe"}, keep_last=1)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _time_plot(steps: int) -> float:
    """Seconds to draw loss.png at the end of training (matplotlib's import is most of it)."""
    t = time.perf_counter()
    loss_curve_png([{"step": s, "loss": 1.0, **({"valid_loss": 1.0} if s == steps else {})} for s in range(1, steps + 1)])
    return time.perf_counter() - t


def _reset_peak(device: torch.device) -> None:
    """Start the peak counters now, so a prepare stage run in this process does not count."""
    try:  # Linux: "5" resets the process's resident high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict:
    """The resident peak since _reset_peak (VmHWM), else the process's lifetime peak, plus the GPU's."""
    out = peak_memory_mb(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return out
