"""Builders for the chat and generate tests: a tiny model that writes varied tokens, LoRA adapters on it,
and the answers greedy_answers gives (what chat and generate must equal)."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import build_model, build_tokenizer

USER = "What does error RW-4031 mean?"


def _liven(model, seed: int) -> None:
    """Larger random weights: at the default init the tiny model writes one token over and over,
    so every model and adapter would give the same answer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def save_model(path: Path, hidden: int = 32) -> Path:
    tok = build_tokenizer()
    model = build_model(len(tok))
    if hidden != 32:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**{**model.config.to_dict(), "hidden_size": hidden, "intermediate_size": 2 * hidden})
        model = LlamaForCausalLM(cfg)
    _liven(model, 0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter on `base_dir` whose lora_B is non-zero, so it changes the answers; its
    adapter_config.json records `base_dir` as the base."""
    from peft import LoraConfig, get_peft_model

    from tunekit.models.loading import load_model

    model = get_peft_model(load_model(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(out)
    return out


def answers_of(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    from tunekit.infer.greedy import greedy_answers

    return greedy_answers(model, tokenizer, conversations, max_new_tokens, 4, "expected")


def peft_on(base_dir: Path, adapter: Path):
    from peft import PeftModel

    from tunekit.models.loading import load_model

    return PeftModel.from_pretrained(load_model(base_dir), str(adapter)).eval()


def user(text: str = USER) -> list[dict]:
    return [{"role": "user", "content": text}]
