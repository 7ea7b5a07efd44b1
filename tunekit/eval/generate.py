"""Batched greedy generation for evaluation.

Prompts are sorted by length before batching so a batch pads little, left-padded so
every row's next token sits in the last column, and decoded with the KV cache until
every row has written its end-of-turn token or `max_new_tokens`.
"""

from __future__ import annotations

import torch

from tunekit.data.template import prompt_ids
from tunekit.progress import Bar


@torch.no_grad()
def greedy_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, label: str) -> list[str]:
    """Greedy answer to each conversation (which ends with a user turn)."""
    model.eval()
    model.config.use_cache = True
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    stop = sorted({tokenizer.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(model.generation_config.eos_token_id, int) else (model.generation_config.eos_token_id or []))} - {None})
    with Bar(label, len(prompts)) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=stop, pad_token_id=pad, num_beams=1,
            )
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
            bar.update(len(idx))
    model.config.use_cache = False
    return answers
