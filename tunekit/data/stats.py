"""Token statistics shared by prepare and inspect: counts, percentiles, histograms."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BINS = 40


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Token count of each text, batched on the Rust tokenizer (both cores, no id lists)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def percentiles(values: Sequence[int]) -> dict:
    """count, p50/p90/p99 (nearest rank), max and mean of a list of counts."""
    if len(values) == 0:
        return {"count": 0}
    s = np.sort(np.asarray(values))
    pick = lambda q: int(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))])  # noqa: E731
    return {"count": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": int(s[-1]),
            "mean": round(float(s.mean()), 1)}


def length_histogram(lengths: Sequence[int], max_length: int = 0, bins: int = BINS) -> dict:
    """Counts of lengths in `bins` equal integer-width bins from 0 to a little past
    max(p99, max_length); longer outliers are counted in `overflow`, so one 50,000-token
    record does not squeeze every other example into the first bin."""
    arr = np.asarray(lengths, dtype=np.int64)
    cut = max(percentiles(arr).get("p99", 0), max_length, 1)
    width = math.ceil(cut * 1.1 / bins)
    edges = list(range(0, width * (bins + 1), width))
    counts = np.histogram(arr[arr <= edges[-1]], bins=edges)[0].tolist()
    return {"edges": edges, "counts": counts, "overflow": int((arr > edges[-1]).sum()),
            "longest": int(arr.max()) if arr.size else 0, "max_length": max_length}
