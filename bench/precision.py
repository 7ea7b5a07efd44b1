"""fp32 against bf16 on the bundled demo's train stage, side by side on this machine (issue 13).

The demo config (examples/support/config.yaml) is prepared once; then its train stage runs in
fresh processes, alternating train.precision=fp32 and bf16 (fp32, bf16, fp32, bf16, ...), each
for --epochs of an epoch. Each run reports training tokens/s, the process's peak RSS (the
resident high-water mark from the model load on, as `tunekit train` has it) and the held-out
loss at the end. The machine's own figures come from tunekit.hardware: CPU, AMX, the measured
fp32/bf16 matmul rates at the model's shapes, and what `auto` picks.

    python bench/precision.py                       # 3 pairs of 40% of an epoch
    python bench/precision.py --pairs 1 --epochs 0.1 --out /tmp/precision.json

Writes bench/results/precision.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "support" / "config.yaml"

CHILD = r"""
import json, sys, resource
from pathlib import Path
from tunekit.config import load_config
from tunekit import pipeline
cfg = load_config(sys.argv[1], sys.argv[3:])
run = Path(sys.argv[2])
result = pipeline.run_stage(cfg, run, "train", force=True)
print("RESULT " + json.dumps({k: result[k] for k in ("tokens_per_s", "seconds", "steps", "valid_loss", "precision",
                                                  "precision_reason", "peak_rss_mb", "estimated_peak_mb")}))
"""


def run_child(run_dir: Path, overrides: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(CONFIG), str(run_dir), *overrides], cwd=CONFIG.parent,
                       capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or line is None:
        sys.exit(f"train run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def machine(model_dir: Path) -> dict:
    import torch

    from tunekit import hardware

    hardware.set_threads(None)
    auto = hardware.choose_precision("auto", model_dir=model_dir)
    return {"cpu": hardware.cpu_model(), "amx": hardware.amx(), "avx512_bf16": "avx512_bf16" in hardware.cpu_flags(),
            "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "matmul_gflops_at_model_shapes": {k: auto.gflops.get(k) for k in ("fp32", "bf16")},
            "auto": auto.name, "auto_reason": auto.reason}


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=0.4, help="share of an epoch each run trains (default 0.4)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides for both")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = ap.parse_args(argv)

    from tunekit import pipeline
    from tunekit.config import load_config

    work = Path(tempfile.mkdtemp(prefix="tunekit-precision-"))
    common = [f"train.epochs={args.epochs}", "train.save_every=0", *args.set]
    cfg = load_config(str(CONFIG), common)
    pipeline.run_stage(cfg, work / "fp32", "prepare")
    (work / "bf16").mkdir()
    subprocess.run(["cp", "-r", str(work / "fp32" / "data"), str(work / "bf16")], check=True)
    doc = {"machine": machine(pipeline._resolve_model(cfg)), "config": str(CONFIG.relative_to(ROOT)), "overrides": common, "runs": []}
    print(json.dumps(doc["machine"]), flush=True)
    for i in range(args.pairs):
        for precision in ("fp32", "bf16"):
            r = run_child(work / precision, [*common, f"train.precision={precision}"])
            r["pair"] = i
            doc["runs"].append(r)
            print(json.dumps(r), flush=True)
    by = {p: [r for r in doc["runs"] if r["precision"] == p] for p in ("fp32", "bf16")}
    pairs = list(zip(by["fp32"], by["bf16"], strict=True))
    doc["bf16_over_fp32"] = {"tokens_per_s": spread([b["tokens_per_s"] / f["tokens_per_s"] for f, b in pairs]),
                             "peak_rss": spread([b["peak_rss_mb"] / f["peak_rss_mb"] for f, b in pairs]),
                             "valid_loss": spread([b["valid_loss"] / f["valid_loss"] for f, b in pairs])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    m, r = doc["machine"], doc["bf16_over_fp32"]
    lines = [f"# fp32 vs bf16 training on {m['cpu']} ({m['threads']} threads, {m['isa']}, AMX {'yes' if m['amx'] else 'no'}, "
             f"AVX512-BF16 {'yes' if m['avx512_bf16'] else 'no'})", "",
             f"Matmul at the model's shapes: fp32 {m['matmul_gflops_at_model_shapes']['fp32']} GFLOP/s, bf16 "
             f"{m['matmul_gflops_at_model_shapes']['bf16']} GFLOP/s; auto picks {m['auto']}. "
             f"Config {doc['config']} with {' '.join(doc['overrides'])}, alternating fresh processes.", "",
             "| pair | precision | steps | s | tokens/s | peak RSS MB | held-out loss |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['pair']} | {x['precision']} | {x['steps']} | {x['seconds']} | {x['tokens_per_s']} | {x['peak_rss_mb']} | "
              f"{x['valid_loss']:.4f} |" for x in doc["runs"]]
    lines += ["", f"bf16 / fp32: tokens/s {r['tokens_per_s']['median']}x ({r['tokens_per_s']['min']}-{r['tokens_per_s']['max']}), "
              f"peak RSS {r['peak_rss']['median']}x, held-out loss {r['valid_loss']['median']}x", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
