"""GGUF export: Llama and Qwen2 files in f16/bf16/q8_0 that transformers' GGUF reader loads back to
the same logits, tokenizer and chat template; broken files and unsupported models are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny import CHAT_TEMPLATE, build_tokenizer, template_tokenizer

import tunekit.export.gguf as gx
from tunekit.errors import CheckpointError, ConfigError, ModelError


def _save(path, model, tok):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _qwen2(path, tied: bool, hidden: int = 32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    tok = build_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tied, initializer_range=0.1,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random init leaves biases at zero; the file must carry real ones
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return _save(path, model, tok)


def _sharp_llama(path, tok=None):
    """A tiny Llama whose attention is far from uniform (init std 0.1, not 0.02): at the default init
    every query meets every key alike, and a file with Q/K rows in the wrong order scores the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tok or build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, tie_word_embeddings=True,
    )
    return _save(path, LlamaForCausalLM(cfg), tok)


@pytest.fixture(scope="module")
def models(tiny_model_dir, untied_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf-models")
    return {
        "llama-tied": tiny_model_dir,
        "llama-untied": untied_model_dir,
        "llama-sharp": _sharp_llama(tmp / "llama-sharp"),
        "qwen2-tied": _qwen2(tmp / "qwen2-tied", tied=True),
        # hidden 48: rows of 48 values are not whole q8_0 blocks, so those weights fall back to f16
        "qwen2-untied": _qwen2(tmp / "qwen2-untied", tied=False, hidden=48),
    }


@pytest.mark.parametrize("qtype", gx.GGUF_TYPES)
@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "llama-sharp", "qwen2-tied", "qwen2-untied"])
def test_writes_and_verifies(models, tmp_path, name, qtype):
    out = tmp_path / f"{name}.gguf"
    summary = gx.write_gguf(models[name], out, qtype)
    tied = name not in ("llama-untied", "qwen2-untied")
    assert summary["architecture"] == name.split("-")[0] and summary["qtype"] == qtype
    assert summary["tensors"] == (2 if tied else 3) + 2 * (9 if name.startswith("llama") else 12)
    assert summary["tied_embeddings"] is tied and summary["chat_template"] and summary["bytes"] == out.stat().st_size
    assert (summary["bos_id"], summary["eos_id"]) == (1, 2)
    assert bool(summary["f16_fallback"]) == (name == "qwen2-untied" and qtype == "q8_0")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind

    figures = gx.verify_gguf(out, models[name], qtype)
    assert figures["max_logit_gap"] <= figures["tolerance"]
    assert figures["argmax_agreement"] >= (1.0 if qtype == "f16" else 0.9)
    if qtype == "f16":
        assert figures["greedy_equal"] and len(figures["greedy_gguf"]) == gx.GREEDY_TOKENS


def test_metadata_read_back(models, tmp_path):
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out = tmp_path / "m.gguf"
    gx.write_gguf(models["llama-tied"], out, "q8_0")
    tok = AutoTokenizer.from_pretrained(models["llama-tied"])
    reader = GGUFReader(out)

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama" and field("general.name") == "m"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.chat_template") == CHAT_TEMPLATE
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert (field("tokenizer.ggml.padding_token_id"), field("tokenizer.ggml.unknown_token_id")) == (2, 0)
    assert field("tokenizer.ggml.add_bos_token") is False and field("tokenizer.ggml.add_eos_token") is False
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert len(tokens) == len(tok) == field("llama.vocab_size") and types[:4] == [3, 3, 3, 1]  # specials are CONTROL
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.dimension_count") == 8 and field("llama.block_count") == 2
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in kinds  # tied: llama.cpp and transformers both reuse token_embd
    assert kinds["output_norm.weight"] == T.F32 and kinds["blk.0.attn_q.weight"] == T.Q8_0
    assert kinds["token_embd.weight"] == T.Q8_0


def test_qk_rows_permuted_for_llama_only(models, tmp_path):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    for name, permuted in (("llama-sharp", True), ("qwen2-tied", False)):
        out = tmp_path / f"{name}.gguf"
        gx.write_gguf(models[name], out, "f16")
        stored = {t.name: np.asarray(t.data, dtype=np.float32) for t in GGUFReader(out).tensors}
        hf = load_file(models[name] / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
        expected = gx._permute_rope_rows(hf, 4) if permuted else hf
        assert np.allclose(stored["blk.0.attn_q.weight"], expected.numpy(), atol=1e-3)
        assert not np.allclose(hf.numpy(), gx._permute_rope_rows(hf, 4).numpy())  # the check can tell


def test_missing_permutation_is_caught(models, tmp_path, monkeypatch):
    monkeypatch.setattr(gx, "_PERMUTE_QK", set())
    out = tmp_path / "noperm.gguf"
    gx.write_gguf(models["llama-sharp"], out, "f16")
    with pytest.raises(CheckpointError, match=r"differ .* by up to [\d.]+ .* tolerance of [\d.]+"):
        gx.verify_gguf(out, models["llama-sharp"], "f16")


def test_tampered_tensor_is_caught(models, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "tampered.gguf"
    gx.write_gguf(models["llama-tied"], out, "f16")
    reader = GGUFReader(out, "r+")
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[:] = -norm.data  # through the memory map: every logit changes sign
    reader.data.flush()
    del norm, reader
    with pytest.raises(CheckpointError, match="q8_0 tolerance"):
        gx.verify_gguf(out, models["llama-tied"], "q8_0")


def test_tokenizer_difference_is_caught(models, tmp_path, monkeypatch):
    real = gx.tokenizer_meta

    def fewer_merges(*args):
        meta = real(*args)
        meta.merges = meta.merges[:20]
        return meta

    monkeypatch.setattr(gx, "tokenizer_meta", fewer_merges)
    out = tmp_path / "badtok.gguf"
    gx.write_gguf(models["llama-tied"], out, "f16")
    with pytest.raises(CheckpointError, match="tokenizer encodes the probe conversation differently"):
        gx.verify_gguf(out, models["llama-tied"], "f16")


def test_tokenizer_adding_bos(tmp_path):
    tok = template_tokenizer(CHAT_TEMPLATE, [], bos="<|im_start|>", eos="<|im_end|>", add_bos=True)
    model_dir = _sharp_llama(tmp_path / "bos", tok)
    out = tmp_path / "bos.gguf"
    assert gx.write_gguf(model_dir, out, "f16")["add_bos"] is True
    assert gx.verify_gguf(out, model_dir, "f16")["probe_tokens"] > 0  # transformers' reader adds BOS too


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_unknown_architecture_refused_before_writing(tmp_path, model_type):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": model_type}))
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ModelError, match=rf"model_type '{model_type}'.*supported: llama, qwen2"):
        gx.write_gguf(tmp_path / "m", out)
    assert not out.parent.exists()


def test_sentencepiece_like_tokenizer_refused(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    vocab = [("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz "]
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram(vocab, unk_id=0))).save_pretrained(model_dir)
    with pytest.raises(CheckpointError, match="Unigram model; GGUF export supports byte-level BPE"):
        gx.write_gguf(model_dir, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_bad_qtype(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="q4_0"):
        gx.write_gguf(tiny_model_dir, tmp_path / "m.gguf", "q4_0")


def test_pre_tokenizer_from_structure():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from tunekit.export.gguf_meta import _structural_pre

    qwen = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    smol = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}
    assert _structural_pre(qwen) == "qwen2" and _structural_pre(smol) == "smollm"
    assert _structural_pre({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    assert _structural_pre({"type": "Metaspace"}) is None


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied"])
def test_transformers_ties_lm_head_when_output_is_absent(models, tmp_path, name):
    from transformers import AutoModelForCausalLM

    (tmp_path / "g").mkdir()
    gx.write_gguf(models[name], tmp_path / "g" / "m.gguf", "f16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "g", gguf_file="m.gguf", dtype=torch.float32)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied is model.config.tie_word_embeddings is (name == "llama-tied")
