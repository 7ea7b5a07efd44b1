"""The loss curve: training loss and held-out loss against optimiser steps.

One drawing for both places it appears: `<run>/loss.png`, written by training, and the
report, which draws it again from metrics.jsonl so the report can be rebuilt any time.
"""

from __future__ import annotations

import io
from pathlib import Path

from tunekit import atomic


def loss_curve_png(rows: list[dict]) -> bytes | None:
    """A PNG of `loss` and `valid_loss` from metrics rows; None when there is nothing to draw."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: draw straight to a PNG
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if valid:
        ax.plot(*zip(*valid), marker="o", label="held-out loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss per supervised token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_loss_png(path: Path, rows: list[dict]) -> None:
    """Write the loss curve to `path` atomically (nothing when there are no rows)."""
    png = loss_curve_png(rows)
    if png is not None:
        atomic.write_bytes(path, png)
