"""Tiny random causal LMs of the families users bring, built in-process from a config.

Each is 2 layers, 32 wide, with the family's own quirks kept and turned up so a test can see
them: Gemma's final soft-cap at 0.5 (random logits are about that size, so capping changes
them), Granite's logits_scaling at 4 and Cohere's logit_scale at 3.
"""

from __future__ import annotations

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "granite", "cohere")

_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def family_config(family: str, vocab_size: int):
    import transformers as t

    kw = dict(_COMMON, vocab_size=vocab_size)
    if family == "llama":
        return t.LlamaConfig(**kw, tie_word_embeddings=True)
    if family == "qwen2":
        return t.Qwen2Config(**kw, tie_word_embeddings=True)
    if family == "qwen3":
        return t.Qwen3Config(**kw, head_dim=8, tie_word_embeddings=True)
    if family == "mistral":
        return t.MistralConfig(**kw, tie_word_embeddings=False)
    if family == "gemma2":
        return t.Gemma2Config(**kw, head_dim=8, query_pre_attn_scalar=8, final_logit_softcapping=0.5,
                              attn_logit_softcapping=None, sliding_window=16)
    if family == "gemma3":
        return t.Gemma3TextConfig(**kw, head_dim=8, query_pre_attn_scalar=8, final_logit_softcapping=0.5, sliding_window=16)
    if family == "phi3":
        return t.Phi3Config(**kw, tie_word_embeddings=False)
    if family == "granite":
        return t.GraniteConfig(**kw, logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5,
                               attention_multiplier=0.125, tie_word_embeddings=True)
    if family == "cohere":
        return t.CohereConfig(**kw, logit_scale=3.0, tie_word_embeddings=True)
    raise ValueError(f"unknown family {family}")


def build_family(family: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, vocab_size))
    with torch.no_grad():  # larger than init's 0.02 so logits spread (and soft-caps bite)
        model.get_output_embeddings().weight.normal_(0.0, 0.5)
    model.config.use_cache = False
    return model.eval()
