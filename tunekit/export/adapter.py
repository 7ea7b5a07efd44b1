"""The adapter in PEFT's own folder format, the one vLLM, TGI and `peft` load unchanged.

Checkpoints are already written in that format, so the export is a copy of the checkpoint
the eval stage scored; what makes it an export is the check that `peft` loads the copy
onto the base with every adapter tensor accounted for and gives the adapter model's logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.errors import CheckpointError
from tunekit.models.tuned import ADAPTER_FILES, Target

_EXTRA_FILES = ("README.md",)


def portable_base(target: Target) -> str | None:
    """The hub id to record as the adapter's base, when the run's base is a registry model.

    Checkpoints record the base as this machine's cache folder, which no other machine has;
    `AutoPeftModelForCausalLM` and vLLM read base_model_name_or_path to find the base."""
    from tunekit.models.registry import spec_for
    from tunekit.models.tuned import run_config

    if target.run_dir is None:
        return None
    spec = spec_for(str(run_config(target.run_dir).get("model", {}).get("base") or ""))
    return spec.hub_id if spec else None


def export_adapter(target: Target, out: Path, want: list[torch.Tensor] | None = None) -> dict:
    """Copy the target's adapter to `out`, load the copy back with `peft` and compare; `out` appears
    only if the check passes. `want`: the adapter model's probe logits when already computed."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    from tunekit.export.merge import logit_gap, probe_logits
    from tunekit.hardware import pick_device
    from tunekit.models.loading import load_model, load_tokenizer

    if target.adapter is None:
        raise CheckpointError(f"{target.label} holds full weights, not an adapter: there is no adapter to export; "
                              "use format 'merged' (or gguf/ollama)")
    tokenizer = load_tokenizer(target.tokenizer, target.chat_template)
    if want is None:
        base = load_model(target.model).to(pick_device())
        want = probe_logits(PeftModel.from_pretrained(base, str(target.adapter)).eval(), tokenizer)
    base_id = portable_base(target)
    with atomic.directory(out) as tmp:
        for name in ADAPTER_FILES + _EXTRA_FILES:
            if (target.adapter / name).is_file():
                shutil.copy2(target.adapter / name, tmp / name)
        tokenizer.save_pretrained(tmp)  # with the run's chat template: chat on the folder formats as training did
        if base_id:
            config = json.loads((tmp / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = base_id
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        atomic.readable(tmp)
        loaded = PeftModel.from_pretrained(load_model(target.model).to(pick_device()), str(tmp)).eval()
        with safe_open(str(tmp / "adapter_model.safetensors"), framework="pt") as f:
            in_file = set(f.keys())
        # save_embedding_layers=False: "auto" looks the base up on the hub (by the name just written) to compare vocabularies.
        in_model = set(get_peft_model_state_dict(loaded, save_embedding_layers=False).keys())
        if in_file != in_model:
            raise CheckpointError(f"peft loads the adapter with tensors missing or left over (in the file only: "
                                  f"{sorted(in_file - in_model)[:3]}, in the model only: {sorted(in_model - in_file)[:3]}); "
                                  f"not writing {out}")
        figures = {"path": str(out), "tensors": len(in_file), "base_model_name_or_path": base_id or "(as trained)",
                   **logit_gap(probe_logits(loaded, tokenizer), want)}
        if figures["max_logit_gap"] > 1e-5:
            raise CheckpointError(f"the adapter loaded back by peft gives logits {figures['max_logit_gap']:.2e} away "
                                  f"from the checkpoint's; not writing {out}")
    return figures
