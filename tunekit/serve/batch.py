"""`tunekit generate`: answer every prompt of a JSONL file, greedily, in batches.

The answers come from `infer.greedy.greedy_answers`, as the eval stage's do, so they are the ones
`tunekit eval` would score for the same prompts. Every line is checked before the model loads: a typo on
line 9,000 should not cost the time to answer the 8,999 before it.

Answers are written as they come, a few batches at a time, to `<output>.partial`, so a crash or
Ctrl-C at prompt 9,000 keeps the 8,999 before it: the same command run again resumes there. The
.partial's first line records what its answers depend on (model, dtype, --max-new-tokens, the
prompts as asked); answers made for anything else are not resumed but started over.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunekit import atomic
from tunekit.data.records import check_messages
from tunekit.errors import DataError
from tunekit.infer.sampling import check_sizes

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


@dataclass
class Written:
    path: Path
    answers: int  # in the file, resumed ones included
    tokens: int  # written by this call (resumed answers are not counted)
    seconds: float  # this call's time answering
    resumed: int = 0  # answers taken over from an earlier, interrupted call


def partial_path(output: str | Path) -> Path:
    return Path(f"{output}.partial")


def generate_file(model, tokenizer, prompts: list[Prompt], output: str | Path, label: str, max_new_tokens: int = 256,
                  batch_size: int = 16, say: Callable[[str], None] | None = None) -> Written:
    """Answer every prompt greedily and write the input objects with "answer" and "model" to
    `output`, in input order.

    Answers go in input-order chunks of 4 batches to `<output>.partial` (appended, fsynced), which
    becomes `output` when the last is written. Run again with the same prompts and settings after
    a crash or Ctrl-C, it resumes after the answers the .partial holds."""
    from tunekit.infer.greedy import greedy_answers
    from tunekit.progress import console

    say = say or (lambda text: console.print(text, markup=False, soft_wrap=True))  # a path must not break across lines
    check_sizes(max_new_tokens, batch_size)
    output, chunk = Path(output), 4 * batch_size  # a few batches: greedy_answers sorts each chunk by length
    partial = partial_path(output)
    header = _header(model, prompts, label, max_new_tokens)
    done = resumed = _resume(partial, header, prompts, label, say)
    start, tokens = time.perf_counter(), 0
    try:
        with open(partial, "a", encoding="utf-8") as f:
            for s in range(done, len(prompts), chunk):
                part = prompts[s : s + chunk]
                answers = greedy_answers(model, tokenizer, [p.messages for p in part], max_new_tokens, batch_size,
                                         f"generate {s + 1:,}-{s + len(part):,} of {len(prompts):,}")
                f.writelines(_line(p, a, label) for p, a in zip(part, answers, strict=True))
                f.flush()
                os.fsync(f.fileno())
                done += len(part)
                # greedy_answers hands back text; re-encoding it counts the tokens written (the stop token aside).
                tokens += sum(len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"])
    except KeyboardInterrupt:  # the CLI adds how to resume
        say(f"generate: {done:,} of {len(prompts):,} answers are kept in {partial}")
        raise
    except Exception:
        say(f"generate: {done:,} of {len(prompts):,} answers are kept in {partial}; rerun the same command to resume after them")
        raise
    seconds = time.perf_counter() - start
    with atomic.open_write(output) as out, open(partial, encoding="utf-8") as f:
        next(f)  # the header
        out.writelines(f)
    partial.unlink()
    return Written(output, done, tokens, seconds, resumed)


# Keys generate adds to an input object; the rest of a written line is the input (see Prompt.record).
_ADDED = ("answer", "model")
_KEY = "tunekit generate"  # the .partial header's one key


def _line(p: Prompt, answer: str, label: str) -> str:
    return json.dumps({**p.record, "answer": answer, "model": label}, ensure_ascii=False) + "\n"


def _header(model, prompts: list[Prompt], label: str, max_new_tokens: int) -> dict:
    """The .partial's first line: what its answers depend on beyond each line's input object. The
    prompts' digest covers what the model was asked (a --system prompt is in no input object)."""
    asked = hashlib.sha256()
    for p in prompts:
        asked.update(json.dumps([p.record, p.messages], sort_keys=True).encode() + b"\n")
    return {_KEY: {"model": label, "dtype": str(getattr(model, "dtype", "")), "max_new_tokens": max_new_tokens,
                   "prompts": asked.hexdigest()}}


def _resume(partial: Path, header: dict, prompts: list[Prompt], label: str, say: Callable[[str], None]) -> int:
    """How many answers `partial` already holds for these prompts; it is cut to them (a torn last
    chunk), or started afresh with `header` when it was written for other prompts or settings."""
    kept, size = 0, 0
    if partial.is_file():
        lines = partial.read_bytes().split(b"\n")[:-1]  # only whole lines: a crash may tear the last one
        if lines and _json(lines[0]) == header:
            size = len(lines[0]) + 1
            for raw, p in zip(lines[1:], prompts, strict=False):
                row = _json(raw)
                if not (isinstance(row, dict) and isinstance(row.get("answer"), str) and row.get("model") == label
                        and _input(row) == _input(p.record)):
                    break
                kept, size = kept + 1, size + len(raw) + 1
            with open(partial, "r+b") as f:  # drop what follows the answers kept
                f.truncate(size)
                os.fsync(f.fileno())
            if kept:
                say(f"generate: resuming after {kept:,} answers (kept in {partial}); {len(prompts) - kept:,} to go")
            return kept
        say(f"generate: {partial} {_unlike(_json(lines[0]) if lines else None, header)}; starting over")
    atomic.write_text(partial, json.dumps(header, ensure_ascii=False) + "\n")
    return 0


def _unlike(old: object, header: dict) -> str:
    """What made an earlier .partial's answers unfit."""
    old, new = old.get(_KEY) if isinstance(old, dict) else None, header[_KEY]
    if not isinstance(old, dict):
        return "is not one tunekit generate wrote"
    names = {"prompts": "other prompts (the input file or --system)", "model": f"another model ({old.get('model')})",
             "dtype": f"another dtype ({old.get('dtype')})", "max_new_tokens": f"--max-new-tokens {old.get('max_new_tokens')}"}
    unlike = [names[k] for k in new if old.get(k) != new[k]]
    return "holds answers to " + ", ".join(unlike) if unlike else "was written by another version of tunekit generate"



def _input(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _ADDED}


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
