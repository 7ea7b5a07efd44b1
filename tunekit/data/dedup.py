"""Exact and near-duplicate detection, fast enough for 100,000 records on a laptop CPU.

Exact: a hash of the conversation after case-folding and collapsing whitespace.

Near: a 128-value MinHash-style signature per text over character 5-grams, banded
locality-sensitive hashing (LSH) for candidate pairs, then the estimated Jaccard
similarity (the share of equal signature values) checked against the threshold.
Character 5-grams rather than word shingles because support conversations are short:
one swapped word moves a 40-word text's word-trigram Jaccard to ~0.85, but its 5-gram
Jaccard stays above 0.9, so the threshold separates edits from new text.

Signatures: one-permutation hashing (OPH) with optimal densification. Classic MinHash
needs 128 hash evaluations per 5-gram (~1,000 grams x 128 x 100k texts: minutes in
numpy). OPH hashes each 5-gram once, splits the hash space into 128 bins by the top 7
bits and keeps each bin's minimum, so a whole batch is a few passes of array arithmetic
and one grouped minimum. A short text leaves bins empty; optimal densification
(Shrivastava, ICML 2017) fills an empty bin by walking a seeded order of the other bins,
the same order for every text, and copying the first non-empty one. Two values then
agree with probability exactly the Jaccard similarity, as with classic MinHash (an
unbiased estimate); bins are sampled without replacement, so the spread is no larger
than classic MinHash's sqrt(J(1-J)/128) (tests/data/test_dedup.py checks both). Each
walk is a permutation of all bins, so it always ends. A 5-gram's hash is
sum(c[i+k] * M_k) mod 2**32 over the batch's normalised code points (seeded odd M_k),
finished by murmur3's 32-bit mixer; 32 bits suffice because a rare collision only
merges two grams. A text under five characters (after normalisation) is one gram of
itself; an empty text is one gram too. A text over 256k characters is cut inside words
into overlapping pieces whose 5-grams are exactly its own and signed piece by piece
(minimum over the pieces), so a 50 MB document needs ~200 MB, not ~1.4 GB.

LSH: bands of 8 signature positions, laid out as partitions (a fixed permutation of
the 128 positions cut into 16 disjoint bands); the number of partitions m depends on
the threshold. Given which positions of a pair agree, partitions are independent, so
a pair whose estimate is exactly the threshold shares no band with probability q**m,
q from inclusion-exclusion (`_miss_probability`). We take the fewest partitions with
q**m <= 1e-4 (and fewer rows per band only where 16 partitions of 8 would not do):

    threshold  bands x rows  P(candidate | estimate = threshold)  1-(1-J**8)**bands at J = threshold
    0.70       160 x 8       0.99995                              0.99993
    0.85        32 x 8       0.9999999                            0.99996

Pairs well below the threshold are rarely candidates (160 x 8: J=0.5 -> 0.47, 0.3 ->
0.010, 0.2 -> 0.0004), which keeps the exact check of the candidates cheap.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from math import ceil, comb

import numpy as np

NUM_PERM = 128
SHINGLE = 5
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_CHARS = 1 << 18  # characters per internal pass: the work arrays stay in the CPU cache
_LONG = 1 << 18  # longer texts are signed in pieces, so memory stays bounded
_MAX_ROWS, _MAX_PARTITIONS, _MISS = 8, 16, 1e-4
_LAYOUT_SEED = 0x15A  # band layout is fixed: it must not vary with the signature seed
_WINDOW = 16  # in a huge LSH bucket, compare each member with this many before it ...
_FIRST = 16  # ... and with the bucket's first members (the likely kept representatives)
_PAIR_CHUNK = 1 << 16
_COMPACT_AT = 1 << 23  # raw candidate codes held before de-duplicating them
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

_WORD = re.compile(r"[^\W_]")  # the complement of the normalisation's [\W_]+ separator
_WORD_RUN = re.compile(r"[^\W_]{%d}" % (SHINGLE + 1))


def conversation_key(messages: list[dict]) -> str:
    """Text used for duplicate checks: roles and contents, case-folded, whitespace collapsed."""
    return "\n".join(f"{m['role']}: {' '.join(m['content'].casefold().split())}" for m in messages)


def exact_hash(messages: list[dict]) -> str:
    return hashlib.sha1(conversation_key(messages).encode("utf-8")).hexdigest()


def _separator_map() -> np.ndarray:
    """Every BMP code point mapped to itself if a word character, else to a space.

    Built with the regex itself so it cannot drift from `[\\W_]+`; one table lookup per
    character replaces both the word test and the substitution.
    """
    bmp = "".join(map(chr, range(0x10000)))
    table = np.full(0x10000, 32, dtype=np.uint32)
    words = [m.start() for m in _WORD.finditer(bmp)]
    table[words] = words
    return table


_SEPARATOR_MAP = _separator_map()


class _Scratch:
    """Work arrays reused from chunk to chunk.

    Fresh multi-megabyte numpy arrays for every chunk cost more in page faults (the
    allocator hands freed memory back to the system) than the arithmetic done on them.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype: type) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = self._bufs[name] = np.empty(max(size, 1 << 16), dtype=dtype)
        return buf[:size]


_ASCII_MAP = bytes(int(c) if c < 128 else 32 for c in _SEPARATOR_MAP[:256])  # for bytes.translate


def _mapped_code_points(texts: list[str], scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the texts case-folded, joined and separators mapped to spaces, and
    each text's length after folding."""
    joined = "".join(texts)
    folded = joined.casefold()
    if len(folded) == len(joined):
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:  # a character expanded (ß -> ss): fold one by one to know where each text ends
        parts = [t.casefold() for t in texts]
        folded = "".join(parts)
        lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    out = scratch.get("mapped", len(folded), np.uint32)
    if folded.isascii():  # bytes.translate is several times faster than a numpy lookup
        out[:] = np.frombuffer(folded.encode("ascii").translate(_ASCII_MAP), dtype=np.uint8)
        return out, lens
    cp = np.frombuffer(folded.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if not cp.size or cp.max() <= 0xFFFF:
        return np.take(_SEPARATOR_MAP, cp, out=out), lens
    np.take(_SEPARATOR_MAP, np.minimum(cp, 0xFFFF), out=out)
    astral = np.flatnonzero(cp > 0xFFFF)  # rare (emoji, old scripts): ask the regex per code point
    vals, inv = np.unique(cp[astral], return_inverse=True)
    out[astral] = np.array([v if _WORD.match(chr(v)) else 32 for v in vals], dtype=np.uint32)[inv]
    return out, lens


def _normalise(texts: list[str], scratch: _Scratch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code points of all texts after casefold, separator runs -> one space, strip.

    Returns (code points, start of each text, end of each text). The same text as
    `[\\W_]+ -> " "` then `.strip()` on each case-folded text, but done on the whole batch
    at once: a regex per text costs more than everything else together. A trailing
    space stays in the array, just past its text's end.
    """
    mapped, lens = _mapped_code_points(texts, scratch)
    word = np.not_equal(mapped, 32, out=scratch.get("word", mapped.size, np.bool_))
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    first = starts[:-1][lens > 0]
    # Keep word characters and the first character of each separator run, unless the
    # run begins a text (no leading space).
    keep = scratch.get("keep", mapped.size, np.bool_)
    keep[:] = word
    np.logical_or(keep[1:], word[:-1], out=keep[1:])
    keep[first] = word[first]
    norm = np.compress(keep, mapped, out=scratch.get("norm", int(np.count_nonzero(keep)), np.uint32))
    kept_before = np.zeros(len(texts) + 1, dtype=np.int64)
    if first.size:
        kept_before[1:][lens > 0] = np.add.reduceat(keep.view(np.uint8), first, dtype=np.int64)
        np.cumsum(kept_before, out=kept_before)
    begin, end = kept_before[:-1], kept_before[1:].copy()
    if norm.size:
        end[(end > begin) & (norm[np.maximum(end - 1, 0)] == 32)] -= 1
    return norm, begin, end


def _mix32(h: np.ndarray, tmp: np.ndarray) -> None:
    """murmur3's 32-bit finaliser, in place: every output bit depends on every input bit."""
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        np.right_shift(h, shift, out=tmp)
        h ^= tmp
        h *= np.uint32(mult)
    np.right_shift(h, 16, out=tmp)
    h ^= tmp


@lru_cache(maxsize=8)
def _params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gram multipliers, densification walks) for a seed."""
    rng = np.random.default_rng([seed, 0x5EED])
    mult = rng.integers(0, 1 << 31, size=SHINGLE + 1, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    # walk[j] is the order in which an empty bin j looks at the other bins; the same for
    # every text, which is what keeps the agreement probability equal to Jaccard.
    walk = np.stack([rng.permutation(NUM_PERM) for _ in range(NUM_PERM)])
    return mult, walk


def _gram_hashes(norm: np.ndarray, mult: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """Mixed 32-bit hash of the 5-gram starting at each position (but the last four)."""
    n = norm.size - SHINGLE + 1
    h = np.multiply(norm[:n], mult[0], out=scratch.get("hash", n, np.uint32))
    tmp = scratch.get("tmp", n, np.uint32)
    for k in range(1, SHINGLE):
        np.multiply(norm[k : k + n], mult[k], out=tmp)
        h += tmp
    _mix32(h, tmp)
    return h


def _cells(norm: np.ndarray, begin: np.ndarray, end: np.ndarray, h: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """Signature cell (text * NUM_PERM + bin) of each gram; grams that run past their
    text's end go to an extra row past the last text."""
    n, n_texts = h.size, len(begin)
    cell = scratch.get("cell", n, np.intp)
    cell[:] = 0
    np.add.at(cell, begin[1:][begin[1:] < n], 1)  # +1 where each next text starts ...
    np.cumsum(cell, out=cell)  # ... so a running sum is the owning text
    for k in range(SHINGLE - 1):
        p = end - 1 - k
        cell[p[(p >= begin) & (p < n)]] = n_texts
    gap = end[(end < np.r_[begin[1:], norm.size]) & (end < n)]  # a stripped trailing space
    cell[gap] = n_texts
    cell <<= 7
    tmp = np.right_shift(h, 32 - 7, out=scratch.get("tmp", n, np.uint32))
    cell |= tmp
    return cell


def _short_grams(norm: np.ndarray, begin: np.ndarray, end: np.ndarray, whole: np.ndarray,
                 mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text index, hash) for whole texts under five characters: each is one gram of
    itself. The length term keeps it apart from real 5-grams and makes "" seed-dependent."""
    short = np.flatnonzero((end - begin < SHINGLE) & whole)
    raw = [sum(int(c) * int(m) for c, m in zip(norm[begin[t] : end[t]], mult))
           + (int(end[t] - begin[t]) + 1) * int(mult[SHINGLE]) for t in short]
    h = np.array(raw, dtype=np.uint64).astype(np.uint32) if raw else np.empty(0, dtype=np.uint32)
    _mix32(h, np.empty_like(h))
    return short, h


def _sketch(texts: list[str], whole: np.ndarray, mult: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """Each bin's minimum gram hash per text, _EMPTY where a bin got no gram."""
    norm, begin, end = _normalise(texts, scratch)
    sig = np.full((len(texts) + 1, NUM_PERM), _EMPTY, dtype=np.uint32)  # last row: discarded grams
    if norm.size >= SHINGLE:
        h = _gram_hashes(norm, mult, scratch)
        np.minimum.at(sig.reshape(-1), _cells(norm, begin, end, h, scratch), h)
    short, g = _short_grams(norm, begin, end, whole, mult)
    sig[short, g >> (32 - 7)] = g
    return sig[:-1]


def _split_long(text: str) -> list[str]:
    """A long text (case-folded) cut into pieces whose 5-gram sets together are the
    text's: each cut falls inside a word, after at least five word characters, and the
    next piece starts four of them back, so normalising the pieces gives slices of the
    normalised text and every 5-gram lies wholly in one piece."""
    text = text.casefold()
    pieces, start = [], 0
    while len(text) - start > _LONG:
        m = _WORD_RUN.search(text, start + _LONG // 2)
        if m is None:
            break
        cut = m.start() + SHINGLE
        pieces.append(text[start:cut])
        start = cut - (SHINGLE - 1)
    return pieces + [text[start:]]


def _pieces(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The texts with long ones split (bounding memory), the index of each text's first
    piece, and whether each piece is a whole text."""
    pieces, first, whole = [], np.empty(len(texts), dtype=np.intp), []
    for i, text in enumerate(texts):
        first[i] = len(pieces)
        parts = _split_long(text) if len(text) > _LONG else [text]
        pieces += parts
        whole += [len(parts) == 1] * len(parts)
    return pieces, first, np.array(whole, dtype=bool)


def _densify(sig: np.ndarray, filled: np.ndarray, walk: np.ndarray) -> None:
    """Fill every empty bin from the first non-empty bin on its walk (in place)."""
    rows, bins = np.nonzero(~filled)
    for step in range(NUM_PERM):
        if not rows.size:
            return
        src = walk[bins, step]
        ok = filled[rows, src]
        sig[rows[ok], bins[ok]] = sig[rows[ok], src[ok]]
        rows, bins = rows[~ok], bins[~ok]
    assert not rows.size, "every text has at least one gram, so a walk over all bins ends"


def signatures(texts: list[str], seed: int = 0) -> np.ndarray:
    """(len(texts), NUM_PERM) uint32 signatures; equal values estimate Jaccard over 5-grams.

    Vectorised over the batch (call it on a few thousand texts at a time and stack the
    results); the same text and seed give the same signature in any batch.
    """
    mult, walk = _params(seed)
    pieces, first, whole = _pieces(texts)
    sig = np.empty((len(pieces), NUM_PERM), dtype=np.uint32)
    scratch, lo, size = _Scratch(), 0, 0
    for i, piece in enumerate(pieces):  # chunks of about _CHUNK_CHARS: the work arrays stay in cache
        size += len(piece)
        if size >= _CHUNK_CHARS or i + 1 == len(pieces):
            sig[lo : i + 1] = _sketch(pieces[lo : i + 1], whole[lo : i + 1], mult, scratch)
            lo, size = i + 1, 0
    if len(pieces) > len(texts):
        sig = np.minimum.reduceat(sig, first, axis=0)  # a split text: the minimum over its pieces
    _densify(sig, sig != _EMPTY, walk)
    return sig


def _miss_probability(disagree: int, rows: int) -> float:
    """Chance that every band of one partition holds a disagreeing position.

    Inclusion-exclusion over the bands left free of the `disagree` positions (placed at
    random among NUM_PERM); a pair with that many disagreements is missed by one partition
    with this probability, and by m independent partitions with its m-th power.
    """
    bands = NUM_PERM // rows
    free = sum((-1) ** j * comb(bands, j) * comb(NUM_PERM - rows * j, disagree) for j in range(bands + 1))
    return max(0.0, free / comb(NUM_PERM, disagree))


@lru_cache(maxsize=16)
def _band_layout(threshold: float) -> tuple[np.ndarray, ...]:
    """Bands (arrays of signature positions) that make a pair at the threshold a candidate
    with probability >= 1 - _MISS: the most rows per band that reach it in few partitions."""
    disagree = NUM_PERM - ceil(threshold * NUM_PERM - 1e-9)
    for rows in range(_MAX_ROWS, 0, -1):
        q = _miss_probability(disagree, rows)
        parts = next((m for m in range(1, _MAX_PARTITIONS + 1) if q**m <= _MISS), None)
        if parts is not None:
            break
    else:  # only a threshold of 0 gets here: every pair is similar, use every band we may
        parts = _MAX_PARTITIONS
    rng = np.random.default_rng(_LAYOUT_SEED)
    bands = []
    for _ in range(parts):
        perm = rng.permutation(NUM_PERM)
        bands += [perm[i * rows : (i + 1) * rows] for i in range(NUM_PERM // rows)]
    return tuple(bands)


def _bucket_pairs(key: np.ndarray) -> np.ndarray:
    """Pairs (lo, hi) of indices with equal keys; a huge bucket gets a window, not all pairs."""
    n = len(key)
    bits = max(1, (n - 1).bit_length())
    # Sorting key-with-index is much faster than argsort; the index bits replace the key's
    # low bits, so a rare collision of the rest only adds a candidate the check rejects.
    packed = np.sort((key >> np.uint64(bits) << np.uint64(bits)) | np.arange(n, dtype=np.uint64))
    high = packed >> np.uint64(bits)
    same = np.flatnonzero(high[1:] == high[:-1])  # sorted[i] and sorted[i + 1] share a bucket
    if not same.size:
        return np.empty((0, 2), dtype=np.int64)
    # Buckets are runs of consecutive `same` positions; from here on only their members.
    new = np.r_[True, np.diff(same) != 1]
    size = np.diff(np.r_[np.flatnonzero(new), same.size]) + 1
    first = np.repeat(np.cumsum(size) - size, size)  # index (in `ids`) of each bucket's first member
    rank = np.arange(first.size) - first
    ids = (packed[np.repeat(same[new], size) + rank] & np.uint64((1 << bits) - 1)).astype(np.int64)
    last = first + np.repeat(size, size) - 1
    out = []
    for d in range(1, min(_WINDOW, int(size.max()) - 1) + 1):  # members are in index order
        j = np.flatnonzero(rank + d <= last - first)
        out.append(np.stack([ids[j], ids[j + d]], axis=1))
    late = np.flatnonzero(rank > _WINDOW)
    for f in range(_FIRST):  # beyond the window: also the bucket's first members
        out.append(np.stack([ids[first[late] + f], ids[late]], axis=1))
    return np.concatenate(out)


def _candidate_pairs(sigs: np.ndarray, threshold: float) -> np.ndarray:
    """Unique (lo, hi) index pairs, lo < hi, that share at least one LSH band."""
    n = len(sigs)
    columns = np.ascontiguousarray(sigs.T)
    parts, pending = [np.empty(0, dtype=np.int64)], 0
    for band in _band_layout(threshold):
        key = np.zeros(n, dtype=np.uint64)
        for pos in band:
            key ^= columns[pos]
            key *= _GOLDEN
        pairs = _bucket_pairs(key)
        parts.append(pairs[:, 0] * n + pairs[:, 1])
        pending += len(pairs)
        if pending > _COMPACT_AT:  # the same pair recurs in many bands; keep memory bounded
            parts, pending = [np.unique(np.concatenate(parts))], 0
    codes = np.unique(np.concatenate(parts))
    return np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)


def _similarity(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard (share of equal signature values) of each pair, in chunks."""
    sims = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), _PAIR_CHUNK):
        a, b = pairs[lo : lo + _PAIR_CHUNK].T
        sims[lo : lo + _PAIR_CHUNK] = np.count_nonzero(sigs[a] == sigs[b], axis=1) / NUM_PERM
    return sims


def _identical_rows(sigs: np.ndarray) -> np.ndarray:
    """rep[i] = the first index whose signature equals row i's (i itself when none earlier).

    Collapsing these first keeps LSH buckets small when many texts differ only in
    punctuation or case; they are trivially similar (estimate 1.0).
    """
    n = len(sigs)
    weights = np.random.default_rng(_LAYOUT_SEED).integers(0, 1 << 63, NUM_PERM // 2, dtype=np.uint64) | np.uint64(1)
    words = sigs.view(np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    for lo in range(0, n, _PAIR_CHUNK):  # a linear hash per row: equal rows collide, others almost never
        h[lo : lo + _PAIR_CHUNK] = (words[lo : lo + _PAIR_CHUNK] * weights).sum(axis=1)
    packed = np.sort(h)
    dup_hash = np.unique(packed[1:][packed[1:] == packed[:-1]])
    rep = np.arange(n)
    maybe = np.flatnonzero(np.isin(h, dup_hash))  # rows sharing a hash with another row
    if maybe.size:
        order = maybe[np.argsort(h[maybe], kind="stable")]
        start = np.r_[True, h[order][1:] != h[order][:-1]]
        rep[order] = order[np.flatnonzero(start)][np.cumsum(start) - 1]
        copies = maybe[rep[maybe] != maybe]  # a hash collision must not merge different rows
        differs = ~(sigs[rep[copies]] == sigs[copies]).all(axis=1)
        rep[copies[differs]] = copies[differs]
    return rep


def _similar_pairs(sigs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rep, pairs, sims): identical-row representatives, and verified pairs among them."""
    sigs = np.ascontiguousarray(sigs, dtype=np.uint32)
    assert sigs.ndim == 2 and sigs.shape[1] == NUM_PERM, "expected signatures() output"
    rep = _identical_rows(sigs)
    uniq = np.flatnonzero(rep == np.arange(len(sigs)))
    sub = sigs[uniq] if uniq.size < len(sigs) else sigs
    pairs = _candidate_pairs(sub, threshold)
    sims = _similarity(sub, pairs)
    hit = sims >= threshold
    return rep, uniq[pairs[hit]].reshape(-1, 2), sims[hit]


def find_near_duplicates(sigs: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Map index -> (earlier kept index it nearly duplicates, estimated Jaccard).

    Records are taken in order; one whose estimate with an earlier *kept* record reaches
    the threshold is a duplicate of the most similar such record (the earliest on ties).
    A duplicate never represents a cluster, so in a chain a ~ b ~ c, c is kept unless
    it resembles a itself.
    """
    rep, pairs, sims = _similar_pairs(sigs, threshold)
    earlier: dict[int, list[tuple[float, int]]] = {}
    for (lo, hi), s in zip(pairs.tolist(), sims.tolist()):
        earlier.setdefault(hi, []).append((s, -lo))
    copies = np.flatnonzero(rep != np.arange(len(rep))).tolist()
    dup: dict[int, tuple[int, float]] = {}
    for i in sorted(set(earlier) | set(copies)):
        r = int(rep[i])
        if r != i:  # same signature as an earlier record: the same verdict, estimate 1.0
            dup[i] = dup.get(r, (r, 1.0))
            continue
        kept = [c for c in earlier[i] if -c[1] not in dup]
        if kept:
            s, neg_lo = max(kept)
            dup[i] = (-neg_lo, s)
    return dup


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component labels (0..k-1, in order of each component's smallest member).

    Vectorised union-find: hook every larger root under the smaller one, then
    pointer-jump until each node points at its root; repeat while an edge spans two roots.
    """
    parent = np.arange(n)
    a, b = edges[:, 0], edges[:, 1]
    while True:
        pa, pb = parent[a], parent[b]
        split = pa != pb
        if not split.any():
            break
        np.minimum.at(parent, np.maximum(pa, pb)[split], np.minimum(pa, pb)[split])
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return np.unique(parent, return_inverse=True)[1].reshape(-1)


def similar_groups(sigs: np.ndarray, threshold: float) -> np.ndarray:
    """Group id per record: records whose estimated Jaccard >= threshold share a group,
    transitively (union-find over verified LSH candidates). Ids count up from 0 in the
    order of each group's first record."""
    rep, pairs, _ = _similar_pairs(sigs, threshold)
    copies = np.flatnonzero(rep != np.arange(len(rep)))
    edges = np.concatenate([pairs, np.stack([copies, rep[copies]], axis=1)])
    return _components(len(rep), edges)
