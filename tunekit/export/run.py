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
import shutil
import time
from pathlib import Path

from tunekit import atomic
from tunekit.errors import ConfigError
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
    from tunekit.eval.generate import greedy_answers

    return greedy_answers(model, tokenizer, questions, ANSWER_TOKENS, len(questions), label)


def _agreement(name: str, got: list[str], want: list[str]) -> dict:
    """How many answers are identical; the differing ones side by side (a quantized export may
    legitimately flip a near-tie, and the user should see what that changed)."""
    differing = [{"question": i, "adapter": b, name: a} for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    same = len(want) - len(differing)
    console.print(f"  {name}: {same} of {len(want)} greedy answers identical to the adapter model's")
    return {"identical_answers": same, "questions": len(want), "differing": differing}


def export_target(target: Target, formats: list[str], out: Path, dtype: str = "auto", gguf_type: str = "f16",
                  check_answers: int = 5) -> dict:
    """Write and verify each format under `out`; returns (and writes to out/export.json) the figures."""
    from tunekit.export.adapter import export_adapter
    from tunekit.export.merge import export_merged, merged_fp32

    t0 = time.time()
    formats = parse_formats(formats)
    done: dict = {"source": target.label, "model": str(target.model), "adapter": str(target.adapter) if target.adapter else None}
    questions = check_questions(target, check_answers)
    merged = merged_fp32(target) if set(formats) & {"merged", "gguf", "ollama"} else None
    want = merged[2] if merged else None
    ref_answers = None
    if questions and merged:
        ref_answers = _reference_answers(target, merged[1], questions)
        done["check_questions"] = len(questions)
    if "adapter" in formats:
        done["adapter"] = export_adapter(target, out / "adapter", want)
        console.print(f"adapter (PEFT format): {out / 'adapter'}; peft loads it with identical logits")
    if "merged" in formats:
        done["merged"] = export_merged(target, out / "merged", dtype, merged)
        m = done["merged"]
        console.print(f"merged model ({m['dtype']}): {out / 'merged'}; max logit difference from the adapter model "
                      f"{m['max_logit_gap']:.2g} ({m['relative_gap']:.2%} of the logit scale)")
        if ref_answers is not None:
            from tunekit.models.loading import load_model

            got = _answers(load_model(out / "merged", "float32").eval(), merged[1], questions, "check merged")
            done["merged"]["answers"] = _agreement("merged", got, ref_answers)
    if {"gguf", "ollama"} & set(formats):
        done["gguf"] = _export_gguf(target, out, merged, gguf_type, done.get("merged"), questions, ref_answers)
    if "ollama" in formats:
        from tunekit.export.ollama import export_ollama
        from tunekit.models.catalog import read_context_length

        done["ollama"] = export_ollama(out, out / "model.gguf", merged[1], read_context_length(target.model), target.label)
        console.print(f"Ollama Modelfile: {out / 'Modelfile'} (stop {', '.join(done['ollama']['stop'])}); "
                      f"`cd {out} && ollama create {target.label.lower()} -f Modelfile`")
    done["seconds"] = round(time.time() - t0, 1)
    atomic.write_json(out / "export.json", done)
    return done


def _reference_answers(target: Target, tokenizer, questions: list[list[dict]]) -> list[str]:
    """The adapter model's own greedy answers (unmerged: what training and peft produce)."""
    from tunekit.models.tuned import load_target

    model, _ = load_target(target, "float32")
    return _answers(model, tokenizer, questions, "check adapter")


def _export_gguf(target: Target, out: Path, merged, gguf_type: str, merged_done: dict | None,
                 questions: list[list[dict]], ref_answers: list[str] | None) -> dict:
    """model.gguf from the fp32 merge (never from a bf16/f16 export: that would round twice)."""
    from tunekit.export.gguf import verify_gguf, write_gguf
    from tunekit.export.merge import save_folder

    if merged_done and merged_done["dtype"] == "float32":
        src, scratch = out / "merged", None
    else:
        scratch = out / ".gguf-source"
        save_folder(merged[0], merged[1], scratch, "float32", target.model)
        src = scratch
    try:
        figures = write_gguf(src, out / "model.gguf", gguf_type)

        def answers(model) -> dict:  # asked of the model read back from the file, while it is loaded
            return {"answers": _agreement("gguf", _answers(model, merged[1], questions, "check gguf"), ref_answers)}

        check = verify_gguf(out / "model.gguf", src, gguf_type, also=answers if ref_answers is not None else None)
        figures.update(check)
        console.print(f"GGUF ({gguf_type}): {out / 'model.gguf'}; read back by transformers, max logit difference "
                      f"{check['max_logit_gap']:.2g} (tolerance {check['tolerance']:.2g})")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return figures

