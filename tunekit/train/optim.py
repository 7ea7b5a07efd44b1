"""AdamW and the learning-rate schedule (linear warmup, then cosine, linear or constant)."""

from __future__ import annotations

import math

import torch

from tunekit.config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lora_plus_ratio: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with LoRA+ the B matrices get `ratio` x the lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if lora_plus_ratio:
        # LoRA+ (Hayou et al. 2024): B starts at zero and needs larger steps than A for
        # the product BA to learn efficiently; the ratio is the paper's knob.
        groups = [
            {"params": [p for n, p in named if "lora_B" not in n], "lr": cfg.lr},
            {"params": [p for n, p in named if "lora_B" in n], "lr": cfg.lr * lora_plus_ratio},
        ]
    else:
        groups = [{"params": [p for _, p in named], "lr": cfg.lr}]
    # The fused kernel does the whole update in one pass over each tensor. On CPU it
    # measured 3-5x faster than foreach here (134M parameters: 0.09-0.11 s against
    # 0.32-0.59 s a step; LoRA's 420 small tensors: 8.5 ms against 29 ms); torch has it
    # for CPU and CUDA, and foreach stays the fallback elsewhere.
    device = named[0][1].device.type if named else "cpu"
    fast = {"fused": True} if device in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate after `step` optimiser steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule))
