"""The report's own drawings as PNG bytes: score bars with intervals, and the token-length
histogram (drawn by `data inspect`'s function, so both look alike). The loss curve and the
learning curve are drawn by the functions that draw them for training and `plan`.

Each returns None when there is nothing to draw, so the report simply leaves the figure out.
The intervals the score bars carry are computed here too, so a bar and the number printed
beside it in the report cannot disagree.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: draw straight to a PNG
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def score_bars_png(bars: list[tuple[str, float, float | None, float | None]], ylabel: str) -> bytes | None:
    """One bar per (label, score, low, high) with the interval as an error bar; scores in [0, 1]
    are drawn on a 0-100 scale, the scale the verdict speaks in."""
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    labels = [b[0] for b in bars]
    heights = [100 * b[1] for b in bars]
    ax.bar(labels, heights, color=[f"C{i}" for i in range(len(bars))], alpha=0.85)
    for i, (_, score, lo, hi) in enumerate(bars):
        if lo is not None and hi is not None:
            # asymmetric: Wilson and bootstrap intervals are not centred on the mean
            ax.errorbar(i, 100 * score, yerr=[[100 * max(0.0, score - lo)], [100 * max(0.0, hi - score)]], color="black", capsize=6)
        ax.annotate(f"{100 * score:.1f}", (i, 100 * score), textcoords="offset points", xytext=(14, 2), fontsize=9)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def tradeoff_png(points: list[tuple[str, float, float]], domain_label: str) -> bytes | None:
    """Domain score against general score, one labelled point per (contender, domain, general), both
    in [0, 1] and drawn 0-100: up and to the right is better, and the tuned point shows what the
    domain gain cost in general ability."""
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for i, (label, domain, general) in enumerate(points):
        ax.scatter([100 * general], [100 * domain], s=60, color=f"C{i}", zorder=3)
        ax.annotate(label, (100 * general, 100 * domain), textcoords="offset points", xytext=(6, 4 + 10 * (i % 2)), fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("general score (forgetting check, %)")
    ax.set_ylabel(f"domain score ({domain_label})")
    ax.grid(alpha=0.3)
    return _png(fig)


def token_histogram_png(histogram: dict) -> bytes | None:
    """The token-length histogram `data inspect` draws, from a stats.length_histogram dict."""
    if not histogram or len(histogram.get("edges", [])) < 2:
        return None
    from tunekit.data.inspect_view import histogram_png

    # histogram_png writes a file (that is what `data inspect` needs); read it back.
    with tempfile.TemporaryDirectory() as tmp:
        return histogram_png(histogram, Path(tmp) / "lengths.png").read_bytes()


# -- the error bars: the 95% interval of each contender's own mean ------------------------


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound near 0% and 100%, where p +- 2se is not."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values`, resampling questions."""
    import numpy as np

    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    # in chunks, so ten thousand questions never need a 2000 x 10000 index matrix at once
    means = np.concatenate([a[rng.integers(0, len(a), size=(200, len(a)))].mean(axis=1) for _ in range(resamples // 200)])
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


BOOTSTRAP = "percentile bootstrap over questions, 2,000 resamples"
WILSON = "Wilson score interval"


def score_intervals(per_item: dict[str, list[float]], scores: dict[str, float], n: int, rate: bool) -> dict[str, tuple]:
    """{contender: (score, low, high)}: a Wilson interval when the metric is a share of answers
    right (`rate`; from the score and `n` when no per-item values were kept), else a bootstrap
    of the per-item values; low and high are None when neither can be computed."""
    out = {}
    for c in dict.fromkeys([*scores, *per_item]):
        vals = per_item.get(c, [])
        score = scores.get(c, sum(vals) / len(vals) if vals else None)
        if score is None:
            continue
        lo = hi = None
        if rate and (vals or n):
            lo, hi = wilson(sum(vals), len(vals)) if vals else wilson(round(score * n), n)
        elif not rate and len(vals) > 1:
            lo, hi = bootstrap_mean(vals)
        out[c] = (score, lo, hi)
    return out
