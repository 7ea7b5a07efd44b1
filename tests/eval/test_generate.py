"""Our batched greedy decoder equals HF `generate(do_sample=False)` token for token."""

from __future__ import annotations

import pytest
import torch

from tunekit.data.template import prompt_ids
from tunekit.infer.greedy import greedy_answers, greedy_batch
from tunekit.models.loading import load_model

QUESTIONS = ["Hi", "Where do I rotate an API key? Thanks, that helps a lot.",
             "What does error RW-4031 mean?", "How much does the Crest plan cost per seat per month, and what is the refund window?"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model with larger random weights: at the default init it writes one token
    over and over, which would let a decoder with wrong positions or cache rows pass."""
    m = load_model(tiny_model_dir).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    ps = [prompt_ids(tiny_tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in ps}) == len(ps)  # all different lengths
    return ps


def _hf_greedy(model, prompt: list[int], n: int, stop: set[int], pad: int) -> list[int]:
    """Reference: HF generate on one unpadded prompt, cut at the first stop token."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=sorted(stop),
                             pad_token_id=pad, use_cache=True)
    toks = out[0, len(prompt):].tolist()
    for i, t in enumerate(toks):
        if t in stop:
            return toks[:i]
    return toks


def test_equals_hf_generate(model, prompts, tiny_tokenizer):
    n = 12
    stop = {tiny_tokenizer.eos_token_id}
    got = greedy_batch(model, prompts, n, stop, tiny_tokenizer.pad_token_id)
    want = [_hf_greedy(model, p, n, stop, tiny_tokenizer.pad_token_id) for p in prompts]
    assert got == want
    assert all(len(g) == n for g in got)
    assert len({tuple(g) for g in got}) == len(got) and all(len(set(g)) > 3 for g in got)  # not degenerate


def test_equals_hf_generate_when_a_row_stops_early(model, prompts, tiny_tokenizer):
    n = 6
    pad = tiny_tokenizer.pad_token_id
    free = {i: _hf_greedy(model, prompts[i], 2, {tiny_tokenizer.eos_token_id}, pad) for i in (0, 2)}
    # The second token prompt 0 writes becomes a stop token: that row ends after one token
    # while the others (unless they write it too) keep going.
    stop = {tiny_tokenizer.eos_token_id, free[0][1]}
    want = [_hf_greedy(model, p, n, stop, pad) for p in prompts]
    assert len(want[0]) == 1
    assert any(len(w) > 1 for w in want[1:])
    assert greedy_batch(model, prompts, n, stop, pad) == want
    # Stopping at once: the first token prompt 2 writes.
    stop = {tiny_tokenizer.eos_token_id, free[2][0]}
    want = [_hf_greedy(model, p, n, stop, pad) for p in prompts]
    assert want[2] == []
    assert greedy_batch(model, prompts, n, stop, pad) == want


def test_greedy_answers_restores_training_mode(model, tiny_tokenizer):
    model.train()
    answers = greedy_answers(model, tiny_tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS[:2]], 3, 8, "t")
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert model.training
    model.eval()
