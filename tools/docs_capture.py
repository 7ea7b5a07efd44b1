"""Keep a finished example run's results in the repository, for the docs' figures.

    python tools/docs_figures.py capture runs/support-demo --machine "2-core AMD EPYC (AVX512-BF16, no AMX)" \\
        --wall-seconds 489 --setup-seconds 55
    make docs-figures

writes examples/<example>/expected/: scores.json (eval/scores.json without the per-question
lists), train_state.json, export.json (when the run exported) and timing.json (the machine,
each stage's seconds from the run's stage records, and what `make demo` took, which no run
file holds: time it and pass --wall-seconds). Run folders are not committed (runs/ is
ignored); these excerpts are, so the README's and the guide's figures have a source.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# scores.json keys that hold every answer or question: the report has them, the docs do not.
BULKY = ("questions",)


def excerpt_scores(scores: dict) -> dict:
    out = dict(scores)
    if isinstance(out.get("forgetting"), dict):
        out["forgetting"] = {k: v for k, v in out["forgetting"].items() if k not in BULKY}
    return out


def matmul_ratio(reason: str | None) -> float | None:
    """The bf16/fp32 matmul ratio `precision: auto` measured, from its reason ("... (2.25x)")."""
    m = re.search(r"\((\d+(?:\.\d+)?)x\)", reason or "")
    return float(m.group(1)) if m else None


def stage_seconds(run: Path) -> dict[str, float]:
    """Each stage's seconds as the pipeline recorded them (runs/<name>/.stages/<stage>.json)."""
    out = {}
    for p in sorted((run / ".stages").glob("*.json")):
        seconds = json.loads(p.read_text()).get("seconds")
        if seconds is not None:
            out[p.stem] = seconds
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="docs_figures.py capture", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder, e.g. runs/support-demo")
    ap.add_argument("--example", default="support", help="examples/<example>/expected/ receives it (default support)")
    ap.add_argument("--machine", required=True, help='what it ran on, e.g. "2-core AMD EPYC (AVX512-BF16, no AMX)"')
    ap.add_argument("--wall-seconds", type=float, help="what the whole command took (time make demo)")
    ap.add_argument("--setup-seconds", type=float, help="of which setting up (venv, install, model)")
    args = ap.parse_args(argv)
    run = args.run
    for need in ("eval/scores.json", "train_state.json"):
        if not (run / need).is_file():
            print(f"error: {run / need} is missing: capture a finished run (tunekit run CONFIG)")
            return 1
    out = ROOT / "examples" / args.example / "expected"
    out.mkdir(parents=True, exist_ok=True)
    scores = json.loads((run / "eval" / "scores.json").read_text())
    state = json.loads((run / "train_state.json").read_text())
    write_json(out / "scores.json", excerpt_scores(scores))
    write_json(out / "train_state.json", state)
    if (run / "export" / "export.json").is_file():
        write_json(out / "export.json", json.loads((run / "export" / "export.json").read_text()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    timing = {
        "machine": args.machine,
        "provenance": f"captured from {run} by tools/docs_figures.py capture on {datetime.date.today()} at commit {commit}",
        "wall_seconds": args.wall_seconds,
        "setup_seconds": args.setup_seconds,
        "stages": stage_seconds(run),
        "bf16_over_fp32_matmul": matmul_ratio(state.get("precision_reason")),
    }
    write_json(out / "timing.json", timing)
    print(f"wrote {out.relative_to(ROOT)}/; now `make docs-figures` renders the docs from it")
    return 0
