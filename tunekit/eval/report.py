"""The report stage: report.md and report.html, the verdict first.

Everything in the report is read from the run folder's artefacts (data_report.json,
train_state.json, metrics.jsonl, eval/scores.json, eval/predictions.jsonl), so the
report can be rebuilt at any time without recomputing anything.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tunekit import atomic
from tunekit.eval.evaluate import LABELS
from tunekit.train.metrics import read_metrics
from tunekit.train.plot import loss_curve_png


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def verdict(scores: dict) -> str:
    """One plain sentence: did fine-tuning win, by how much, how sure are we."""
    acc = scores.get("fact_accuracy", {})
    n = scores.get("questions", 0)
    if "tuned" not in acc:
        losses = scores.get("valid_loss", {})
        if "tuned" in losses and "base" in losses:
            better = "lowered" if losses["tuned"] < losses["base"] else "did not lower"
            return f"Fine-tuning {better} the held-out loss ({losses['base']:.3f} -> {losses['tuned']:.3f})."
        return "No held-out comparison was run."
    rivals = {k: v for k, v in acc.items() if k != "tuned"}
    if not rivals:
        return f"The fine-tuned model stated the required facts in {acc['tuned']:.0%} of {n} held-out questions."
    best = max(rivals, key=rivals.get)
    d = scores["differences"][f"tuned_minus_{best}"]
    lo, hi = (round(100 * x) for x in d["ci95"])
    pts = round(100 * d["diff"])
    if lo > 0:
        return f"Fine-tuning beat the best alternative ({LABELS[best]}) by {pts} points (95% CI {lo} to {hi}) on {n} held-out questions."
    if hi < 0:
        return f"Fine-tuning lost to {LABELS[best]} by {-pts} points (95% CI {lo} to {hi}) on {n} held-out questions; use the prompt instead."
    return f"Fine-tuning and {LABELS[best]} are not distinguishable on {n} held-out questions ({pts:+d} points, 95% CI {lo} to {hi})."


def headline(scores: dict) -> list[str]:
    """The verdict, then each contender's score and the tuned model's lead over each."""
    acc = scores.get("fact_accuracy", {})
    lines = [f"- {LABELS[k]}: {100 * acc[k]:.1f}% fact accuracy" for k in ("base", "few_shot", "tuned") if k in acc]
    for key, d in scores.get("differences", {}).items():
        other = key.removeprefix("tuned_minus_")
        lo, hi = (100 * x for x in d["ci95"])
        lines.append(f"- fine-tuned minus {LABELS[other]}: {100 * d['diff']:+.1f} points (95% CI {lo:+.1f} to {hi:+.1f})")
    return [verdict(scores), ""] + lines


def _examples(predictions: Path, limit: int = 5) -> list[dict]:
    """Questions where the contenders disagree on correctness: the instructive cases."""
    out = []
    if predictions.is_file():
        for line in predictions.read_text().splitlines():
            row = json.loads(line)
            if len(set(row.get("correct", {}).values())) > 1:
                out.append(row)
            if len(out) >= limit:
                break
    return out


_COST_ROWS = [
    ("method", "method", "{}"),
    ("trainable_params", "trainable parameters", "{:,}"),
    ("steps", "optimiser steps", "{:,}"),
    ("tokens_seen", "tokens trained on", "{:,}"),
    ("seconds", "training time", "{:.0f} s"),
    ("tokens_per_s", "throughput", "{:.0f} tokens/s"),
    ("peak_rss_mb", "peak memory (RSS)", "{:,} MB"),
    ("final_train_loss", "final training loss", "{:.4f}"),
]


def build_report(run_dir: Path) -> Path:
    """Write report.md and report.html into the run folder; returns report.md's path."""
    scores = _read_json(run_dir / "eval" / "scores.json")
    data = _read_json(run_dir / "data" / "data_report.json")
    train = _read_json(run_dir / "train_state.json")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    md = ["# tunekit report: " + run_dir.name, ""] + headline(scores) + [""]
    md += ["## Held-out loss", ""] + [f"- {LABELS[k]}: {v:.4f}" for k, v in scores.get("valid_loss", {}).items()] + [""]
    md += ["## Data", "", f"- lines read: {data.get('lines_read')}, kept: {data.get('kept')} "
           f"(train {data.get('train')}, valid {data.get('valid')}), rejected: {data.get('rejected')}"]
    md += [f"- rejected because {k}: {v}" for k, v in data.get("rejects_by_reason", {}).items()]
    if data.get("cleaning"):
        md += ["- cleaning: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data["cleaning"].items())]
    if data.get("split", {}).get("moved_to_train"):
        md += [f"- moved to training so that similar records sit on one side of the split: {data['split']['moved_to_train']}"]
    md += [f"- note: {n}" for n in data.get("notes", [])]
    if "eval" in data:
        md += [f"- held-out questions: {data['eval']['items']} (found verbatim in training: {data['eval']['leaked_into_train']})"]
    md += ["", "## Training cost", ""]
    for key, label, fmt in _COST_ROWS:
        if train.get(key) is not None:
            md.append(f"- {label}: {fmt.format(train[key])}")
    md += ["", "## Where the contenders differ", ""]
    for row in _examples(run_dir / "eval" / "predictions.jsonl"):
        md += [f"**Q:** {row['question']}", "", f"*reference:* {row['reference']}", ""]
        md += [f"- {LABELS[k]} ({'correct' if row['correct'].get(k) else 'wrong'}): {a}" for k, a in row["answers"].items()] + [""]
    md_text = "\n".join(md) + "\n"
    atomic.write_text(run_dir / "report.md", md_text)
    atomic.write_text(run_dir / "report.html", _html(run_dir.name, md, loss_curve_png(metrics)))
    return run_dir / "report.md"


def _html(name: str, md_lines: list[str], plot: bytes | None) -> str:
    body = []
    for line in md_lines:
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
            if line == "## Training cost" and plot:
                body.append(f'<img alt="training and held-out loss" src="data:image/png;base64,{base64.b64encode(plot).decode()}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line.replace('**', '').replace('*', ''))}</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tunekit report: {html.escape(name)}</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;line-height:1.4}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
