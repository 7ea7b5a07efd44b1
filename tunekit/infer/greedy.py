"""Greedy answers to many conversations, in batches: what eval scores, `tunekit generate` writes,
the export checks compare and the replay set caches (which also samples retries through the same
batches). The loop itself is infer/decode.py."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tunekit.data.template import prompt_ids
from tunekit.infer.cache import SharedPrefix
from tunekit.infer.decode import Batch, Row
from tunekit.progress import Bar


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's configured ones."""
    ids = {tokenizer.eos_token_id}
    eos = model.generation_config.eos_token_id
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids - {None}


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stop: set[int], pad_id: int,
                 shared: SharedPrefix | None = None, samplers: list | None = None) -> list[list[int]]:
    """Greedy continuation of each prompt, ending at (and excluding) a stop token.

    `shared`: a prefix all these prompts start with, kept across batches (greedy_answers passes the
    one of all its prompts); by default the batch's own longest common prefix.
    `samplers`: per prompt, a token sampler (infer/sampling.py) in place of the argmax, or None.
    """
    rows = [Row(p, max_new_tokens, stop, sample=s) for p, s in zip(prompts, samplers or [None] * len(prompts), strict=True)]
    batch = Batch(model, rows, pad_id, shared)
    while batch.step():
        pass
    return [row.tokens for row in rows]


def greedy_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, label: str) -> list[str]:
    """Greedy answer text to each conversation (which ends with a user turn)."""
    return [text for text, _ in greedy_outputs(model, tokenizer, conversations, max_new_tokens, batch_size, label)]


def greedy_outputs(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
                   label: str, samplers: list | None = None) -> list[tuple[str, bool]]:
    """(greedy answer text, whether it ended by itself before max_new_tokens) per conversation;
    sampled instead where `samplers` gives one."""
    answers: list[tuple[str, bool]] = [("", True)] * len(conversations)
    for idx, outputs in greedy_batches(model, tokenizer, conversations, max_new_tokens, batch_size, label,
                                       samplers=samplers):
        for i, out in zip(idx, outputs, strict=True):
            answers[i] = out
    return answers


def greedy_batches(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, label: str,
                   skip: int = 0, samplers: list | None = None) -> Iterator[tuple[list[int], list[tuple[str, bool]]]]:
    """Greedy answers a batch at a time: (indices of the batch's conversations, (text, ended) of each).

    Batches are the conversations sorted by prompt length, cut every `batch_size`. `skip` leaves out the
    first batches (a resumed eval has their answers, eval/partial.py); the others are exactly the batches
    of a whole call, as batch composition can move the numerics and so the greedy tokens.
    `samplers`: per conversation, a token sampler in place of the argmax, or None (greedy_batch).
    """
    was_training = model.training
    model.eval()
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stop = stop_ids(model, tokenizer)
    shared = SharedPrefix.of(prompts) if prompts else None  # over all prompts: the template preamble runs once
    first = min(skip * batch_size, len(order))
    try:
        with Bar(label, len(order) - first) as bar:
            for s in range(first, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = [prompts[i] for i in idx]
                tokens = greedy_batch(model, batch, max_new_tokens, stop, tokenizer.pad_token_id, shared,
                                      None if samplers is None else [samplers[i] for i in idx])
                yield idx, [(tokenizer.decode(t, skip_special_tokens=True).strip(), len(t) < max_new_tokens) for t in tokens]
                bar.update(len(idx))
    finally:
        model.train(was_training)
