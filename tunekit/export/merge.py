"""The tuned model as one plain Hugging Face folder that `transformers` (and vLLM, TGI,
llama.cpp's converter) load alone: the adapter merged into the base in fp32, then cast.

Merging in fp32 first matters: merging into bf16 weights rounds W + BA once more per
matrix, and that error is the one users see as "the merged model got worse". Every
export is checked end to end: the written folder is loaded back the way a user would and
its logits are compared with the adapter model's on probe conversations, and the figure
is reported whether or not it passes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.errors import CheckpointError, ConfigError
from tunekit.hardware import pick_device
from tunekit.models.tuned import Target

MERGE_DTYPES = ("auto", "float32", "bfloat16", "float16")
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest logit difference from the fp32 adapter model, as a share of the largest logit.
# Measured on the bundled example's run (SmolLM2-135M, |logit| up to 38): the fp32 merge
# differs by 7e-5 (2e-6), a bf16 cast by 0.43 (1.1%), an f16 cast by 0.055 (0.14%);
# the bounds leave about 3x room and still catch a wrong or missing tensor (gaps of 10+).
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.03, "float16": 0.005}
PROBES = [
    [{"role": "user", "content": "Hello! Can you help me with my account?"}],
    [{"role": "system", "content": "You are a support assistant."},
     {"role": "user", "content": "How do I reset my password?"},
     {"role": "assistant", "content": "Go to Settings, then Security."},
     {"role": "user", "content": "And where is Security?"}],
]


def probe_logits(model, tokenizer) -> list[torch.Tensor]:
    """fp32 logits of every probe conversation (chat template with generation prompt), on the CPU."""
    from tunekit.data.template import prompt_ids

    out = []
    with torch.no_grad():
        for conv in PROBES:
            ids = torch.tensor([prompt_ids(tokenizer, conv)], device=model.device)
            out.append(model(input_ids=ids).logits.float().cpu())
    return out


def logit_gap(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict:
    """Max absolute gap, the same as a share of the largest logit, and greedy agreement at the last position."""
    gap = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
    scale = max(float(w.abs().max()) for w in want)
    agree = sum(int(g[0, -1].argmax() == w[0, -1].argmax()) for g, w in zip(got, want, strict=True))
    return {"max_logit_gap": gap, "relative_gap": gap / max(scale, 1.0), "next_token_agrees": f"{agree}/{len(want)}"}


@dataclass
class Merged:
    model: object  # the merged fp32 model (None once every format that needs it is written)
    tokenizer: object
    want: list[torch.Tensor]  # the unmerged adapter model's probe logits: what every export must reproduce
    merge_gap: float  # fp32 merge vs adapter model, as a share of the logit scale
    answers: list[str] | None  # the adapter model's greedy answers to the check questions


def merged_fp32(target: Target, questions: list[list[dict]] | None = None, answer=None) -> Merged:
    """The tuned model merged in fp32, with the probe logits and check answers of the unmerged
    adapter model it must reproduce (a full fine-tune or plain model is its own reference).

    `answer(model, tokenizer, questions, label) -> list[str]` gives the reference answers, asked
    before merging so the adapter model is never loaded twice."""
    from tunekit.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(target.tokenizer, target.chat_template)
    model = load_model(target.model, "float32").to(pick_device()).eval()
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter)).eval()
    want = probe_logits(model, tokenizer)
    answers = answer(model, tokenizer, questions, "check adapter") if questions and answer else None
    if target.adapter is None:
        return Merged(model, tokenizer, want, 0.0, answers)
    model = model.merge_and_unload().eval()
    gap = logit_gap(probe_logits(model, tokenizer), want)["relative_gap"]
    if gap > TOLERANCE["float32"]:
        raise CheckpointError(f"merging {target.adapter} moved the logits by {gap:.1e} of their scale in fp32 "
                              f"(> {TOLERANCE['float32']}); this is a bug, not exporting")
    return Merged(model, tokenizer, want, gap, answers)


def choose_dtype(dtype: str, base_dir: Path) -> str:
    """`auto` is the dtype the base model was published in (config.json), so the export is the base's size."""
    if dtype not in MERGE_DTYPES:
        raise ConfigError(f"export.dtype {dtype!r} is not one of {', '.join(MERGE_DTYPES)}")
    if dtype != "auto":
        return dtype
    config = json.loads((base_dir / "config.json").read_text())
    found = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return found if found in _TORCH else "float32"


def write_folder(model, tokenizer, folder: Path, dtype: str, source: Path) -> None:
    """Write `model` cast to `dtype` with tokenizer, chat template and generation config into `folder`."""
    model.config.use_cache = True
    # Cast a copy of the weights, never the model: it stays fp32 for the GGUF export. One cast
    # per storage keeps tied weights (SmolLM2's head is its embedding) tied, so saved once.
    cast, seen = {}, {}
    for name, w in model.state_dict().items():
        cast[name] = seen.setdefault(w.data_ptr(), w.to(_TORCH[dtype]))
    model.save_pretrained(folder, state_dict=cast, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = dtype  # transformers writes the in-memory model's dtype (fp32)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    if not (folder / "generation_config.json").is_file() and (source / "generation_config.json").is_file():
        shutil.copy2(source / "generation_config.json", folder / "generation_config.json")  # the base's stop tokens
    atomic.readable(folder)


def export_merged(target: Target, out: Path, dtype: str, merged: Merged, also=None) -> dict:
    """Write the merged model to `out` in `dtype`, load it back the way a user would and compare its
    logits with the adapter model's; `out` appears only if the check passes.

    `also(model) -> dict`: more checks on the loaded-back model, merged into the figures."""
    from tunekit.models.loading import load_model

    dtype = choose_dtype(dtype, target.tokenizer)  # the base folder, also for a full fine-tune
    with atomic.directory(out) as tmp:
        write_folder(merged.model, merged.tokenizer, tmp, dtype, target.tokenizer)
        back = load_model(tmp, "float32").to(pick_device()).eval()  # the saved weights, upcast to compute
        figures = {"path": str(out), "dtype": dtype, "merge_relative_gap_fp32": merged.merge_gap,
                   **logit_gap(probe_logits(back, merged.tokenizer), merged.want), "tolerance": TOLERANCE[dtype]}
        if figures["relative_gap"] > TOLERANCE[dtype]:
            raise CheckpointError(f"the merged {dtype} model differs from the adapter model by {figures['max_logit_gap']:.3g} "
                                  f"in the logits ({figures['relative_gap']:.2%} of their scale, tolerance "
                                  f"{TOLERANCE[dtype]:.2%}); not writing {out}")
        figures.update(also(back) if also else {})
    return figures
