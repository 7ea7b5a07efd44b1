"""The prepare stage: raw chat JSONL -> validated, cleaned, deduplicated, split records.

Writes into `<run>/data/`: train.jsonl, valid.jsonl, eval.jsonl (held-out questions,
when configured), rejects.jsonl (every dropped line with its reason and line number)
and data_report.json (every count). Raises DataError before training when the share
of rejected records exceeds `data.max_reject_fraction`, so bad data never trains
silently.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tunekit import atomic
from tunekit.config import Config
from tunekit.data.dedup import conversation_key, exact_hash, find_near_duplicates
from tunekit.data.records import Record, Reject, load_records
from tunekit.data.template import tokenize_chat
from tunekit.errors import DataError


def _dedup(records: list[Record], cfg: Config) -> tuple[list[Record], list[Reject]]:
    kept, rejects, first = [], [], {}
    for r in records:
        h = exact_hash(r.messages)
        if h in first:
            rejects.append(Reject(r.line, r.source, "exact_duplicate", f"same conversation as line {first[h]}", {"messages": r.messages}))
        else:
            first[h] = r.line
            kept.append(r)
    if cfg.data.near_dup_threshold < 1.0:
        near = find_near_duplicates([conversation_key(r.messages) for r in kept], cfg.data.near_dup_threshold, cfg.seed)
        for i, (j, sim) in sorted(near.items()):
            r = kept[i]
            detail = f"near duplicate of line {kept[j].line} (estimated Jaccard {sim:.2f} >= {cfg.data.near_dup_threshold})"
            rejects.append(Reject(r.line, r.source, "near_duplicate", detail, {"messages": r.messages}))
        # An exact duplicate of a record later dropped as a near duplicate should name
        # the record that stayed, not only one that is gone too.
        gone = {kept[i].line: kept[j].line for i, (j, _) in near.items()}
        for r in rejects:
            first_line = first.get(exact_hash(r.raw["messages"])) if r.reason == "exact_duplicate" else None
            if first_line in gone:
                r.detail += f" (itself a near duplicate of line {gone[first_line]}, which is kept)"
        kept = [r for i, r in enumerate(kept) if i not in near]
    return kept, rejects


def _length_filter(records: list[Record], tokenizer, max_length: int) -> tuple[list[Record], list[Reject], list[int]]:
    kept, rejects, lengths = [], [], []
    for r in records:
        n = len(tokenize_chat(tokenizer, r.messages).input_ids)
        if n > max_length:
            detail = f"{n} tokens > data.max_length {max_length}; shorten it or raise data.max_length"
            rejects.append(Reject(r.line, r.source, "over_long", detail, {"messages": r.messages}))
        else:
            kept.append(r)
            lengths.append(n)
    return kept, rejects, lengths


def _split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_valid = round(len(records) * fraction) if fraction > 0 else 0
    if fraction > 0 and len(records) >= 20:
        n_valid = max(n_valid, 1)
    valid_idx = set(order[:n_valid])
    train = [r for i, r in enumerate(records) if i not in valid_idx]
    valid = [r for i, r in enumerate(records) if i in valid_idx]
    return train, valid


def _row(r: Record) -> dict:
    return {**r.extra, "messages": r.messages}


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def prepare(cfg: Config, data_dir: str | Path, tokenizer) -> dict:
    """Run the prepare stage; returns the data report (also written to data_report.json)."""
    data_dir = Path(data_dir)
    records, rejects = load_records(cfg.data.train)
    total = len(records) + len(rejects)
    if total == 0:
        raise DataError(f"{cfg.data.train} contains no records; expected one JSON object per line with 'messages'")
    if cfg.data.dedup:
        records, dup_rejects = _dedup(records, cfg)
        rejects += dup_rejects
    records, long_rejects, lengths = _length_filter(records, tokenizer, cfg.data.max_length)
    rejects += long_rejects
    train, valid = _split(records, cfg.data.valid_fraction, cfg.seed)

    invalid = sum(1 for r in rejects if r.reason not in ("exact_duplicate", "near_duplicate"))
    reasons = Counter(r.reason for r in rejects)
    report = {
        "source": cfg.data.train,
        "lines_read": total,
        "kept": len(records),
        "train": len(train),
        "valid": len(valid),
        "rejected": len(rejects),
        "rejected_invalid": invalid,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "tokens": {"per_record": _percentiles(lengths), "total": sum(lengths)},
    }
    atomic.write_jsonl(data_dir / "rejects.jsonl", (r.to_json() for r in sorted(rejects, key=lambda r: r.line)))
    atomic.write_jsonl(data_dir / "train.jsonl", (_row(r) for r in train))
    atomic.write_jsonl(data_dir / "valid.jsonl", (_row(r) for r in valid))
    if cfg.data.eval:
        report["eval"] = _prepare_eval(cfg, data_dir, train)
    atomic.write_json(data_dir / "data_report.json", report)

    # Duplicates are expected housekeeping; malformed or unusable records mean the data
    # is not what the user thinks it is.
    share = invalid / total
    if share > cfg.data.max_reject_fraction:
        raise DataError(
            f"{invalid} of {total} records ({share:.0%}) in {cfg.data.train} were rejected as invalid, "
            f"more than data.max_reject_fraction={cfg.data.max_reject_fraction:.0%}. "
            f"Reasons: {dict(reasons)}. See {data_dir / 'rejects.jsonl'} for each line and why; "
            "fix the data or raise data.max_reject_fraction."
        )
    if not train:
        raise DataError(f"no training records left after preparation of {cfg.data.train}; see {data_dir / 'rejects.jsonl'}")
    return report


def _prepare_eval(cfg: Config, data_dir: Path, train: list[Record]) -> dict:
    items, rejects = load_records(cfg.data.eval, need_assistant=False)
    if rejects:
        first = rejects[0]
        raise DataError(
            f"{len(rejects)} held-out item(s) in {cfg.data.eval} are invalid; first at line {first.line}: "
            f"{first.reason}: {first.detail}"
        )
    # A held-out question that also sits in the training data measures memory, not learning.
    train_turns = {" ".join(m["content"].casefold().split()) for r in train for m in r.messages if m["role"] == "user"}
    leaked = [it.line for it in items if " ".join(it.messages[-1]["content"].casefold().split()) in train_turns]
    atomic.write_jsonl(data_dir / "eval.jsonl", (_row(it) for it in items))
    return {"source": cfg.data.eval, "items": len(items), "leaked_into_train": len(leaked), "leaked_lines": leaked[:20]}
