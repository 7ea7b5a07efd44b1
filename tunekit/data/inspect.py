"""`tunekit data inspect`: what a dataset holds, measured with the model's own tokenizer,
before anyone spends compute training on it.

One streaming pass reads every record (any container and format `iter_records` reads) and
keeps only small per-record facts: token counts, a MinHash signature per distinct record,
hash counts. From them the report gives counts and rejects, formats, turns, token lengths
per role and per rendered example, supervised tokens, tokens per epoch, exact and near
duplicate clusters, system prompts, repeated answers, and warnings, the worst first.

Supervised tokens are exact (`tokenize_chat`, as training computes them) up to
EXACT_UP_TO conversations. `tokenize_chat` renders the template once per assistant turn
and is the slowest step by far (~1-2 ms a record), so past that the count is estimated
from a seeded Bernoulli sample that is thinned as it grows (adaptive sampling): every
conversation ends up in the sample with the same probability, whatever the file's size,
which is not known until the end of the stream.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.atomic import is_there
from tunekit.config import Source
from tunekit.data import dedup
from tunekit.data.documents import special_ids
from tunekit.data.formats import SIGNATURES
from tunekit.data.inspect_view import short
from tunekit.data.records import ROLES, Cleaner, Record, Reject, iter_records
from tunekit.data.stats import length_histogram, percentiles, token_counts
from tunekit.data.template import check_train_on, render, rendered_lengths, tokenize_chat
from tunekit.errors import ConfigError, DataError

BATCH = 2048
EXACT_UP_TO = 20_000
"""Conversations whose supervised tokens are counted exactly; past this, a sample."""
SAMPLE_CAP = 10_000
"""The supervised-token sample is halved whenever it grows past this (error well under 1%)."""
FEW, VERY_FEW = 100, 20
SAME_ANSWER_SHARE = 0.10
MAX_PROMPTS = 1_000
"""Distinct system prompts remembered; a file with one per record must not hold them all."""
SHOW = 5


@dataclass
class _Scan:
    """Small per-record facts gathered while streaming; no record is kept."""

    tok: object
    root: Path
    train_on: str
    max_length: int
    rng: random.Random
    read: int = 0
    conversations: int = 0
    documents: int = 0
    rejects: Counter = field(default_factory=Counter)
    reject_examples: list[dict] = field(default_factory=list)
    roles: dict[str, list[int]] = field(default_factory=lambda: {r: [] for r in (*ROLES, "document")})
    lengths: list[int] = field(default_factory=list)
    longest: tuple[int, str] = (0, "")
    over: list[str] = field(default_factory=list)
    over_count: int = 0
    chunked: int = 0
    turns: list[int] = field(default_factory=list)
    sup_rate: float = 1.0
    sup_values: list[int] = field(default_factory=list)
    doc_supervised: int = 0
    exact: dict[str, list] = field(default_factory=dict)
    sigs: list[np.ndarray] = field(default_factory=list)
    sig_where: list[tuple[str, int]] = field(default_factory=list)
    distinct_conversations: int = 0
    with_system: int = 0
    prompts: Counter = field(default_factory=Counter)
    prompts_unlisted: int = 0
    answers: Counter = field(default_factory=Counter)
    answer_text: dict[int, str] = field(default_factory=dict)

    def where(self, source: str, line: int) -> str:
        p = Path(source)
        try:
            name = str(p.relative_to(self.root)) if self.root.is_dir() else p.name
        except ValueError:
            name = source
        return f"{name}:{line}"


def inspect_data(path: str | Path, tokenizer, *, fmt: str = "auto", columns: dict | None = None,
                 train_on: str = "all_assistant", max_length: int = 512, near_dup_threshold: float = 0.85,
                 epochs: float = 1.0, seed: int = 0, on_progress: Callable[[int], None] | None = None) -> dict:
    """Measure a dataset with `tokenizer` (and its chat template); returns a JSON-ready report.

    `on_progress(records_read)` is called after each batch, for long files.
    """
    check_train_on(train_on)
    if fmt != "auto" and fmt not in dict(SIGNATURES):
        raise ConfigError(f"unknown format {fmt!r}; use auto or one of {', '.join(dict(SIGNATURES))}")
    if max_length < 1 or epochs <= 0 or not 0 < near_dup_threshold <= 1:
        raise ConfigError(f"max_length must be >= 1 (got {max_length}), epochs > 0 (got {epochs}) "
                          f"and near_dup_threshold in (0, 1] (got {near_dup_threshold})")
    root = Path(path)
    if not is_there(root, "exists"):
        raise DataError(f"{root} not found; give a data file (JSONL, JSON, CSV, Parquet, text) or a folder of them")
    scan = _Scan(tokenizer, root, train_on, max_length, random.Random(seed))
    formats: Counter = Counter()
    notes: list[str] = []
    pending: list[Record] = []
    for item in iter_records(root, fmt, columns or {}, Cleaner(), notes, formats):
        scan.read += 1
        if isinstance(item, Reject):
            _reject(scan, item)
            continue
        pending.append(item)
        if len(pending) >= BATCH:
            _batch(scan, pending, seed)
            pending = []
            if on_progress:
                on_progress(scan.read)
    _batch(scan, pending, seed)
    if scan.read == 0:
        raise DataError(f"{root} contains no records")
    settings = {"format": fmt, "train_on": train_on, "max_length": max_length,
                "near_dup_threshold": near_dup_threshold, "epochs": epochs, "seed": seed}
    report = _report(scan, settings, formats, notes, near_dup_threshold)
    model = str(getattr(tokenizer, "name_or_path", ""))
    return {"source": str(root), "model": model, "warnings": _warnings(report), **report}


def inspect_sources(sources: list[Source], tokenizer, *, fmt: str | None = None, **settings) -> dict:
    """`inspect_data` on every data.mix source, each with its own format and columns (`fmt`
    overrides them all); the reports in config order under "sources", each with its path and weight.

    Each source is measured on its own: how many rows it gives training depends on the split
    and the anchor's size, which prepare decides (data_report.json "sources").
    """
    total = sum(s.weight for s in sources)
    reports = [{"path": s.path, "weight": s.weight, "weight_share": round(s.weight / total, 4),
                **inspect_data(s.path, tokenizer, fmt=fmt or s.format, columns=s.columns, **settings)} for s in sources]
    return {"source": "data.mix", "model": reports[0]["model"], "sources": reports}


def _reject(scan: _Scan, r: Reject) -> None:
    scan.rejects[r.reason] += 1
    if len(scan.reject_examples) < SHOW:
        scan.reject_examples.append({"where": scan.where(r.source, r.line), "reason": r.reason, "detail": r.detail})


def _batch(scan: _Scan, recs: list[Record], seed: int) -> None:
    chats = [r for r in recs if r.text is None]
    docs = [r for r in recs if r.text is not None]
    # Batched tokenizer calls: one Rust call per batch instead of one per message.
    contents = [(m["role"], m["content"]) for r in chats for m in r.messages]
    for (role, _), n in zip(contents, token_counts(scan.tok, [c for _, c in contents])):
        scan.roles[role].append(n)
    texts = [render(scan.tok, r.messages) for r in chats]
    for rec, n in zip(chats, rendered_lengths(scan.tok, texts)):
        scan.conversations += 1
        _length(scan, rec, n, over=n > scan.max_length)
        scan.turns.append(sum(m["role"] == "assistant" for m in rec.messages))
        _system(scan, rec.messages)
        _supervised(scan, rec.messages)
    bos, eos = special_ids(scan.tok)
    for rec, n in zip(docs, token_counts(scan.tok, [r.text for r in docs])):
        scan.documents += 1
        scan.roles["document"].append(n)
        # A document is learnt whole (each token once, plus the closing EOS), in chunks if long.
        full = n + (bos is not None) + (eos is not None)
        scan.chunked += full > scan.max_length
        scan.doc_supervised += n + (eos is not None)
        _length(scan, rec, full, over=False)
    _duplicates(scan, recs, seed)


def _length(scan: _Scan, rec: Record, n: int, over: bool) -> None:
    scan.lengths.append(n)
    if n > scan.longest[0]:
        scan.longest = (n, scan.where(rec.source, rec.line))
    if over:
        scan.over_count += 1
        if len(scan.over) < SHOW:
            scan.over.append(scan.where(rec.source, rec.line))


def _system(scan: _Scan, msgs: list[dict]) -> None:
    if msgs[0]["role"] != "system":
        return
    scan.with_system += 1
    text = msgs[0]["content"]
    if text in scan.prompts or len(scan.prompts) < MAX_PROMPTS:
        scan.prompts[text] += 1
    else:
        scan.prompts_unlisted += 1


def _thin(scan: _Scan, keep: float) -> None:
    scan.sup_rate *= keep
    scan.sup_values = [v for v in scan.sup_values if scan.rng.random() < keep]


def _supervised(scan: _Scan, msgs: list[dict]) -> None:
    if scan.sup_rate == 1.0 and scan.conversations > EXACT_UP_TO:
        _thin(scan, 0.25)
    if scan.sup_rate < 1.0 and scan.rng.random() >= scan.sup_rate:
        return
    scan.sup_values.append(tokenize_chat(scan.tok, msgs, scan.train_on).supervised)
    if scan.sup_rate < 1.0 and len(scan.sup_values) > SAMPLE_CAP:
        _thin(scan, 0.5)


def _duplicates(scan: _Scan, recs: list[Record], seed: int) -> None:
    fresh = []
    for rec in recs:
        msgs = rec.messages if rec.text is None else [{"role": "document", "content": rec.text}]
        entry = scan.exact.get(h := dedup.exact_hash(msgs))
        if entry is None:
            scan.exact[h] = [1, (rec.source, rec.line), None]
            fresh.append(rec)
        else:
            entry[0] += 1
            entry[2] = entry[2] or (rec.source, rec.line)
    scan.distinct_conversations += sum(r.text is None for r in fresh)
    if not fresh:
        return
    # Near duplicates among distinct records only, as prepare drops exact copies first.
    keys = [dedup.conversation_key(r.messages) if r.text is None else r.text for r in fresh]
    scan.sigs.append(dedup.signatures(keys, seed))
    scan.sig_where.extend((r.source, r.line) for r in fresh)
    for rec in fresh:
        for m in rec.messages:
            if m["role"] == "assistant":
                norm = " ".join(m["content"].casefold().split())
                key = hash(norm)
                scan.answers[key] += 1
                if scan.answers[key] == 2:  # text kept only for answers that repeat
                    scan.answer_text[key] = m["content"]


def _report(scan: _Scan, settings: dict, formats: Counter, notes: list[str], threshold: float) -> dict:
    where = lambda loc: scan.where(*loc)  # noqa: E731
    valid = scan.conversations + scan.documents
    total = int(sum(scan.lengths))
    sup = _supervised_summary(scan)
    sup_total = sup["total"] + scan.doc_supervised
    exact = sorted((e for e in scan.exact.values() if e[0] > 1), key=lambda e: -e[0])
    sigs = np.concatenate(scan.sigs) if scan.sigs else np.zeros((0, dedup.NUM_PERM), dtype=np.uint32)
    near: dict[int, list[tuple[int, float]]] = {}
    for i, (j, sim) in sorted(dedup.find_near_duplicates(sigs, threshold).items()):
        near.setdefault(j, []).append((i, sim))
    near_sorted = sorted(near.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    repeated = [(k, n) for k, n in scan.answers.most_common(SHOW) if n > 1]
    return {
        "settings": settings,
        "notes": notes,
        "records": {"read": scan.read, "valid": valid, "conversations": scan.conversations, "documents": scan.documents,
                    "distinct": len(scan.exact), "distinct_conversations": scan.distinct_conversations,
                    "rejected": sum(scan.rejects.values())},
        "rejects": {"by_reason": dict(scan.rejects.most_common()), "examples": scan.reject_examples},
        "formats": dict(formats.most_common()),
        "turns": {**percentiles(scan.turns), "multi_turn": sum(t > 1 for t in scan.turns)},
        "tokens": {
            "by_role": {r: {**percentiles(v), "total": int(sum(v))} for r, v in scan.roles.items() if v},
            "example": {**percentiles(scan.lengths), "total": total},
            "longest": {"tokens": scan.longest[0], "where": scan.longest[1]},
            "over_max_length": {"count": scan.over_count, "examples": scan.over},
            "documents_chunked": scan.chunked,
            "histogram": length_histogram(scan.lengths, scan.max_length),
        },
        "supervised": {**sup, "total": sup_total, "share": round(sup_total / total, 4) if total else 0.0},
        "per_epoch": {"tokens": total, "supervised": sup_total, "epochs": settings["epochs"],
                      "tokens_all_epochs": round(total * settings["epochs"]),
                      "supervised_all_epochs": round(sup_total * settings["epochs"])},
        "duplicates": {
            "exact": {"clusters": len(exact), "extra_copies": sum(e[0] - 1 for e in exact),
                      "largest": [e[0] for e in exact[:SHOW]],
                      "examples": [{"size": e[0], "pair": [where(e[1]), where(e[2])]} for e in exact[:SHOW]]},
            "near": {"threshold": threshold, "clusters": len(near), "extra_copies": sum(len(v) for v in near.values()),
                     "largest": [1 + len(v) for _, v in near_sorted[:SHOW]],
                     "examples": [{"size": 1 + len(v), "pair": [where(scan.sig_where[j]), where(scan.sig_where[v[0][0]])],
                                   "similarity": round(v[0][1], 2)} for j, v in near_sorted[:SHOW]]},
        },
        "system_prompts": {"with": scan.with_system, "without": scan.conversations - scan.with_system,
                           "distinct": len(scan.prompts) + (scan.prompts_unlisted > 0),
                           "beyond_first_distinct": scan.prompts_unlisted,
                           "top": [{"count": n, "text": t} for t, n in scan.prompts.most_common(SHOW)]},
        "answers": {"distinct_conversations_answers": sum(scan.answers.values()), "distinct": len(scan.answers),
                    "most_repeated": [{"count": n, "text": scan.answer_text[k]} for k, n in repeated]},
    }


def _supervised_summary(scan: _Scan) -> dict:
    vals = scan.sup_values
    if scan.sup_rate == 1.0:
        return {"total": int(sum(vals)), "per_example": percentiles(vals), "estimated": False,
                "train_on": scan.train_on}
    # Mean of a uniform sample times the count: the estimate does not depend on the
    # sample's random size, only on its values.
    est = round(float(np.mean(vals)) * scan.conversations) if vals else 0
    return {"total": est, "per_example": percentiles(vals), "estimated": True, "sample": len(vals),
            "train_on": scan.train_on}


def _warnings(r: dict) -> list[str]:
    """What to fix before training, most serious first."""
    w = []
    rec, n_conv = r["records"], r["records"]["conversations"]
    distinct_conv = rec["distinct_conversations"]
    if rec["valid"] == 0:
        w.append("no valid records: nothing could be trained on; see the rejected records below")
    elif n_conv and distinct_conv < VERY_FEW:
        w.append(f"only {distinct_conv:,} distinct training conversations: far too few to fine-tune on. "
                 "Fine-tuning usually needs a few hundred good examples; with this few, put them in the prompt instead")
    elif n_conv and distinct_conv < FEW:
        w.append(f"only {distinct_conv:,} distinct training conversations: fine-tuning usually needs a few hundred "
                 "good examples; expect little gain, or overfitting")
    if rec["rejected"]:
        first = r["rejects"]["examples"][0]
        reasons = ", ".join(f"{k} {v:,}" for k, v in r["rejects"]["by_reason"].items())
        w.append(f"{rec['rejected']:,} of {rec['read']:,} records are invalid and would be rejected ({reasons}); "
                 f"first at {first['where']}: {first['detail']}")
    top = r["answers"]["most_repeated"][:1]
    answers = r["answers"]["distinct_conversations_answers"]
    if top and top[0]["count"] >= 3 and top[0]["count"] >= SAME_ANSWER_SHARE * answers:
        w.append(f"the same assistant answer is {top[0]['count']:,} of {answers:,} answers "
                 f"({top[0]['count'] / answers:.0%}): \"{short(top[0]['text'])}\"; a model trained on this "
                 "learns to say it whatever the question")
    over = r["tokens"]["over_max_length"]
    if over["count"]:
        s = r["settings"]
        w.append(f"{over['count']:,} of {n_conv:,} conversations are longer than max_length {s['max_length']} tokens "
                 f"(longest {r['tokens']['longest']['tokens']:,} at {r['tokens']['longest']['where']}); prepare drops "
                 "them: raise data.max_length or set data.over_length: truncate_history")
    sp = r["system_prompts"]
    if sp["distinct"] > 1:
        w.append(f"{sp['distinct']:,} different system prompts (the most common in {sp['top'][0]['count']:,} of "
                 f"{sp['with']:,}); the model learns a behaviour per prompt and must get the same one at inference")
    if 0 < sp["with"] < n_conv:
        w.append(f"only {sp['with']:,} of {n_conv:,} conversations have a system prompt; the others train with the "
                 "template's default (or none). Give every conversation the same one, or none")
    fmts = [f for f in r["formats"] if f != "unreadable"]
    if len(fmts) > 1:
        found = ", ".join(f"{f} {r['formats'][f]:,}" for f in fmts)
        w.append(f"mixed formats in one dataset ({found}); is that intended?")
    for kind, label in (("exact", "exact duplicate"), ("near", "near-duplicate")):
        d = r["duplicates"][kind]
        if d["clusters"]:
            ex = d["examples"][0]
            w.append(f"{d['extra_copies']:,} {label} copies in {d['clusters']:,} clusters (largest {d['largest'][0]}; "
                     f"e.g. {ex['pair'][0]} and {ex['pair'][1]}); prepare keeps one of each")
    return w
