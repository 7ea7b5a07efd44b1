"""Every family trains on its own objective: the supervised-only loss equals the model's own
`forward(labels=...)` loss, and the decode loop writes what `generate` writes, with Gemma's
soft-cap, Granite's and Cohere's scaling applied by the one helper (models/logits.py)."""

from __future__ import annotations

import pytest
import torch

from families import FAMILIES, build_family
from helpers import example_conversations
from tunekit.data.batches import collate
from tunekit.data.template import prompt_ids, tokenize_chat
from tunekit.infer import decode as gen
from tunekit.infer.greedy import greedy_batch
from tunekit.models import logits as logits_mod
from tunekit.models.logits import Post, output_layer
from tunekit.train.loss import supervised_loss_sum

EXPECTED_POST = {"gemma2": Post(softcap=0.5), "gemma3": Post(softcap=0.5), "granite": Post(scale_out=0.25),
                 "cohere": Post(scale_out=3.0)}


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(4, single_turn=False)]
    return collate(ex, [0, 1, 2, 3], tiny_tokenizer.pad_token_id)


def _own_loss(model, b) -> float:
    with torch.no_grad():
        return float(model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss)


def _our_loss(model, b) -> float:
    with torch.no_grad():
        total, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels)
    return float(total) / n


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_equals_the_models_own_loss(family, batch, tiny_tokenizer):
    model = build_family(family, len(tiny_tokenizer))
    layer = output_layer(model)
    assert layer is not None, "the fast path (decoder + output layer), not the full-logits fallback"
    assert layer.post == EXPECTED_POST.get(family, Post())
    assert abs(_our_loss(model, batch) - _own_loss(model, batch)) < 1e-5


@pytest.mark.parametrize("family", ["gemma2", "granite", "cohere"])
def test_a_post_processing_tunekit_did_not_know_falls_back_to_the_forward(family, batch, tiny_tokenizer, monkeypatch):
    """Were the config reading wrong (or a new family's forward different), the check catches it:
    the loss then comes from the model's own logits, still equal to its own loss."""
    model = build_family(family, len(tiny_tokenizer))
    monkeypatch.setattr(logits_mod, "post_from_config", lambda config: Post())
    assert output_layer(model) is None
    assert abs(_our_loss(model, batch) - _own_loss(model, batch)) < 1e-5
    plain = build_family("llama", len(tiny_tokenizer))
    assert output_layer(plain) is not None  # where nothing is missed, the check passes


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_loop_equals_generate(family, tiny_tokenizer):
    model = build_family(family, len(tiny_tokenizer), seed=1)
    prompts = [prompt_ids(tiny_tokenizer, [{"role": "user", "content": q}])
               for q in ("How much is the Crest plan?", "Where do I rotate a key?", "What is RW-4031?")]
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    ids, mask = gen.left_pad(prompts, pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, num_beams=1,
                             eos_token_id=sorted(stop), pad_token_id=pad, use_cache=True,
                             temperature=None, top_p=None, top_k=None)
    want = []
    for row in out[:, ids.shape[1]:].tolist():
        want.append(row[: next((j for j, t in enumerate(row) if t in stop), len(row))])
    assert gen._decoder_and_head(model) is not None
    assert greedy_batch(model, prompts, 6, stop, pad) == want
