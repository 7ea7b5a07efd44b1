"""The replay fraction against domain score and general score, on the bundled demo (issue 14).

For each train.replay.fraction the demo config (examples/support/config.yaml, with any
extra overrides) is trained and evaluated from scratch in a fresh process: the tuned model's
fact accuracy on the 166 held-out questions, and the forgetting check (general score kept,
its paired-bootstrap interval, the flag, general-text perplexity). The base model's and the
few-shot prompt's scores do not depend on the fraction, so they are measured once, at the
first fraction, and the other runs evaluate the tuned model alone.

    python bench/replay_curve.py                                 # fractions 0, 0.1, 0.2, 0.3, 0.4
    python bench/replay_curve.py --fractions 0 0.3 --out /tmp/curve.json train.lr=5e-4

Writes bench/results/replay_curve.json and .md (and draws replay_curve.png). Run it alone on
the machine: train seconds are reported too.
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

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "support" / "config.yaml"


def run(fraction: float, runs: Path, overrides: list[str], all_contenders: bool) -> dict:
    extra = [] if all_contenders else ["eval.contenders=[tuned]"]
    cmd = [sys.executable, "-m", "tunekit", "run", "--runs-dir", str(runs), str(CONFIG),
           f"train.replay.fraction={fraction}", *extra, *overrides]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"run at fraction {fraction} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    run_dir = next(runs.iterdir())
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    state = json.loads((run_dir / "train_state.json").read_text())
    f = scores["forgetting"]
    return {"fraction": fraction, "domain": scores["metrics"]["fact_accuracy"],
            "general": f["general_score"], "general_correct": f["general_correct"], "n_general": f["n_questions"],
            "kept": f["kept"], "kept_ci95": f["kept_ci95"], "flagged": f["flagged"], "perplexity": f["perplexity"],
            "train_seconds": state["seconds"], "train_examples": state["train_examples"],
            "replay_examples": (state.get("replay") or {}).get("examples", 0), "eval_seconds": scores["eval_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1), "precision": state["precision"]}


def write_md(result: dict, path: Path) -> None:
    rows = ["| replay fraction | replay examples | tuned fact accuracy | general score (base -> tuned) | kept (95% CI) "
            "| flagged | general-text perplexity | train s |", "|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        lo, hi = p["kept_ci95"]
        rows.append(f"| {p['fraction']} | {p['replay_examples']} | {100 * p['domain']['tuned']:.1f}% | "
                    f"{p['general_correct']['base']}/{p['n_general']} -> {p['general_correct']['tuned']}/{p['n_general']} | "
                    f"{p['kept']:.0%} ({lo:.0%} to {hi:.0%}) | {'yes' if p['flagged'] else 'no'} | "
                    f"{p['perplexity']['base']:.1f} -> {p['perplexity']['tuned']:.1f} | {p['train_seconds']:.0f} |")
    base = result["points"][0]["domain"]
    head = [f"# Replay fraction on the demo ({result['machine']}, {result['date']})", "",
            f"Overrides: {' '.join(result['overrides']) or 'none'}. Base model fact accuracy "
            f"{100 * base.get('base', 0):.1f}%, few-shot {100 * base.get('few_shot', 0):.1f}%.", ""]
    path.write_text("\n".join(head + rows) + "\n", encoding="utf-8")


def draw(result: dict, path: Path) -> None:
    from tunekit.eval.plots import _plt

    plt = _plt()
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs = [p["fraction"] for p in pts]
    ax.plot(xs, [100 * p["domain"]["tuned"] for p in pts], "o-", label="domain: tuned fact accuracy")
    ax.plot(xs, [100 * p["general"]["tuned"] for p in pts], "s-", label="general score, tuned")
    ax.axhline(100 * pts[0]["general"]["base"], color="C1", ls=":", label="general score, base")
    few = pts[0]["domain"].get("few_shot")
    if few is not None:
        ax.axhline(100 * few, color="C0", ls=":", label="domain: few-shot prompt")
    ax.set_xlabel("train.replay.fraction")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replay_curve.json")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.lr=5e-4")
    args = ap.parse_args()
    from tunekit.hardware import amx, cpu_model

    points = []
    for i, fraction in enumerate(args.fractions):
        with tempfile.TemporaryDirectory() as tmp:
            points.append(run(fraction, Path(tmp), args.overrides, all_contenders=i == 0))
        print(json.dumps(points[-1]), flush=True)
    first = points[0]["domain"]
    for p in points[1:]:  # measured once: they do not depend on the replay fraction
        p["domain"] = {**{k: v for k, v in first.items() if k != "tuned"}, **p["domain"]}
    result = {"machine": f"{cpu_model()}, {'AMX' if amx() else 'no AMX'}, {platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "config": str(CONFIG.relative_to(ROOT)), "overrides": args.overrides,
              "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_md(result, args.out.with_suffix(".md"))
    draw(result, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
