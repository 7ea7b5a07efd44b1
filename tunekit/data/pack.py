"""Pack a micro-batch's examples into rows of `max_length` tokens, each example isolated.

Padding a batch to its longest example wastes compute on pad tokens; packing puts
several examples end to end in one row instead. For the result to train the same model,
an example must not see the others in its row, and its positions must start at 0:

- position_ids restart at 0 at every example;
- the attention mask is block-diagonal and causal: a token attends only to earlier
  tokens of its own example.

Restarting positions alone is not enough: with a 2D padding mask, transformers builds a
plain causal mask over the whole row and every example attends to the ones before it.
A 4D mask is handed to the attention function untouched (masking_utils returns any
4D mask as is), so we build it here, as booleans (True = may attend); the loss turns it
into the additive float mask of the model's dtype that both the SDPA and eager
attention functions accept.
"""

from __future__ import annotations

import torch

from tunekit.data.batches import Batch
from tunekit.data.template import IGNORE, Tokenized
from tunekit.errors import DataError


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= `capacity`.

    Longest first, each into the open bin it fills most tightly (the earliest on a tie),
    a new bin when none fits. Deterministic: equal lengths keep their input order.
    """
    over = [(i, n) for i, n in enumerate(lengths) if n > capacity]
    if over:
        i, n = over[0]
        raise DataError(f"an example of {n} tokens (item {i}) does not fit in a packed row of data.max_length={capacity}; "
                        "raise data.max_length or rerun prepare with the current max_length so long records are dropped")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda k: free[k])  # min keeps the first of equals
            bins[b].append(i)
            free[b] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def collate_packed(examples: list[Tokenized], indices: list[int], max_length: int, pad_id: int) -> Batch:
    """The examples `indices` packed best-fit-decreasing into rows of at most `max_length`.

    The batch is (rows, longest row). attention_mask is a (rows, 1, T, T) bool block mask;
    position_ids restart at each example; the first label of every example is IGNORE so
    the last token of the example before it is never trained to predict it.
    """
    lengths = [len(examples[i].input_ids) for i in indices]
    rows = [[indices[k] for k in row] for row in best_fit_decreasing(lengths, max_length)]
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    # Which example of its row each token belongs to; -1 for padding at the row's end.
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    distill = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for k, i in enumerate(row):
            ex = examples[i]
            n = len(ex.input_ids)
            ids[r, start : start + n] = torch.tensor(ex.input_ids)
            labels[r, start : start + n] = torch.tensor(ex.labels)
            labels[r, start] = IGNORE
            positions[r, start : start + n] = torch.arange(n)
            segment[r, start : start + n] = k
            distill[r, start : start + n] = ex.distill
            start += n
    return Batch(ids, block_causal_mask(segment), labels, sum(lengths), positions, distill if distill.any() else None)


def block_causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query t may attend key s iff s <= t and both are in the same segment.

    Padding (segment -1) forms one more block of its own, so every query row, padding
    included, can attend at least itself: no row is fully masked, and so no softmax
    over nothing turns into NaN that would poison the gradients.
    """
    t = segment.shape[1]
    causal = torch.ones((t, t), dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    return (same & causal)[:, None]
