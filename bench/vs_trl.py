"""tunekit against TRL SFTTrainer + PEFT, side by side on this machine (issue 5, items 1-2).

Training: the default model (smollm2-135m-instruct), the bundled example's data as
tunekit's prepare stage splits it (data/train.jsonl, data/valid.jsonl), the same method
(LoRA r=16, alpha=32, all linear layers, every block, no LoRA+; or full fine-tuning),
AdamW, learning rate and cosine schedule with 5% warmup, examples per optimiser step,
epochs and max_length. Each run is a fresh process (bench/vs_trl_child.py), alternating
tunekit, TRL, tunekit, TRL, ... for --pairs pairs.

Both tools get the same tokenised examples: tunekit's chat template rendering and loss
mask (TRL takes a pre-tokenised dataset with a `labels` column as is), so both train on
the same tokens with the same supervised positions, and "tokens" and "supervised
tokens" are counted once, from the prepared data and the optimiser steps actually run.
Seconds are the training loop only (first to last optimiser step, warm-up included;
model loading, the final checkpoint and the held-out loss are outside it). Peak RSS is
the child's ru_maxrss right after training. The held-out loss is one function
(vs_trl_child.heldout_loss) over valid.jsonl for both, after training.

TRL's settings, the fastest that run here and train correctly: no packing (packing would
change the examples per optimiser step); padding_free=False, because on a CPU there is no
flash attention and with SDPA transformers 5.24 lets the flattened examples attend to
each other (checked: the logits of the 2nd and 3rd example of a padding-free row differ
from their own by ~24), so it would be faster only by training something else; instead
train_sampling_strategy=group_by_length, so a padded batch holds examples of similar
length as tunekit's batches do; gradient_checkpointing=False (SFTConfig's default is
True: slower); optim=adamw_torch_fused (transformers' default on torch >= 2.8); bf16
autocast exactly when tunekit's own decision says bf16 (see Precision below), else fp32;
dataloader_num_workers=0 (the data is already tokenised; workers would take cores from
the matmuls); torch_compile=False (batch shapes vary, so it recompiles; not measured
here); no in-loop evaluation or saving; threads = cores, as tunekit sets them. Each can
be changed with the --trl-* flags.

Precision: one decision for both tools. With --precision auto (the default) it is
tunekit's: `tunekit.hardware.choose_precision("auto", model_dir=<the model>)`, which times
bf16 against fp32 matmuls at the model's shapes (cached in $TUNEKIT_HOME/hardware.json, so
tunekit's training process, which decides again, reads the same answer); TRL gets bf16=True
exactly when that decision is bf16. (The old check, "AMX" in get_cpu_capability(), was
never true: that string names the vector ISA and stops at AVX512.) --precision fp32|bf16
forces both: tunekit through train.precision, TRL through bf16=True/False. Generation runs
both tools in the same dtype too. The results' "machine" section records the CPU model, AMX,
AVX512-BF16, and the decision with its reason and measured GFLOP/s.

Generation: greedy answers to the held-out questions (the eval stage's work) with the
eval stage's batch size and max_new_tokens, tunekit's loop (tunekit.infer.greedy.
greedy_batch) against `transformers` `generate` in the same batches; tokens/s and
whether the outputs are token-for-token identical.

Writes bench/results/vs_trl.json (sections lora / full / generate are updated, others
kept) and bench/results/vs_trl.md.

    python bench/vs_trl.py                      # lora, full and generation, 3 pairs each
    python bench/vs_trl.py --method lora --pairs 5
    python bench/vs_trl.py --precision bf16     # both tools in bf16 autocast, whatever auto says
    python bench/vs_trl.py --limit 48 --pairs 1 --questions 16 --out /tmp/vs_trl.json   # smoke test

Time on the 2-core dev machine (AMD EPYC, AVX2, no AMX, fp32 both sides): one epoch is
808 examples, 61.3k tokens. Measured with --limit 80 (10 steps): LoRA tunekit ~150-180
tokens/s, TRL ~75-87; full tunekit ~110, TRL ~61-68. So the default run (a full epoch, 3
pairs of each) takes about 3 hours here; `--limit 80 --pairs 3` takes about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunekit import hardware  # noqa: E402
from tunekit.config import load_config  # noqa: E402
from tunekit.data.batches import load_examples  # noqa: E402
from tunekit.models.loading import load_tokenizer  # noqa: E402
from tunekit.pipeline import _resolve_model, run_stage  # noqa: E402

CONFIG = ROOT / "examples" / "support" / "config.yaml"
CHILD = Path(__file__).resolve().parent / "vs_trl_child.py"
RESULTS = ROOT / "bench" / "results" / "vs_trl.json"
DEFAULT_LR = {"lora": 1e-3, "full": 5e-5}  # the example's LoRA lr; a usual full fine-tuning lr for a 135M model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=["lora", "full", "generate", "all"], default="all")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max-steps", type=int, default=None, help="stop both tools after N optimiser steps")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 for LoRA, 5e-5 for full")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--questions", type=int, default=None, help="generation: only the first N held-out questions")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="both tools' precision; auto (default): tunekit's measured decision, which TRL then follows")
    p.add_argument("--tunekit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tunekit config for its runs, e.g. data.packing=true (YAML scalar)")
    p.add_argument("--trl-padding-free", type=int, choices=[0, 1], default=0,
                   help="1 is faster but wrong without flash attention: examples attend to each other")
    p.add_argument("--trl-sampling", default="group_by_length", choices=["random", "group_by_length"])
    p.add_argument("--trl-optim", default="adamw_torch_fused")
    p.add_argument("--trl-workers", type=int, default=0)
    p.add_argument("--trl-compile", type=int, choices=[0, 1], default=0)
    p.add_argument("--workdir", default=None, help="where the prepared data and the runs go (default: a temp folder)")
    p.add_argument("--out", default=str(RESULTS), help="the JSON to write; the markdown goes beside it")
    return p.parse_args(argv)


def prepare_data(work: Path, limit: int | None):
    """tunekit's prepare stage on the bundled example, once; the data every run reads."""
    cfg = load_config(CONFIG, ["name=vs-trl"])
    run_stage(cfg, work / "prep", "prepare", force=True)
    data = work / "prep" / "data"
    if limit:
        lines = [line for line in (data / "train.jsonl").read_text().splitlines() if line.strip()][:limit]
        (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    return cfg, data


def child(spec: dict, work: Path, tag: str) -> dict:
    """Run one spec in a fresh process; its result, with the process's own ru_maxrss."""
    spec_path, result_path, log = work / f"{tag}.spec.json", work / f"{tag}.result.json", work / f"{tag}.log"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(CHILD), str(spec_path), str(result_path)], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); its output is in {log}:\n" + log.read_text()[-3000:])
    result = json.loads(result_path.read_text())
    result.update(process_seconds=round(time.perf_counter() - t0, 1), process_peak_rss_mb=round(usage.ru_maxrss / 1024))
    return result


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def examples_seen(n: int, batch: int, accum: int, steps: int) -> int:
    """Examples consumed by `steps` optimiser steps (an epoch's short last micro-batch ends it)."""
    full_epochs, rest = divmod(steps * accum, -(-n // batch))
    return full_epochs * n + rest * batch


def bench_train(args, method: str, base: dict, stats: dict, work: Path) -> dict:
    spec = {**base, "kind": "train", "method": method, "lr": args.lr or DEFAULT_LR[method]}
    runs = []
    for pair in range(args.pairs):
        for tool in ("tunekit", "trl"):
            tag = f"{method}-{pair}-{tool}"
            r = child({**spec, "tool": tool, "run_dir": str(work / tag)}, work, tag)
            seen = examples_seen(stats["examples"], args.batch_size, args.grad_accum, r["steps"])
            r.update(tool=tool, pair=pair, examples_seen=seen,
                     tokens=round(seen * stats["tokens"] / stats["examples"]),
                     supervised_tokens=round(seen * stats["supervised"] / stats["examples"]))
            r["tokens_per_s"] = round(r["tokens"] / r["train_seconds"], 1)
            r["mfu"] = round(r["tokens_per_s"] * stats["flops_per_token"][method] / (stats["peak_gflops"][r["precision"]] * 1e9), 3)
            r["supervised_tokens_per_s"] = round(r["supervised_tokens"] / r["train_seconds"], 1)
            print(f"{tag}: {r['steps']} steps, {r['tokens_per_s']} tok/s ({r['supervised_tokens_per_s']} supervised), "
                  f"peak RSS {r['peak_rss_mb']} MB, held-out loss {r['heldout_loss']:.4f}", flush=True)
            runs.append(r)
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    steps = {r["steps"] for r in runs}
    ratios = {
        "tokens_per_s": spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]),
        "peak_rss": spread([a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in pairs]),
        "heldout_loss": spread([a["heldout_loss"] / b["heldout_loss"] for a, b in pairs]),
    }
    # tunekit decides `auto` again in its own process; a different answer there (a cache that could
    # not be written, a flip at the margin) would make the comparison unequal, so say so.
    return {"lr": spec["lr"], "same_steps": len(steps) == 1, "same_precision": len({r["precision"] for r in runs}) == 1,
            "runs": runs, "ratios_tunekit_over_trl": ratios}


def bench_generate(args, base: dict, cfg, data: Path, work: Path) -> dict:
    spec = {**base, "kind": "generate", "questions": str(data / "eval.jsonl"), "questions_limit": args.questions,
            "gen_batch_size": cfg.eval.batch_size, "max_new_tokens": cfg.eval.max_new_tokens}
    runs, outputs = [], {}
    for pair in range(args.pairs):
        for tool in ("tunekit", "transformers"):
            r = child({**spec, "tool": tool}, work, f"generate-{pair}-{tool}")
            outs = r.pop("outputs")
            outputs.setdefault(tool, outs)
            r.update(tool=tool, pair=pair, tokens_per_s=round(r["new_tokens"] / r["seconds"], 1),
                     same_as_first_run=outs == outputs[tool])
            print(f"generate-{pair}-{tool}: {r['new_tokens']} tokens, {r['tokens_per_s']} tok/s, "
                  f"peak RSS {r['peak_rss_mb']} MB", flush=True)
            runs.append(r)
    a, b = outputs["tunekit"], outputs["transformers"]
    same = sum(x == y for x, y in zip(a, b))
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    return {"questions": len(a), "batch_size": spec["gen_batch_size"], "max_new_tokens": spec["max_new_tokens"],
            "precision": spec["precision"],
            "identical_answers": same, "all_identical": same == len(a),
            "differing": [i for i, (x, y) in enumerate(zip(a, b)) if x != y][:20], "runs": runs,
            "ratios_tunekit_over_transformers": {
                "tokens_per_s": spread([x["tokens_per_s"] / y["tokens_per_s"] for x, y in pairs]),
                "peak_rss": spread([x["peak_rss_mb"] / y["peak_rss_mb"] for x, y in pairs])}}


def matmul_peak(seconds: float = 1.5) -> dict:
    """This machine's matmul rate in GFLOP/s for fp32 and bf16 (2048^3 products, all cores): the MFU denominators.

    Not the precision decision's figures: those are at the model's (smaller) shapes, where call
    overhead counts; MFU wants the best the hardware does."""
    hardware.set_threads(None)
    shape, cpu = [(2048, 2048, 2048)], torch.device("cpu")
    return {name: round(hardware.matmul_gflops(dtype, shape, cpu, seconds), 1)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def model_flops_per_token(model_path: str, supervised_share: float) -> dict:
    """Matmul FLOPs one training token needs, by method: the work both tools must do, so MFU compares them fairly.

    body = weights of the decoder blocks' linear layers, head = the output layer. Forward
    costs 2 x weights per token; backward 2 x for the input gradient and, for weights that
    train, 2 x for the weight gradient. The head is needed only at supervised positions
    (what tunekit computes; TRL computes it everywhere, which is extra work, not useful
    work). LoRA's own small matmuls and attention's scores (~1% at these lengths) are left out.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    body = sum(m.weight.numel() for m in model.get_decoder().layers.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    return {"lora": 4 * body + 4 * head * supervised_share, "full": 6 * body + 6 * head * supervised_share}


def machine(auto: hardware.Precision, used: hardware.Precision, setting: str) -> dict:
    """The CPU as tunekit.hardware sees it, tunekit's own (auto) precision decision, and the one both tools ran."""
    import peft
    import transformers
    import trl

    return {"cpu_model": hardware.cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx": hardware.amx(), "avx512_bf16": "avx512_bf16" in hardware.cpu_flags(),
            "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "tunekit_auto_precision": {"name": auto.name, "reason": auto.reason, "gflops": auto.gflops},
            "precision": {"setting": setting, "name": used.name, "reason": used.reason},
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg, data = prepare_data(work, args.limit)
    model = str(_resolve_model(cfg))
    tok = load_tokenizer(model)
    ex = load_examples(data / "train.jsonl", tok)
    stats = {"examples": len(ex), "tokens": sum(len(e.input_ids) for e in ex),
             "supervised": sum(e.supervised for e in ex), "valid_examples": len(load_examples(data / "valid.jsonl", tok))}
    stats["flops_per_token"] = model_flops_per_token(model, stats["supervised"] / stats["tokens"])
    stats["peak_gflops"] = matmul_peak()
    print(f"matmul peak here: {stats['peak_gflops']} GFLOP/s", flush=True)
    # tunekit's decision, made as its training makes it (same threads, same model shapes, so its
    # training process reads the same cached measurement); TRL follows it. A forced setting
    # is resolved too, for its reason and to fail here on a bad one.
    auto = hardware.choose_precision("auto", model_dir=model)
    used = auto if args.precision == "auto" else hardware.choose_precision(args.precision, model_dir=model)
    print(f"precision: {used.describe()}", flush=True)
    overrides = dict(s.split("=", 1) for s in args.tunekit_set)
    if args.precision != "auto":
        if "train.precision" in overrides:
            raise SystemExit("give the precision once: --precision, or --tunekit-set train.precision=..., not both")
        overrides["train.precision"] = args.precision
    import yaml

    base = {"model": model, "train": str(data / "train.jsonl"), "valid": str(data / "valid.jsonl"), "seed": 0,
            "r": 16, "alpha": 32, "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
            "grad_accum": args.grad_accum, "max_length": cfg.data.max_length, "warmup_ratio": 0.05,
            "tunekit_overrides": {k: yaml.safe_load(v) for k, v in overrides.items()}, "precision": used.name,
            "trl": {"padding_free": bool(args.trl_padding_free), "sampling": args.trl_sampling, "optim": args.trl_optim,
                    "bf16": used.name == "bf16",
                    "dataloader_num_workers": args.trl_workers, "torch_compile": bool(args.trl_compile)}}
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc.update(machine=machine(auto, used, args.precision), data=stats, settings={k: v for k, v in base.items() if k not in ("train", "valid")},
               limit=args.limit, workdir=str(work))
    methods = ["lora", "full", "generate"] if args.method == "all" else [args.method]
    for m in methods:
        doc[m] = bench_generate(args, base, cfg, data, work) if m == "generate" else bench_train(args, m, base, stats, work)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")  # after each part: a long run keeps what it measured
        out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


def _r(x: dict) -> str:
    return f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    p, a = m["precision"], m["tunekit_auto_precision"]
    lines = [f"# tunekit vs TRL {m['trl']} on {m['cpu_model']} ({m['cores']} cores, {m['cpu_capability']}, "
             f"AMX {'yes' if m['amx'] else 'no'}, AVX512-BF16 {'yes' if m['avx512_bf16'] else 'no'})", "",
             f"Precision of both tools: **{p['name']}** (--precision {p['setting']}"
             + (f": {p['reason']}; tunekit's own auto decision would be {a['name']}: {a['reason']})." if p["setting"] != "auto"
                else f", tunekit's decision, which TRL follows: {a['reason']})."), "",
             f"Data: {doc['data']['examples']} training examples, {doc['data']['tokens']} tokens "
             f"({doc['data']['supervised']} supervised) per epoch; {doc['data']['valid_examples']} held-out examples. "
             f"Matmul peak of this machine (2048^3, all cores): {doc['data'].get('peak_gflops')} GFLOP/s; MFU counts the matmul "
             "FLOPs a token needs (see model_flops_per_token) against the peak of the run's precision. "
             f"Settings: {json.dumps(doc['settings'])}", ""]
    for method in ("lora", "full"):
        if method not in doc:
            continue
        sec = doc[method]
        lines += [f"## {method} (lr {sec['lr']})", "",
                  "| run | tool | steps | s | tokens/s | supervised tok/s | MFU | peak RSS MB | held-out loss | precision |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sec["runs"]:
            lines.append(f"| {r['pair']} | {r['tool']} | {r['steps']} | {r['train_seconds']} | {r['tokens_per_s']} | "
                         f"{r['supervised_tokens_per_s']} | {r.get('mfu', 0):.1%} | {r['peak_rss_mb']} | {r['heldout_loss']:.4f} | {r['precision']} |")
        q = sec["ratios_tunekit_over_trl"]
        lines += ["", f"tunekit / TRL, median (min-max): tokens/s {_r(q['tokens_per_s'])}, peak RSS {_r(q['peak_rss'])}, "
                  f"held-out loss {_r(q['heldout_loss'])}" + ("" if sec["same_steps"] else " (WARNING: step counts differ)")
                  + ("" if sec.get("same_precision", True) else " (WARNING: the tools ran in different precisions)"), ""]
    if "generate" in doc:
        g = doc["generate"]
        lines += [f"## generation ({g['questions']} questions, batch {g['batch_size']}, max_new_tokens {g['max_new_tokens']}, "
                  f"{g.get('precision', 'fp32')} weights)", "",
                  "| run | tool | new tokens | s | tokens/s | peak RSS MB |", "|---|---|---|---|---|---|"]
        for r in g["runs"]:
            lines.append(f"| {r['pair']} | {r['tool']} | {r['new_tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r['peak_rss_mb']} |")
        q = g["ratios_tunekit_over_transformers"]
        lines += ["", f"tunekit / generate, median (min-max): tokens/s {_r(q['tokens_per_s'])}, peak RSS {_r(q['peak_rss'])}; "
                  f"identical answers: {g['identical_answers']} of {g['questions']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
