"""What chat/generate/export load: a run, an adapter on its base, or a model; and the errors for
a missing adapter, an unfinished run, and a base that does not match the adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tiny import build_model, build_tokenizer
from tunekit.errors import CheckpointError, ModelError
from tunekit.models.tuned import Target, check_adapter, load_target, resolve_target


def make_adapter(base_dir, out, seed: int = 0, targets=("q_proj", "v_proj")):
    """A LoRA adapter on `base_dir` whose B matrices are non-zero (so it changes the logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(str(out))
    return out


def save_model(path, seed: int = 0, **config):
    tok = build_tokenizer()
    if config:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, **config))
    else:
        model = build_model(len(tok), seed=seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a")


def test_an_adapter_folder_loads_on_the_base_it_records(adapter, tiny_model_dir):
    target = resolve_target(str(adapter))
    assert target.adapter == adapter and target.model.resolve() == tiny_model_dir.resolve()
    model, tok = load_target(target)
    base, _ = load_target(resolve_target(str(tiny_model_dir)))
    ids = torch.tensor([tok("How much is Crest?")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)


def test_a_missing_adapter_file_is_named(adapter, tmp_path):
    broken = shutil.copytree(adapter, tmp_path / "broken")
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing adapter_model.safetensors"):
        resolve_target(str(broken))


def test_a_base_of_other_shapes_is_refused_naming_the_mismatch(adapter, tmp_path):
    wide = save_model(tmp_path / "wide", hidden_size=64, intermediate_size=128)
    with pytest.raises(ModelError, match=r"does not fit base model .*q_proj.*\[4, 32\].*\[64, 64\]"):
        resolve_target(str(adapter), base=str(wide))


def test_a_base_with_fewer_layers_is_refused(adapter, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    one = tmp_path / "one-layer"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(str(one))
    tok.save_pretrained(str(one))
    with pytest.raises(ModelError, match="layers.1.self_attn.q_proj, which the base does not have"):
        check_adapter(adapter, one)


def test_a_same_shaped_but_different_base_is_refused(adapter, tmp_path):
    other = save_model(tmp_path / "other", seed=7)
    with pytest.raises(ModelError, match="different model of the same shapes"):
        resolve_target(str(adapter), base=str(other))


def test_an_adapter_whose_recorded_base_is_gone_needs_base(adapter, tmp_path, tiny_model_dir, offline_home):
    moved = shutil.copytree(adapter, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-model")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not on this machine; name its base with --base"):
        resolve_target(str(moved))
    assert resolve_target(str(moved), base=str(tiny_model_dir)).adapter == moved  # shapes fit: loads


def test_a_run_without_finished_training_says_how_to_finish(tmp_path):
    run = tmp_path / "runs" / "half"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {base: x}\n")
    with pytest.raises(CheckpointError, match="no finished training"):
        resolve_target("half", runs_dir=tmp_path / "runs")


def test_anything_else_is_tried_as_a_model_and_the_error_says_all_three(offline_home):
    with pytest.raises(ModelError, match="not a run folder .* not an adapter folder .* not a model"):
        resolve_target("no-such-thing-anywhere")


def test_base_is_only_for_adapters(tiny_model_dir):
    with pytest.raises(ModelError, match="--base applies to an adapter"):
        resolve_target(str(tiny_model_dir), base=str(tiny_model_dir))


def test_a_plain_model_is_its_own_target(tiny_model_dir):
    assert resolve_target(str(tiny_model_dir)) == Target(model=tiny_model_dir, tokenizer=tiny_model_dir, label=str(tiny_model_dir))


@pytest.mark.parametrize("model_type", ["vit", "no-such-architecture"])
def test_an_architecture_transformers_cannot_generate_with_is_named(tmp_path, model_type):
    from tunekit.models.loading import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ModelError, match=f"is a '{model_type}' model, which transformers .* cannot load as a causal"):
        load_model(tmp_path)


def _perturbed_copy(src, dst, noise: float, dtype=None):
    """`src` with every weight moved by `noise` of its own scale (a fine-tuned sibling), optionally cast."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std() * noise)
    model.to(dtype or torch.float32).save_pretrained(str(dst))
    build_tokenizer().save_pretrained(str(dst))
    return dst


def test_a_fine_tuned_sibling_of_the_base_is_refused(adapter, tmp_path, tiny_model_dir):
    sibling = _perturbed_copy(tiny_model_dir, tmp_path / "sibling", noise=0.05)
    with pytest.raises(ModelError, match="different model of the same shapes"):
        resolve_target(str(adapter), base=str(sibling))


def test_a_bf16_copy_of_the_base_is_the_same_model(adapter, tmp_path, tiny_model_dir):
    copy = _perturbed_copy(tiny_model_dir, tmp_path / "bf16", noise=0.0, dtype=torch.bfloat16)
    assert resolve_target(str(adapter), base=str(copy)).model == copy


def test_embedding_lora_is_checked_by_shape(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "emb", targets=("embed_tokens",))
    from tunekit.models.tuned import _base_key, _shapes

    keys = [k for k in _shapes(adapter) if "lora_embedding" in k]
    assert keys and all(_base_key(k)[0] == "model.embed_tokens.weight" for k in keys)
    wide = save_model(tmp_path / "wide", hidden_size=64, intermediate_size=128)
    with pytest.raises(ModelError, match="lora_embedding_B"):
        check_adapter(adapter, wide)
