"""The prepare stage: raw data -> validated, cleaned, deduplicated, split records.

Writes into `<run>/data/`: train.jsonl, valid.jsonl, eval.jsonl (held-out questions, when
configured), rejects.jsonl (every dropped row with its file, line, reason and what to fix)
and data_report.json (every count). Raises DataError before training when the share of
invalid records exceeds `data.max_reject_fraction`, so bad data never trains silently.

It streams: pass 1 reads, validates, cleans, drops exact duplicates, measures tokens and
computes MinHash signatures batch by batch, spooling kept records to disk; only small
per-record facts (line, tokens, signature) stay in memory. Pass 2 finds near duplicates
and similarity groups on the signatures, splits, and copies the spool to train/valid.

Mixing (`data.mix`, see DataConfig): pass 1 reads every source in turn, the anchor first,
so deduplication runs across sources and the earlier source keeps a record two of them
hold; `data.max_reject_fraction` is checked per source and the error names the file. The
split is made over all kept records; then tunekit/data/mix.py picks each source's train
rows (the anchor's all once, the others subsampled or repeated to their weight) and valid
rows (at the same ratio, never repeated), and train.jsonl interleaves the sources evenly.
data_report.json lists every source's counts under "sources". data.train is a mix of one
source, read and written exactly as before.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunekit import atomic
from tunekit.config import Config, Source
from tunekit.data import dedup, mix
from tunekit.data.documents import chunk_document, tokenize_text
from tunekit.data.records import DUPLICATE_REASONS, Cleaner, Record, Reject, iter_records, load_records
from tunekit.data.split import split_groups
from tunekit.data.stats import length_histogram, percentiles
from tunekit.data.template import render, rendered_lengths
from tunekit.errors import DataError

BATCH = 2048
_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
CHARS_PER_TOKEN_MAX = 32
"""A text this many characters per token of max_length is over-long without tokenising it
(tokens of real text average 3-5 characters), so a 50 MB line costs no tokeniser time."""


def jsonl_line(obj: object) -> str:
    """`obj` as one line of JSON Lines, whatever a record carries and whoever reads it back.

    A Parquet row's extra columns may hold bytes or timestamps, which json cannot write:
    they are written as text, as rejects.jsonl already shows them. json.dumps leaves U+0085,
    U+2028 and U+2029 as they are, and Python's str.splitlines() breaks lines there: they
    are escaped, so every reader of these files sees each row whole.
    """
    text = json.dumps(obj, ensure_ascii=False, default=str)
    if any(c in text for c in _LINE_BREAKS):
        text = text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text + "\n"


@dataclass
class Kept:
    """What pass 2 needs of each kept unit (a conversation, or a whole document)."""

    lines: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """The file each unit came from (a folder source holds many)."""
    src: list[int] = field(default_factory=list)
    """Index of the configured source (data.mix entry) each unit came from."""
    rows: list[int] = field(default_factory=list)
    """Rows each unit spooled (a document's chunks; 1 for a conversation)."""
    sigs: list[np.ndarray] = field(default_factory=list)
    row_tokens: list[int] = field(default_factory=list)


class _Pass1:
    def __init__(self, cfg: Config, tokenizer, spool, rejects):
        self.cfg, self.tok, self.spool, self.rejects = cfg, tokenizer, spool, rejects
        self.kept = Kept()
        self.reasons: Counter = Counter()
        self.src = -1
        self.src_reasons: list[Counter] = []
        self.actions: Counter = Counter()
        self.first: dict[str, tuple[str, int]] = {}
        self.dups: list[tuple[Reject, tuple[str, int]]] = []
        self.documents = self.chunks = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.inflight = None

    def start_source(self) -> None:
        """Count what follows against the next configured source."""
        self.src += 1
        self.src_reasons.append(Counter())

    def count(self, reason: str, src: int | None = None) -> None:
        self.reasons[reason] += 1
        self.src_reasons[self.src if src is None else src][reason] += 1

    def reject(self, r: Reject) -> None:
        self.count(r.reason)
        self.rejects.write(jsonl_line(r.to_json()))

    def add(self, rec: Record, pending: list[Record]) -> None:
        if self.cfg.data.dedup:
            h = dedup.exact_hash(rec.messages if rec.text is None else [{"role": "document", "content": rec.text}])
            if h in self.first:
                src, line = self.first[h]
                where = f"line {line}" if src == rec.source else f"{src} line {line}"
                dup = Reject(rec.line, rec.source, "exact_duplicate", f"same as {where} after normalising case and spaces", rec.row())
                self.count("exact_duplicate")
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
            self.kept.src.append(self.src)
            self.kept.rows.append(len(rows))
            self.kept.row_tokens.extend(lengths)
            for row in rows:
                self.spool.write(jsonl_line({"u": u, "row": row}))

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
    sources = cfg.data.sources()
    spool_path = data_dir / ".spool.jsonl"
    p1 = None
    try:
        with atomic.open_write(data_dir / "rejects.jsonl") as rej, open(spool_path, "w", encoding="utf-8") as spool:
            p1 = _Pass1(cfg, tokenizer, spool, rej)
            read = [_read_source(p1, s, clean, notes) for s in sources]
            spool.close()
            report = _pass2(cfg, data_dir, p1, spool_path)
    finally:
        spool_path.unlink(missing_ok=True)
        if p1 is not None:
            p1.pool.shutdown(cancel_futures=True)

    formats = sum((r["formats"] for r in read), Counter())
    per_source = _source_reports(sources, read, p1, report.pop("mix"), report.pop("kept_by_source"))
    invalid = sum(n for r, n in p1.reasons.items() if r not in DUPLICATE_REASONS)
    report = {
        "source": ", ".join(s.path for s in sources),
        "formats": dict(formats.most_common()),
        "notes": notes,
        "lines_read": sum(r["lines_read"] for r in read),
        "kept": report.pop("kept"),
        **report,
        "rejected": sum(p1.reasons.values()),
        "rejected_invalid": invalid,
        "rejects_by_reason": dict(sorted(p1.reasons.items())),
        "cleaning": dict(sorted((clean.counts + p1.actions).items())),
        "tokens": {"per_row": percentiles(p1.kept.row_tokens), "total": int(sum(p1.kept.row_tokens)),
                   "histogram": length_histogram(p1.kept.row_tokens, cfg.data.max_length)},  # drawn by the report
        "sources": per_source,
    }
    if p1.documents:
        report["documents"] = {"documents": p1.documents, "chunks": p1.chunks, "overlap_tokens": cfg.data.chunk_overlap}
    for s, r in zip(sources, read):
        if len([f for f in r["formats"] if f != "unreadable"]) > 1:  # different formats across sources are expected
            where = "one dataset" if len(sources) == 1 else s.path
            notes.append(f"mixed formats in {where}: {dict(r['formats'])}; is that intended?")
    if cfg.data.eval:
        report["eval"] = _prepare_eval(cfg, data_dir)
    atomic.write_json(data_dir / "data_report.json", report)
    _check(cfg, data_dir, per_source, p1)
    return report


def _read_source(p1: _Pass1, source: Source, clean: Cleaner, notes: list[str]) -> dict:
    """Pass 1 over one configured source; its lines read and rows per format."""
    p1.start_source()
    formats: Counter = Counter()
    total, pending = 0, []
    for item in iter_records(source.path, source.format, source.columns, clean, notes, formats):
        total += 1
        if isinstance(item, Reject):
            p1.reject(item)
            continue
        p1.add(item, pending)
        if len(pending) >= BATCH:
            p1.flush(pending)
            pending = []
    p1.flush(pending)
    p1.finish()  # this source's over-long rejects are counted before the next source starts
    if total == 0:
        raise DataError(f"{source.path} contains no records")
    return {"lines_read": total, "formats": formats}


def _source_reports(sources: list[Source], read: list[dict], p1: _Pass1, plan: list[dict], alive: list[int]) -> list[dict]:
    """One entry per configured source: what was read, kept and rejected, and what the mix took."""
    out = []
    for i, (s, r, m) in enumerate(zip(sources, read, plan)):
        reasons = p1.src_reasons[i]
        out.append({
            "path": s.path, "weight": s.weight, "anchor": i == 0, "format": s.format,
            "formats": dict(r["formats"].most_common()), "lines_read": r["lines_read"], "kept": alive[i],
            "rejected": sum(reasons.values()),
            "rejected_invalid": sum(n for k, n in reasons.items() if k not in DUPLICATE_REASONS),
            "rejects_by_reason": dict(sorted(reasons.items())), **m,
        })
    return out


def _check(cfg: Config, data_dir: Path, per_source: list[dict], p1: _Pass1) -> None:
    """Stop before training on data that is not what the user thinks it is (after the report is written)."""
    # Duplicates are expected housekeeping; malformed or unusable records mean the data
    # is not what the user thinks it is. Per source: a bad small source hides in a big total.
    for i, s in enumerate(per_source):
        invalid, total = s["rejected_invalid"], s["lines_read"]
        share = invalid / total
        if share > cfg.data.max_reject_fraction:
            raise DataError(
                f"{invalid} of {total} records ({share:.0%}) in {s['path']} were rejected as invalid, "
                f"more than data.max_reject_fraction={cfg.data.max_reject_fraction:.0%}. "
                f"Reasons: {dict(p1.src_reasons[i])}. See {data_dir / 'rejects.jsonl'} for each line and why; "
                "fix the data or raise data.max_reject_fraction."
            )
    for s in per_source:
        if not s["train"] - s["repeated"] + s["unused"]:
            raise DataError(f"no training records left after preparation of {s['path']}; see {data_dir / 'rejects.jsonl'}")
        if not s["train"]:
            raise DataError(f"data.mix source {s['path']} gets no training rows at weight {s['weight']:g} "
                            f"(round(anchor rows x weight / anchor weight) is 0); raise its weight or remove it")


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
        of = f"line {kept.lines[j]}" if kept.sources[j] == kept.sources[i] else f"{kept.sources[j]} line {kept.lines[j]}"
        detail = f"near duplicate of {of} (estimated Jaccard {sim:.2f} >= data.near_dup_threshold {cfg.data.near_dup_threshold})"
        near_rejects[i] = Reject(kept.lines[i], kept.sources[i], "near_duplicate", detail, None)
        p1.count("near_duplicate", kept.src[i])
    for dup, original in p1.dups:
        if original in gone:
            dup.detail += f" (itself a near duplicate of line {gone[original]}, which is kept)"
        p1.rejects.write(jsonl_line(dup.to_json()))

    idx = np.flatnonzero(alive)
    groups = np.full(n, -1, dtype=np.int64)
    groups[idx] = dedup.similar_groups(sigs[idx], cfg.data.split_similarity) if len(idx) else []
    valid_sub, split_stats = split_groups(groups[idx], cfg.data.valid_fraction, cfg.seed)
    valid = np.zeros(n, dtype=bool)
    valid[idx] = valid_sub

    # Rows, not units: a document's chunks are rows of their own in train.jsonl.
    unit = np.repeat(np.arange(n), kept.rows)
    src = np.asarray(kept.src, dtype=np.int64)[unit]
    on_train, on_valid = alive[unit] & ~valid[unit], alive[unit] & valid[unit]
    weights = [s.weight for s in cfg.data.sources()]
    plan = mix.plan([np.flatnonzero(on_train & (src == i)) for i in range(len(weights))],
                    [np.flatnonzero(on_valid & (src == i)) for i in range(len(weights))], weights, cfg.seed)
    _write_rows(data_dir, spool_path, unit, near_rejects, plan)
    for r in near_rejects.values():
        p1.rejects.write(jsonl_line(r.to_json()))
    return {
        "kept": int(alive.sum()),
        "train": len(plan.train),
        "valid": len(plan.valid),
        "dedup": {"exact_duplicates": len(p1.dups), "near_duplicates": len(near_rejects), "near_dup_threshold": cfg.data.near_dup_threshold},
        "split": {"similarity": cfg.data.split_similarity, **split_stats},
        "mix": plan.per_source,
        "kept_by_source": np.bincount(np.asarray(kept.src, dtype=np.int64)[alive], minlength=len(weights)).tolist(),
    }


def _write_rows(data_dir: Path, spool_path: Path, unit: np.ndarray, near_rejects: dict[int, Reject], plan: mix.MixPlan) -> None:
    """valid.jsonl in one sequential read of the spool; train.jsonl in the mix's order, by seeking."""
    offsets = np.zeros(len(unit), dtype=np.int64)
    keep_valid = np.zeros(len(unit), dtype=bool)
    keep_valid[plan.valid] = True
    with atomic.open_write(data_dir / "train.jsonl") as tr, atomic.open_write(data_dir / "valid.jsonl") as va, \
            open(spool_path, "rb") as spool:
        pos = 0
        for r, line in enumerate(spool):
            offsets[r], pos = pos, pos + len(line)
            u = int(unit[r])
            if u in near_rejects:  # rejects.jsonl keeps the record itself, read back from the spool
                near_rejects[u].raw = json.loads(line)["row"]
            elif keep_valid[r]:
                va.write(jsonl_line(json.loads(line)["row"]))
        # Without mixing the order is ascending, so these seeks mostly land in the read buffer.
        for r in plan.train.tolist():
            spool.seek(offsets[r])
            tr.write(jsonl_line(json.loads(spool.readline())["row"]))


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
    with atomic.open_write(data_dir / "eval.jsonl") as f:
        for it in items:
            f.write(jsonl_line(it.row()))
    return {"source": cfg.data.eval, "items": len(items), "leaked_into_train": len(leaked), "leaked_lines": leaked[:20]}
