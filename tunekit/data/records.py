"""Read chat records from JSONL and validate them, one reason code per rejected line.

A record is OpenAI's chat format: {"messages": [{"role": ..., "content": ...}, ...]}.
Reading never raises on a bad line: the line becomes a Reject with its line number,
so bad input is counted and kept (rejects.jsonl), never silently lost.
"""

from __future__ import annotations

import json
import unicodedata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tunekit.errors import DataError

ROLES = ("system", "user", "assistant")
BAD_ENCODING = object()
"""Marker read_jsonl yields for a line that is not valid UTF-8."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class Record:
    messages: list[dict]
    line: int
    source: str
    extra: dict = field(default_factory=dict)
    """Other top-level keys of the line (ids, labels), carried through untouched."""


@dataclass
class Reject:
    line: int
    source: str
    reason: str
    detail: str
    raw: object

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason, "detail": self.detail, "record": self.raw}


def normalize_text(text: str) -> str:
    """NFC, no control characters, CRLF -> LF, trailing spaces trimmed per line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _check(obj: object) -> tuple[str, str] | None:
    """Return (reason, detail) when the object is not a usable conversation."""
    if not isinstance(obj, dict):
        return "not_an_object", f"expected a JSON object, got {type(obj).__name__}"
    msgs = obj.get("messages")
    if msgs is None:
        return "missing_messages", f"no 'messages' field (keys: {', '.join(sorted(obj)) or 'none'})"
    if not isinstance(msgs, list) or not msgs:
        return "wrong_type", "'messages' must be a non-empty list of {role, content}"
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return "wrong_type", f"{where} must be an object with role and content"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return "unknown_role", f"{where}.role is {role!r}; use one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return "wrong_type", f"{where}.content must be a string, got {type(content).__name__}"
        if not content.strip():
            return "empty_turn", f"{where} ({role}) has empty or whitespace-only content"
        if role == "system" and i != 0:
            return "misplaced_system", f"{where}: a system message may only come first"
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    if not roles or roles[0] != "user":
        return "bad_turn_order", "the first non-system message must be from the user"
    if any(a == b for a, b in zip(roles, roles[1:])):
        return "bad_turn_order", "user and assistant turns must alternate"
    if roles[-1] != "assistant":
        return "no_final_assistant", "the conversation must end with an assistant turn (nothing to learn otherwise)"
    return None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object | None, str]]:
    """Yield (line number, parsed object or None, raw text) for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found; set data.train in the config to a JSONL file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8").lstrip("\ufeff")
            except UnicodeDecodeError:
                # Replacing bad bytes would change the record silently; reject it instead.
                yield n, BAD_ENCODING, raw.decode("utf-8", errors="replace").rstrip("\n")
                continue
            if not text.strip():
                continue
            try:
                yield n, json.loads(text), text.rstrip("\n")
            except json.JSONDecodeError:
                yield n, None, text.rstrip("\n")


def load_records(path: str | Path, *, need_assistant: bool = True) -> tuple[list[Record], list[Reject]]:
    """Parse and validate a chat JSONL file. Text is normalised; nothing valid is dropped."""
    records, rejects = [], []
    src = str(path)
    for n, obj, raw in read_jsonl(path):
        if obj is BAD_ENCODING:
            rejects.append(Reject(n, src, "bad_encoding", "line is not valid UTF-8; re-save the file as UTF-8", raw[:2000]))
            continue
        if obj is None:
            rejects.append(Reject(n, src, "malformed_json", "line is not valid JSON (truncated or broken)", raw[:2000]))
            continue
        problem = _check(obj) if need_assistant else _check_prompt(obj)
        if problem:
            rejects.append(Reject(n, src, *problem, obj))
            continue
        msgs = [{"role": m["role"], "content": normalize_text(m["content"])} for m in obj["messages"]]
        extra = {k: v for k, v in obj.items() if k != "messages"}
        records.append(Record(msgs, n, src, extra))
    return records, rejects


def _check_prompt(obj: object) -> tuple[str, str] | None:
    """Held-out questions end with the user turn the model must answer."""
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
        last = obj["messages"][-1]
        if isinstance(last, dict) and last.get("role") == "user":
            fake = dict(obj, messages=obj["messages"] + [{"role": "assistant", "content": "x"}])
            return _check(fake)
        return "bad_turn_order", "a held-out item must end with the user question to answer"
    return _check(obj)
