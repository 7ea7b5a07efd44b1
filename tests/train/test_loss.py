"""Supervised loss: equals the HF model's own loss; accumulation equals one big batch."""

from __future__ import annotations

import pytest
import torch

from helpers import example_conversations
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.models.loading import load_model
from tunekit.train import loss as loss_mod
from tunekit.train.loss import supervised_loss_sum


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    convs = example_conversations(4, single_turn=False)
    return [tokenize_chat(tiny_tokenizer, c["messages"]) for c in convs]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir).eval()


def test_loss_equals_hf_loss(model, examples, tiny_tokenizer):
    b = collate(examples, [0, 1, 2, 3], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        total, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels)
        hf = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    assert n == b.supervised > 0
    assert abs(float(total) / n - float(hf)) < 1e-5


def test_chunked_loss_equals_unchunked(model, examples, tiny_tokenizer, monkeypatch):
    b = collate(examples, [0, 1, 2, 3], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        whole, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels)
    monkeypatch.setattr(loss_mod, "CHUNK", 7)  # force several chunks
    with torch.no_grad():
        chunked, n2 = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels)
    assert n2 == n and abs(float(chunked) - float(whole)) / n < 1e-6


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def test_accumulated_gradients_equal_one_batch(model, examples, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    full = collate(examples, [0, 1, 2, 3], pad)
    w = full.input_ids.shape[1]
    # Micro-batches padded to the full width, so their concatenation is exactly `full`.
    parts = [collate(examples, idx, pad) for idx in ([0, 1], [2, 3])]
    parts = [type(p)(*(torch.nn.functional.pad(t, (0, w - t.shape[1]), value=v)
                       for t, v in ((p.input_ids, pad), (p.attention_mask, 0), (p.labels, -100))), p.tokens) for p in parts]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), full.input_ids)
    assert torch.equal(torch.cat([p.labels for p in parts]), full.labels)
    n_total = sum(p.supervised for p in parts)
    assert n_total == full.supervised

    model.zero_grad(set_to_none=True)
    total, _ = supervised_loss_sum(model, full.input_ids, full.attention_mask, full.labels)
    (total / n_total).backward()
    want = _grads(model)

    model.zero_grad(set_to_none=True)
    for p in parts:
        s, _ = supervised_loss_sum(model, p.input_ids, p.attention_mask, p.labels)
        (s / n_total).backward()
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    assert want.keys() == got.keys() and want
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=0), (k, (got[k] - want[k]).abs().max())
