"""`tunekit generate`: answer every prompt of a JSONL file, greedily, in batches.

The answers come from the eval stage's `greedy_answers`, so they are the ones `tunekit eval`
would score for the same prompts. Every line is checked before the model loads: a typo on
line 9,000 should not cost the time to answer the 8,999 before it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tunekit import atomic
from tunekit.data.records import check_messages
from tunekit.errors import ConfigError, DataError

EXPECTED = ('one JSON object a line: {"messages": [..., {"role": "user", "content": "..."}]} (a trailing assistant turn '
            'is kept as the reference answer), {"prompt": "..."} or {"instruction": "...", "input": "..."}')


@dataclass
class Prompt:
    line: int
    record: dict  # what is written back: the input object (a trailing assistant turn moved to "reference")
    messages: list[dict]  # what the model answers


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.answers.jsonl")


def read_prompts(path: str | Path, system: str | None = None) -> list[Prompt]:
    """Every prompt of the file, checked; DataError naming the line at the first bad one.
    `system` goes in front of prompts that have no system message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no prompts file at {path}; give a JSONL file with {EXPECTED}")
    prompts = []
    # Lines are decoded one by one so an encoding error names its line (a text stream decodes in chunks).
    for n, raw in enumerate(path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}, line {n}: not UTF-8 text (byte {e.start + 1} of the line); save the file as UTF-8") from None
        if text.strip():
            prompts.append(_prompt(path, n, text, system))
    if not prompts:
        raise DataError(f"{path} holds no prompts; write {EXPECTED}")
    return prompts


def _prompt(path: Path, n: int, text: str, system: str | None) -> Prompt:
    def bad(what: str) -> DataError:
        return DataError(f"{path}, line {n}: {what}; expected {EXPECTED}")

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise bad(f"a JSON {type(obj).__name__}, not an object")
    record = dict(obj)
    if "messages" in obj:
        messages, reference = _messages(obj["messages"], bad)
        if reference is not None:
            record["messages"], record["reference"] = messages, reference
    elif "prompt" in obj:
        messages = _system(obj, bad) + [{"role": "user", "content": _text(obj, "prompt", bad)}]
        _reference(obj, "completion", record)
    elif "instruction" in obj:
        user = _text(obj, "instruction", bad)
        extra = obj.get("input")
        if extra is not None and not isinstance(extra, str):
            raise bad(f"'input' must be a string, got {type(extra).__name__}")
        messages = _system(obj, bad) + [{"role": "user", "content": f"{user}\n\n{extra}" if extra and extra.strip() else user}]
        _reference(obj, "output", record)
    else:
        raise bad(f"no 'messages', 'prompt' or 'instruction' field (keys: {', '.join(map(str, obj)) or 'none'})")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return Prompt(n, record, messages)


def _text(obj: dict, key: str, bad) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise bad(f"'{key}' must be a non-empty string, got {value!r:.60}")
    return value


def _system(obj: dict, bad) -> list[dict]:
    if "system" not in obj or obj["system"] is None:
        return []
    return [{"role": "system", "content": _text(obj, "system", bad)}]


def _reference(obj: dict, key: str, record: dict) -> None:
    if isinstance(obj.get(key), str):
        record["reference"] = obj[key]


def _messages(value: object, bad) -> tuple[list[dict], str | None]:
    """(the prompt's messages, the reference answer when the conversation ended with one)."""
    if not isinstance(value, list) or not value:
        raise bad(f"'messages' must be a non-empty list of {{\"role\", \"content\"}} objects, got {value!r:.60}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
    messages, reference = list(value), None
    if messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
        messages, reference = messages[:-1], messages[-1]["content"]
    if not messages:
        raise bad("'messages' holds only an assistant turn; there is no question to answer")
    problem = check_messages(messages, need_assistant=False)
    if problem is not None:
        raise bad(f"'messages' is not a conversation to answer: {problem[1]}")
    return [{"role": m["role"], "content": m["content"]} for m in messages], reference


def check_sizes(max_new_tokens: int, batch_size: int) -> None:
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} is {value}; give at least 1")


@dataclass
class Written:
    path: Path
    answers: int
    tokens: int
    seconds: float


def generate_file(model, tokenizer, prompts: list[Prompt], output: str | Path, label: str,
                  max_new_tokens: int = 256, batch_size: int = 16) -> Written:
    """Answer every prompt greedily and write the input objects with "answer" and "model" to
    `output` (atomically), in input order."""
    from tunekit.eval.generate import greedy_answers

    check_sizes(max_new_tokens, batch_size)
    start = time.perf_counter()
    answers = greedy_answers(model, tokenizer, [p.messages for p in prompts], max_new_tokens, batch_size, "generate")
    seconds = time.perf_counter() - start
    # greedy_answers hands back text; re-encoding it counts the tokens written (the stop token aside).
    tokens = sum(len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]) if answers else 0
    atomic.write_jsonl(output, ({**p.record, "answer": a, "model": label} for p, a in zip(prompts, answers, strict=True)))
    return Written(Path(output), len(answers), tokens, seconds)
