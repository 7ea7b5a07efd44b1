"""Deterministic train/valid split that keeps similar records on one side.

A validation record with a near twin in training measures memory, not learning. Records
are grouped by similarity (MinHash, `data.split_similarity`) and a group never straddles
the split: after a seeded random split, validation records whose group also has training
members move to training, and the validation set is topped up with whole groups that sit
entirely in training. The report counts both moves.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np


def split_groups(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, dict]:
    """(bool array: True = validation, stats) for records with the given group ids."""
    n = len(groups)
    valid = np.zeros(n, dtype=bool)
    if fraction <= 0 or n == 0:
        return valid, {"moved_to_train": 0, "topped_up": 0, "groups_spanning_split": 0}
    target = round(n * fraction)
    if n >= 20:
        target = max(target, 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    valid[order[:target]] = True

    members = defaultdict(list)
    for i, g in enumerate(groups.tolist()):
        members[g].append(i)
    spanning = [g for g, idx in members.items() if len(idx) > 1 and 0 < valid[idx].sum() < len(idx)]
    moved = 0
    for g in spanning:
        idx = members[g]
        moved += int(valid[idx].sum())
        valid[idx] = False

    topped, have = 0, int(valid.sum())
    for i in order:  # same seeded order, so the top-up is deterministic too
        if have >= target:
            break
        idx = members[int(groups[i])]
        if not valid[i] and len(idx) <= target - have and not valid[idx].any():
            valid[idx] = True
            topped += len(idx)
            have += len(idx)
    return valid, {"moved_to_train": moved, "topped_up": topped, "groups_spanning_split": len(spanning)}
