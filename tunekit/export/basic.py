"""Export a finished run: the adapter in PEFT's folder format, or the merged model as a
plain Hugging Face folder that `transformers` loads alone.

The merge happens in fp32 and the export checks that the merged model's logits match
the adapter model's on a probe conversation, and says the largest difference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.errors import CheckpointError
from tunekit.progress import console
from tunekit.train.checkpoint import tuned_checkpoint

MERGE_TOLERANCE = 1e-3
_PROBE = [{"role": "user", "content": "Hello! Can you help me with my account?"}]


def export_adapter(run_dir: Path, out: Path) -> Path:
    """Copy the scored adapter (best held-out loss if kept, else final; adapter_config.json + adapter_model.safetensors) to `out`."""
    ckpt, _ = tuned_checkpoint(run_dir)  # the checkpoint the eval stage scored
    if not (ckpt / "adapter_config.json").is_file():
        raise CheckpointError(f"{ckpt} holds full weights, not an adapter; export it with format 'merged'")
    with atomic.directory(out) as tmp:
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            if (ckpt / name).is_file():
                shutil.copy2(ckpt / name, tmp / name)
    return out


def export_merged(run_dir: Path, model_path: Path, tokenizer, out: Path) -> tuple[Path, float]:
    """Merge the adapter into the base (fp32) and save a plain HF folder; returns the max logit gap."""
    from peft import PeftModel

    from tunekit.data.template import prompt_ids
    from tunekit.models.loading import load_model

    ckpt, _ = tuned_checkpoint(run_dir)  # the checkpoint the eval stage scored
    ids = torch.tensor([prompt_ids(tokenizer, _PROBE)])
    if (ckpt / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(load_model(model_path, "float32"), str(ckpt)).eval()
        with torch.no_grad():
            before = model(input_ids=ids).logits
        model = model.merge_and_unload()
    else:
        model = load_model(ckpt, "float32").eval()
        with torch.no_grad():
            before = model(input_ids=ids).logits
    with torch.no_grad():
        gap = float((model(input_ids=ids).logits - before).abs().max())
    if gap > MERGE_TOLERANCE:
        raise CheckpointError(f"merged logits differ from the adapter's by {gap:.2e} (> {MERGE_TOLERANCE}); not exporting")
    model.config.use_cache = True
    with atomic.directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out, gap


def export_run(run_dir: Path, formats: list[str], model_path: Path, tokenizer) -> dict:
    """Write each requested format under `run_dir/export/`; returns what was written."""
    done = {}
    if "adapter" in formats:
        done["adapter"] = str(export_adapter(run_dir, run_dir / "export" / "adapter"))
        console.print(f"adapter (PEFT format): {done['adapter']}")
    if "merged" in formats:
        path, gap = export_merged(run_dir, model_path, tokenizer, run_dir / "export" / "merged")
        done["merged"] = str(path)
        done["merged_max_logit_gap"] = gap
        console.print(f"merged model: {path} (max logit difference from the adapter model {gap:.1e})")
    atomic.write_json(run_dir / "export" / "export.json", done)
    return done
