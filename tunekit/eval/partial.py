"""What a killed eval stage had finished, on disk, so that its rerun does only the rest.

Each piece of the stage's work that costs model time has a journal, `eval/partial/<name>.jsonl`:
a contender's greedy answers, a held-out loss, the forgetting probe's general-text loss and its
answers. Its first line holds a hash of each input that produced it; then one line per finished
generation batch (or one line for a single number), each flushed and fsynced before the next
batch starts. A reader takes whole lines only: a line torn by a SIGKILL, and anything after it,
is dropped and cut off the file before more is appended.

The inputs are what the results depend on: the prompts' token ids (so the held-out data, the
chat template, the few-shot choice and eval.max_questions), the generation settings, the
precision, the config's model section and the weights' identity (the files of the base model
folder and, for the tuned model, of its checkpoint). A journal made from other inputs is
discarded, with a line on the console naming them, and its work is done again.

Answers resume whole batches, in the order of infer.greedy.greedy_batches: every answer comes from
the batch an uninterrupted run would have put it in, so the two runs write the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.template import prompt_ids
from tunekit.infer.greedy import greedy_batches
from tunekit.progress import console

FOLDER = "partial"  # under the run's eval/
FORMAT = 1  # bump when a record's meaning changes: older journals then no longer match


def folder(run_dir: Path) -> Path:
    return run_dir / "eval" / FOLDER


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _header(parts: dict) -> dict:
    """A journal's first line: a hash of each input (plain JSON data), so a mismatch can name what changed."""
    return {"format": FORMAT, "inputs": {name: _hash(value) for name, value in parts.items()}}


def fingerprint(path: Path) -> list:
    """Identity of a weights folder without reading it: (name, size, mtime) of each file in it. A
    checkpoint is written once (atomic.directory), so a retrained or replaced one differs here."""
    return sorted([p.name, st.st_size, st.st_mtime_ns] for p in Path(path).iterdir() if p.is_file() for st in [p.stat()])


@dataclass
class Journal:
    """One piece of work's records so far; complete when it holds `total` of them."""

    path: Path
    total: int
    records: list[dict] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.records) >= self.total

    def append(self, record: dict) -> None:
        _append_line(self.path, record)
        self.records.append(record)


def _append_line(path: Path, obj: dict) -> None:
    """Add a line durably: a kill after this returns cannot lose it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _whole_lines(path: Path, needs: str) -> tuple[list[dict], int]:
    """The JSON objects on the file's whole lines up to the first bad one (after the header: one without
    `needs`), and the bytes they take."""
    lines, size = [], 0
    for raw in path.read_bytes().split(b"\n")[:-1]:  # what follows the last newline is torn (or nothing)
        try:
            obj = json.loads(raw)
        except ValueError:
            break
        if not isinstance(obj, dict) or (lines and needs not in obj):
            break
        lines.append(obj)
        size += len(raw) + 1
    return lines, size


def open_journal(root: Path, name: str, parts: dict, total: int, items: int | None = None) -> Journal:
    """The journal `root/<name>.jsonl` for work of `total` records made from the inputs `parts` ({name:
    plain JSON data}); what an earlier run left is kept when it was made from the same. `items`: answers
    the work gives, for the console."""
    path = root / f"{name}.jsonl"
    lines, size = _whole_lines(path, "value" if items is None else "rows") if path.is_file() else ([], 0)
    shown = f"eval/{FOLDER}/{path.name}"
    header = _header(parts)
    if lines and lines[0] != header:
        old = lines[0].get("inputs") if lines[0].get("format") == FORMAT else None
        changed = sorted(k for k, v in header["inputs"].items() if old.get(k) != v) if isinstance(old, dict) else []
        console.print(f"eval: discarding {shown}: made from other inputs ({', '.join(changed) or 'by another tunekit'})")
        lines, size = [], 0
    if not lines:
        root.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        _append_line(path, header)
        return Journal(path, total)
    os.truncate(path, size)  # a torn last line goes before anything is appended after it
    records = lines[1:]
    if records:
        what, _, kind = name.partition(".")  # "base.answers": base, answers
        done = f"{sum(len(r['rows']) for r in records)}/{items} answers" if items is not None else kind or "work"
        console.print(f"resuming eval: {what} {done} already done ({shown})")
    return Journal(path, total, records)


def answers_journal(root: Path, name: str, parts: dict, tokenizer, conversations: list[list[dict]],
                    max_new_tokens: int, batch_size: int) -> Journal:
    """The journal of greedy answers to `conversations` by the model `parts` describes."""
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    parts = {**parts, "prompts": prompts, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    return open_journal(root, name, parts, -(-len(prompts) // batch_size), len(prompts))


def answers(journal: Journal, model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
            label: str) -> list[str]:
    """greedy_answers, resumed: the journal's batches are read, the others generated and journaled one by one.
    `model` may be None when the journal is complete."""
    if not journal.complete:
        batches = greedy_batches(model, tokenizer, conversations, max_new_tokens, batch_size, label,
                                 skip=len(journal.records))
        for idx, outputs in batches:
            journal.append({"batch": len(journal.records), "rows": [[i, text] for i, (text, _) in zip(idx, outputs)]})
    out: list[str | None] = [None] * len(conversations)
    for record in journal.records:
        for i, text in record["rows"]:
            out[i] = text
    assert None not in out, f"{journal.path} does not cover every conversation"
    return out


def value(journal: Journal, compute: Callable[[], Any]) -> Any:
    """A single result (a loss), journaled; computed only when the journal lacks it. Read back through
    JSON either way, so a resumed run hands on exactly what a whole run does (floats survive it)."""
    if not journal.complete:
        journal.append({"value": compute()})
    return json.loads(json.dumps(journal.records[0]["value"]))


def clear(run_dir: Path) -> None:
    """Remove the journals: the stage's results are written."""
    shutil.rmtree(folder(run_dir), ignore_errors=True)
