"""What trains: full fine-tuning or LoRA (through PEFT), on all blocks or chosen ones.

Restricting training to the last K blocks is also the cheapest speed-up on a CPU:
no gradient flows below the lowest trainable block, so backward skips those blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError


@dataclass
class TrainableSummary:
    trainable: int
    total: int
    layers: list[int]

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)

    def describe(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({self.share:.2%}), blocks {_ranges(self.layers)}"


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ",".join(out)


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def select_layers(spec: str | None, n: int) -> list[int]:
    """Block indices for "last:K", "A-B" or None (all)."""
    if spec is None:
        return list(range(n))
    if spec.startswith("last:"):
        k = int(spec.split(":", 1)[1])
        if not 0 < k <= n:
            raise ConfigError(f"method.layers: last:{k} is out of range; the model has {n} blocks")
        return list(range(n - k, n))
    a, b = (int(x) for x in spec.split("-"))
    if not 0 <= a <= b < n:
        raise ConfigError(f"method.layers: {spec} is out of range; the model has blocks 0-{n - 1}")
    return list(range(a, b + 1))


def linear_module_names(model) -> list[str]:
    """Short names of the linear layers inside the transformer blocks (all-linear)."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and re.search(r"\.layers\.\d+\.", full):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def _target_names(model, target: str | list[str]) -> list[str]:
    available = linear_module_names(model)
    wanted = available if target == "all-linear" else ([target] if isinstance(target, str) else list(target))
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ConfigError(
            f"method.target_modules: {unknown} not found in the model; its linear layers are {available} "
            "(or use all-linear)"
        )
    return wanted


def apply_method(model, method: MethodConfig):
    """Freeze/wrap `model` for the chosen method; returns (model to train, summary)."""
    layers = select_layers(method.layers, num_layers(model))
    if method.kind == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=_target_names(model, method.target_modules),
            layers_to_transform=layers if len(layers) < num_layers(model) else None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lcfg)
    else:
        for name, p in model.named_parameters():
            m = re.search(r"\.layers\.(\d+)\.", name)
            # No layer choice means everything trains, embeddings and final norm included.
            p.requires_grad = method.layers is None or (bool(m) and int(m.group(1)) in layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, TrainableSummary(trainable, total, layers)
