"""Record formats, detected per record, converted to one canonical shape.

Every format becomes a conversation {"messages": [{"role", "content", "weight"?}, ...]}
or a document {"text": ...}:

- chat (OpenAI): {"messages": [{"role", "content", "weight": 0|1}]}
- sharegpt: {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
- alpaca: {"instruction", "input"?, "output", "system"?}  -> user: instruction + input
- prompt_completion: {"prompt", "completion", "system"?}, strings or message lists (TRL's
  conversational form) -> user: prompt, assistant: completion. We tune chat models, so a
  prompt is the user's turn rendered with the model's template, not raw text.
- text: {"text"} -> a document for domain adaptation (chunked by tokens later)

`columns` maps a standard field to the user's own column name ({"prompt": "question"}),
including the message-level "role" and "content". Fields a format does not use (ids,
labels) are carried through unchanged.
"""

from __future__ import annotations

import json
import re

from tunekit.data.nesting import Unreadable, loads

SIGNATURES = (
    ("chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "chatgpt": "assistant", "bard": "assistant", "system": "system",
}


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
LONE_SURROGATE = ("holds half of a UTF-16 surrogate pair (a \\ud800-\\udfff escape without its partner, e.g. an "
                  "emoji cut in two), which UTF-8 cannot store; fix or remove that character")


class FormatError(ValueError):
    """A record that is not in the expected format: (reason code, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def lone_surrogate(value: object, text: str, start: int = 0, end: int | None = None) -> bool:
    """Whether `value`, parsed from the JSON text[start:end], holds an unpaired surrogate."""
    if _SURROGATE_ESCAPE.search(text, start, len(text) if end is None else end) is None:
        return False  # the common case: no \\uD8xx-\\uDFxx escape at all
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def rename(obj: dict, columns: dict[str, str]) -> dict:
    """Rename the user's top-level columns to standard names (message keys are done later)."""
    if not columns:
        return obj
    out = dict(obj)
    for std, theirs in columns.items():
        if std in ("role", "content") or theirs not in out:
            continue
        out[std] = out.pop(theirs)
    return out


def detect(obj: dict) -> str | None:
    """The format a record's fields say it is in, or None."""
    for name, fields in SIGNATURES:
        if all(f in obj for f in fields):
            return name
    return None


def to_canonical(obj: object, fmt: str, columns: dict[str, str]) -> tuple[str, dict]:
    """(format, canonical record) or raise FormatError. fmt "auto" detects per record."""
    if not isinstance(obj, dict):
        raise FormatError("not_an_object", f"expected a JSON object (one record), got {type(obj).__name__}")
    obj = rename(obj, columns)
    found = detect(obj)
    if fmt == "auto":
        if found is None:
            keys = ", ".join(sorted(map(str, obj))) or "none"
            raise FormatError(
                "missing_messages",
                f"no known fields (keys: {keys}); expected 'messages' (chat), 'conversations' (ShareGPT), "
                "'instruction'+'output' (Alpaca), 'prompt'+'completion' or 'text'; "
                "map other names with data.columns, e.g. {prompt: question, completion: answer}",
            )
        fmt = found
    else:
        missing = [f for f in dict(SIGNATURES)[fmt] if f not in obj]
        if missing:
            keys = ", ".join(sorted(map(str, obj))) or "none"
            reason = "missing_messages" if fmt == "chat" else "missing_field"
            raise FormatError(reason, f"data.format is {fmt} but the record lacks {', '.join(map(repr, missing))} (keys: {keys}); map names with data.columns")
    return fmt, _CONVERT[fmt](obj, columns)


def _json_cell(value: object, field: str) -> object:
    """CSV and Parquet store a message list as a JSON string in one cell."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            parsed = loads(value)
        except Unreadable as e:
            raise FormatError(e.reason, f"'{field}' holds JSON that {e.detail}") from None
        except json.JSONDecodeError:
            raise FormatError("malformed_json", f"'{field}' holds text that is not valid JSON") from None
        if lone_surrogate(parsed, value):
            raise FormatError("bad_encoding", f"'{field}' {LONE_SURROGATE}")
        return parsed
    return value


def _extra(obj: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in obj.items() if k not in used}


def _system(obj: dict) -> list[dict]:
    s = obj.get("system")
    return [{"role": "system", "content": s}] if isinstance(s, str) and s.strip() else []


def _messages(items: object, field: str, columns: dict[str, str], role_key: str, content_key: str) -> list:
    items = _json_cell(items, field)
    if not isinstance(items, list) or not items:
        got = "an empty list" if items == [] else type(items).__name__
        raise FormatError("wrong_type", f"'{field}' must be a non-empty list of messages, got {got}")
    rk, ck = columns.get("role", role_key), columns.get("content", content_key)
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise FormatError("wrong_type", f"{field}[{i}] must be an object, got {type(m).__name__}")
        if rk not in m and ck not in m and ("role" in m or "content" in m):
            rk, ck = "role", "content"  # ShareGPT files that already use role/content
        # Parquet/Arrow structs give every message every key, null where a message had none.
        msg = {k: v for k, v in m.items() if k not in (rk, ck) and v is not None}
        msg["role"], msg["content"] = m.get(rk), m.get(ck)
        out.append(msg)
    return out


def _chat(obj: dict, columns: dict[str, str]) -> dict:
    return {**_extra(obj, ("messages",)), "messages": _messages(obj["messages"], "messages", columns, "role", "content")}


def _sharegpt(obj: dict, columns: dict[str, str]) -> dict:
    msgs = _messages(obj["conversations"], "conversations", columns, "from", "value")
    for i, m in enumerate(msgs):
        role = m["role"]
        if isinstance(role, str) and role.strip().lower() in SHAREGPT_ROLES:
            m["role"] = SHAREGPT_ROLES[role.strip().lower()]
        else:
            raise FormatError("unknown_role", f"conversations[{i}].from is {role!r}; use human, gpt or system")
    return {**_extra(obj, ("conversations", "system")), "messages": _system(obj) + msgs}


def _alpaca(obj: dict, columns: dict[str, str]) -> dict:
    instruction, inp, output = obj["instruction"], obj.get("input"), obj["output"]
    for name, v in (("instruction", instruction), ("output", output), ("input", inp)):
        if v is not None and not isinstance(v, str):
            raise FormatError("wrong_type", f"'{name}' must be a string, got {type(v).__name__}")
    user = instruction if not (inp and inp.strip()) else f"{instruction}\n\n{inp}"
    msgs = _system(obj) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {**_extra(obj, ("instruction", "input", "output", "system")), "messages": msgs}


def _turns(value: object, field: str, role: str, columns: dict[str, str]) -> list:
    """A prompt or completion: a string (one turn of `role`) or a message list, which CSV and
    Parquet hold as JSON text in one cell. Any other text stays text: "[INST] ..." is a
    prompt, and a completion may itself be JSON the model must learn to write."""
    if isinstance(value, str) and value.lstrip()[:1] == "[":
        try:
            items = loads(value)
        except ValueError:  # not JSON, or JSON it cannot read as a message list: the user's text
            items = None
        keys = (columns.get("role", "role"), "role")
        if isinstance(items, list) and items and all(isinstance(m, dict) and any(k in m for k in keys) for m in items):
            value = items
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _messages(value, field, columns, "role", "content")


def _prompt_completion(obj: dict, columns: dict[str, str]) -> dict:
    prompt = _turns(obj["prompt"], "prompt", "user", columns)
    completion = _turns(obj["completion"], "completion", "assistant", columns)
    return {**_extra(obj, ("prompt", "completion", "system")), "messages": _system(obj) + prompt + completion}


def _text(obj: dict, columns: dict[str, str]) -> dict:
    if not isinstance(obj["text"], str):
        raise FormatError("wrong_type", f"'text' must be a string, got {type(obj['text']).__name__}")
    return {**_extra(obj, ()), "text": obj["text"]}


_CONVERT = {"chat": _chat, "sharegpt": _sharegpt, "alpaca": _alpaca, "prompt_completion": _prompt_completion, "text": _text}
