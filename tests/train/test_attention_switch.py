"""hardware.attention_for: short CPU batches train with written-out attention, and the run is the same."""

from __future__ import annotations

import pytest
import torch

from helpers import example_conversations
from tunekit import hardware
from tunekit.config import MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.hardware import FP32, Precision
from tunekit.models.loading import load_model
from tunekit.train import loop
from tunekit.train.compute import enable_activation_checkpointing
from tunekit.train.methods import apply_method
from tunekit.train.optim import make_optimizer, make_scheduler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(4, single_turn=False)]
    b = collate(ex, [0, 1, 2, 3], tiny_tokenizer.pad_token_id)
    assert (b.attention_mask == 0).any(), "the batch must hold padding, which the eager mask handles differently"
    return b


BF16 = Precision(torch.bfloat16, CPU, "test")
CUDA = Precision(torch.bfloat16, torch.device("cuda"), "test")


def test_switches_only_short_cpu_batches_of_an_sdpa_model_and_restores(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert model.config._attn_implementation == "sdpa"
    below = hardware.EAGER_ATTENTION_BELOW["bf16"]
    with hardware.attention_for(model, below - 1, BF16):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    for width, precision in ((below, BF16), (1, FP32)):  # fp32 measured no faster either way
        with hardware.attention_for(model, width, precision):
            assert model.config._attn_implementation == "sdpa"
    with hardware.attention_for(model, 8, CUDA):
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), hardware.attention_for(model, 8, BF16):
        raise RuntimeError("a failing step")
    assert model.config._attn_implementation == "sdpa"  # restored on the way out of an error too


def test_leaves_other_implementations_and_soft_capped_attention_alone(tiny_model_dir):
    model = load_model(tiny_model_dir)
    model.config._attn_implementation = "eager"
    with hardware.attention_for(model, 8, BF16):
        assert model.config._attn_implementation == "eager"
    model.config._attn_implementation = "sdpa"
    model.config.attn_logit_softcapping = 50.0  # as Gemma 2: only its eager code caps, so switching would change results
    with hardware.attention_for(model, 8, BF16):
        assert model.config._attn_implementation == "sdpa"


def _step(tiny_model_dir, batch, monkeypatch, switch: bool, checkpointing: bool = False):
    """Trainable weights after one LoRA optimiser step, and the attention each layer ran with."""
    monkeypatch.setattr(hardware, "EAGER_ATTENTION_BELOW", {"fp32": 10_000 if switch else 0})
    torch.manual_seed(0)
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="lora", r=4, alpha=8))
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    seen = []
    for layer in model.get_base_model().model.layers:
        layer.self_attn.register_forward_pre_hook(lambda *_: seen.append(model.config._attn_implementation))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    loop.optimizer_step(model, [batch], params, opt, make_scheduler(opt, TrainConfig(), 1), 1.0, FP32)
    return [p.detach().clone() for p in params], set(seen)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_step_with_eager_attention_equals_one_with_sdpa(tiny_model_dir, batch, monkeypatch, checkpointing):
    sdpa, seen_sdpa = _step(tiny_model_dir, batch, monkeypatch, switch=False, checkpointing=checkpointing)
    eager, seen_eager = _step(tiny_model_dir, batch, monkeypatch, switch=True, checkpointing=checkpointing)
    assert seen_sdpa == {"sdpa"}
    assert seen_eager == {"eager"}  # with checkpointing: the recompute in backward too
    assert max((a - b).abs().max().item() for a, b in zip(sdpa, eager, strict=True)) < 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(sdpa, _step(tiny_model_dir, batch, monkeypatch, False)[0],
                                                            strict=True)) == 0.0  # the comparison can tell runs apart


def test_heldout_loss_is_the_same_either_way(tiny_model_dir, batch, monkeypatch, tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(6, single_turn=False)]
    model = load_model(tiny_model_dir)
    losses = []
    for below in (0, 10_000):
        monkeypatch.setattr(hardware, "EAGER_ATTENTION_BELOW", {"fp32": below})
        losses.append(loop.evaluate_loss(model, ex, tiny_tokenizer.pad_token_id, 4))
        losses.append(loop.evaluate_loss(model, ex, tiny_tokenizer.pad_token_id, 4, pack_to=256))
    assert max(losses) - min(losses) < 1e-5
