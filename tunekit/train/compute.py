"""How a training step computes: on which device, in which precision, and whether
activations are recomputed in backward instead of kept.

bf16 autocast runs the matmuls in bfloat16 while the weights, the optimiser state and
the loss stay in float32 ("fp32 master weights"), so small updates are not rounded away.
It only pays where the hardware multiplies bf16 fast: on a CPU without AMX, bf16 matmul
runs at about 1 GFLOP/s against ~90 for fp32, so `auto` keeps fp32 there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from tunekit.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of the forward pass (None: plain fp32) and why it was chosen."""

    dtype: torch.dtype | None
    device_type: str
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"

    def autocast(self):
        """A context for forward and loss; backward runs outside it, as torch recommends."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


FP32 = Precision(None, "cpu", "fp32")


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fast_bf16(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "this GPU multiplies bf16 natively" if ok else "this GPU has no bf16 support"
    capability = torch.backends.cpu.get_cpu_capability()
    if "AMX" in capability.upper():
        return True, f"this CPU has AMX ({capability}), which multiplies bf16 fast"
    return False, f"this CPU has no AMX ({capability}): bf16 matmul would be many times slower than fp32"


def choose_precision(setting: str, device: torch.device) -> Precision:
    """Resolve train.precision (auto | fp32 | bf16) for `device`."""
    if setting == "fp32":
        return Precision(None, device.type, "train.precision=fp32")
    fast, why = _fast_bf16(device)
    if setting == "bf16":
        if device.type == "cuda" and not fast:
            raise ConfigError(f"train.precision=bf16 but {why}; use train.precision=fp32 or auto")
        note = "" if fast else f" (slow: {why})"
        return Precision(torch.bfloat16, device.type, "train.precision=bf16" + note)
    return Precision(torch.bfloat16 if fast else None, device.type, f"auto: {why}")


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant checkpointing).

    Called on the inner transformers model of a PEFT wrapper: transformers then also makes
    the embeddings' output require grad, which frozen-embedding (LoRA) training needs for
    gradients to reach the adapters through the recomputed layers.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(inner).__name__} does not support train.gradient_checkpointing; set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # the name since transformers 5.x
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
