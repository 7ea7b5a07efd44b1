"""Streaming generation of one conversation: the engine behind `tunekit chat`.

An answer here is the answer the eval stage scored: the prompt is built by
`template.prompt_ids`, decoding stops at `generate.stop_ids`, and the default is greedy.

Our own token loop rather than `model.generate(streamer=...)`: `generate` fills every setting
left unset from the model's generation_config (a repetition penalty or top_k shipped with a
model would change "greedy" answers away from what `greedy_answers` wrote), and a loop in
this thread stops cleanly on Ctrl-C. Sampling reuses transformers' logits warpers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunekit.data.template import prompt_ids
from tunekit.errors import ConfigError, ModelError
from tunekit.hardware import Precision, choose_precision
from tunekit.models.tuned import Target, load_target, resolve_target, run_config, run_precision
from tunekit.serve.batch import check_sizes

DTYPES = ("float32", "bfloat16")
# Held back from the stream until more text follows: whitespace (a final answer is stripped, as
# greedy_answers strips it) and U+FFFD, which decode() writes for a UTF-8 character whose
# remaining bytes are still to come in the next tokens.
_UNSETTLED = re.compile(r"[\s\ufffd]+$")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def check(self) -> Sampling:
        check_sizes(self.max_new_tokens)
        if self.temperature < 0:
            raise ConfigError(f"--temperature is {self.temperature}; use 0 for greedy or a positive value to sample")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p is {self.top_p}; it must be in (0, 1] (1 keeps every token)")
        return self

    def describe(self) -> str:
        if self.temperature == 0:
            return "greedy"
        return f"sampling (temperature {self.temperature:g}" + (f", top-p {self.top_p:g})" if self.top_p < 1 else ")")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    target: Target
    dtype: str
    precision: Precision


@dataclass
class Answer:
    text: str
    tokens: int  # generated, not counting the stop token
    prompt_tokens: int
    first_token_s: float  # prompt in -> first token out
    seconds: float

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first one."""
        rest = self.seconds - self.first_token_s
        return (self.tokens - 1) / rest if self.tokens > 1 and rest > 0 else 0.0


def open_model(spec: str, base: str | None = None, runs_dir: str | Path = "runs", dtype: str | None = None,
               precision: str | None = None) -> Loaded:
    """Resolve and load what `spec` names (see tuned.resolve_target). dtype: by default the run's
    model.dtype for a run, else float32. precision (auto | fp32 | bf16 | fp16): by default what the
    eval stage uses (tuned.run_precision: the precision the run trained in), else auto, so a run's
    chat and generate answer as its eval did."""
    target = resolve_target(spec, base=base, runs_dir=runs_dir)
    dtype = dtype or _run_setting(target, "model", "dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if precision:
        chosen = choose_precision(precision, model_dir=target.model, key="--precision")
    else:  # a run answers in the precision it trained (and its eval ran) in
        chosen = run_precision(target.run_dir, target.model)
    model, tokenizer = load_target(target, dtype, chosen)
    return Loaded(model, tokenizer, target, dtype, chosen)


def _run_setting(target: Target, section: str, key: str) -> str | None:
    if target.run_dir is None:
        return None
    return (run_config(target.run_dir).get(section) or {}).get(key)


def describe(loaded: Loaded) -> str:
    """One line: what was loaded, from where, in which dtype."""
    t = loaded.target
    how = f"{loaded.dtype} weights, computing in {loaded.precision.describe()}"
    if t.adapter:
        return f"{t.label} (base {t.model}, adapter {t.adapter}; {how})"
    if Path(t.label).expanduser().resolve() == t.model.resolve():  # a folder named by its path
        return f"{t.model} ({how})"
    return f"{t.label} (weights {t.model}; {how})"


def context_limit(model, max_new_tokens: int) -> int | None:
    """Prompt tokens that leave room for a full answer within the model's context; None: no known limit."""
    window = getattr(model.config, "max_position_embeddings", None)
    if not window:
        return None
    if window - max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                          f"{window} tokens; lower it")
    return window - max_new_tokens


def conversation(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def fit_context(tokenizer, system: str | None, turns: list[dict], limit: int | None) -> tuple[list[int], int]:
    """(prompt ids, how many of the oldest turns were left out to fit `limit`). Turns go in
    user+assistant pairs, oldest first; the system prompt and the last question always stay."""
    dropped = 0
    while True:
        ids = prompt_ids(tokenizer, conversation(system, turns[dropped:]))
        if limit is None or len(ids) <= limit:
            return ids, dropped
        if len(turns) - dropped <= 1:
            raise ModelError(f"this message makes a prompt of {len(ids)} tokens (with the system prompt and chat template), "
                             f"over the {limit} the model's context leaves beside --max-new-tokens; shorten it, "
                             f"or lower --max-new-tokens")
        dropped += 2


class TextStream:
    """Decoded text of a growing token list, handed to `on_text` as soon as it is settled:
    trailing whitespace and half-written UTF-8 characters wait for the next tokens."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.shown = ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._emit(_UNSETTLED.sub("", self._text()))

    def close(self) -> str:
        """The whole answer, stripped; what is still held back is handed out now."""
        text = self._text()
        self._emit(text)
        return text

    def _emit(self, text: str) -> None:
        # Decoding more tokens only appends (byte-level BPE); the check guards odd decoders,
        # whose text then shows in full at the end.
        if len(text) > len(self.shown) and text.startswith(self.shown):
            piece, self.shown = text[len(self.shown):], text
            self.on_text(piece)


def _picker(sampling: Sampling) -> Callable[[torch.Tensor, torch.Tensor], int]:
    if sampling.temperature == 0:
        return lambda ids, logits: int(logits.argmax(-1))
    from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warp = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)]
                               + ([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1 else []))

    def pick(ids: torch.Tensor, logits: torch.Tensor) -> int:
        probs = torch.softmax(warp(ids, logits.float()[None]), dim=-1)  # the warpers take a batch
        return int(torch.multinomial(probs[0], 1))

    return pick


@torch.no_grad()
def stream_answer(model, tokenizer, prompt: list[int], sampling: Sampling, stop: set[int],
                  on_text: Callable[[str], None]) -> Answer:
    """Write the next assistant turn after `prompt`, handing text to `on_text` as it is decoded.
    A KeyboardInterrupt (Ctrl-C) propagates; the caller decides what to keep."""
    start = time.perf_counter()
    stream = TextStream(tokenizer, on_text)
    pick = _picker(sampling)
    ids = torch.tensor([prompt], device=model.device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = 0.0
    for step in range(sampling.max_new_tokens):
        tok = pick(ids, out.logits[0, -1])
        first = first or time.perf_counter() - start
        if tok in stop:
            break
        stream.add(tok)
        if step == sampling.max_new_tokens - 1:
            break
        nxt = torch.tensor([[tok]], device=ids.device)
        if sampling.temperature:
            ids = torch.cat([ids, nxt], dim=1)  # the warpers may look at what was written; greedy never does
        out = model(input_ids=nxt, cache=out.cache, use_cache=True)
    text = stream.close()
    return Answer(text, len(stream.ids), len(prompt), first, time.perf_counter() - start)
