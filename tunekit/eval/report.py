"""The report stage: report.md and report.html, the verdict first.

Everything in the report is read from the run folder's artefacts (config.yaml,
data/data_report.json, train_state.json, metrics.jsonl, eval/scores.json,
eval/predictions.jsonl, plan/learning_curve.json), so the report can be rebuilt at any
time without recomputing anything. Any of them may be missing or from an older tunekit:
a section whose facts are absent is left out, never an error.

The report is built once as plain data (sections of blocks: paragraphs, lists, tables,
figures, examples) and written twice: Markdown here, HTML in report_html.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunekit import atomic
from tunekit.eval import plots
from tunekit.eval.evaluate import LABELS
from tunekit.eval.forgetting import kept_sentence
from tunekit.eval.scoring import METRIC_LABELS as NAMES
from tunekit.eval.scoring import RATES
from tunekit.eval.report_html import render_html, render_md
from tunekit.train.metrics import read_metrics
from tunekit.train.plot import loss_curve_png

CONTENDERS = ("base", "few_shot", "tuned")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return rows


def _label(c: str) -> str:
    return LABELS.get(c, c)


def primary(scores: dict) -> tuple[str, dict]:
    """The metric the verdict is about, and each contender's score on it."""
    metric = scores.get("primary_metric") or "fact_accuracy"
    return metric, scores.get("metrics", {}).get(metric) or scores.get(metric) or {}


def _unit(metric: str) -> str:
    """Percentage points for a share of right answers; otherwise points of the metric (x100)."""
    if metric in RATES:
        return "points"
    return "F1 points" if metric == "token_f1" else f"{NAMES.get(metric, metric)} points"


def _score_text(metric: str, value: float) -> str:
    if metric in RATES:
        return f"{value:.1%} {NAMES.get(metric, metric)}"
    return f"{NAMES.get(metric, metric)} {100 * value:.1f}"


def verdict(scores: dict) -> str:
    """One plain sentence: did fine-tuning win, by how much, how sure are we."""
    metric, acc = primary(scores)
    n = scores.get("questions", 0)
    if "tuned" not in acc:
        losses = scores.get("valid_loss", {})
        if "tuned" in losses and "base" in losses:
            better = "lowered" if losses["tuned"] < losses["base"] else "did not lower"
            return f"Fine-tuning {better} the held-out loss ({losses['base']:.3f} -> {losses['tuned']:.3f})."
        return "No held-out comparison was run."
    rivals = {k: v for k, v in acc.items() if k != "tuned"}
    if not rivals:
        if metric == "fact_accuracy":
            return f"The fine-tuned model stated the required facts in {acc['tuned']:.0%} of {n} held-out questions."
        return f"The fine-tuned model scored {NAMES.get(metric, metric)} {100 * acc['tuned']:.0f} (of 100) on {n} held-out questions."
    best = max(rivals, key=rivals.get)
    unit, rival = _unit(metric), _label(best)
    d = scores.get("differences", {}).get(f"tuned_minus_{best}")
    if not d or not d.get("ci95"):
        pts = round(100 * (acc["tuned"] - rivals[best]))
        return (f"Fine-tuning scored {pts:+d} {unit} against the best alternative ({rival}) on {n} held-out questions; "
                "no interval was computed.")
    lo, hi = (round(100 * x) for x in d["ci95"])
    pts = round(100 * d["diff"])
    if d["ci95"][0] > 0:
        return f"Fine-tuning beat the best alternative ({rival}) by {pts} {unit} (95% CI {lo} to {hi}) on {n} held-out questions."
    if d["ci95"][1] < 0:
        advice = "use the prompt instead" if best == "few_shot" else "the base model alone does better"
        return f"Fine-tuning lost to {rival} by {-pts} {unit} (95% CI {lo} to {hi}) on {n} held-out questions; {advice}."
    return f"Fine-tuning and {rival} are not distinguishable on {n} held-out questions ({pts:+d} {unit}, 95% CI {lo} to {hi})."


def headline(scores: dict) -> list[str]:
    """The verdict, then each contender's score, the tuned model's lead over each, and a forgetting warning."""
    metric, acc = primary(scores)
    lines = [f"- {_label(k)}: {_score_text(metric, acc[k])}" for k in CONTENDERS if k in acc]
    for key, d in scores.get("differences", {}).items():
        if d.get("ci95"):
            lo, hi = (100 * x for x in d["ci95"])
            lines.append(f"- fine-tuned minus {_label(key.removeprefix('tuned_minus_'))}: {100 * d['diff']:+.1f} {_unit(metric)} "
                         f"(95% CI {lo:+.1f} to {hi:+.1f})")
    lines += _answer_lines(scores)
    forgetting = scores.get("forgetting") or {}
    if forgetting.get("flagged"):
        lines.append(f"- warning, forgetting: {forgetting.get('why') or 'the tuned model does worse on general text or questions'}")
    lines += [f"- note, forgetting: {note}" for note in forgetting.get("notes", [])]
    first = verdict(scores)
    if "kept_ci95" in forgetting:
        first += " " + kept_sentence(forgetting)
    return [first, ""] + lines


def _answer_lines(scores: dict) -> list[str]:
    """How long the answers are, macro-F1 where items carry labels, how often answers state other
    facts, and a few-shot prompt without examples."""
    lines = []
    words = scores.get("answer_words") or {}
    if words:
        lines.append("- mean answer length: " + ", ".join(f"{_label(c)} {words[c]:.1f} words" for c in CONTENDERS if c in words))
    f1 = scores.get("macro_f1") or {}
    if f1:
        lines.append("- macro-F1 over the labels: " + ", ".join(f"{_label(c)} {100 * f1[c]:.1f}" for c in CONTENDERS if c in f1))
    other = scores.get("other_fact_rate") or {}
    if other:
        lines.append("- answers that also state another fact in full: "
                     + ", ".join(f"{_label(c)} {100 * other[c]:.0f}%" for c in CONTENDERS if c in other)
                     + " (one stating more other facts than it was asked about counts as wrong)")
    if scores.get("few_shot_pool") == 0:
        lines.append("- warning, few-shot: no training conversation is a single question and answer, so the prompt "
                     "showed no examples and the few-shot contender is the base model")
    return lines


# -- sections: each a title and a list of blocks ------------------------------------------


def _fig(png: bytes | None, alt: str, caption: str) -> list[dict]:
    return [{"kind": "img", "png": png, "alt": alt, "caption": caption}] if png else []


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def item_values(rows: list[dict], metric: str) -> dict[str, list[float]]:
    """Each contender's per-question values of `metric` in predictions.jsonl rows."""
    out: dict[str, list[float]] = {}
    for row in rows:
        for c, v in _per_item(row, metric).items():
            if isinstance(v, (bool, int, float)):
                out.setdefault(c, []).append(float(v))
    return out


def _per_item(row: dict, metric: str) -> dict:
    per = (row.get("metrics") or {}).get(metric)
    if per is None and metric == "fact_accuracy":
        per = row.get("correct")  # the fact flags of runs from before per-item metrics
    return per or {}


def _score_bars(scores: dict, rows: list[dict]) -> list[dict]:
    """Each contender's primary score with the 95% interval of its own mean, listed and drawn."""
    metric, agg = primary(scores)
    name, n = NAMES.get(metric, metric), scores.get("metric_items", {}).get(metric) or scores.get("questions", 0)
    found = plots.score_intervals(item_values(rows, metric), agg, n, metric in RATES)
    bars = {c: found[c] for c in CONTENDERS if c in found}
    if not bars:
        return []
    how = plots.WILSON if metric in RATES else plots.BOOTSTRAP
    items = [f"{_label(c)}: {name} {_pct(s)}" + (f" (95% CI {_pct(lo)} to {_pct(hi)})" if lo is not None else "")
             for c, (s, lo, hi) in bars.items()]
    png = plots.score_bars_png([(_label(c), *v) for c, v in bars.items()], f"{name} (x100)")
    return [{"kind": "list", "items": items}] + _fig(
        png, f"{name} per contender with 95% intervals",
        f"{name} of each contender on {n} held-out questions. Error bars: the 95% interval of each contender's own mean "
        f"({how}). The verdict's intervals are for the differences (paired bootstrap over questions).")


def _score_table(scores: dict) -> list[dict]:
    """Every metric for every contender, and the tuned model's paired difference to each rival."""
    metric, _ = primary(scores)
    metrics = dict(scores.get("metrics") or {}) or ({"fact_accuracy": scores["fact_accuracy"]} if scores.get("fact_accuracy") else {})
    losses = {k: scores[k] for k in ("valid_loss", "perplexity") if scores.get(k)}
    cols = [c for c in CONTENDERS if any(c in v for v in [*metrics.values(), *losses.values()])]
    by_metric = dict(scores.get("differences_by_metric") or {})
    by_metric.setdefault(metric, scores.get("differences") or {})
    diffs = sorted({k for d in by_metric.values() for k in d})
    rows = []
    for m in sorted(metrics, key=lambda m: (m != metric, list(NAMES).index(m) if m in NAMES else len(NAMES), m)):
        cells = [_pct(metrics[m].get(c)) for c in cols]
        for k in diffs:
            d = by_metric.get(m, {}).get(k)
            cells.append(f"{100 * d['diff']:+.1f} ({100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})" if d and d.get("ci95") else "")
        rows.append([f"{NAMES.get(m, m)} (x100)"] + cells)
    names = {"valid_loss": "held-out loss per token", "perplexity": "held-out perplexity"}
    rows += [[names[k]] + [f"{v[c]:.4g}" if c in v else "" for c in cols] + [""] * len(diffs) for k, v in losses.items()]
    head = ["measure"] + [_label(c) for c in cols] + [f"tuned minus {_label(k.removeprefix('tuned_minus_'))} (95% CI)" for k in diffs]
    return [{"kind": "table", "head": head, "rows": rows}] if rows else []


def _learning_section(curve: dict) -> list[dict]:
    blocks = [{"kind": "p", "text": curve["sentence"]}] if curve.get("sentence") else []
    points = [p for p in curve.get("points") or [] if isinstance(p.get("score"), (int, float)) and p.get("examples")
              and p.get("fraction") and p.get("metric")]
    if not points:
        return blocks
    from tunekit.plan.curve import curve_png  # the drawing `tunekit plan` writes beside the json

    show = lambda p: f"fact accuracy {p['score']:.1%}" if p["metric"] == "fact_accuracy" else f"{p['metric']} {p['score']:.4f}"  # noqa: E731
    return blocks + _fig(curve_png(points), "held-out score against the number of training examples",
                         "Held-out score of models trained on nested shares of the training data.") + [
        {"kind": "list", "items": [f"{p['examples']:,} examples ({p['fraction']:.0%}): {show(p)}" for p in points]}]


def _data_section(data: dict) -> list[dict]:
    if not data:
        return []
    items = [f"source: {data['source']}"] if data.get("source") else []
    items.append(f"lines read: {data.get('lines_read')}, kept: {data.get('kept')} (train {data.get('train')}, "
                 f"valid {data.get('valid')}), rejected: {data.get('rejected')}")
    items += [f"rejected because {k}: {v}" for k, v in data.get("rejects_by_reason", {}).items()]
    if data.get("cleaning"):
        items.append("cleaning: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data["cleaning"].items()))
    if data.get("split", {}).get("moved_to_train"):
        items.append(f"moved to training so that similar records sit on one side of the split: {data['split']['moved_to_train']}")
    per = data.get("tokens", {}).get("per_row", {})
    if per.get("count"):
        items.append(f"tokens per record (rendered with the chat template): p50 {per['p50']}, p90 {per['p90']}, p99 {per['p99']}, "
                     f"max {per['max']}; {data['tokens'].get('total', 0):,} in all")
    items += [f"note: {n}" for n in data.get("notes", [])]
    if "eval" in data:
        held = data["eval"]
        items.append(f"held-out questions: {held.get('items')} (found verbatim in training: {held.get('leaked_into_train')})")
    hist = data.get("tokens", {}).get("histogram")
    png = plots.token_histogram_png(hist) if hist else None
    if png is None:
        items.append("no token-length histogram: this run's data_report.json has no tokens.histogram")
    sources = data.get("sources") or []  # one per data.mix entry; a single data.train needs no table
    rows = [[s.get("path"), f"{s.get('weight', 0):g}", s.get("lines_read"), s.get("kept"), s.get("rejected"), s.get("train"),
             f"{s.get('share', 0):.1%}", s.get("repeated"), s.get("unused"), s.get("valid")] for s in sources]
    mixed = [{"kind": "table", "rows": rows, "head": ["source (data.mix)", "weight", "lines read", "kept", "rejected",
                                                      "train rows", "share of train", "repeated", "unused", "valid rows"]}]
    return [{"kind": "list", "items": items}] + (mixed if len(sources) > 1 else []) + _fig(
        png, "histogram of tokens per training record",
        "Tokens per prepared record, rendered with the chat template; the dashed line is data.max_length.")


_COST_ROWS = [
    ("method", "method", "{}"),
    ("trainable_params", "trainable parameters", "{:,}"),
    ("steps", "optimiser steps", "{:,}"),
    ("tokens_seen", "tokens trained on", "{:,}"),
    ("seconds", "training time", "{:,.0f} s"),
    ("tokens_per_s", "throughput", "{:,.0f} tokens/s"),
    ("device", "device", "{}"),
    ("precision_reason", "training precision", "{}"),
    ("peak_rss_mb", "peak memory (RSS), measured", "{:,} MB"),
    ("estimated_peak_mb", "peak memory, estimated before training", "{:,} MB"),
    ("cuda_max_allocated_mb", "peak GPU memory allocated", "{:,} MB"),
    ("final_train_loss", "final training loss", "{:.4f}"),
]


def _cost_section(train: dict, scores: dict, run_dir: Path) -> list[dict]:
    items = [f"{label}: {fmt.format(train[key])}" for key, label, fmt in _COST_ROWS if train.get(key) is not None]
    if train.get("peak_rss_mb") and train.get("estimated_peak_mb"):
        at = next(i for i, x in enumerate(items) if x.startswith("peak memory, estimated")) + 1
        items.insert(at, f"measured / estimated memory: {train['peak_rss_mb'] / train['estimated_peak_mb']:.2f}")
    r = train.get("replay") or {}
    if r:
        src = ("the base model's own answers to general prompts" if r.get("source") == "self-distillation"
               else str(r.get("source")))
        paid = ("generated during this run" if r.get("generated_now") else "read from the cache")
        cost = f", generating them cost {r['generation_seconds']:,.0f} s once for this base model" if r.get("generation_seconds") else ""
        items.append(f"replay: {r.get('examples', 0):,} of {train.get('train_examples', 0):,} training examples "
                     f"(train.replay.fraction {r.get('fraction')}) from {src}, {paid}{cost}")
    if train.get("stopped_early"):
        items.append(f"stopped early after step {train.get('steps')} of {train.get('planned_steps')}")
    p = scores.get("precision") or {}
    if p.get("name"):
        how = ("fp32 throughout" if p["name"] == "fp32" else "answers and the base's held-out loss from weights "
               "cast to it, an adapter merged in fp32 first; the tuned held-out loss as training measured it")
        items.append(f"evaluation precision on {p.get('device', 'cpu')}: {p['name']} for every contender ({how})")
    eval_s = scores.get("eval_seconds") or _read_json(run_dir / ".stages" / "eval.json").get("seconds")
    if eval_s is not None:
        items.append(f"evaluation time: {eval_s:,.0f} s")
    png = loss_curve_png(read_metrics(run_dir / "metrics.jsonl"))
    return ([{"kind": "list", "items": items}] if items else []) + _fig(
        png, "training and held-out loss", "Training loss and held-out loss per supervised token against optimiser steps.")


def _tradeoff(scores: dict) -> list[dict]:
    """Domain score against general score: base, few-shot (the base model's weights, so its general
    score is the base model's: a prompt can be left out of general questions, a weight change cannot) and tuned."""
    f, (metric, acc) = scores.get("forgetting") or {}, primary(scores)
    general = f.get("general_score") or {}
    if not {"base", "tuned"} <= set(general) or "tuned" not in acc:
        return []
    weights = {"base": "base", "few_shot": "base", "tuned": "tuned"}
    points = [(_label(c), acc[c], general[weights[c]]) for c in CONTENDERS if c in acc]
    caption = (f"{NAMES.get(metric, metric)} on the held-out questions against the share of the "
               f"{f.get('n_questions', 0)} general questions answered; few-shot uses the base model's weights")
    return _fig(plots.tradeoff_png(points, NAMES.get(metric, metric)), "domain score against general score", caption)


def _forgetting_section(f: dict) -> list[dict]:
    """Did the tuned model lose general ability: general questions (the flag), perplexity (a second signal)."""
    blocks = [{"kind": "p", "text": ("Flagged: " if f["flagged"] else "Not flagged: ") + str(f.get("why") or "")}] if "flagged" in f else []
    items, ppl = list(f.get("notes") or []), f.get("perplexity") or {}
    if "base" in ppl and "tuned" in ppl:
        change = f" ({f['perplexity_change']:+.1%})" if f.get("perplexity_change") is not None else ""
        items.append(f"perplexity on {f.get('text_tokens', 0):,} tokens of general text ({f.get('text_source', 'source not recorded')}): "
                     f"base {ppl['base']:.2f}, tuned {ppl['tuned']:.2f}{change}")
    questions, right = f.get("questions") or [], f.get("general_correct") or {}
    items += [f"general questions the {_label(c)} answered right: {right[c]} of {len(questions)}" for c in ("base", "tuned") if c in right]
    items += [f"{skill}: base {row.get('base', 0)}, tuned {row.get('tuned', 0)} of {row.get('questions', 0)}"
              for skill, row in (f.get("by_skill") or {}).items()]
    if f.get("seconds") is not None:
        items.append(f"the check took {f['seconds']:.0f} s (both models)")
    blocks += [{"kind": "list", "items": items}] if items else []

    def cells(q: dict) -> list[str]:
        expected, ok, answers = q.get("expected", ""), q.get("correct") or {}, q.get("answers") or {}
        said = [f"{'right' if ok.get(c) else 'wrong'}: {answers.get(c, '')}" for c in ("base", "tuned")]
        return [str(q.get("question", "")), " / ".join(map(str, expected)) if isinstance(expected, list) else str(expected)] + said

    if questions:
        blocks.append({"kind": "table", "head": ["general question", "accepted answers", "base model", "fine-tuned"],
                       "rows": [cells(q) for q in questions]})
    return blocks


def _differing(rows: list[dict], metric: str, limit: int = 5) -> list[dict]:
    """The instructive cases: where the contenders' scores differ most, else where their answers differ."""
    blocks, ranked = [], []
    for i, row in enumerate(rows):
        per = _per_item(row, metric)
        vals = [float(v) for v in per.values() if isinstance(v, (bool, int, float))]
        if len(vals) > 1 and max(vals) > min(vals):
            ranked.append((-(max(vals) - min(vals)), i))
        elif not vals and len({" ".join(str(a).split()) for a in row.get("answers", {}).values()}) > 1:
            ranked.append((0.0, i))
    for _, i in sorted(ranked)[:limit]:
        row = rows[i]
        per = _per_item(row, metric)
        answers = []
        for c, text in row.get("answers", {}).items():
            v = per.get(c)
            mark = "" if v is None else (("correct" if v else "wrong") if metric in RATES else f"{NAMES.get(metric, metric)} {100 * v:.0f}")
            answers.append([_label(c), mark, str(text)])
        blocks.append({"kind": "example", "question": str(row.get("question") or ""), "reference": str(row.get("reference") or ""),
                       "answers": answers})
    return blocks


def build_sections(run_dir: Path) -> tuple[list[str], list[tuple[str, list[dict]]]]:
    """The headline lines (verdict first) and the report's sections, from the run folder."""
    scores = _read_json(run_dir / "eval" / "scores.json")
    rows = _read_jsonl(run_dir / "eval" / "predictions.jsonl")
    config = run_dir / "config.yaml"
    sections = [
        ("Scores", _score_bars(scores, rows) + _score_table(scores)),
        ("Learning curve", _learning_section(_read_json(run_dir / "plan" / "learning_curve.json"))),
        ("Data", _data_section(_read_json(run_dir / "data" / "data_report.json"))),
        ("Config", [{"kind": "details", "summary": "config.yaml (every default written out)", "text": config.read_text()}]
         if config.is_file() else []),
        ("Cost", _cost_section(_read_json(run_dir / "train_state.json"), scores, run_dir)),
        ("Forgetting check", _tradeoff(scores) + _forgetting_section(scores.get("forgetting") or {})),
        ("Where the contenders differ", _differing(rows, primary(scores)[0])),
    ]
    return headline(scores), [(title, blocks) for title, blocks in sections if blocks]


def build_report(run_dir: Path) -> Path:
    """Write report.md and report.html into the run folder; returns report.md's path."""
    lines, sections = build_sections(run_dir)
    title = "tunekit report: " + run_dir.name
    atomic.write_text(run_dir / "report.md", render_md(title, lines, sections))
    atomic.write_text(run_dir / "report.html", render_html(title, lines, sections))
    return run_dir / "report.md"
