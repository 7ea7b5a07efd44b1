"""Methods: after a few optimiser steps only the chosen parameters changed, the rest are bit-identical."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import example_conversations
from tunekit.config import MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.errors import ConfigError
from tunekit.models.loading import load_model
from tunekit.train.loss import supervised_loss_sum
from tunekit.train.methods import apply_method, select_layers
from tunekit.train.optim import make_optimizer

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(3)]
    return collate(ex, [0, 1, 2], tiny_tokenizer.pad_token_id)


def _train_steps(model, batch, steps: int = 3, lora_plus_ratio=None) -> None:
    opt = make_optimizer(model, TrainConfig(lr=1e-2), lora_plus_ratio)
    for _ in range(steps):
        total, n = supervised_loss_sum(model, batch.input_ids, batch.attention_mask, batch.labels)
        (total / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _changed(model, batch) -> tuple[set[str], set[str], dict]:
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    _train_steps(model, batch)
    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    trainable = {k for k, p in after.items() if p.requires_grad}
    return changed, trainable, after


def _layer(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _module(name: str) -> str:
    return re.search(r"\.(\w+_proj)\.lora_", name).group(1)


@pytest.mark.parametrize("targets,layers,want_modules,want_layers", [
    ("all-linear", None, LINEAR, {0, 1}),
    (["q_proj", "v_proj"], None, {"q_proj", "v_proj"}, {0, 1}),
    ("all-linear", "last:1", LINEAR, {1}),
])
def test_lora_changes_only_adapters(tiny_model_dir, batch, targets, layers, want_modules, want_layers):
    model, summary = apply_method(load_model(tiny_model_dir), MethodConfig(kind="lora", r=4, target_modules=targets, layers=layers))
    changed, trainable, params = _changed(model, batch)
    assert trainable == {k for k in params if "lora_" in k}
    assert changed == trainable  # every adapter moved, every base weight is bit-identical
    assert {_module(k) for k in trainable} == want_modules
    assert {_layer(k) for k in trainable} == want_layers
    assert summary.trainable == sum(params[k].numel() for k in trainable)
    assert summary.layers == sorted(want_layers)


def test_full_on_chosen_layers(tiny_model_dir, batch):
    model, summary = apply_method(load_model(tiny_model_dir), MethodConfig(kind="full", layers="1-1"))
    changed, trainable, params = _changed(model, batch)
    assert trainable == {k for k in params if _layer(k) == 1}
    assert changed == trainable
    assert summary.layers == [1]


def test_full_on_all_layers_trains_embeddings(tiny_model_dir, batch):
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="full"))
    changed, trainable, params = _changed(model, batch)
    assert trainable == set(params) and "model.embed_tokens.weight" in changed


@pytest.mark.parametrize("method", [
    MethodConfig(kind="lora", target_modules=["q_proj", "qkv_proj"]),
    MethodConfig(kind="lora", target_modules="attn"),
    MethodConfig(kind="lora", layers="last:3"),
    MethodConfig(kind="lora", layers="0-2"),
    MethodConfig(kind="full", layers="2-3"),
    MethodConfig(kind="lora", layers="last:0"),
    MethodConfig(kind="full", layers="1-0"),
])
def test_bad_targets_and_layers_are_config_errors(tiny_model_dir, method):
    with pytest.raises(ConfigError, match=r"method\.(target_modules|layers)"):
        apply_method(load_model(tiny_model_dir), method)


def test_select_layers():
    assert select_layers(None, 4) == [0, 1, 2, 3]
    assert select_layers("last:2", 4) == [2, 3]
    assert select_layers("1-2", 4) == [1, 2]


def test_lora_plus_gives_b_matrices_a_larger_learning_rate(tiny_model_dir):
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="lora", r=2, alpha=4))
    opt = make_optimizer(model, TrainConfig(lr=1e-3), lora_plus_ratio=16)
    ids = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    names = {n: ids[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(lr == pytest.approx(16e-3 if "lora_B" in n else 1e-3) for n, lr in names.items())
    assert any("lora_B" in n for n in names) and any("lora_A" in n for n in names)
