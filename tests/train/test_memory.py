"""The memory estimate printed before training: its parts follow what trains, and its
activation term is the right size for what autograd really keeps (tiny model, loosely)."""

from __future__ import annotations

import pytest
import torch

from tunekit.config import Config, DataConfig, MethodConfig, TrainConfig
from tunekit.models.loading import load_model
from tunekit.train.loss import supervised_loss_sum
from tunekit.train.memory import estimate_memory, print_memory_estimate
from tunekit.train.methods import apply_method

DATA = DataConfig(train="x.jsonl", max_length=64, chunk_overlap=0)
TRAIN = TrainConfig(batch_size=2)


def _estimate(model_dir, method: MethodConfig, train: TrainConfig = TRAIN):
    model, _ = apply_method(load_model(model_dir), method)
    return model, estimate_memory(model, method, train, DATA)


def test_parts_follow_what_trains(tiny_model_dir):
    model, full = _estimate(tiny_model_dir, MethodConfig(kind="full"))
    size = sum(p.numel() * 4 for p in model.parameters())  # fp32; the tied matrix once
    assert full["weights"] == full["gradients"] == size
    assert full["optimizer"] == 2 * size
    assert full["total"] == sum(full[k] for k in ("weights", "gradients", "optimizer", "activations", "logits"))
    model, lora = _estimate(tiny_model_dir, MethodConfig(kind="lora", r=4))
    assert lora["gradients"] == sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert lora["optimizer"] == 2 * lora["gradients"] and lora["weights"] > size
    assert "GiB" in lora["description"] and "2 x 64 tokens" in lora["description"]


@pytest.mark.parametrize("method,blocks", [
    (MethodConfig(kind="lora", layers="last:1"), 1),
    (MethodConfig(kind="lora", layers="last:1", train_embeddings=True), 2),  # gradient runs down to the embeddings
    (MethodConfig(kind="full", layers="1-1"), 1),
    (MethodConfig(kind="full", layers="0-0"), 2),
    (MethodConfig(kind="full", parameters=["lm_head"]), 2),  # tied: the head is the embeddings
])
def test_backward_runs_from_the_lowest_trainable_block(tiny_model_dir, method, blocks):
    _, est = _estimate(tiny_model_dir, method)
    assert est["layers_with_gradient"] == blocks


def test_an_untied_head_alone_needs_no_block_activations(untied_model_dir):
    _, est = _estimate(untied_model_dir, MethodConfig(kind="full", parameters=["lm_head"]))
    assert est["layers_with_gradient"] == 0 and est["activations"] == 0


def test_gradient_checkpointing_and_dora_change_activations(tiny_model_dir):
    _, plain = _estimate(tiny_model_dir, MethodConfig(kind="lora"))
    _, ckpt = _estimate(tiny_model_dir, MethodConfig(kind="lora"), TrainConfig(batch_size=2, gradient_checkpointing=True))
    _, dora = _estimate(tiny_model_dir, MethodConfig(kind="dora"))
    assert ckpt["activations"] < plain["activations"] < dora["activations"]


def _saved_bytes(model, ids, mask) -> int:
    """Bytes of the tensors autograd saves for backward during one loss forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    labels = ids.masked_fill(mask == 0, -100)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        supervised_loss_sum(model, ids, mask, labels)
    return sum(seen.values())


@pytest.mark.parametrize("method", [MethodConfig(kind="lora"), MethodConfig(kind="dora"), MethodConfig(kind="full", layers="last:1")])
def test_activation_estimate_is_the_size_autograd_keeps(tiny_model_dir, method):
    model, est = _estimate(tiny_model_dir, method)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (TRAIN.batch_size, DATA.max_length))
    mask = torch.ones_like(ids)
    mask[1:, DATA.max_length // 2 :] = 0  # a padded row, as real batches have
    saved = _saved_bytes(model, ids, mask)
    # Loose: the estimate adds the logits' backward and assumes full rows; it must be of the same size.
    assert 0.5 < (est["activations"] + est["logits"]) / saved < 3


def test_print_memory_estimate_returns_what_it_prints(tiny_model_dir, capsys):
    cfg = Config(data=DATA, method=MethodConfig(kind="lora"), train=TRAIN)
    model, _ = apply_method(load_model(tiny_model_dir), cfg.method)
    est = print_memory_estimate(model, cfg)
    assert est["total"] > 0
    assert "GiB estimated" in capsys.readouterr().err
