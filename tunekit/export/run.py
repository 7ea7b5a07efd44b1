"""`tunekit export`: write the requested formats of a run (or adapter, or model) into one
folder, verify each, and record the figures in export.json.

    out/adapter/      PEFT folder            loaded back with peft: same logits
    out/merged/       plain HF folder        loaded back with transformers: logit gap reported
    out/model.gguf    llama.cpp / Ollama     read back with transformers' GGUF loader: logit gap
    out/Modelfile     Ollama                 template replayed against the chat template

Beyond the logits on probe prompts, each written model answers the first held-out
questions greedily and must give the adapter model's answers; the counts are recorded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from tunekit import atomic
from tunekit.errors import CheckpointError, ConfigError
from tunekit.hardware import exact_fp32
from tunekit.models.tuned import Target
from tunekit.progress import console

FORMATS = ("adapter", "merged", "gguf", "ollama")
ANSWER_TOKENS = 48


def parse_formats(values: list[str]) -> list[str]:
    """`--format merged,gguf --format ollama` -> ["merged", "gguf", "ollama"] in the order given, checked."""
    out = [f.strip() for v in values for f in v.split(",") if f.strip()]
    bad = [f for f in out if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown export format {bad[0]!r}; choose from {', '.join(FORMATS)} (several allowed)")
    if not out:
        raise ConfigError(f"no export format given; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(out))


def check_questions(target: Target, n: int) -> list[list[dict]]:
    """The first `n` held-out conversations of a run (eval set, else validation), without their answers."""
    if target.run_dir is None or n <= 0:
        return []
    data = target.run_dir / "data"
    path = next((p for p in (data / "eval.jsonl", data / "valid.jsonl") if p.is_file() and p.stat().st_size), None)
    if path is None:
        return []
    convs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        msgs = json.loads(line)["messages"]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if msgs:
            convs.append(msgs)
        if len(convs) == n:
            break
    return convs


def _answers(model, tokenizer, questions: list[list[dict]], label: str) -> list[str]:
    """Greedy answers, all questions in one batch (a handful: the check is about equality, not speed)."""
    from tunekit.infer.greedy import greedy_answers

    return greedy_answers(model, tokenizer, questions, ANSWER_TOKENS, len(questions), label)


def _agreement(name: str, got: list[str], want: list[str]) -> dict:
    """How many answers are identical; the differing ones side by side (a quantized export may
    legitimately flip a near-tie, and the user should see what that changed)."""
    differing = [{"question": i, "adapter": b, name: a} for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    same = len(want) - len(differing)
    console.print(f"  {name}: {same} of {len(want)} greedy answers identical to the adapter model's")
    return {"identical_answers": same, "questions": len(want), "differing": differing}


# What each format leaves in the output folder.
ARTIFACTS = {"adapter": "adapter", "merged": "merged", "gguf": "model.gguf", "ollama": "Modelfile"}


def export_target(target: Target, formats: list[str], out: Path, dtype: str = "auto", gguf_type: str = "f16",
                  check_answers: int = 5) -> dict:
    """Write and verify each format under `out`; returns (and writes to out/export.json) the figures.

    Each format's files appear only once its checks pass. export.json describes this export only;
    files an earlier export left for formats not written now are named in it as stale.
    The models run on the GPU when there is one, in plain fp32."""
    with exact_fp32():  # the checks' tolerances are fp32's: no TF32 matmuls on a GPU
        return _export(target, formats, out, dtype, gguf_type, check_answers)


def _export(target: Target, formats: list[str], out: Path, dtype: str, gguf_type: str, check_answers: int) -> dict:
    from tunekit.export.adapter import export_adapter
    from tunekit.export.merge import choose_dtype, export_merged, merged_fp32

    t0 = time.time()
    formats = parse_formats(formats)
    if "ollama" in formats and "gguf" not in formats:
        formats.insert(formats.index("ollama"), "gguf")  # the Modelfile's FROM
    (out / "export.json").unlink(missing_ok=True)  # never left describing files about to change
    done: dict = {"source": target.label, "model": str(target.model), "adapter": str(target.adapter) if target.adapter else None,
                  "formats": formats}
    atomic.require_space(out, export_bytes(target, formats, dtype, gguf_type), f"exporting {', '.join(formats)} to {out}",
                         " (or export fewer formats, or to another disk with --out)")
    questions = check_questions(target, check_answers)
    merged = merged_fp32(target, questions, _answers) if set(formats) & {"merged", "gguf"} else None
    if merged is not None and merged.answers is not None:
        done["check_questions"] = len(questions)
    if "adapter" in formats:
        done["adapter"] = export_adapter(target, out / "adapter", merged.want if merged else None)
        console.print(f"adapter (PEFT format): {out / 'adapter'}; peft loads it with identical logits")
    if "merged" in formats:
        strict = choose_dtype(dtype, target.tokenizer) == "float32"
        m = done["merged"] = export_merged(target, out / "merged", dtype, merged,
                                           also=lambda model: _answer_check("merged", model, merged, questions, strict))
        console.print(f"merged model ({m['dtype']}): {out / 'merged'}; max logit difference from the adapter model "
                      f"{m['max_logit_gap']:.2g} ({m['relative_gap']:.2%} of the logit scale)")
    if "gguf" in formats:
        done["gguf"] = _export_gguf(target, out, merged, gguf_type, done.get("merged"), questions)
    if merged is not None:
        merged.model = None  # what follows needs only the tokenizer
    if "ollama" in formats:
        from tunekit.export.ollama import export_ollama
        from tunekit.models.catalog import read_context_length

        done["ollama"] = export_ollama(out, out / "model.gguf", merged.tokenizer, read_context_length(target.model), target.label)
        console.print(f"Ollama Modelfile: {out / 'Modelfile'} (stop {', '.join(done['ollama']['stop'])}); "
                      f"`cd {out} && ollama create {done['ollama']['name']} -f Modelfile`")
    done["stale"] = [name for fmt, name in ARTIFACTS.items() if fmt not in formats and (out / name).exists()]
    for name in done["stale"]:
        console.print(f"[yellow]note[/] {out / name} is from an earlier export, not rewritten now; it may not match this model")
    done["seconds"] = round(time.time() - t0, 1)
    atomic.write_json(out / "export.json", done)
    return done


_GGUF_BYTES = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 one-byte weights and an f16 scale per block


def _folder_bytes(folder: Path | None, weights: bool = True) -> int:
    """Bytes of the files in `folder`; without `weights`, only its small files (tokenizer, configs)."""
    if folder is None:
        return 0
    big = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and (weights or not f.name.endswith(big)))


def weight_count(folder: Path) -> int:
    """Weights in a model folder, from the safetensors headers alone (nothing is loaded)."""
    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            n += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return n


def export_bytes(target: Target, formats: list[str], dtype: str, gguf_type: str) -> int:
    """About what an export writes: every format's files, and the GGUF's fp32 scratch source while
    it is made (none when the merged export is itself fp32)."""
    from tunekit.export.merge import choose_dtype

    n = weight_count(target.model) if set(formats) & {"merged", "gguf"} else 0
    need = _folder_bytes(target.tokenizer, weights=False) if set(formats) & {"adapter", "merged"} else 0
    merged_dtype = choose_dtype(dtype, target.tokenizer) if "merged" in formats else None
    if "adapter" in formats:
        need += _folder_bytes(target.adapter)
    if merged_dtype:
        need += n * {"float32": 4, "bfloat16": 2, "float16": 2}[merged_dtype]
    if "gguf" in formats:
        need += int(n * _GGUF_BYTES[gguf_type]) + (0 if merged_dtype == "float32" else 4 * n)
    return need


def _answer_check(name: str, model, merged, questions: list[list[dict]], strict: bool) -> dict:
    """The loaded-back model's greedy answers against the adapter model's. With `strict` (an fp32
    export: logits within ~1e-5) a changed answer is a bug and refused; a cast or quantized export
    may flip a near-tie, which is reported with both answers."""
    if merged.answers is None:
        return {}
    result = _agreement(name, _answers(model, merged.tokenizer, questions, f"check {name}"), merged.answers)
    if strict and result["differing"]:
        raise CheckpointError(f"the fp32 {name} model answers {len(result['differing'])} of {len(questions)} check questions "
                              f"differently from the adapter model; this is a bug, not exporting")
    return {"answers": result}


def _export_gguf(target: Target, out: Path, merged, gguf_type: str, merged_done: dict | None,
                 questions: list[list[dict]]) -> dict:
    """model.gguf from the fp32 merge (never from a bf16/f16 export: that would round twice),
    written and verified in a scratch folder, then moved into `out`."""
    from tunekit.export.gguf import verify_gguf, write_gguf
    from tunekit.export.merge import write_folder

    scratch = out / ".gguf-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        if merged_done and merged_done["dtype"] == "float32":
            src = out / "merged"
        else:
            src = scratch / "source"
            src.mkdir(parents=True)
            write_folder(merged.model, merged.tokenizer, src, "float32", target.tokenizer)
        unverified = scratch / "model.gguf"
        figures = write_gguf(src, unverified, gguf_type)
        figures.update(verify_gguf(unverified, src, gguf_type,
                                   also=lambda model: _answer_check("gguf", model, merged, questions, strict=False)))
        os.replace(unverified, out / "model.gguf")
        figures["file"] = str(out / "model.gguf")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    console.print(f"GGUF ({gguf_type}): {out / 'model.gguf'}; read back by transformers, max logit difference "
                  f"{figures['max_logit_gap']:.2g} (tolerance {figures['tolerance']:.2g})")
    return figures
