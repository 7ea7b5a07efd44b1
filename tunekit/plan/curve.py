"""The learning curve: train on growing shares of the data, score each, and say whether
more data of this kind is likely to help.

Each share is a seeded subset of the prepared training examples, and the subsets are
nested (the 10% lies inside the 25%, ...), so a point differs from the one before only by
added examples, not by a different draw. Every point trains with the run's own config
(epochs kept, so steps grow with the subset) into `<run>/plan/curve-<pct>/` and is
measured against the same held-out set: fact accuracy of greedy answers to the labelled
eval questions when there are any, else the held-out loss.

Writes `<run>/plan/learning_curve.json` ({"points": [{fraction, examples, score, metric}],
"sentence": ...}) and `<run>/plan/learning_curve.png`.
"""

from __future__ import annotations

import gc
import io
import math
import random
from pathlib import Path

from tunekit import atomic
from tunekit.config import Config
from tunekit.errors import ConfigError

FRACTIONS = (0.10, 0.25, 0.50, 1.0)
# Changes smaller than these between the last two points read as flat. Fact accuracy: under
# 2 points is two or three answers either way on a typical 100-200 question set.
FLAT_POINTS = 2.0
FLAT_LOSS = 0.02  # relative change of the held-out loss


def parse_fractions(text: str) -> list[float]:
    """"10,25,50,100" (percent of the training examples) -> [0.1, 0.25, 0.5, 1.0]."""
    try:
        pcts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        pcts = []
    if not pcts or any(not 0 < p <= 100 for p in pcts) or pcts != sorted(set(pcts)):
        raise ConfigError(f"--fractions {text!r}: give increasing percentages of the training data in (0, 100], e.g. 10,25,50,100")
    return [p / 100 for p in pcts]


def nested_subsets(n: int, fractions: list[float], seed: int) -> list[list[int]]:
    """Indices of each fraction's subset of `n` examples: prefixes of one seeded shuffle, so each lies in the next."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[: max(1, min(n, math.ceil(round(f * n, 6))))]) for f in fractions]


def pct(fraction: float) -> str:
    return f"{fraction * 100:g}"


def learning_curve(cfg: Config, run_dir: Path, model_path: Path, tokenizer, costs, fractions=FRACTIONS) -> dict:
    """Train and score one point per fraction; returns (and writes) the curve and its sentence."""
    from tunekit.data.batches import load_examples
    from tunekit.pipeline import stage_hash
    from tunekit.plan.estimate import duration
    from tunekit.progress import console
    from tunekit.train.loop import train

    gc.collect()  # the probe's model, held in reference cycles, before four more are loaded
    data = run_dir / "data"
    lines = [x for x in (data / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    valid_text = (data / "valid.jsonl").read_text(encoding="utf-8")
    questions = _labelled_questions(cfg, data)
    if not questions and not valid_text.strip():
        raise ConfigError("the learning curve needs something to score: held-out questions labelled with `required` facts "
                          "(data.eval) or held-out examples (data.valid_fraction > 0)")
    # Checkpoints only where the loop must write them (the last, the best): they change
    # nothing a point computes, and four trainings' periodic checkpoints would add up.
    point_cfg = cfg.model_copy(deep=True)
    point_cfg.train.save_every, point_cfg.train.keep_last = 0, 1
    subsets = nested_subsets(len(lines), list(fractions), cfg.seed)
    examples = load_examples(data / "train.jsonl", tokenizer, cfg.data.train_on)
    predicted = [_predict(point_cfg, [examples[i] for i in idx], costs, bool(valid_text.strip())) for idx in subsets]
    scoring = f", plus answering {len(questions)} questions after each" if questions else ""
    console.print(f"[bold]learning curve[/] {len(subsets)} trainings on {', '.join(f'{len(s):,}' for s in subsets)} examples: "
                  f"about {duration(sum(predicted))} of training by the probe{scoring}")

    points = []
    for f, idx, guess in zip(fractions, subsets, predicted, strict=True):
        point_dir = run_dir / "plan" / f"curve-{pct(f)}"
        atomic.write_text(point_dir / "data" / "train.jsonl", "".join(lines[i] + "\n" for i in idx))
        atomic.write_text(point_dir / "data" / "valid.jsonl", valid_text)
        console.rule(f"[bold]curve {pct(f)}%: {len(idx):,} examples")
        # The hash names the subset too: a rerun resumes or reuses a point only if it is the same training.
        done = train(point_cfg, point_dir, model_path, tokenizer, resume=True,
                     config_hash=f"{stage_hash(cfg, 'train')}-curve-{len(idx)}")
        score, metric = _score(point_cfg, point_dir, model_path, tokenizer, questions, f)
        points.append({"fraction": f, "examples": len(idx), "score": round(score, 5), "metric": metric})
        console.print(f"curve {pct(f)}%: {_show(score, metric)}; trained in {duration(done['seconds'])} "
                      f"(estimated {duration(guess)})")
        gc.collect()

    curve = {"points": points, "sentence": curve_sentence(points)}
    atomic.write_json(run_dir / "plan" / "learning_curve.json", curve)
    atomic.write_bytes(run_dir / "plan" / "learning_curve.png", curve_png(points))
    console.print(curve["sentence"])
    return curve


def _labelled_questions(cfg: Config, data: Path) -> list:
    """The eval items that can be scored (labelled with required facts), as the eval stage picks them."""
    from tunekit.data.records import load_records

    if not (data / "eval.jsonl").is_file():
        return []
    items, _ = load_records(data / "eval.jsonl", need_assistant=False)
    items = items[: cfg.eval.max_questions] if cfg.eval.max_questions else items
    return [it for it in items if it.extra.get("required")]


def _predict(cfg: Config, examples: list, costs, has_valid: bool) -> float:
    """The probe's estimate of one point's training seconds."""
    from tunekit.plan.estimate import eval_steps, save_count, step_sizes, train_seconds
    from tunekit.train.loop import make_plan

    plan = make_plan(cfg, examples)
    evals = eval_steps(plan.total_steps, cfg.train.eval_every) if has_valid else []
    sizes = step_sizes(plan, cfg.data.max_length if cfg.data.packing else None)
    saves = save_count(plan.total_steps, cfg.train.save_every, evals, cfg.train.keep_best)
    return train_seconds(costs, sizes.padded, len(evals), saves)["total"]


def _score(cfg: Config, point_dir: Path, model_path: Path, tokenizer, questions: list, fraction: float) -> tuple[float, str]:
    """(fact accuracy, "fact_accuracy") of the point's tuned model, else (held-out loss, "valid_loss")."""
    from tunekit.train.checkpoint import tuned_checkpoint

    if not questions:
        return float(tuned_checkpoint(point_dir)[1]), "valid_loss"
    from tunekit.eval.evaluate import load_tuned
    from tunekit.infer.greedy import greedy_answers
    from tunekit.eval.metrics import accuracy, states_facts
    from tunekit.hardware import for_inference
    from tunekit.models.tuned import run_precision

    precision = run_precision(point_dir, model_path, cfg.train.precision)  # as the eval stage decides it
    model = for_inference(load_tuned(cfg, point_dir, model_path), precision)
    answers = greedy_answers(model, tokenizer, [q.messages for q in questions], cfg.eval.max_new_tokens,
                             cfg.eval.batch_size, f"curve {pct(fraction)}%")
    return accuracy([states_facts(a, q.extra["required"]) for a, q in zip(answers, questions, strict=True)]), "fact_accuracy"


def _show(score: float, metric: str) -> str:
    return f"fact accuracy {score:.1%}" if metric == "fact_accuracy" else f"held-out loss {score:.4f}"


def curve_sentence(points: list[dict]) -> str:
    """Whether more data is likely to help, read from the last segment of the curve, with its numbers."""
    if len(points) < 2:
        return "One point only: a curve needs at least two fractions of the data to say whether more would help."
    p, q = points[-2], points[-1]
    span = (f"Going from {pct(p['fraction'])}% to {pct(q['fraction'])}% of the data "
            f"({p['examples']:,} to {q['examples']:,} examples)")
    if q["metric"] == "fact_accuracy":
        delta = (q["score"] - p["score"]) * 100
        moved = f"fact accuracy from {p['score']:.0%} to {q['score']:.0%}"
        if delta >= FLAT_POINTS:
            return f"{span} raised {moved} (+{delta:.0f} points); more data is likely to help."
        if delta <= -FLAT_POINTS:
            return f"{span} lowered {moved} ({delta:.0f} points): more data of this kind is unlikely to help."
        return f"{span} left {moved} ({delta:+.1f} points), flat: more data of this kind is unlikely to help much."
    rel = (q["score"] - p["score"]) / max(abs(p["score"]), 1e-9)
    moved = f"the held-out loss from {p['score']:.3f} to {q['score']:.3f}"
    if rel <= -FLAT_LOSS:
        return f"{span} lowered {moved} ({rel:.0%}); more data is likely to help."
    if rel >= FLAT_LOSS:
        return f"{span} raised {moved} (+{rel:.0%}): more data of this kind is unlikely to help."
    return f"{span} left {moved} ({rel:+.1%}), flat: more data of this kind is unlikely to help much."


def curve_png(points: list[dict]) -> bytes:
    """The score against training examples (log scale), each point labelled with its share."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw straight to a PNG
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    acc = points[0]["metric"] == "fact_accuracy"
    xs = [p["examples"] for p in points]
    ys = [p["score"] * 100 if acc else p["score"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"{pct(p['fraction'])}%", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log")  # each point doubles (or so) the data: equal steps on the page
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel("fact accuracy (%)" if acc else "held-out loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
