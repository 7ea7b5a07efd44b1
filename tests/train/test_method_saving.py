"""What each method saves loads elsewhere: adapters with `peft` (identical logits), merged
models and full fine-tunes with `transformers` alone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import example_conversations
from test_methods import train_two_steps
from tunekit.config import MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.export.merge import export_merged, merged_fp32
from tunekit.models.loading import load_model
from tunekit.models.tuned import Target
from tunekit.train import checkpoint
from tunekit.train.methods import apply_method
from tunekit.train.optim import make_optimizer, make_scheduler

MERGED_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(3)]
    return collate(ex, [0, 1, 2], tiny_tokenizer.pad_token_id)


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _trained_run(tmp_path, model_dir, batch, method: MethodConfig):
    """Train two steps and save the checkpoint as the loop does; returns (model, run dir, checkpoint)."""
    model, _ = apply_method(load_model(model_dir), method)
    train_two_steps(model, batch, method)
    opt = make_optimizer(model, TrainConfig())
    run_dir = tmp_path / "run"
    ckpt = checkpoint.save(run_dir / "checkpoints", 2, model, opt, make_scheduler(opt, TrainConfig(), 2), {}, keep_last=1)
    (run_dir / "train_state.json").write_text(json.dumps({"final_checkpoint": str(ckpt.relative_to(run_dir))}))
    return model, run_dir, ckpt


ADAPTERS = {
    "dora": MethodConfig(kind="dora", r=4, layers="last:1"),
    "rslora": MethodConfig(kind="rslora", r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    "lora regex 1-1": MethodConfig(kind="lora", r=4, target_modules=r".*\.mlp\..*", layers="1-1"),
    "lora embeddings (tied)": MethodConfig(kind="lora", r=4, train_embeddings=True),
    "dora lm_head (tied)": MethodConfig(kind="dora", r=4, train_lm_head=True, target_modules=["o_proj"]),
}


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_adapter_loads_in_peft_and_merges_for_transformers(tmp_path, tiny_model_dir, tiny_tokenizer, batch, case):
    from peft import PeftModel

    model, run_dir, ckpt = _trained_run(tmp_path, tiny_model_dir, batch, ADAPTERS[case])
    want = _logits(model, batch)
    assert not torch.equal(want, _logits(load_model(tiny_model_dir), batch))  # training did something

    loaded = PeftModel.from_pretrained(load_model(tiny_model_dir), str(ckpt))
    assert torch.equal(_logits(loaded, batch), want)

    resumed, _ = apply_method(load_model(tiny_model_dir), ADAPTERS[case])
    checkpoint.load_weights(ckpt, resumed)  # how a resumed run reloads it
    assert torch.equal(_logits(resumed, batch), want)

    out = tmp_path / "merged"
    target = Target(model=tiny_model_dir, tokenizer=tiny_model_dir, adapter=ckpt)
    export_merged(target, out, "float32", merged_fp32(target))
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert float((_logits(merged, batch) - want).abs().max()) < MERGED_TOLERANCE


def test_untied_lm_head_adapter_round_trips(tmp_path, untied_model_dir, tiny_tokenizer, batch):
    from peft import PeftModel

    method = MethodConfig(kind="lora", r=4, target_modules=["q_proj"], train_lm_head=True)
    model, run_dir, ckpt = _trained_run(tmp_path, untied_model_dir, batch, method)
    want = _logits(model, batch)
    assert torch.equal(_logits(PeftModel.from_pretrained(load_model(untied_model_dir), str(ckpt)), batch), want)
    out = tmp_path / "merged"
    target = Target(model=untied_model_dir, tokenizer=untied_model_dir, adapter=ckpt)
    export_merged(target, out, "float32", merged_fp32(target))
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert float((_logits(merged, batch) - want).abs().max()) < MERGED_TOLERANCE


@pytest.mark.parametrize("method", [
    MethodConfig(kind="full", layers="last:1", train_lm_head=True),
    MethodConfig(kind="full", parameters=[r"mlp\."]),
])
def test_full_checkpoint_is_a_plain_transformers_folder(tmp_path, tiny_model_dir, tiny_tokenizer, batch, method):
    model, run_dir, ckpt = _trained_run(tmp_path, tiny_model_dir, batch, method)
    want = _logits(model, batch)
    plain = AutoModelForCausalLM.from_pretrained(str(ckpt))
    assert torch.equal(_logits(plain, batch), want)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # still tied after saving
    out = tmp_path / "merged"
    target = Target(model=ckpt, tokenizer=tiny_model_dir)
    export_merged(target, out, "float32", merged_fp32(target))
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(str(out)), batch), want)
