"""Methods: after two optimiser steps only the chosen parameters changed, the rest are bit-identical."""

from __future__ import annotations

import math
import re

import pytest
import torch

from helpers import example_conversations
from tunekit.config import MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.errors import ConfigError
from tunekit.models.loading import load_model
from tunekit.train.loop import optimizer_step
from tunekit.train.methods import apply_method, block_of, select_layers
from tunekit.train.optim import make_optimizer, make_scheduler

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
EMBED, HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(3)]
    return collate(ex, [0, 1, 2], tiny_tokenizer.pad_token_id)


def train_two_steps(model, batch, method: MethodConfig) -> None:
    """Two optimiser steps as the loop takes them (LoRA+ for every LoRA kind, clipping, schedule)."""
    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant")
    opt = make_optimizer(model, cfg, method.lora_plus_ratio if method.kind != "full" else None)
    sched = make_scheduler(opt, cfg, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for _ in range(2):
        optimizer_step(model, [batch], params, opt, sched, cfg.max_grad_norm)


def run(model_dir, batch, method: MethodConfig):
    """Apply `method`, train two steps; returns (model, summary, names that changed, names that train).

    Names come from named_parameters(remove_duplicate=False), so a tied matrix shows up
    under both its names (embeddings and LM head) and is compared under each.
    """
    model, summary = apply_method(load_model(model_dir), method)
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    train_two_steps(model, batch, method)
    after = dict(model.named_parameters(remove_duplicate=False))
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    trainable = {n for n, p in after.items() if p.requires_grad}
    return model, summary, changed, trainable


def _adapted(names: set[str]) -> set[tuple[int | None, str]]:
    """(block, module) of every LoRA-adapted module among parameter names."""
    return {(block_of(n), n.split(".lora_")[0].rsplit(".", 1)[-1]) for n in names if ".lora_" in n}


def _saved(names: set[str]) -> set[str]:
    """Modules PEFT trains as whole copies (modules_to_save)."""
    return {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in names if ".modules_to_save." in n}


LORA_CASES = {
    "lora all-linear": (MethodConfig(kind="lora", r=4), LINEAR, {0, 1}, set()),
    "lora list": (MethodConfig(kind="lora", r=4, target_modules=["q_proj", "v_proj"]), {"q_proj", "v_proj"}, {0, 1}, set()),
    "lora last:1": (MethodConfig(kind="lora", r=4, layers="last:1"), LINEAR, {1}, set()),
    "lora regex": (MethodConfig(kind="lora", r=4, target_modules=r".*\.mlp\.(up|down)_proj"), {"up_proj", "down_proj"}, {0, 1}, set()),
    "lora regex 0-0": (MethodConfig(kind="lora", r=4, target_modules=r".*_proj", layers="0-0"), LINEAR, {0}, set()),
    "dora": (MethodConfig(kind="dora", r=4, target_modules=["q_proj", "v_proj"]), {"q_proj", "v_proj"}, {0, 1}, set()),
    "dora last:1 lora+": (MethodConfig(kind="dora", r=4, layers="last:1", lora_plus_ratio=4), LINEAR, {1}, set()),
    "rslora": (MethodConfig(kind="rslora", r=4, alpha=8, dropout=0.1), LINEAR, {0, 1}, set()),
    # A tied head: PEFT trains one copy of the shared matrix, seen under both names.
    "lora embeddings": (MethodConfig(kind="lora", r=4, train_embeddings=True), LINEAR, {0, 1}, {"embed_tokens", "lm_head"}),
    "lora lm_head (tied)": (MethodConfig(kind="lora", r=4, train_lm_head=True, layers="last:1"), LINEAR, {1}, {"embed_tokens", "lm_head"}),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_kinds_change_only_adapters(tiny_model_dir, batch, case):
    method, modules, layers, saved = LORA_CASES[case]
    model, summary, changed, trainable = run(tiny_model_dir, batch, method)
    assert changed == trainable  # every trained tensor moved; every base weight is bit-identical
    assert _adapted(trainable) == {(b, m) for b in layers for m in modules}
    assert _saved(trainable) == saved
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".base_layer." in n or ".original_module." in n)
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.layers == sorted(layers) and set(summary.modules) == modules
    assert any(".lora_magnitude_vector." in n for n in trainable) == (method.kind == "dora")
    if saved:
        inner = model.get_base_model()
        # The head's copy is the embeddings' copy: the tie survives.
        assert inner.lm_head.modules_to_save["default"].weight is inner.model.embed_tokens.modules_to_save["default"].weight
        assert "tied" in summary.describe()


def test_rslora_scales_by_sqrt_r(tiny_model_dir):
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="rslora", r=4, alpha=8))
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / math.sqrt(4))


def test_lora_lm_head_of_an_untied_model_leaves_embeddings(untied_model_dir, batch):
    method = MethodConfig(kind="lora", r=4, target_modules=["q_proj"], train_lm_head=True)
    model, summary, changed, trainable = run(untied_model_dir, batch, method)
    assert changed == trainable and _saved(trainable) == {"lm_head"}
    assert summary.extras == ["LM head"] and "tied" not in summary.describe()


FULL_CASES = {
    "full": (MethodConfig(kind="full"), lambda n: True),
    "full 1-1": (MethodConfig(kind="full", layers="1-1"), lambda n: block_of(n) == 1),
    "full last:1 + embeddings": (MethodConfig(kind="full", layers="last:1", train_embeddings=True),
                                 lambda n: block_of(n) == 1 or n in (EMBED, HEAD)),
    # Tied: training the head is training the embeddings (one matrix).
    "full 0-0 + lm_head": (MethodConfig(kind="full", layers="0-0", train_lm_head=True),
                           lambda n: block_of(n) == 0 or n in (EMBED, HEAD)),
    "full parameters": (MethodConfig(kind="full", parameters=[r"mlp\.down_proj", r"^model\.norm\."]),
                        lambda n: "mlp.down_proj" in n or n == NORM),
    "full parameters + embeddings": (MethodConfig(kind="full", parameters=[r"layers\.1\.self_attn"], train_embeddings=True),
                                     lambda n: "layers.1.self_attn" in n or n in (EMBED, HEAD)),
}


@pytest.mark.parametrize("case", list(FULL_CASES))
def test_full_changes_only_chosen_parameters(tiny_model_dir, batch, case):
    method, chosen = FULL_CASES[case]
    model, summary, changed, trainable = run(tiny_model_dir, batch, method)
    want = {n for n, _ in model.named_parameters(remove_duplicate=False) if chosen(n)}
    assert trainable == want
    assert changed == want  # the chosen moved, the rest is bit-identical
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.layers == sorted({b for n in want if (b := block_of(n)) is not None})
    if EMBED in want:
        assert "tied" in summary.describe()


def test_full_lm_head_of_an_untied_model_leaves_embeddings(untied_model_dir, batch):
    method = MethodConfig(kind="full", layers="last:1", train_lm_head=True)
    model, summary, changed, trainable = run(untied_model_dir, batch, method)
    assert changed == trainable == {n for n, _ in model.named_parameters() if block_of(n) == 1 or n == HEAD}
    assert summary.extras == ["LM head"]


@pytest.mark.parametrize("method,where", [
    (MethodConfig(kind="lora", target_modules=["q_proj", "qkv_proj"]), "target_modules"),
    (MethodConfig(kind="lora", target_modules="attn"), "target_modules"),
    (MethodConfig(kind="lora", target_modules="q_proj"), "target_modules"),  # a regex: matches whole names only
    (MethodConfig(kind="lora", target_modules="(unclosed"), "target_modules"),
    (MethodConfig(kind="lora", target_modules=["lm_head"], layers="last:1"), "target_modules"),
    (MethodConfig(kind="lora", layers="last:3"), "layers"),
    (MethodConfig(kind="lora", layers="0-2"), "layers"),
    (MethodConfig(kind="full", layers="2-3"), "layers"),
    (MethodConfig(kind="lora", layers="last:0"), "layers"),
    (MethodConfig(kind="full", layers="1-0"), "layers"),
    (MethodConfig(kind="full", parameters=["attn_out"]), "parameters"),
    (MethodConfig(kind="full", parameters=["q_proj", "["]), "parameters"),
])
def test_bad_choices_are_config_errors(tiny_model_dir, method, where):
    with pytest.raises(ConfigError, match=rf"method\.{where}") as e:
        apply_method(load_model(tiny_model_dir), method)
    if where == "target_modules" and "unclosed" not in str(method.target_modules):
        assert "q_proj" in str(e.value)  # lists what the model has
    if method.parameters == ["attention"]:
        assert "model.embed_tokens.weight" in str(e.value)


def test_select_layers():
    assert select_layers(None, 4) == [0, 1, 2, 3]
    assert select_layers("last:2", 4) == [2, 3]
    assert select_layers("1-2", 4) == [1, 2]


@pytest.mark.parametrize("kind", ["lora", "dora", "rslora"])
def test_lora_plus_gives_b_matrices_a_larger_learning_rate(tiny_model_dir, kind):
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind=kind, r=2, alpha=4, train_embeddings=True))
    opt = make_optimizer(model, TrainConfig(lr=1e-3), lora_plus_ratio=16)
    ids = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    names = {n: ids[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(lr == pytest.approx(16e-3 if "lora_B" in n else 1e-3) for n, lr in names.items())
    assert any("lora_B" in n for n in names) and any("lora_A" in n for n in names)


def test_summary_describes_what_trains(tiny_model_dir):
    _, s = apply_method(load_model(tiny_model_dir), MethodConfig(kind="dora", r=8, alpha=16, target_modules=["q_proj"], layers="last:1"))
    assert re.search(r"trainable of [\d,]+ parameters \(\d+\.\d+%\); DoRA r=8 alpha=16 .* on q_proj in blocks 1$", s.describe())
    _, s = apply_method(load_model(tiny_model_dir), MethodConfig(kind="full", layers="0-1"))
    assert s.describe().endswith("full weights in blocks 0-1")  # a layer choice freezes embeddings, head, final norm
