"""The prepare stage: raw data -> validated, cleaned, deduplicated, split records.

Writes into `<run>/data/`: train.jsonl, valid.jsonl, eval.jsonl (held-out questions, when
configured), rejects.jsonl (every dropped row with its file, line, reason and what to fix)
and data_report.json (every count). Raises DataError before training when the share of
invalid records exceeds `data.max_reject_fraction`, so bad data never trains silently.

It streams: pass 1 reads, validates, cleans, drops exact duplicates, measures tokens and
computes MinHash signatures batch by batch, spooling kept records to disk; only small
per-record facts (line, tokens, signature) stay in memory. Pass 2 finds near duplicates
and similarity groups on the signatures, splits, and copies the spool to train/valid.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunekit import atomic
from tunekit.config import Config
from tunekit.data import dedup
from tunekit.data.documents import chunk_document, tokenize_text
from tunekit.data.records import DUPLICATE_REASONS, Cleaner, Record, Reject, iter_records, load_records
from tunekit.data.split import split_groups
from tunekit.data.stats import length_histogram, percentiles
from tunekit.data.template import render, rendered_lengths
from tunekit.errors import DataError

BATCH = 2048
CHARS_PER_TOKEN_MAX = 32
"""A text this many characters per token of max_length is over-long without tokenising it
(tokens of real text average 3-5 characters), so a 50 MB line costs no tokeniser time."""


@dataclass
class Kept:
    """What pass 2 needs of each kept unit (a conversation, or a whole document)."""

    lines: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    sigs: list[np.ndarray] = field(default_factory=list)
    row_tokens: list[int] = field(default_factory=list)


class _Pass1:
    def __init__(self, cfg: Config, tokenizer, spool, rejects):
        self.cfg, self.tok, self.spool, self.rejects = cfg, tokenizer, spool, rejects
        self.kept = Kept()
        self.reasons: Counter = Counter()
        self.actions: Counter = Counter()
        self.first: dict[str, tuple[str, int]] = {}
        self.dups: list[tuple[Reject, tuple[str, int]]] = []
        self.documents = self.chunks = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.inflight = None

    def reject(self, r: Reject) -> None:
        self.reasons[r.reason] += 1
        self.rejects.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")

    def add(self, rec: Record, pending: list[Record]) -> None:
        if self.cfg.data.dedup:
            h = dedup.exact_hash(rec.messages if rec.text is None else [{"role": "document", "content": rec.text}])
            if h in self.first:
                src, line = self.first[h]
                where = f"line {line}" if src == rec.source else f"{src} line {line}"
                dup = Reject(rec.line, rec.source, "exact_duplicate", f"same as {where} after normalising case and spaces", rec.row())
                self.reasons["exact_duplicate"] += 1
                self.dups.append((dup, (src, line)))  # written in pass 2, when we know if the original stayed
                return
            self.first[h] = (rec.source, rec.line)
        pending.append(rec)

    def flush(self, pending: list[Record]) -> None:
        """Start tokenising a batch on the worker thread, then finish the batch before it.

        The Rust tokenizer releases the GIL, so batch k is tokenised while this thread
        filters, signs and spools batch k-1 and reads batch k+1.
        """
        chats = [r for r in pending if r.text is None]
        limit = self.cfg.data.max_length * CHARS_PER_TOKEN_MAX
        texts = [render(self.tok, r.messages) for r in chats]
        short = [i for i, t in enumerate(texts) if len(t) <= limit]
        future = self.pool.submit(rendered_lengths, self.tok, [texts[i] for i in short])
        self.finish()
        self.inflight = (pending, chats, short, future)

    def finish(self) -> None:
        """Length-filter, sign and spool the batch in flight, if any."""
        if self.inflight is None:
            return
        pending, chats, short, future = self.inflight
        self.inflight = None
        lengths: list[int | None] = [None] * len(chats)  # None: far longer than max_length
        for i, n in zip(short, future.result()):
            lengths[i] = n
        units: list[tuple[Record, list[dict], list[int]]] = []
        for rec, n in zip(chats, lengths):
            rec, n = self._fit(rec, n)
            if rec is not None:
                units.append((rec, [rec.row()], [n]))
        for rec in (r for r in pending if r.text is not None):
            rows = chunk_document(self.tok, rec.text, self.cfg.data.max_length, self.cfg.data.chunk_overlap)
            lengths = [len(tokenize_text(self.tok, **r).input_ids) for r in rows]  # as training will see them
            self.documents += 1
            self.chunks += len(rows)
            units.append((rec, [{**rec.extra, **r} for r in rows], lengths))
        if not units:
            return
        units.sort(key=lambda u: (u[0].source, u[0].line))  # keep file order in the spool
        keys = [dedup.conversation_key(r.messages) if r.text is None else r.text for r, _, _ in units]
        self.kept.sigs.append(dedup.signatures(keys, self.cfg.seed))
        for rec, rows, lengths in units:
            u = len(self.kept.lines)
            self.kept.lines.append(rec.line)
            self.kept.sources.append(rec.source)
            self.kept.row_tokens.extend(lengths)
            for row in rows:
                self.spool.write(json.dumps({"u": u, "row": row}, ensure_ascii=False) + "\n")

    def _fit(self, rec: Record, n: int | None) -> tuple[Record | None, int]:
        """Apply data.over_length to a conversation of n tokens (None: far too long)."""
        limit = self.cfg.data.max_length
        if n is not None and n <= limit:
            return rec, n
        if self.cfg.data.over_length == "truncate_history":
            msgs, dropped = list(rec.messages), 0
            head = 1 if msgs[0]["role"] == "system" else 0
            while n is None or n > limit:
                if len(msgs) - head <= 2:
                    break
                del msgs[head : head + 2]  # the oldest user/assistant exchange
                dropped += 1
                text = render(self.tok, msgs)
                n = rendered_lengths(self.tok, [text])[0] if len(text) <= limit * CHARS_PER_TOKEN_MAX else None
            if n is not None and n <= limit:
                self.actions["history_truncated"] += 1
                self.actions["exchanges_dropped"] += dropped
                return Record(msgs, rec.line, rec.source, rec.extra), n
        size = f"{n} tokens" if n is not None else f"{sum(len(m['content']) for m in rec.messages)} characters"
        if self.cfg.data.over_length == "drop":
            detail = f"{size} > data.max_length {limit}; shorten it, raise data.max_length, or set data.over_length: truncate_history"
        else:
            detail = f"{size} > data.max_length {limit} even after dropping older turns; shorten its last exchange or raise data.max_length"
        self.reject(Reject(rec.line, rec.source, "over_long", detail, rec.row()))
        return None, 0


def prepare(cfg: Config, data_dir: str | Path, tokenizer) -> dict:
    """Run the prepare stage; returns the data report (also written to data_report.json)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    clean = Cleaner(tuple(cfg.data.mask_pii))
    notes: list[str] = []
    formats: Counter = Counter()
    spool_path = data_dir / ".spool.jsonl"
    p1 = None
    try:
        with atomic.open_write(data_dir / "rejects.jsonl") as rej, open(spool_path, "w", encoding="utf-8") as spool:
            p1 = _Pass1(cfg, tokenizer, spool, rej)
            total, pending = 0, []
            for item in iter_records(cfg.data.train, cfg.data.format, cfg.data.columns, clean, notes, formats):
                total += 1
                if isinstance(item, Reject):
                    p1.reject(item)
                    continue
                p1.add(item, pending)
                if len(pending) >= BATCH:
                    p1.flush(pending)
                    pending = []
            p1.flush(pending)
            p1.finish()
            if total == 0:
                raise DataError(f"{cfg.data.train} contains no records")
            spool.close()
            report = _pass2(cfg, data_dir, p1, spool_path)
    finally:
        spool_path.unlink(missing_ok=True)
        if p1 is not None:
            p1.pool.shutdown(cancel_futures=True)

    invalid = sum(n for r, n in p1.reasons.items() if r not in DUPLICATE_REASONS)
    report = {
        "source": cfg.data.train,
        "formats": dict(formats.most_common()),
        "notes": notes,
        "lines_read": total,
        "kept": report.pop("kept"),
        **report,
        "rejected": sum(p1.reasons.values()),
        "rejected_invalid": invalid,
        "rejects_by_reason": dict(sorted(p1.reasons.items())),
        "cleaning": dict(sorted((clean.counts + p1.actions).items())),
        "tokens": {"per_row": percentiles(p1.kept.row_tokens), "total": int(sum(p1.kept.row_tokens)),
                   "histogram": length_histogram(p1.kept.row_tokens, cfg.data.max_length)},  # drawn by the report
    }
    if p1.documents:
        report["documents"] = {"documents": p1.documents, "chunks": p1.chunks, "overlap_tokens": cfg.data.chunk_overlap}
    if len([f for f in formats if f != "unreadable"]) > 1:
        notes.append(f"mixed formats in one dataset: {dict(formats)}; is that intended?")
    if cfg.data.eval:
        report["eval"] = _prepare_eval(cfg, data_dir)
    atomic.write_json(data_dir / "data_report.json", report)

    # Duplicates are expected housekeeping; malformed or unusable records mean the data
    # is not what the user thinks it is.
    share = invalid / total
    if share > cfg.data.max_reject_fraction:
        raise DataError(
            f"{invalid} of {total} records ({share:.0%}) in {cfg.data.train} were rejected as invalid, "
            f"more than data.max_reject_fraction={cfg.data.max_reject_fraction:.0%}. "
            f"Reasons: {dict(p1.reasons)}. See {data_dir / 'rejects.jsonl'} for each line and why; "
            "fix the data or raise data.max_reject_fraction."
        )
    if not report["train"]:
        raise DataError(f"no training records left after preparation of {cfg.data.train}; see {data_dir / 'rejects.jsonl'}")
    return report


def _pass2(cfg: Config, data_dir: Path, p1: _Pass1, spool_path: Path) -> dict:
    kept = p1.kept
    n = len(kept.lines)
    sigs = np.concatenate(kept.sigs) if kept.sigs else np.zeros((0, dedup.NUM_PERM), dtype=np.uint64)
    near = dedup.find_near_duplicates(sigs, cfg.data.near_dup_threshold) if cfg.data.dedup and cfg.data.near_dup_threshold < 1 else {}
    alive = np.ones(n, dtype=bool)
    gone: dict[tuple[str, int], int] = {}
    near_rejects: dict[int, Reject] = {}
    for i, (j, sim) in sorted(near.items()):
        alive[i] = False
        gone[(kept.sources[i], kept.lines[i])] = kept.lines[j]
        detail = f"near duplicate of line {kept.lines[j]} (estimated Jaccard {sim:.2f} >= data.near_dup_threshold {cfg.data.near_dup_threshold})"
        near_rejects[i] = Reject(kept.lines[i], kept.sources[i], "near_duplicate", detail, None)
    if near_rejects:
        p1.reasons["near_duplicate"] += len(near_rejects)
    for dup, original in p1.dups:
        if original in gone:
            dup.detail += f" (itself a near duplicate of line {gone[original]}, which is kept)"
        p1.rejects.write(json.dumps(dup.to_json(), ensure_ascii=False) + "\n")

    idx = np.flatnonzero(alive)
    groups = np.full(n, -1, dtype=np.int64)
    groups[idx] = dedup.similar_groups(sigs[idx], cfg.data.split_similarity) if len(idx) else []
    valid_sub, split_stats = split_groups(groups[idx], cfg.data.valid_fraction, cfg.seed)
    valid = np.zeros(n, dtype=bool)
    valid[idx] = valid_sub

    counts = {"train": 0, "valid": 0}
    with atomic.open_write(data_dir / "train.jsonl") as tr, atomic.open_write(data_dir / "valid.jsonl") as va, \
            open(spool_path, encoding="utf-8") as spool:
        for line in spool:
            item = json.loads(line)
            u = item["u"]
            if u in near_rejects:  # rejects.jsonl keeps the record itself, read back from the spool
                near_rejects[u].raw = item["row"]
                continue
            side = "valid" if valid[u] else "train"
            (va if valid[u] else tr).write(json.dumps(item["row"], ensure_ascii=False) + "\n")
            counts[side] += 1
    for r in near_rejects.values():
        p1.rejects.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    return {
        "kept": int(alive.sum()),
        "train": counts["train"],
        "valid": counts["valid"],
        "dedup": {"exact_duplicates": len(p1.dups), "near_duplicates": len(near_rejects), "near_dup_threshold": cfg.data.near_dup_threshold},
        "split": {"similarity": cfg.data.split_similarity, **split_stats},
    }


def _prepare_eval(cfg: Config, data_dir: Path) -> dict:
    items, rejects = load_records(cfg.data.eval, need_assistant=False)
    if rejects:
        first = rejects[0]
        raise DataError(
            f"{len(rejects)} held-out item(s) in {cfg.data.eval} are invalid; first at line {first.line}: "
            f"{first.reason}: {first.detail}"
        )
    # A held-out question that also sits in the training data measures memory, not learning.
    train_turns = set()
    with open(data_dir / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            for m in json.loads(line).get("messages", []):
                if m["role"] == "user":
                    train_turns.add(" ".join(m["content"].casefold().split()))
    leaked = [it.line for it in items if " ".join(it.messages[-1]["content"].casefold().split()) in train_turns]
    atomic.write_jsonl(data_dir / "eval.jsonl", (it.row() for it in items))
    return {"source": cfg.data.eval, "items": len(items), "leaked_into_train": len(leaked), "leaked_lines": leaked[:20]}
