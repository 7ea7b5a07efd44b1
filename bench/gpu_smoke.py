"""The bundled demo end to end on a GPU: the first check to run on a machine with one.

Runs, each as its own `tunekit` process and timed: `run` on examples/support/config.yaml
(prepare, train, eval, report) under a fresh run name, `chat` with two piped questions,
`generate` on a few held-out questions, and `export --format adapter,merged`. Then reads
the run's train_state.json and eval/scores.json and writes bench/results/gpu_smoke.json
and gpu_smoke.md: the GPU, torch and CUDA versions, each stage's seconds and exit code,
and the figures the run recorded (tokens/s, precision and why, CUDA peak memory, scores).

Every stage runs through the real command line, so what is timed is what a user runs;
a stage that fails stops the rest (they all need the run) but the results are still
written, with the failing stage's output tail.

The GPU machines reach nothing outside: the base model must already be in tunekit's model
cache there ($TUNEKIT_HOME, default ~/.cache/tunekit), and torch must be a CUDA build.

    python bench/gpu_smoke.py                          # the whole demo, on the GPU
    python bench/gpu_smoke.py --nproc-per-node 4       # trained by 4 processes, one per GPU (torchrun, DDP)
    python bench/gpu_smoke.py --nproc-per-node 2 train.distributed=fsdp2   # the same, weights sharded

Multi-GPU mode (--nproc-per-node N): the `run` stage is `tunekit run --nproc-per-node N`, which
launches torchrun on this machine (train in N processes; the other stages on rank 0). The
results then record the processes and the strategy (ddp or fsdp2, and why), and the training's
figures are rank 0's. Compare with a one-process run on the same machine for the speed-up.
    python bench/gpu_smoke.py --allow-cpu --limit 8 train.epochs=0.02 eval.forgetting=false \\
        --work /tmp/gpu_smoke --out /tmp/gpu_smoke.json     # checks this script on a CPU, in minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # gpu_info reads tunekit.hardware when there is no GPU
CONFIG = ROOT / "examples" / "support" / "config.yaml"
RESULTS = ROOT / "bench" / "results" / "gpu_smoke.json"
CHAT_QUESTIONS = ["How many apps can Loomquay connect to out of the box?", "And which plan do large companies go on?"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for the run, e.g. train.epochs=0.1")
    p.add_argument("--limit", type=int, help="only the first N held-out questions (eval.max_questions=N, and N generate prompts)")
    p.add_argument("--prompts", type=int, default=4, help="held-out questions given to `tunekit generate` (default 4)")
    p.add_argument("--work", help="folder for the run and logs (default: a new temp folder)")
    p.add_argument("--name", default=f"gpu-smoke-{time.strftime('%Y%m%d-%H%M%S')}", help="the run's name")
    p.add_argument("--out", default=str(RESULTS), help="the JSON to write; the .md goes beside it")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check this script, not tunekit on a GPU)")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train in N processes, one per GPU, through torchrun (default 1: one process)")
    return p.parse_args(argv)


def gpu_info() -> dict:
    """What the results are about: the card, its memory and capability, and the software stack."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    memory_gib=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    cudnn=torch.backends.cudnn.version())
    else:  # --allow-cpu: say which CPU, so a CPU result is never mistaken for a GPU one
        from tunekit import hardware

        info.update(cpu=hardware.cpu_model(), amx=hardware.amx())
    return info


def stage(name: str, args: list[str], logs: Path, stdin: str | None = None) -> dict:
    """One `tunekit` command in its own process (as a user runs it), timed; its output goes to a log."""
    log = logs / f"{name}.log"
    cmd = [sys.executable, "-m", "tunekit", *args]
    print(f"== {name}: tunekit {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, input=stdin, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = round(time.perf_counter() - t0, 1)
    log.write_text(proc.stdout)
    print(f"   exit {proc.returncode} in {seconds} s (log {log})", flush=True)
    out = {"seconds": seconds, "rc": proc.returncode, "log": str(log)}
    if proc.returncode != 0:
        out["tail"] = proc.stdout[-3000:]
        print(out["tail"], file=sys.stderr)
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def figures(run: Path) -> dict:
    """The run's own records: training speed, precision and memory; the eval's precision, scores and time."""
    t, s = read_json(run / "train_state.json"), read_json(run / "eval" / "scores.json")
    keep = ("steps", "tokens_per_s", "seconds", "device", "precision", "precision_reason", "cuda_max_allocated_mb",
            "peak_rss_mb", "estimated_peak_mb", "valid_loss", "processes", "distributed", "distributed_reason")
    return {"train": {k: t.get(k) for k in keep},
            "eval": {k: s.get(k) for k in ("precision", "metrics", "differences", "eval_seconds", "questions")},
            "export": read_json(run / "export" / "export.json")}


def markdown(doc: dict) -> str:
    m, tr, ev = doc["machine"], doc["figures"]["train"], doc["figures"]["eval"]
    where = (f"{m['gpu']} ({m['memory_gib']} GiB, compute capability {m['capability']})" if m["gpu"]
             else f"NO GPU: {m.get('cpu')} (--allow-cpu, a check of the script only)")
    lines = [f"# tunekit GPU smoke test on {where}", "",
             f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}; run `{doc['run']}`, overrides {doc['overrides']}", "",
             "| stage | exit | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {r['rc']} | {r['seconds']} |" for name, r in doc["stages"].items()]
    spread = (f" in {tr['processes']} processes ({tr.get('distributed')}: {tr.get('distributed_reason')})"
              if tr.get("processes") else " in one process")
    lines += ["", f"Training{spread}: {tr.get('steps')} steps, {tr.get('tokens_per_s')} tokens/s, {tr.get('seconds')} s on "
              f"{tr.get('device')}, precision {tr.get('precision')} ({tr.get('precision_reason')}); CUDA peak allocated "
              f"{tr.get('cuda_max_allocated_mb')} MB, peak RSS {tr.get('peak_rss_mb')} MB (estimated {tr.get('estimated_peak_mb')} MB).",
              "", f"Eval: {ev.get('questions')} questions in {ev.get('eval_seconds')} s, precision "
              f"{(ev.get('precision') or {}).get('name')}; metrics {json.dumps(ev.get('metrics'))}; "
              f"differences {json.dumps(ev.get('differences'))}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        # The point is to see tunekit on a GPU; a CPU run here would only look like a result.
        sys.exit(f"gpu_smoke: torch sees no CUDA GPU (torch {torch.__version__}, "
                 f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}). "
                 "Run this on a GPU machine, or pass --allow-cpu to check the script itself.")
    if torch.cuda.is_available() and args.nproc_per_node > torch.cuda.device_count():
        sys.exit(f"gpu_smoke: --nproc-per-node {args.nproc_per_node} but torch sees {torch.cuda.device_count()} GPUs")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_smoke-")).resolve()
    runs, logs = work / "runs", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    overrides = [f"name={args.name}", *args.overrides] + ([f"eval.max_questions={args.limit}"] if args.limit else [])
    run = runs / args.name
    # generate's prompts: the first held-out questions, without their reference answers.
    heldout = [json.loads(line) for line in (CONFIG.parent / "data" / "heldout.jsonl").read_text().splitlines() if line.strip()]
    prompts = work / "prompts.jsonl"
    n = min(args.prompts, args.limit or args.prompts)
    prompts.write_text("".join(json.dumps({"messages": h["messages"]}) + "\n" for h in heldout[:n]))

    steps = [
        ("run", ["run", str(CONFIG), *overrides, "--runs-dir", str(runs)]
         + (["--nproc-per-node", str(args.nproc_per_node)] if args.nproc_per_node > 1 else []), None),
        ("chat", ["chat", str(run), "--max-new-tokens", "64"], "\n".join(CHAT_QUESTIONS) + "\n"),
        ("generate", ["generate", str(run), "--input", str(prompts), "--output", str(work / "answers.jsonl"),
                      "--max-new-tokens", "64"], None),
        ("export", ["export", str(run), "--format", "adapter,merged"], None),
    ]
    done: dict[str, dict] = {}
    for name, cmd, stdin in steps:
        done[name] = stage(name, cmd, logs, stdin)
        if done[name]["rc"] != 0:  # the later stages all need what this one makes
            break

    doc = {"machine": gpu_info(), "run": str(run), "overrides": overrides, "nproc_per_node": args.nproc_per_node,
           "stages": done, "figures": figures(run),
           "chat_transcript": (logs / "chat.log").read_text()[-2000:] if (logs / "chat.log").is_file() else None,
           "ok": all(r["rc"] == 0 for r in done.values()) and len(done) == len(steps),
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    print(f"written: {out} and {out.with_suffix('.md')}; run folder {run}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
