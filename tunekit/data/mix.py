"""Dataset mixing (`data.mix`): how many rows each source gives to train and valid, and in
what order train.jsonl holds them.

Plain functions over arrays of row ids (a row's position in prepare's spool); prepare
reads and writes the rows themselves. The first source is the anchor: every one of its
training rows is used once. Source i gets round(anchor_rows * weight_i / weight_anchor)
training rows, a seeded subsample without replacement when it has more, every row plus
seeded repeats when it has fewer. Its validation rows are kept at the same ratio
(subsampled, never repeated: a repeated validation row measures nothing new), so a large
general set does not swamp valid.jsonl. One source (data.train) is the anchor alone:
every row once, in file order, exactly as without mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MixPlan:
    train: np.ndarray
    """Row ids in train.jsonl order (a repeated row appears more than once)."""
    valid: np.ndarray
    """Row ids kept for valid.jsonl, in file order."""
    per_source: list[dict]
    """Per source: train, valid, repeated, unused (train rows left out), valid_unused, share (of train rows)."""


def targets(n_train: list[int], weights: list[float]) -> list[int]:
    """Training rows each source contributes; the anchor (first) all of its own."""
    anchor = n_train[0]
    return [anchor] + [round(anchor * w / weights[0]) for w in weights[1:]]


def choose(rows: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """`target` of `rows`: a sorted subsample when there are more, else every row
    (whole copies while the target allows) plus a sorted sample of the remainder."""
    if target <= len(rows):
        return rows if target == len(rows) else np.sort(rng.choice(rows, target, replace=False))
    if not len(rows):
        return rows
    copies, extra = divmod(target, len(rows))
    return np.concatenate([np.tile(rows, copies), np.sort(rng.choice(rows, extra, replace=False))])


def interleave(counts: list[int]) -> np.ndarray:
    """Source index for each train.jsonl slot: smooth weighted round-robin.

    The j-th row of a source with c rows goes to position (j + 1/2) / c of the file, so
    every source is spread evenly and any prefix holds each source in proportion to c
    (within one row). Ties go to the earlier source, so the order is fully determined.
    """
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c] or [np.zeros(0)])
    src = np.concatenate([np.full(c, i) for i, c in enumerate(counts) if c] or [np.zeros(0, dtype=np.int64)])
    return src[np.argsort(keys, kind="stable")]


def plan(train_rows: list[np.ndarray], valid_rows: list[np.ndarray], weights: list[float], seed: int) -> MixPlan:
    """Which rows go to train (and in what order) and to valid, for sources in config order."""
    want = targets([len(r) for r in train_rows], weights)
    chosen, kept_valid, per = [], [], []
    for i, (tr, va, t) in enumerate(zip(train_rows, valid_rows, want)):
        rng = np.random.default_rng([seed, i])  # a stream per source: adding a source leaves the others' draws alone
        chosen.append(choose(tr, t, rng))
        ratio = min(1.0, t / len(tr)) if len(tr) else 1.0
        kept_valid.append(choose(va, round(len(va) * ratio), rng))
        per.append({"train": len(chosen[-1]), "valid": len(kept_valid[-1]),
                    "repeated": max(0, len(chosen[-1]) - len(tr)), "unused": max(0, len(tr) - len(chosen[-1])),
                    "valid_unused": len(va) - len(kept_valid[-1])})
    total = sum(p["train"] for p in per)
    for p in per:
        p["share"] = round(p["train"] / total, 4) if total else 0.0
    order = interleave([len(c) for c in chosen])
    train = np.empty(len(order), dtype=np.int64)
    for i, c in enumerate(chosen):
        train[order == i] = c  # the source's rows fill its slots in their own order
    valid = np.sort(np.concatenate(kept_valid)) if kept_valid else np.zeros(0, dtype=np.int64)
    return MixPlan(train, valid, per)
