"""Eager against SDPA attention on this machine's CPU, by width (hardware.EAGER_ATTENTION_BELOW).

Part 1 times one forward and backward of the default model with the demo's method (LoRA on the
upper 16 blocks) at batch 8, for each width, with the attention written out ("eager") and
through SDPA, alternating, best of --repeats, in fp32 and in bf16 autocast. Part 2 (--train)
runs the demo's train stage for --epochs in fresh processes, alternating the width switch off
and on, and reports tokens/s.

    python bench/attention.py                   # widths only, about 4 minutes on 2 cores
    python bench/attention.py --train --pairs 2 --epochs 0.3
    python bench/attention.py --train --no-widths --out bench/results/attention_train.json

Writes bench/results/attention.json and .md. Run it alone: two cores shared with another job
give figures that mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "support" / "config.yaml"
WIDTHS = (64, 96, 128, 160, 192, 224, 256, 320, 512)

CHILD = r"""
import json, sys
from pathlib import Path
from tunekit import hardware, pipeline
from tunekit.config import load_config
if sys.argv[3] == "off":
    hardware.EAGER_ATTENTION_BELOW = {"bf16": 0, "fp32": 0}
cfg = load_config(sys.argv[1], sys.argv[4:])
result = pipeline.run_stage(cfg, Path(sys.argv[2]), "train", force=True)
print("RESULT " + json.dumps({k: result[k] for k in ("tokens_per_s", "seconds", "steps", "valid_loss", "precision")}))
"""


def widths(repeats: int, batch: int) -> list[dict]:
    import torch

    from tunekit import hardware
    from tunekit.config import load_config
    from tunekit.models.loading import load_model
    from tunekit.models.resolve import resolve
    from tunekit.train.allocator import return_freed_memory_promptly
    from tunekit.train.compute import cast_frozen
    from tunekit.train.loss import supervised_loss_sum
    from tunekit.train.methods import apply_method

    hardware.set_threads(None)
    cfg = load_config(CONFIG)
    if cfg.train.lean_memory:  # as training runs: freed memory goes back to the system, which makes
        return_freed_memory_promptly()  # every large temporary cost page faults (eager makes more of them)
    path = resolve(cfg.model.base)
    rows = []
    for name in ("fp32", "bf16"):
        precision = hardware.choose_precision(name, model_dir=path)
        model, _ = apply_method(load_model(path), cfg.method)
        cast_frozen(model, precision)
        model.train()
        config = model.config
        for width in WIDTHS:
            ids = torch.randint(100, 40000, (batch, width))
            mask = torch.ones(batch, width, dtype=torch.long)
            mask[0, width // 2 :] = 0  # one padded row, as batches have
            labels = ids.clone()
            labels[:, : width // 3] = -100  # the prompt carries no loss
            times: dict[str, list[float]] = {"eager": [], "sdpa": []}
            for impl in ("eager", "sdpa") * (repeats + 1):  # the first of each is a warm-up
                config._attn_implementation = impl
                t = time.perf_counter()
                with precision.autocast():
                    loss, _ = supervised_loss_sum(model, ids, mask, labels)
                loss.backward()
                times[impl].append(time.perf_counter() - t)
                model.zero_grad(set_to_none=True)
            best = {impl: min(ts[1:]) for impl, ts in times.items()}
            config._attn_implementation = "sdpa"
            row = {"precision": name, "width": width, "batch": batch, "eager_s": round(best["eager"], 3),
                   "sdpa_s": round(best["sdpa"], 3), "eager_over_sdpa": round(best["eager"] / best["sdpa"], 3)}
            print(row, flush=True)
            rows.append(row)
        del model
    return rows


def train_pairs(pairs: int, epochs: float) -> list[dict]:
    from tunekit import pipeline
    from tunekit.config import load_config

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        pipeline.run_stage(load_config(CONFIG), run, "prepare")
        for i in range(pairs):
            for switch in ("off", "on"):
                p = subprocess.run([sys.executable, "-c", CHILD, str(CONFIG), str(run), switch, f"train.epochs={epochs}"],
                                   cwd=CONFIG.parent, capture_output=True, text=True)
                line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
                if p.returncode or line is None:
                    sys.exit(f"train run failed ({p.returncode}):\n{p.stderr[-3000:]}")
                out.append({"pair": i, "switch": switch, **json.loads(line[len("RESULT "):])})
                print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train", action="store_true", help="also A/B the demo's train stage")
    ap.add_argument("--no-widths", action="store_true", help="skip part 1 (with --train: only the A/B)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attention.json")
    args = ap.parse_args()

    from tunekit import hardware

    result = {"machine": {"cpu": hardware.cpu_model(), "amx": hardware.amx(),
                          "avx512_bf16": "avx512_bf16" in hardware.cpu_flags()},
              "threshold": hardware.EAGER_ATTENTION_BELOW, "widths": [] if args.no_widths else widths(args.repeats, args.batch)}
    if args.train:
        result["train"] = train_pairs(args.pairs, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Eager against SDPA attention ({result['machine']['cpu']}, AMX {result['machine']['amx']})", "",
             f"Switch threshold {result['threshold']} tokens."]
    if result["widths"]:
        lines += ["", f"Forward and backward, batch {args.batch}, best of {args.repeats}.", "",
                  "| precision | width | eager s | sdpa s | eager/sdpa |", "|---|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['width']} | {r['eager_s']} | {r['sdpa_s']} | {r['eager_over_sdpa']} |"
                  for r in result["widths"]]
    if args.train:
        lines += ["", "| pair | switch | tokens/s | seconds | held-out loss |", "|---|---|---|---|---|"]
        lines += [f"| {r['pair']} | {r['switch']} | {r['tokens_per_s']} | {r['seconds']} | {r['valid_loss']:.4f} |"
                  for r in result["train"]]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
