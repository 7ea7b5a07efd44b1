"""The training loop: one loop for every method, readable in one sitting.

Each optimiser step takes `grad_accum` micro-batches; every micro-batch's loss is a
sum over its supervised tokens divided by the supervised tokens of the *whole step*,
so accumulated gradients equal those of one large batch.

Around the step: the held-out loss every `eval_every` steps (early stopping, best
checkpoint), checkpoints every `save_every` steps, and metrics. The side concerns live
beside this file: compute.py (device, precision, activation checkpointing), heldout.py,
checkpoint.py, resume.py, metrics.py (metrics.jsonl, TensorBoard, memory) and plot.py (loss.png).

The same loop runs in each process of a torchrun job (distributed.py: DDP or FSDP2, every
process computing its share of each step's global micro-batches; checkpoint_dcp.py: their checkpoints),
and computes the update one process computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunekit import atomic, hardware, stopping
from tunekit.config import Config
from tunekit.data.batches import Batch, collate, epoch_batches, load_examples
from tunekit.data.pack import collate_packed
from tunekit.data.template import Tokenized
from tunekit.errors import OutOfMemory, TunekitError
from tunekit.hardware import FP32, Precision
from tunekit.models.loading import load_model, set_threads
from tunekit.progress import Bar, console
from tunekit.train import checkpoint, checkpoint_dcp, distributed
from tunekit.train.allocator import return_freed_memory_promptly
from tunekit.train.compute import cast_frozen, enable_activation_checkpointing
from tunekit.train.guard import NonFiniteWatch, skip_if_nonfinite
from tunekit.train.heldout import HeldOut
from tunekit.train.distributed import Ranks, is_wrapped
from tunekit.train.loss import supervised_loss_sum, supervised_rows
from tunekit.train.memory import print_memory_estimate
from tunekit.train.methods import apply_method
from tunekit.train.metrics import MetricsLog, peak_memory_mb, read_metrics, require_tensorboard, truncate_metrics
from tunekit.train.optim import make_optimizer, make_scheduler
from tunekit.train.plot import write_loss_png
from tunekit.train.replay import ReplayPool, pool_for, replay_examples
from tunekit.train.resume import check_checkpoint_space, resume_from


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


def to_device(b: Batch, device: torch.device) -> tuple[Batch, tuple[torch.Tensor, ...]]:
    """The batch on `device`, with its supervised positions (loss.supervised_rows) found on the CPU first."""
    rows = supervised_rows(b.labels)
    if device.type == "cpu":
        return b, rows
    move = {f.name: getattr(b, f.name) for f in dataclasses.fields(b) if isinstance(getattr(b, f.name), torch.Tensor)}
    moved = dataclasses.replace(b, **{k: v.to(device, non_blocking=True) for k, v in move.items()})
    return moved, tuple(t.to(device, non_blocking=True) for t in rows)


def optimizer_step(model, batches: list[Batch], params, optimizer, scheduler, max_grad_norm: float,
                   precision: Precision = FP32, scaler=None, kl_weight: float = 0.0,
                   ranks: Ranks | None = None, weights: list[float] | None = None,
                   supervised: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step over micro-batches; returns (loss per supervised token, grad norm) as 0-d
    tensors on the device, so the caller decides when to pay a host sync to read them.

    Each micro-batch's loss sum is divided by the supervised tokens of the whole step,
    so the accumulated gradient is that of one batch holding them all. `scaler`: fp16's
    GradScaler, which skips steps whose scaled gradients overflowed. `kl_weight`: train.replay.kl,
    for the replay tokens a batch marks (loss.distill_sum).

    In a job of several processes (`ranks`): `batches` are this process's shards of the step's
    micro-batches, `weights` their weights (0 for a stand-in, distributed.Ranks.local), and
    `supervised` the step's supervised tokens over every process. Each loss sum is scaled by
    world / supervised: DDP and FSDP2 average gradients over the processes, so what every process
    ends with is the sum over all tokens / supervised, as one process computes it.
    """
    n_sup = max(sum(b.supervised for b in batches) if supervised is None else supervised, 1)
    step_loss = torch.zeros((), device=params[0].device)
    for i, b in enumerate(batches):
        b, rows = to_device(b, params[0].device)
        with hardware.attention_for(model, b.input_ids.shape[1], precision):  # backward too: see there
            with ranks.sync(last=i == len(batches) - 1) if ranks else contextlib.nullcontext():
                with precision.autocast():
                    loss_sum, _ = loss_sum_of(ranks.wrapped if ranks else model, b, rows, kl_weight)
                if ranks is None:
                    loss = loss_sum / n_sup
                else:
                    loss_sum = loss_sum * weights[i]
                    loss = loss_sum * (ranks.world / n_sup)
                (scaler.scale(loss) if scaler is not None else loss).backward()
        step_loss += loss_sum.detach().float()
    if ranks is not None:
        step_loss = ranks.total(step_loss)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = distributed.full_norm(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        # A non-finite loss or gradient would turn the weights into NaN: the update is skipped
        # (the caller stops the run), so the weights in memory stay the last good ones.
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        if skip_if_nonfinite(optimizer, finite):
            optimizer.step()
            del optimizer.found_inf
        elif bool(finite):  # an optimiser without an on-device skip: check on the host
            optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss / n_sup, grad_norm.detach()


def loss_sum_of(model, b: Batch, rows, kl_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """The summed loss of batch `b` (on the device, `rows` its supervised positions); through the
    wrapper's forward when `model` is wrapped for DDP or FSDP2 (distributed.LossForward)."""
    args = (b.input_ids, b.attention_mask, b.labels, b.position_ids, rows, b.distill, kl_weight)
    return model(*args) if is_wrapped(model) else supervised_loss_sum(model, *args)


@torch.no_grad()
def evaluate_loss(model, examples, pad_id: int, batch_size: int, pack_to: int | None = None,
                  precision: Precision = FP32) -> float:
    """Mean cross-entropy per supervised token over `examples` (packed into rows of `pack_to` if given).
    `model` may be a process group's evaluator (distributed.Ranks.evaluator)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bare = model.model if isinstance(model, distributed.LossForward) else model
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        b, rows = to_device(make_batch(examples, order[s : s + batch_size], pad_id, pack_to), device)
        with precision.autocast(), hardware.attention_for(bare, b.input_ids.shape[1], precision):
            loss, n = loss_sum_of(model, b, rows)
        total, count = total + loss.float(), count + n  # summed on the device: one sync at the end
    model.train(was_training)
    return float(total) / max(count, 1)


@dataclass
class Setup:
    """Everything a training step needs, built once by `setup_training`."""

    train_ex: list[Tokenized]  # the domain examples, then the replay examples
    valid_ex: list[Tokenized]
    device: torch.device
    precision: Precision
    model: torch.nn.Module
    summary: object  # methods.MethodSummary
    widest: int | None  # longest example in tokens; None when packed rows fill max_length
    params: list[torch.nn.Parameter]
    plan: Plan
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object  # torch.amp.GradScaler for fp16, else None
    replay: ReplayPool | None = None
    n_replay: int = 0  # how many of train_ex are replay examples (the last ones)
    ranks: Ranks | None = None  # in a job of several processes (torchrun): the wrapped model and collectives


def setup_training(cfg: Config, run_dir: Path, model_path: Path, tokenizer, before_model=None) -> Setup:
    """Data, device, precision, model with its method, optimiser and schedule, as `train` runs them;
    the planning probe times steps of exactly this. `before_model(device)` runs just before the model loads."""
    set_threads(cfg.train.threads)
    if cfg.train.lean_memory:  # the resident peak depends on it
        return_freed_memory_promptly()
    torch.manual_seed(cfg.seed)
    train_ex = load_examples(run_dir / "data" / "train.jsonl", tokenizer, cfg.data.train_on)
    valid_ex = load_examples(run_dir / "data" / "valid.jsonl", tokenizer, cfg.data.train_on)
    device = hardware.pick_device()
    precision = hardware.choose_precision(cfg.train.precision, device, model_path)
    # Before the training model loads: generating replay answers needs the base model alone.
    pool = pool_for(cfg, model_path, tokenizer, precision)
    replayed = [] if pool is None else replay_examples(pool, tokenizer, len(train_ex), cfg.train.replay.fraction,
                                                       cfg.data.max_length, cfg.seed, cfg.data.train_on)
    train_ex = train_ex + replayed
    if before_model is not None:
        before_model(device)
    model, summary = apply_method(load_model(model_path, master_dtype(cfg)), cfg.method)
    # Padded batches are never wider than the longest example; packed rows fill max_length.
    widest = None if cfg.data.packing else max(len(e.input_ids) for e in train_ex)
    strategy = distributed.choose_strategy(cfg, model, precision, widest) if hardware.joined() else None
    # A full fine-tune saves every weight: none may be rounded. FSDP2 keeps a block's shards in one
    # dtype, so there the frozen weights stay fp32 like the adapters and are gathered in bf16 instead.
    fsdp2 = strategy is not None and strategy[0] == "fsdp2"
    if cfg.method.kind != "full":
        cast_frozen(model, precision, weights=not fsdp2)
    if cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.to(device).train()
    gather = precision.dtype if fsdp2 and cfg.method.kind != "full" else None
    ranks = distributed.wrap(model, strategy[0], device, strategy[1], gather) if strategy else None
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: FSDP2's are new
    plan = make_plan(cfg, train_ex)
    optimizer = make_optimizer(model, cfg.train, cfg.method.lora_plus_ratio if cfg.method.kind != "full" else None)
    scheduler = make_scheduler(optimizer, cfg.train, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    return Setup(train_ex, valid_ex, device, precision, model, summary, widest, params, plan, optimizer, scheduler, scaler,
                 pool, len(replayed), ranks)


def master_dtype(cfg: Config) -> str:
    """The dtype the trained weights are kept in: a full fine-tune always keeps fp32 master weights.

    With bf16 weights AdamW would add each update to a number with 8 bits of mantissa: an
    update under 1/256 of the weight rounds away (at lr 1e-5 nearly all of them), and training
    silently stops learning. The forward still runs in bf16 under autocast where the precision
    is bf16; the cost is 2 more bytes per weight, which the memory estimate counts. LoRA kinds
    train fp32 adapters whatever the base's dtype, so `model.dtype` applies to them as given."""
    return "float32" if cfg.method.kind == "full" else cfg.model.dtype


def train(cfg: Config, run_dir: Path, model_path: Path, tokenizer, resume: bool = True, config_hash: str = "") -> dict:
    """Train into `run_dir/checkpoints`; returns the summary written to train_state.json."""
    if cfg.train.tensorboard:
        require_tensorboard()  # now, not after the model has loaded
    hardware.join_process_group()  # under torchrun; the CLI has joined already
    s = setup_training(cfg, run_dir, model_path, tokenizer)
    if s.ranks is not None:
        console.print(f"[bold]processes[/] {s.ranks.describe(cfg.train.grad_accum, cfg.train.batch_size)}")
    console.print(f"[bold]precision[/] {s.precision.describe()}")
    if master_dtype(cfg) != cfg.model.dtype:
        console.print(f"[yellow]note[/] method.kind full with model.dtype {cfg.model.dtype}: the weights train as fp32 master "
                      f"copies (a {cfg.model.dtype} weight rounds away updates under 1/256 of itself); "
                      f"compute stays {s.precision.name}, and eval and export use {cfg.model.dtype}")
    console.print(f"[bold]method[/] {cfg.method.kind}: {s.summary.describe()}")
    if s.replay is not None:
        console.print(f"[bold]replay[/] {s.n_replay} of {len(s.train_ex)} training examples "
                      f"(train.replay.fraction {cfg.train.replay.fraction}): {s.replay.describe()}")
    shards = s.ranks.world if s.ranks is not None and s.ranks.strategy == "fsdp2" else 1
    estimate = print_memory_estimate(s.model, cfg, s.widest, s.precision, shards)
    try:
        return _fit(cfg, run_dir, s, tokenizer.pad_token_id, resume, config_hash, estimate)
    except torch.OutOfMemoryError:
        raise OutOfMemory(hardware.oom_message(round(estimate["total"] / 2**20))) from None


def _fit(cfg: Config, run_dir: Path, s: Setup, pad: int, resume: bool, config_hash: str, estimate: dict) -> dict:
    train_ex, valid_ex, device, precision, model, summary = s.train_ex, s.valid_ex, s.device, s.precision, s.model, s.summary
    params, plan, optimizer, scheduler, scaler = s.params, s.plan, s.optimizer, s.scheduler, s.scaler
    ckpt_root = run_dir / "checkpoints"
    ranks, main = s.ranks, s.ranks is None or s.ranks.main  # only rank 0 writes the run folder
    start, state = resume_from(ckpt_root, model, optimizer, scheduler, scaler, resume, config_hash, ranks)
    heldout = HeldOut.from_state(state.get("heldout"), cfg.train.early_stopping_patience)
    _warn_without_heldout(cfg, valid_ex)
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        truncate_metrics(metrics_path, start)
    tokens_seen = int(state.get("tokens_seen", 0))
    watch = NonFiniteWatch(device, watch_grad=scaler is None)
    scorer = model if ranks is None else ranks.evaluator()  # the held-out loss

    def save(step: int) -> Path:
        best = heldout.best_step if cfg.train.keep_best else None  # pruning never removes it
        kept = {"tokens_seen": tokens_seen, "config_hash": config_hash, "best": best, "heldout": heldout.state(),
                "train_loss": loss}  # a run resumed after its last step reports it
        writer = checkpoint.save if ranks is None else checkpoint_dcp.save
        return writer(ckpt_root, step, model, optimizer, scheduler, kept, cfg.train.keep_last, scaler)

    hardware.agree(check_checkpoint_space, cfg, ckpt_root, model, optimizer)
    pack_to = cfg.data.max_length if cfg.data.packing else None
    t0, tokens_at_start, loss, valid_loss, done = time.time(), tokens_seen, float(state.get("train_loss", "nan")), None, start
    with Bar("train", plan.total_steps) as bar, _metrics_log(main, metrics_path, _tensorboard_dir(cfg, run_dir)) as log, \
            stopping.deferred() as stop:
        if start:
            bar.update(start)
        for step in range(start, plan.total_steps):
            if heldout.stopped_early:  # at the step before, or in the run this one resumes
                break
            if ranks is None:
                batches = [make_batch(train_ex, idx, pad, pack_to) for idx in plan.micro_batches(step)]
                loss_t, norm_t = optimizer_step(model, batches, params, optimizer, scheduler, cfg.train.max_grad_norm,
                                                precision, scaler, cfg.train.replay.kl)
                tokens_seen += sum(b.tokens for b in batches)
                stopping_now = stop.requested
            else:
                loss_t, norm_t, tokens, stopping_now = _step_of_ranks(cfg, s, step, pad, pack_to, stop.requested)
                tokens_seen += tokens
            done, last = step + 1, step + 1 == plan.total_steps
            watch.record(done, loss_t, norm_t)
            evaluating = bool(valid_ex) and (last or bool(cfg.train.eval_every and done % cfg.train.eval_every == 0))
            periodic = bool(cfg.train.save_every and done % cfg.train.save_every == 0)
            logging = done % cfg.train.log_every == 0 or last or evaluating
            if not (logging or periodic or stopping_now):  # nothing read on the host this step: no sync
                bar.update(1)
                continue
            loss, grad_norm = (float(x) for x in torch.stack([loss_t, norm_t.float()]).tolist())
            _stop_if_diverged(watch, ckpt_root)

            valid_loss, improved = None, False
            if evaluating:
                valid_loss = evaluate_loss(scorer, valid_ex, pad, cfg.eval.batch_size, pack_to, precision)
                _stop_if_nonfinite("held-out loss", valid_loss, done, ckpt_root)
                improved = heldout.record(done, valid_loss)

            rate = (tokens_seen - tokens_at_start) / max(time.time() - t0, 1e-9)
            if logging:
                row = {"step": done, "epoch": round(done * plan.grad_accum / plan.batches_per_epoch, 3),
                       "loss": round(loss, 5), "lr": scheduler.get_last_lr()[0], "grad_norm": round(grad_norm, 4),
                       "tokens": tokens_seen, "tokens_per_s": round(rate, 1), "elapsed_s": round(time.time() - t0, 1),
                       **peak_memory_mb(device)}
                if log is not None:
                    log.write(row if valid_loss is None else {**row, "valid_loss": round(valid_loss, 5)})
            shown = f"loss {loss:.3f}  {rate:.0f} tok/s" + (f"  held-out {valid_loss:.3f}" if valid_loss is not None else "")
            bar.update(1, info=shown)

            if heldout.stopped_early:
                console.print(f"[yellow]early stopping[/] after step {done}: {heldout.why_stopped()}")
            if last or heldout.stopped_early or periodic or (improved and cfg.train.keep_best) or stopping_now:
                saved = save(done)
            if stopping_now and not last:  # SIGTERM/SIGINT: stopped at a step boundary, nothing lost
                # In a job, the signal may have reached another process: every one stops here.
                signum = stop.signum or signal.SIGTERM
                raise stopping.Interrupted(signum, f"training stopped by {signal.Signals(signum).name} after step {done} of "
                                                   f"{plan.total_steps}; its checkpoint {saved} is written")

    final = ckpt_root / f"step-{done}"  # saved by the last step run, or the checkpoint resumed from
    if valid_loss is None and valid_ex:  # resumed after the last step: measure the final weights again
        valid_loss = evaluate_loss(scorer, valid_ex, pad, cfg.eval.batch_size, pack_to, precision)
    if main:
        write_loss_png(run_dir / "loss.png", read_metrics(metrics_path))
    best = ckpt_root / f"step-{heldout.best_step}" if cfg.train.keep_best and heldout.best_step else None
    result = {
        "final_checkpoint": str(final.relative_to(run_dir)),
        "best_checkpoint": str(best.relative_to(run_dir)) if best else None,
        "method": cfg.method.kind,
        "trainable_params": summary.trainable,
        "total_params": summary.total,
        "steps": done,
        "planned_steps": plan.total_steps,
        "stopped_early": heldout.stopped_early,
        "best_step": heldout.best_step,
        "best_valid_loss": heldout.best_loss,
        "train_examples": len(train_ex),
        "replay": replay_state(cfg, s),
        "tokens_seen": tokens_seen,
        "seconds": round(time.time() - t0, 1),
        "tokens_per_s": round((tokens_seen - tokens_at_start) / max(time.time() - t0, 1e-9), 1),
        "final_train_loss": loss,
        "valid_loss": valid_loss,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "device": device.type,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        **peak_memory_mb(device),
        "estimated_peak_mb": round(estimate["total"] / 2**20),
    }
    if ranks is not None:  # the peak memory above is rank 0's
        result.update(processes=ranks.world, distributed=ranks.strategy, distributed_reason=ranks.why)
        hardware.agree(atomic.write_json, run_dir / "train_state.json", result)
    else:
        atomic.write_json(run_dir / "train_state.json", result)
    if stop.requested:  # received during the last step: training is complete, the stages after it wait
        raise stopping.Interrupted(stop.signum, f"stopped by {stop.name} after the last training step (saved)")
    return result


def _step_of_ranks(cfg: Config, s: Setup, step: int, pad: int, pack_to: int | None,
                   stop: bool) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """One optimiser step in a job of several processes: this process's share of the step's global
    micro-batches (distributed.Ranks.share), the step's totals over every process (one all_reduce: supervised tokens, tokens and
    whether a signal asked any process to stop), then the step. Returns (loss, grad norm, the step's
    tokens over every process, stop)."""
    local = s.ranks.share(s.plan.micro_batches(step))
    batches = [make_batch(s.train_ex, idx, pad, pack_to) for idx, _ in local]
    weights = [w for _, w in local]
    supervised = sum(b.supervised for b, w in zip(batches, weights) if w)
    tokens = sum(b.tokens for b, w in zip(batches, weights) if w)
    supervised, tokens, stop = s.ranks.totals(supervised, tokens, stop)
    loss_t, norm_t = optimizer_step(s.model, batches, s.params, s.optimizer, s.scheduler, cfg.train.max_grad_norm,
                                    s.precision, s.scaler, cfg.train.replay.kl, s.ranks, weights, supervised)
    return loss_t, norm_t, tokens, stop


@contextlib.contextmanager
def _metrics_log(main: bool, path: Path, tensorboard_dir: Path | None):
    """metrics.jsonl (and TensorBoard) on rank 0; the other processes write nothing."""
    if not main:
        yield None
        return
    with MetricsLog(path, tensorboard_dir) as log:
        yield log


def replay_state(cfg: Config, s: Setup) -> dict | None:
    """What replay added to the run, for train_state.json and the report."""
    if s.replay is None:
        return None
    p = s.replay
    return {"fraction": cfg.train.replay.fraction, "kl": cfg.train.replay.kl, "examples": s.n_replay, "domain_examples": len(s.train_ex) - s.n_replay,
            "source": p.source, "pool": len(p.conversations), "cache": p.cache, "generated_now": p.generated_now,
            "generation_seconds": p.generation_seconds, "prompts": p.prompts, "dropped_unfinished": p.dropped_unfinished,
            "dropped_wrong": p.dropped_wrong, "dropped_declining": p.dropped_declining, "sampled": p.sampled}


def _stop_if_diverged(watch: NonFiniteWatch, ckpt_root: Path) -> None:
    """Stop when a step since the last check had a non-finite loss or gradient norm (one sync)."""
    bad = watch.first_bad()
    if bad is not None:
        what, value, step = bad
        _stop_if_nonfinite(what, value, step, ckpt_root)


def _stop_if_nonfinite(what: str, value: float, step: int, ckpt_root: Path) -> None:
    """Stop with a clear message when `value` is NaN or infinite; no checkpoint is written after it."""
    if math.isfinite(value):
        return
    found = checkpoint.list_checkpoints(ckpt_root)
    kept = (f"the last good checkpoint {found[-1][1]} is kept" if found
            else "no checkpoint had been written yet, so there is none to keep")
    raise TrainingDiverged(f"training stopped: the {what} became {value} at step {step}; {kept} and nothing was saved "
                           "from the broken weights. Lower train.lr (or check the data for broken records) and rerun.")


def _warn_without_heldout(cfg: Config, valid_ex: list) -> None:
    if not valid_ex and (cfg.train.eval_every or cfg.train.early_stopping_patience):
        console.print("[yellow]note[/] no held-out examples (data/valid.jsonl is empty): "
                      "no held-out loss, early stopping or best checkpoint in this run")


def _tensorboard_dir(cfg: Config, run_dir: Path) -> Path | None:
    return run_dir / "tensorboard" if cfg.train.tensorboard else None
