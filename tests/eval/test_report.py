"""The verdict sentence (win, loss, not distinguishable; facts or F1 points), the intervals
on the score bars, and whole reports built from fake run folders, new and old."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunekit.eval.plots import bootstrap_mean, score_intervals, wilson
from tunekit.eval.report import build_report, headline, verdict


def _scores(tuned, base, few, ci):
    return {"questions": 40, "fact_accuracy": {"base": base, "few_shot": few, "tuned": tuned},
            "differences": {"tuned_minus_base": {"diff": tuned - base, "ci95": ci},
                            "tuned_minus_few_shot": {"diff": tuned - few, "ci95": ci}}}


def _f1_scores(tuned, base, few, ci):
    s = _scores(tuned, base, few, ci)
    return {"questions": 40, "primary_metric": "token_f1", "metrics": {"token_f1": s.pop("fact_accuracy")},
            "differences": s["differences"]}


def test_win():
    v = verdict(_scores(0.8, 0.1, 0.3, [0.3, 0.7]))
    assert v.startswith("Fine-tuning beat") and "base + few-shot prompt" in v and "50 points" in v
    assert "95% CI 30 to 70" in v and "40 held-out questions" in v


def test_loss():
    v = verdict(_scores(0.1, 0.05, 0.6, [-0.7, -0.3]))
    assert v.startswith("Fine-tuning lost to base + few-shot prompt by 50 points")
    assert "use the prompt instead" in v


def test_not_distinguishable():
    v = verdict(_scores(0.35, 0.1, 0.3, [-0.1, 0.2]))
    assert "not distinguishable" in v and "+5 points" in v and "few-shot" in v


def test_compares_against_the_best_rival():
    # base is the stronger rival here, so the sentence must be about base.
    s = _scores(0.5, 0.6, 0.2, [-0.4, 0.2])
    s["differences"]["tuned_minus_few_shot"]["ci95"] = [0.1, 0.5]
    v = verdict(s)
    assert "base model" in v and "not distinguishable" in v


def test_no_comparison():
    assert verdict({}) == "No held-out comparison was run."
    v = verdict({"valid_loss": {"base": 2.0, "tuned": 1.5}})
    assert "lowered" in v and "did not" not in v


def test_interval_that_excludes_zero_is_a_win_even_when_it_rounds_to_zero():
    v = verdict(_scores(0.5, 0.1, 0.3, [0.004, 0.4]))
    assert v.startswith("Fine-tuning beat") and "95% CI 0 to 40" in v


def test_token_f1_verdict_speaks_in_f1_points():
    win = verdict(_f1_scores(0.62, 0.20, 0.50, [0.05, 0.19]))
    assert win == ("Fine-tuning beat the best alternative (base + few-shot prompt) by 12 F1 points (95% CI 5 to 19) "
                   "on 40 held-out questions.")
    lost = verdict(_f1_scores(0.30, 0.20, 0.50, [-0.3, -0.1]))
    assert "lost to base + few-shot prompt by 20 F1 points" in lost and "use the prompt instead" in lost
    even = verdict(_f1_scores(0.52, 0.20, 0.50, [-0.05, 0.09]))
    assert "not distinguishable" in even and "+2 F1 points" in even
    for v in (win, lost, even):
        assert "fact" not in v


def test_token_f1_with_the_tuned_model_alone():
    v = verdict({"questions": 12, "primary_metric": "token_f1", "metrics": {"token_f1": {"tuned": 0.456}}})
    assert v == "The fine-tuned model scored token F1 46 (of 100) on 12 held-out questions."
    v = verdict({"questions": 12, "fact_accuracy": {"tuned": 0.5}})
    assert v == "The fine-tuned model stated the required facts in 50% of 12 held-out questions."


def test_headline_in_the_primary_metric_with_a_forgetting_warning():
    s = _f1_scores(0.62, 0.20, 0.50, [0.05, 0.19])
    s["forgetting"] = {"flagged": True, "why": "general-text perplexity rose +30.0%"}
    lines = headline(s)
    assert lines[0] == verdict(s) and lines[1] == ""
    assert "- fine-tuned: token F1 62.0" in lines
    assert "- fine-tuned minus base + few-shot prompt: +12.0 F1 points (95% CI +5.0 to +19.0)" in lines
    assert lines[-1] == "- warning, forgetting: general-text perplexity rose +30.0%"
    assert "- fine-tuned: 80.0% fact accuracy" in headline(_scores(0.8, 0.1, 0.3, [0.3, 0.7]))


def test_the_verdict_says_what_was_kept_and_the_report_plots_the_trade_off(tmp_path):
    from tunekit.eval.forgetting import compare, load_questions
    from tunekit.eval.report import _tradeoff

    n = len(load_questions())
    probe = lambda right, ppl: {"perplexity": ppl, "text_tokens": 2500, "answers": ["x"] * n,  # noqa: E731
                                "correct": [1.0 if i < right else 0.0 for i in range(n)]}
    s = _scores(0.8, 0.1, 0.3, [0.3, 0.7])
    s["forgetting"] = compare(probe(100, 17.0), probe(96, 17.5), 0.10)
    lines = headline(s)
    assert lines[0].startswith(verdict(s) + " It kept 96% of the base model's general score (95% CI ")
    assert not any(line.startswith("- warning, forgetting") for line in lines)
    [fig] = _tradeoff(s)
    assert fig["kind"] == "img" and fig["png"].startswith(b"\x89PNG") and "few-shot uses the base model's weights" in fig["caption"]
    s["forgetting"] = compare(probe(100, 17.0), probe(40, 60.0), 0.10)
    lines = headline(s)
    assert lines[0].endswith("FORGETTING FLAGGED.") and any(x.startswith("- warning, forgetting: it kept 40%") for x in lines)
    assert any(x.startswith("- note, forgetting: general-text perplexity rose") for x in lines)
    del s["forgetting"]["kept_ci95"]  # a run from before the interval rule: no sentence, no error
    assert headline(s)[0] == verdict(s)


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)  # no successes: the interval still has width, and stays in [0, 1]
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_score_intervals_wilson_for_rates_bootstrap_for_f1():
    flags = {"base": [1.0, 0.0] * 10, "tuned": [1.0] * 15 + [0.0] * 5}
    out = score_intervals(flags, {"base": 0.5, "tuned": 0.75}, 20, rate=True)
    assert out["base"][1:] == pytest.approx(wilson(10, 20)) and out["tuned"][0] == 0.75
    # no per-item values kept (an old run): the interval comes from the score and the count
    assert score_intervals({}, {"base": 0.5}, 20, rate=True)["base"][1:] == pytest.approx(wilson(10, 20))
    f1 = {"tuned": [0.1, 0.9, 0.5, 0.7, 0.3, 0.6]}
    score, lo, hi = score_intervals(f1, {}, 6, rate=False)["tuned"]
    assert score == pytest.approx(0.5167, abs=1e-4) and lo < score < hi
    assert (lo, hi) == bootstrap_mean(f1["tuned"])  # seeded: the same report every time
    assert score_intervals({}, {"tuned": 0.4}, 6, rate=False)["tuned"] == (0.4, None, None)


# -- whole reports from fake run folders ------------------------------------------------

CONTENDERS = ("base", "few_shot", "tuned")
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quotes\""


def fake_run(root: Path, primary: str = "fact_accuracy", name: str = "fake-run") -> Path:
    """A run folder with every artefact the report reads, as the newest stages write them; no model."""
    from tunekit.data.stats import length_histogram

    run = root / name
    n = 20
    right = {"base": lambda i: i % 5 == 0, "few_shot": lambda i: i % 3 == 0, "tuned": lambda i: i % 4 != 0}
    rows = []
    for i in range(n):
        facts = {c: 1.0 if right[c](i) else 0.0 for c in CONTENDERS}
        f1 = {c: round((i * 7 + 3 * k) % 10 / 10, 2) for k, c in enumerate(CONTENDERS)}
        f1 = {"base": 0.0, "few_shot": 0.1, "tuned": 1.0} if i == 0 else f1  # the hostile answer is among the examples
        answer = HOSTILE if i == 0 else "The Crest plan costs $43 per seat."
        rows.append({"id": i, "question": f"Question {i} <b>bold?</b>", "reference": "It costs $43.",
                     "answers": {c: f"{answer} ({c})" for c in CONTENDERS}, "correct": {c: v == 1.0 for c, v in facts.items()},
                     "metrics": {"fact_accuracy": facts, "token_f1": f1}})
    means = {m: {c: sum(r["metrics"][m][c] for r in rows) / n for c in CONTENDERS} for m in ("fact_accuracy", "token_f1")}
    diffs = {m: {f"tuned_minus_{o}": {"diff": means[m]["tuned"] - means[m][o], "ci95": [means[m]["tuned"] - means[m][o] - 0.2,
                                                                                    means[m]["tuned"] - means[m][o] + 0.1]}
                 for o in ("base", "few_shot")} for m in means}
    scores = {"questions": n, "valid_examples": 8, "valid_loss": {"base": 2.31, "tuned": 1.42},
              "perplexity": {"base": 10.07, "tuned": 4.14}, "primary_metric": primary, "metrics": means,
              "metric_items": {"fact_accuracy": n, "token_f1": n}, "differences": diffs[primary], "differences_by_metric": diffs,
              "forgetting": {"text_source": "bundled general text <i>", "text_tokens": 2345, "perplexity": {"base": 12.0, "tuned": 12.6},
                             "perplexity_change": 0.05,
                             "questions": [{"question": "What is the capital of France?", "expected": ["Paris"],
                                            "answers": {"base": "Paris.", "tuned": "Paris <3"}, "correct": {"base": True, "tuned": True}}],
                             "general_correct": {"base": 1, "tuned": 1}, "flagged": False, "why": "within 10%"},
              "eval_seconds": 83.4}
    if primary == "fact_accuracy":
        scores["fact_accuracy"] = means["fact_accuracy"]
    _write(run / "eval" / "scores.json", scores)
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [20 + (i * 37) % 300 for i in range(200)]
    _write(run / "data" / "data_report.json", {
        "source": "in/train.jsonl", "lines_read": 230, "kept": 200, "train": 180, "valid": 20, "rejected": 30,
        "rejects_by_reason": {"exact_duplicate": 25, "empty_message": 5}, "cleaning": {"nfc_normalised": 3}, "notes": [],
        "tokens": {"per_row": {"count": 200, "p50": 170, "p90": 290, "p99": 318, "max": 319, "mean": 169.5}, "total": 33900,
                   "histogram": length_histogram(lengths, 512)},
        "eval": {"items": n, "leaked_into_train": 0}})
    _write(run / "train_state.json", {"method": "lora", "trainable_params": 921600, "steps": 20, "planned_steps": 20,
                                      "tokens_seen": 51200, "seconds": 301.5, "tokens_per_s": 169.8, "final_train_loss": 1.38,
                                      "peak_rss_mb": 2850, "estimated_peak_mb": 2790})
    steps = [{"step": s, "loss": 2.5 - s / 20, **({"valid_loss": 2.4 - s / 25} if s % 5 == 0 else {})} for s in range(1, 21)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    (run / "config.yaml").write_text(f"name: {name}\nmodel:\n  base: smollm2-135m-instruct\ndata:\n  system: \"{HOSTILE}\"\n")
    _write(run / "plan" / "learning_curve.json", {
        "points": [{"fraction": f, "examples": round(180 * f), "score": s, "metric": "fact_accuracy"}
                   for f, s in ((0.1, 0.2), (0.25, 0.4), (0.5, 0.6), (1.0, 0.75))],
        "sentence": "Going from 50% to 100% of the data raised fact accuracy from 60% to 75% (+15 points); more data is likely to help."})
    return run


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


SECTIONS = ["Scores", "Learning curve", "Data", "Config", "Cost", "Forgetting check", "Where the contenders differ"]


@pytest.mark.parametrize("primary", ["fact_accuracy", "token_f1"])
def test_full_report(tmp_path, primary):
    run = fake_run(tmp_path, primary)
    assert build_report(run) == run / "report.md"
    md = (run / "report.md").read_text()
    lines = md.splitlines()
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert lines[0] == "# tunekit report: fake-run" and lines[2] == verdict(scores)
    assert [x[3:] for x in lines if x.startswith("## ")] == SECTIONS  # the verdict first, then the rest in order
    assert "- tokens trained on: 51,200" in md and "- peak memory, estimated before training: 2,790 MB" in md
    assert "- measured / estimated memory: 1.02" in md and "- evaluation time: 83 s" in md
    assert "Not flagged: within 10%" in md and "general questions the fine-tuned answered right: 1 of 1" in md
    assert ("Wilson score interval" if primary == "fact_accuracy" else "percentile bootstrap") in md
    assert "F1 points" in verdict(scores) if primary == "token_f1" else "F1" not in verdict(scores)

    page = (run / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert len(imgs) == 4 == page.count("<img")  # score bars, learning curve, token lengths, loss curve
    assert "<script" not in page  # the hostile answer and config are text, not markup
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "<b>bold" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing outside the file
    assert "<details><summary>config.yaml" in page


def test_report_of_an_old_run_and_of_an_empty_folder(tmp_path):
    """Runs from before per-item metrics, the forgetting check and the histogram still render."""
    run = tmp_path / "old"
    scores = _scores(0.75, 0.2, 0.35, [0.2, 0.6])
    scores["questions"] = 20
    _write(run / "eval" / "scores.json", {**scores, "valid_loss": {"base": 2.0, "tuned": 1.5}})
    rows = [{"id": i, "question": f"q{i}", "reference": "r", "answers": {c: f"a{i}" for c in CONTENDERS},
             "correct": {"base": i < 4, "few_shot": i < 7, "tuned": i < 15}} for i in range(20)]
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut by a ki')
    _write(run / "data" / "data_report.json", {"lines_read": 10, "kept": 9, "train": 8, "valid": 1, "rejected": 1})
    build_report(run)
    md = (run / "report.md").read_text()
    assert md.splitlines()[2] == verdict(scores)
    assert [x[3:] for x in md.splitlines() if x.startswith("## ")] == ["Scores", "Data", "Where the contenders differ"]
    assert "no token-length histogram" in md and "- fine-tuned: fact accuracy 75.0 (95% CI 53.1 to 88.8)" in md
    assert md.count("**Q:**") == 5 and "(correct)" in md and "(wrong)" in md
    assert (run / "report.html").read_text().count("<img") == 1  # the score bars; no loss curve without metrics.jsonl

    empty = tmp_path / "empty"
    empty.mkdir()
    build_report(empty)
    assert (empty / "report.md").read_text() == "# tunekit report: empty\n\nNo held-out comparison was run.\n"
    assert "No held-out comparison was run." in (empty / "report.html").read_text()


def test_examples_where_f1_differs_most_come_first(tmp_path):
    run = tmp_path / "f1"
    _write(run / "eval" / "scores.json", {"questions": 3, "primary_metric": "token_f1",
                                          "metrics": {"token_f1": {"base": 0.3, "tuned": 0.5}}})
    rows = [{"question": q, "reference": "r", "answers": {"base": "x", "tuned": "y"}, "metrics": {"token_f1": f1}}
            for q, f1 in (("small", {"base": 0.4, "tuned": 0.5}), ("same", {"base": 0.5, "tuned": 0.5}),
                          ("large", {"base": 0.0, "tuned": 0.9}))]
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = build_report(run).read_text()
    assert md.index("**Q:** large") < md.index("**Q:** small") and "**Q:** same" not in md
    assert "- fine-tuned (token F1 90): y" in md
