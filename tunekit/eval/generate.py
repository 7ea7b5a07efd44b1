"""Batched greedy generation for evaluation.

Our own decode loop rather than `generate`, for one reason: a row that has written its
end-of-turn token leaves the batch (its KV cache rows are dropped), so the remaining
steps only pay for rows still writing. `generate` keeps computing finished rows until
the longest answer ends, which on a CPU is most of the eval stage's time when a base
model rambles beside a tuned model that answers in one sentence.

Prompts are sorted by length before batching so a batch pads little; they are
left-padded so every row's next token sits in the last column, with position ids
counted from each row's first real token, as `generate` does.
"""

from __future__ import annotations

import torch

from tunekit.data.template import prompt_ids
from tunekit.progress import Bar


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's configured ones."""
    ids = {tokenizer.eos_token_id}
    eos = model.generation_config.eos_token_id
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids - {None}


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every prompt right-aligned, so all rows continue at the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stop: set[int], pad_id: int) -> list[list[int]]:
    """Greedy continuation of each prompt, ending at (and excluding) a stop token."""
    from transformers import DynamicCache

    ids, mask = left_pad(prompts, pad_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits
    nxt = logits[:, -1].argmax(-1)
    last_pos = positions[:, -1]
    rows = list(range(len(prompts)))  # original index of each row still writing
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        keep = []
        for j, tok in enumerate(nxt.tolist()):
            if tok in stop:
                continue
            out[rows[j]].append(tok)
            keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            sel = torch.tensor(keep)
            cache.batch_select_indices(sel)
            nxt, mask, last_pos = nxt[sel], mask[sel], last_pos[sel]
            rows = [rows[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last_pos = last_pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                       past_key_values=cache, use_cache=True).logits
        nxt = logits[:, -1].argmax(-1)
    return out


def greedy_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, label: str) -> list[str]:
    """Greedy answer text to each conversation (which ends with a user turn)."""
    was_training = model.training
    model.eval()
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stop = stop_ids(model, tokenizer)
    answers: list[str] = [""] * len(prompts)
    with Bar(label, len(prompts)) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for i, toks in zip(idx, greedy_batch(model, [prompts[i] for i in idx], max_new_tokens, stop, tokenizer.pad_token_id)):
                answers[i] = tokenizer.decode(toks, skip_special_tokens=True).strip()
            bar.update(len(idx))
    model.train(was_training)
    return answers
