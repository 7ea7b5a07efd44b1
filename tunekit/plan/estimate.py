"""The arithmetic of a plan: sizes of the run's steps, which to probe, and the run's time
extrapolated from a few timed steps. Pure functions over numbers, nothing runs a model.

Why a line in padded tokens: a step's cost is a fixed part (the optimiser update over the
trainable parameters, Python and launch overhead) plus a part proportional to the tokens
the model computes on, padding included. The run's steps vary in width (batches are
grouped by length), so timing a few steps across the length range and summing the fitted
line over every planned step is far closer than steps x the time of one step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunekit.data.pack import best_fit_decreasing

# The narrowest range given, as a share of the estimate: timings of a shared CPU move by
# this much from minute to minute even when the fit through the probe is exact.
MIN_SPREAD = 0.10


@dataclass
class StepSizes:
    """Per optimiser step of a plan: tokens computed on (padding included), real tokens,
    and the padded tokens of its largest micro-batch (what sets the memory peak)."""

    padded: list[int]
    tokens: list[int]
    widest: list[int]


@dataclass
class Costs:
    """What the probe measured, in seconds: the step line a + b x padded tokens, its
    relative spread, and the one-off and periodic work around the steps."""

    a: float
    b: float
    spread: float
    warmup_s: float  # the first step's extra time over the line (lazy allocation, first kernels)
    eval_s: float  # one held-out evaluation of the whole valid set
    save_s: float  # one checkpoint write
    plot_s: float  # loss.png at the end

    def as_dict(self) -> dict:
        return asdict(self)


def padded_tokens(lengths: list[int], pack_to: int | None = None) -> int:
    """Tokens a micro-batch of examples of `lengths` computes on: rows x width, as make_batch builds it."""
    if not pack_to:
        return len(lengths) * max(lengths)
    rows = best_fit_decreasing(lengths, pack_to)
    return len(rows) * max(sum(lengths[k] for k in row) for row in rows)


def step_sizes(plan, pack_to: int | None = None) -> StepSizes:
    """Sizes of every step of a loop.Plan, from example lengths alone (no batch is built)."""
    lengths = [len(e.input_ids) for e in plan.examples]
    sizes = StepSizes([], [], [])
    for step in range(plan.total_steps):
        micro = [[lengths[i] for i in idx] for idx in plan.micro_batches(step)]
        padded = [padded_tokens(m, pack_to) for m in micro]
        sizes.padded.append(sum(padded))
        sizes.tokens.append(sum(map(sum, micro)))
        sizes.widest.append(max(padded))
    return sizes


def choose_probe_steps(sizes: StepSizes, n: int) -> list[int]:
    """Up to `n` steps spanning the padded sizes (smallest, quantiles, largest), always
    including the step of the largest micro-batch so the memory peak is seen."""
    total = len(sizes.padded)
    if total <= n:
        return list(range(total))
    by_size = sorted(range(total), key=lambda s: (sizes.padded[s], s))
    picks = {by_size[round(k * (total - 1) / max(n - 1, 1))] for k in range(n)}
    # Ties broken as by_size does, so without accumulation this is the largest pick already.
    picks.add(max(range(total), key=lambda s: (sizes.widest[s], sizes.padded[s], s)))
    return sorted(picks, key=lambda s: (sizes.padded[s], s))


def fit_line(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of seconds = a + b x tokens over (tokens, seconds) samples, by Theil-Sen: the
    median of the slopes between every two samples, then the median intercept.

    Medians rather than least squares because the noise of a shared machine is one-sided:
    another process taking the cores for a moment makes one step twice as slow, never
    twice as fast, and with five samples least squares follows that one step (measured: a
    1.7x outlier at the small end turned a run of 492 s into a 570 s estimate).
    Kept physical: with one size only (or near enough) the line goes through the origin;
    a falling line (noise over a narrow range) becomes the median time; a negative
    intercept becomes a line through the origin, so no step is predicted to cost < 0.
    """
    assert samples, "no timed steps"
    ts = [t for t, _ in samples]
    if len(samples) < 2 or max(ts) < 1.05 * min(ts):
        return 0.0, sum(s for _, s in samples) / max(sum(ts), 1e-9)
    slopes = [(s2 - s1) / (t2 - t1) for i, (t1, s1) in enumerate(samples) for t2, s2 in samples[i + 1 :] if t2 != t1]
    b = _median(slopes)
    if b <= 0:
        return _median([s for _, s in samples]), 0.0
    a = _median([s - b * t for t, s in samples])
    if a < 0:
        return 0.0, _median([s / t for t, s in samples])
    return a, b


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def relative_spread(samples: list[tuple[float, float]], a: float, b: float) -> float:
    """Half-width of the range, as a share: twice the RMS relative residual (an outlier the fit
    ignored still widens the range), at least MIN_SPREAD."""
    rel = [(s - (a + b * t)) / max(a + b * t, 1e-9) for t, s in samples]
    rms = math.sqrt(sum(r * r for r in rel) / len(rel)) if rel else 0.0
    return max(MIN_SPREAD, 2 * rms)


def predict_steps(samples: list[tuple[float, float]], sizes: list[int]) -> float:
    """Seconds for steps of `sizes` padded tokens, from the line fitted to the timed samples."""
    a, b = fit_line(samples)
    return sum(a + b * n for n in sizes)


def eval_steps(total_steps: int, eval_every: int) -> list[int]:
    """Steps after which the loop measures the held-out loss (every eval_every, and the last)."""
    every = set(range(eval_every, total_steps + 1, eval_every)) if eval_every else set()
    return sorted(every | {total_steps})


def save_count(total_steps: int, save_every: int, evals: list[int], keep_best: bool) -> int:
    """Checkpoints the loop writes: periodic ones, the last, and with keep_best each new best
    held-out loss (counted as every evaluation: an upper bound, as a run's loss mostly falls)."""
    steps = set(range(save_every, total_steps + 1, save_every)) if save_every else set()
    return len(steps | {total_steps} | (set(evals) if keep_best else set()))


def train_seconds(costs: Costs, padded: list[int], evals: int, saves: int) -> dict:
    """The run's seconds by part, comparable to train_state.json's `seconds`, with a range."""
    parts = {
        "steps": sum(costs.a + costs.b * n for n in padded),
        "heldout": evals * costs.eval_s,
        "checkpoints": saves * costs.save_s,
        "other": costs.warmup_s + costs.plot_s,
    }
    total = sum(parts.values())
    return {**{k: round(v, 3) for k, v in parts.items()}, "total": round(total, 3),
            "low": round(total * (1 - costs.spread), 3), "high": round(total * (1 + costs.spread), 3)}


def duration(seconds: float) -> str:
    """4m 05s, 1h 02m, 12s, 0.4s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
