"""Chat template and loss mask.

The conversation is rendered with the model's own chat template. Which tokens carry
loss is found by rendering, not by searching for marker strings: for every assistant
turn i, render(messages[:i], add_generation_prompt=True) is the text before the
answer and render(messages[:i+1]) the text through its end-of-turn token, so the span
between them is exactly what the model must learn to write, including the token that
tells it to stop. This works for templates without `{% generation %}` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.errors import DataError

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken."""

    @property
    def supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of each assistant answer + end-of-turn."""
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not full.startswith(before) or not full.startswith(through):
            raise DataError(
                "the model's chat template does not render conversations incrementally "
                "(a prefix of the conversation is not a prefix of its rendering); "
                "the loss mask cannot be found. Use a model with a standard chat template."
            )
        # Loss ends at the end-of-turn token: the newline a template adds after it is
        # formatting the model never has to produce.
        end = len(through.rstrip("\n "))
        spans.append((len(before), end))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict]) -> Tokenized:
    """Token ids and labels: loss on every assistant answer and its end-of-turn token only."""
    full, spans = assistant_spans(tokenizer, messages)
    # The template already writes any BOS; letting the tokenizer add one would double it.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if any(a <= s < b for a, b in spans):
            labels[j] = ids[j]
    return Tokenized(ids, labels)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the model to write the next assistant turn."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
