"""Raw rows -> validated, cleaned records, one reason code per rejected row.

A Record is a conversation (OpenAI chat messages) or a document (`text`). Reading never
raises on a bad row: the row becomes a Reject naming its file, line, field and what to
fix, so bad input is counted and kept (rejects.jsonl), never silently lost.

Cleaning: Unicode NFC, control and zero-width characters removed, CRLF -> LF, trailing
spaces and runs of blank lines trimmed, optional PII masking. Each change is counted.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tunekit.data.formats import FormatError, to_canonical
from tunekit.data.sources import RAW_KEEP, Problem, iter_raw

ROLES = ("system", "user", "assistant")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_BLANK_RUNS = re.compile(r"\n{3,}")
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")
REASONS = ("malformed_json", "malformed_csv", "bad_encoding", "too_deep", "not_an_object", "missing_messages",
           "missing_field", "wrong_type", "unknown_role", "empty_turn", "misplaced_system", "bad_weight",
           "bad_turn_order", "no_final_assistant", "no_trainable_turn", "over_long", *DUPLICATE_REASONS)
"""Every reason a record is rejected for, as docs/troubleshooting.md lists them (tests/test_docs.py checks it)."""


@dataclass
class Record:
    messages: list[dict]
    line: int
    source: str
    extra: dict = field(default_factory=dict)
    """Other top-level keys of the row (ids, labels), carried through untouched."""
    text: str | None = None
    """A document's text (then `messages` is empty)."""

    def row(self) -> dict:
        """The canonical JSON row written to train/valid files."""
        body = {"text": self.text} if self.text is not None else {"messages": self.messages}
        return {**self.extra, **body}


@dataclass
class Reject:
    line: int
    source: str
    reason: str
    detail: str
    raw: object

    def to_json(self) -> dict:
        raw = self.raw
        if not isinstance(raw, str):
            text = json.dumps(raw, ensure_ascii=False, default=str)
            raw = raw if len(text) <= 4 * RAW_KEEP else text[:RAW_KEEP] + "... (truncated)"
        return {"source": self.source, "line": self.line, "reason": self.reason, "detail": self.detail, "record": raw}


@dataclass
class Cleaner:
    """Text cleaning with counts of what it changed."""

    mask: tuple[str, ...] = ()
    counts: Counter = field(default_factory=Counter)

    def __call__(self, text: str) -> str:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
            self.counts["unicode_nfc"] += 1
        stripped = _CONTROL.sub("", text)
        if stripped != text:
            self.counts["control_chars_removed"] += 1
        tidy = normalize_whitespace(stripped)
        if tidy != stripped:
            self.counts["whitespace_normalized"] += 1
        if self.mask:
            from tunekit.data.pii import mask_pii

            tidy, found = mask_pii(tidy, self.mask)
            for kind, n in found.items():
                self.counts[f"pii_{kind}_masked"] += n
        return tidy


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:
        text = "\n".join(line.rstrip() for line in text.split("\n"))
    if "\n\n\n" in text:  # the check is 15x faster than the regex on a 50 MB text with no match
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def normalize_text(text: str) -> str:
    """NFC, no control characters, CRLF -> LF, trailing spaces trimmed per line."""
    return Cleaner()(text)


def check_messages(msgs: list[dict], need_assistant: bool = True) -> tuple[str, str] | None:
    """(reason, detail) when the messages are not a usable conversation."""
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return "unknown_role", f"{where}.role is {role!r}; use one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return "wrong_type", f"{where}.content must be a string, got {type(content).__name__}"
        if not content.strip():
            return "empty_turn", f"{where} ({role}) has empty or whitespace-only content; fill it or remove the turn"
        if role == "system" and i != 0:
            return "misplaced_system", f"{where}: a system message may only come first"
        if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1)):
            return "bad_weight", f"{where}.weight is {m['weight']!r}; only assistant messages take a weight, 0 or 1"
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    if not roles or roles[0] != "user":
        return "bad_turn_order", "the first non-system message must be from the user"
    if any(a == b for a, b in zip(roles, roles[1:])):
        return "bad_turn_order", "user and assistant turns must alternate"
    if need_assistant:
        if roles[-1] != "assistant":
            return "no_final_assistant", "the conversation must end with an assistant turn (nothing to learn otherwise)"
        if all(m.get("weight", 1) == 0 for m in msgs if m["role"] == "assistant"):
            return "no_trainable_turn", "every assistant message has weight 0, so nothing would be learned"
    elif roles[-1] != "user":
        return "bad_turn_order", "a held-out item must end with the user question to answer"
    return None


def to_record(src: str, line: int, value: object, fmt: str, columns: dict, clean: Cleaner,
              need_assistant: bool = True) -> tuple[str, Record | Reject]:
    """(format, Record or Reject) for one raw row."""
    if isinstance(value, Problem):
        return "unreadable", Reject(line, src, value.reason, value.detail, value.raw)
    try:
        found, obj = to_canonical(value, fmt, columns)
    except FormatError as e:
        return "unreadable", Reject(line, src, e.reason, e.detail, value)
    if "text" in obj and "messages" not in obj:
        text = clean(obj.pop("text"))
        if not text:
            return found, Reject(line, src, "empty_turn", "the document is empty after cleaning", value)
        return found, Record([], line, src, obj, text=text)
    msgs = obj.pop("messages")
    if not need_assistant and msgs and msgs[-1].get("role") == "assistant" and len(msgs) > 1:
        # A held-out item given with its answer (Alpaca, prompt/completion): the answer
        # becomes the reference and the question is what the model must answer.
        answer = msgs.pop()
        if isinstance(answer.get("content"), str):
            obj.setdefault("reference", answer["content"])
    for m in msgs:
        if isinstance(m.get("content"), str):
            m["content"] = clean(m["content"])
    problem = check_messages(msgs, need_assistant)
    if problem:
        return found, Reject(line, src, *problem, value)
    return found, Record(msgs, line, src, obj)


def iter_records(path: str | Path, fmt: str = "auto", columns: dict | None = None, clean: Cleaner | None = None,
                 notes: list[str] | None = None, formats: Counter | None = None,
                 need_assistant: bool = True) -> Iterator[Record | Reject]:
    """Stream records and rejects from a file or folder; `formats` counts rows per format."""
    clean = clean or Cleaner()
    notes = [] if notes is None else notes
    for raw in iter_raw(path, notes):
        found, item = to_record(raw.source, raw.line, raw.value, fmt, columns or {}, clean, need_assistant)
        if formats is not None:
            formats[found] += 1
        yield item


def load_records(path: str | Path, *, need_assistant: bool = True, fmt: str = "auto",
                 columns: dict | None = None) -> tuple[list[Record], list[Reject]]:
    """All records and rejects of a file, in memory (for small files: held-out sets, prepared data)."""
    records, rejects = [], []
    for item in iter_records(path, fmt, columns, need_assistant=need_assistant):
        (records if isinstance(item, Record) else rejects).append(item)
    return records, rejects
