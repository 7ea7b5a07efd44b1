"""One process against several on the same run: does `--nproc-per-node N` end as one process does?

Runs `tunekit run CONFIG` in one process, then `tunekit run CONFIG --nproc-per-node N` (torchrun,
DDP), one after the other, and compares what they wrote: the verdict (the report's first
paragraph), every contender's answer to every held-out question, the scores, the per-step
training loss and the final adapter. Writes bench/results/distributed.json (or --out), under the
key of the run's precision (or --key), so pairs sit side by side; one file holds one machine's
pairs, as the docs state each file's figures with its machine.

It is a check of equality, not of speed: on a CPU the processes share the cores, and the two
runs' seconds are recorded only to show what the comparison cost (a loaded machine moves them).

    python bench/distributed.py train.precision=fp32            # the demo, fp32: ~50 min on 2 cores
    python bench/distributed.py --compare RUN_ONE RUN_MANY      # only compare two finished run folders
    python bench/distributed.py train.grad_accum=1 train.batch_size=8 --key bf16_cut   # micro-batches cut in two
    python bench/distributed.py --out bench/results/distributed_whole.json      # another machine's pairs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "examples" / "support" / "config.yaml"
RESULTS = ROOT / "bench" / "results" / "distributed.json"


def machine() -> dict:
    from tunekit import hardware

    m = {"cpu": hardware.cpu_model(), "cores": len(os.sched_getaffinity(0)), "amx": hardware.amx(),
         "avx512_bf16": "avx512_bf16" in hardware.cpu_flags()}
    m["name"] = (f"{m['cores']}-core {' '.join(m['cpu'].split()[:2])} "
                 f"({'AVX512-BF16' if m['avx512_bf16'] else 'no AVX512-BF16'}, {'AMX' if m['amx'] else 'no AMX'})")
    return m


def run(args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        rc = subprocess.run([sys.executable, "-m", "tunekit", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"tunekit {' '.join(args)} exited {rc}; see {log}")
    return round(time.perf_counter() - t0, 1)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summary(run_dir: Path) -> dict:
    state = json.loads((run_dir / "train_state.json").read_text())
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    return {"processes": state.get("processes", 1), "distributed": state.get("distributed"), "precision": state["precision"],
            "steps": state["steps"], "final_train_loss": state["final_train_loss"], "valid_loss": state["valid_loss"],
            "train_seconds": state["seconds"], "primary_metric": scores["primary_metric"],
            "metrics": scores["metrics"][scores["primary_metric"]], "differences": scores["differences"],
            "general_score": (scores.get("forgetting") or {}).get("general_score"),
            "verdict": (run_dir / "report.md").read_text().split("\n## ")[0].strip()}


def compare(one: Path, many: Path) -> dict:
    from safetensors.torch import load_file

    a, b = summary(one), summary(many)
    pa, pb = _lines(one / "eval" / "predictions.jsonl"), _lines(many / "eval" / "predictions.jsonl")
    answers = [(x["answers"][c], y["answers"][c]) for x, y in zip(pa, pb, strict=True) for c in x["answers"]]
    ma, mb = _lines(one / "metrics.jsonl"), _lines(many / "metrics.jsonl")
    sa, sb = (json.loads((d / "train_state.json").read_text())["final_checkpoint"] for d in (one, many))
    wa, wb = (load_file(str(d / s / "adapter_model.safetensors")) for d, s in ((one, sa), (many, sb)))
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return {"one": a, "many": b, "verdict_same": a["verdict"] == b["verdict"], "answers": len(answers),
            "answers_identical": sum(x == y for x, y in answers),
            "loss_max_diff": max(abs(x["loss"] - y["loss"]) for x, y in zip(ma, mb, strict=True)),
            "adapter_max_diff": float(f"{diff:.2g}")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for both runs")
    p.add_argument("--nproc-per-node", type=int, default=2, metavar="N", help="processes of the second run (default 2)")
    p.add_argument("--work", help="folder for the two runs (default: a new temp folder)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_ONE", "RUN_MANY"), help="compare two finished run folders only")
    p.add_argument("--key", help="the results' key for this pair (default: the runs' precision)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    seconds = {}
    if args.compare:
        one, many = (Path(x) for x in args.compare)
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="distributed-"))
        work.mkdir(parents=True, exist_ok=True)
        seconds["one"] = run(["run", str(CONFIG), *args.overrides, "--runs-dir", str(work / "one")], work / "one.log")
        seconds["many"] = run(["run", str(CONFIG), *args.overrides, "--runs-dir", str(work / "many"),
                               "--nproc-per-node", str(args.nproc_per_node)], work / "many.log")
        from tunekit.config import load_config

        name = load_config(CONFIG, args.overrides).name
        one, many = work / "one" / name, work / "many" / name
    result = {**compare(one, many), "overrides": args.overrides, "seconds": seconds,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    here = machine()
    if doc.get("runs") and doc.get("machine", {}).get("name") != here["name"]:
        sys.exit(f"{out} holds pairs measured on {doc.get('machine', {}).get('name')}, not on this {here['name']}: "
                 "name another file with --out")
    doc["machine"] = here
    doc.setdefault("runs", {})[args.key or result["one"]["precision"]] = result
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("one", "many")}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
