"""Exact and near-duplicate detection.

Exact: a hash of the conversation after case-folding and collapsing whitespace.
Near: MinHash signatures over character 5-grams with locality-sensitive hashing
(bands x rows), then the estimated Jaccard similarity checked against the threshold.
Character n-grams rather than word shingles because support conversations are short:
one swapped word moves a 40-word text's word-trigram Jaccard to ~0.85, but its
5-gram Jaccard stays above 0.9, so the threshold separates edits from new text.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)
_PRIME = (1 << 61) - 1
NUM_PERM = 128
BANDS, ROWS = 16, 8  # candidates from Jaccard ~0.7 up; the estimate decides


def conversation_key(messages: list[dict]) -> str:
    """Text used for duplicate checks: roles and contents, case-folded, whitespace collapsed."""
    return "\n".join(f"{m['role']}: {' '.join(m['content'].casefold().split())}" for m in messages)


def exact_hash(messages: list[dict]) -> str:
    return hashlib.sha1(conversation_key(messages).encode("utf-8")).hexdigest()


def _shingles(text: str, n: int = 5) -> np.ndarray:
    text = _PUNCT_WS.sub(" ", text.casefold()).strip()
    if len(text) <= n:
        grams = {text}
    else:
        grams = {text[i : i + n] for i in range(len(text) - n + 1)}
    return np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint64)


class MinHasher:
    """Seeded MinHash over 5-gram hashes with NUM_PERM universal hash functions."""

    def __init__(self, seed: int = 0, num_perm: int = NUM_PERM):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        h = _shingles(text)[:, None]
        # (a*h + b) mod p with wrap-around uint64 arithmetic is a fine hash family here:
        # we need well-mixed minima, not exact modular arithmetic.
        return ((h * self.a + self.b) % np.uint64(_PRIME)).min(axis=0)


def find_near_duplicates(texts: list[str], threshold: float, seed: int = 0) -> dict[int, tuple[int, float]]:
    """Map index -> (index of the earlier text it nearly duplicates, estimated Jaccard)."""
    hasher = MinHasher(seed)
    sigs = [hasher.signature(t) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = {}
    dup: dict[int, tuple[int, float]] = {}
    for i, sig in enumerate(sigs):
        best: tuple[int, float] | None = None
        seen: set[int] = set()
        for band in range(BANDS):
            key = (band, sig[band * ROWS : (band + 1) * ROWS].tobytes())
            for j in buckets.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                sim = float((sigs[j] == sig).mean())
                if sim >= threshold and (best is None or sim > best[1]):
                    best = (j, sim)
        if best is not None:
            dup[i] = best
            continue  # a duplicate never becomes the representative of a cluster
        for band in range(BANDS):
            buckets.setdefault((band, sig[band * ROWS : (band + 1) * ROWS].tobytes()), []).append(i)
    return dup
