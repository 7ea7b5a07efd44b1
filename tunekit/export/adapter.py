"""The adapter in PEFT's own folder format, the one vLLM, TGI and `peft` load unchanged.

Checkpoints are already written in that format, so the export is a copy of the checkpoint
the eval stage scored; what makes it an export is the check that `peft` loads the copy
onto the base with every adapter tensor accounted for and gives the adapter model's logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.errors import CheckpointError
from tunekit.models.tuned import ADAPTER_FILES, Target

_EXTRA_FILES = ("README.md",)


def export_adapter(target: Target, out: Path, want: list[torch.Tensor] | None = None) -> dict:
    """Copy the target's adapter to `out` and load it back with `peft`; `want`: the adapter
    model's probe logits when already computed (else taken from the checkpoint)."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    from tunekit.export.merge import logit_gap, probe_logits
    from tunekit.models.loading import load_model, load_tokenizer

    if target.adapter is None:
        raise CheckpointError(f"{target.label} holds full weights, not an adapter: there is no adapter to export; "
                              "use format 'merged' (or gguf/ollama)")
    with atomic.directory(out) as tmp:
        for name in ADAPTER_FILES + _EXTRA_FILES:
            if (target.adapter / name).is_file():
                shutil.copy2(target.adapter / name, tmp / name)
    tokenizer = load_tokenizer(target.tokenizer)
    if want is None:
        want = probe_logits(PeftModel.from_pretrained(load_model(target.model), str(target.adapter)).eval(), tokenizer)
    loaded = PeftModel.from_pretrained(load_model(target.model), str(out)).eval()
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        in_file = set(f.keys())
    in_model = set(get_peft_model_state_dict(loaded).keys())
    if in_file != in_model:
        raise CheckpointError(f"peft loads {out} with tensors missing or left over "
                              f"(in the file only: {sorted(in_file - in_model)[:3]}, in the model only: {sorted(in_model - in_file)[:3]})")
    figures = {"path": str(out), "tensors": len(in_file), **logit_gap(probe_logits(loaded, tokenizer), want)}
    if figures["max_logit_gap"] > 1e-5:
        raise CheckpointError(f"the adapter loaded from {out} gives logits {figures['max_logit_gap']:.2e} away from the "
                              "checkpoint's; the copy is damaged")
    return figures
