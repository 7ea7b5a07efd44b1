"""One answer written as it is decoded: the engine behind `tunekit chat`.

An answer here is the answer the eval stage scored: the same decode loop (infer/decode.py), the
prompt built by `template.prompt_ids`, stopping at `greedy.stop_ids`, greedy by default. The
loop runs in the caller's thread, so Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunekit.infer.cache import SharedPrefix
from tunekit.infer.decode import Batch, Row
from tunekit.infer.sampling import Sampling, sampler

# Held back from the stream until more text follows: whitespace (a final answer is stripped, as
# greedy_answers strips it) and U+FFFD, which decode() writes for a UTF-8 character whose
# remaining bytes are still to come in the next tokens.
_UNSETTLED = re.compile(r"[\s\ufffd]+$")


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
        self._emit(settled(self._text()))

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


def settled(text: str) -> str:
    """`text` without what may still change when more tokens follow."""
    return _UNSETTLED.sub("", text)


def pad_id(tokenizer) -> int:
    """The id that fills left padding (masked: any id will do when the tokenizer names none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.no_grad()
def stream_answer(model, tokenizer, prompt: list[int], sampling: Sampling, stop: set[int],
                  on_text: Callable[[str], None]) -> Answer:
    """Write the next assistant turn after `prompt`, handing text to `on_text` as it is decoded.
    A KeyboardInterrupt (Ctrl-C) propagates; the caller decides what to keep."""
    start = time.perf_counter()
    stream = TextStream(tokenizer, on_text)
    row = Row(prompt, sampling.max_new_tokens, stop, sample=sampler(sampling.temperature, sampling.top_p))
    batch = Batch(model, [row], pad_id(tokenizer), SharedPrefix([]))  # one prompt: one prefill forward
    first = time.perf_counter() - start
    while True:
        for tok in row.tokens[len(stream.ids):]:
            stream.add(tok)
        if not batch.step():
            break
    text = stream.close()
    return Answer(text, len(stream.ids), len(prompt), first, time.perf_counter() - start)
