"""The eval stage end to end on the tiny model: scores.json's schema, per-metric values in
predictions.jsonl, perplexity wiring, the primary metric, and the forgetting check."""

from __future__ import annotations

import json
import math

import pytest
from helpers import offline_env, tiny_run_config, write_jsonl

from tunekit.eval.metrics import exact_match, json_valid, mean, pattern_match, rouge_l, states_facts, token_f1

CONTENDERS = {"base", "few_shot", "tuned"}
ITEMS = [
    {"id": "fact", "messages": [{"role": "user", "content": "How much does the Crest plan cost per seat?"}],
     "required": [["$43"]], "reference": "The Crest plan costs $43 per seat per month."},
    {"id": "ref", "messages": [{"role": "user", "content": "Where do I rotate an API key?"}],
     "reference": "Go to Settings > Security > API keys and click Rotate."},
    {"id": "json", "messages": [{"role": "user", "content": "Give the Crest plan as JSON."}],
     "reference": '{"plan": "Crest", "price": 43}'},
    {"id": "pattern", "messages": [{"role": "user", "content": "Which error means a bad webhook signature?"}],
     "pattern": r"RW-\d{4}", "format": "json"},
]
EXPECTED = {"fact": {"fact_accuracy", "exact_match", "token_f1", "rouge_l"},
            "ref": {"exact_match", "token_f1", "rouge_l"},
            "json": {"exact_match", "token_f1", "rouge_l", "json_valid"},
            "pattern": {"json_valid", "pattern_match"}}
RECOMPUTE = {"exact_match": lambda a, it: exact_match(a, it["reference"]), "token_f1": lambda a, it: token_f1(a, it["reference"]),
             "rouge_l": lambda a, it: rouge_l(a, it["reference"]), "json_valid": lambda a, it: float(json_valid(a)),
             "pattern_match": lambda a, it: float(pattern_match(a, it["pattern"])),
             "fact_accuracy": lambda a, it: float(states_facts(a, it["required"]))}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A prepared and trained tiny run; each test writes its own held-out set and runs eval alone."""
    from tunekit import pipeline
    from tunekit.config import Config
    from tunekit.models.loading import load_tokenizer

    tmp = tmp_path_factory.mktemp("evaluate")
    mp = offline_env(tmp)
    try:
        raw = tiny_run_config(tmp, tiny_model_dir, 20)
        cfg = Config.model_validate(raw)
        run_dir = tmp / "runs" / cfg.name
        for stage in ("prepare", "train"):
            pipeline.run_stage(cfg, run_dir, stage)
    finally:
        mp.undo()
    return raw, run_dir, tiny_model_dir, load_tokenizer(tiny_model_dir)


def _evaluate(trained, items: list[dict], **eval_overrides):
    from tunekit.config import Config
    from tunekit.eval.evaluate import evaluate

    raw, run_dir, model_dir, tok = trained
    write_jsonl(run_dir / "data" / "eval.jsonl", items)
    cfg = Config.model_validate({**raw, "eval": {**raw["eval"], **eval_overrides}})
    scores = evaluate(cfg, run_dir, model_dir, tok)
    assert json.loads((run_dir / "eval" / "scores.json").read_text()) == json.loads(json.dumps(scores))
    rows = [json.loads(x) for x in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    return scores, rows


def test_scores_schema_with_facts_and_forgetting(trained, capsys):
    scores, rows = _evaluate(trained, ITEMS)
    for key in ("questions", "valid_examples", "valid_loss", "perplexity", "primary_metric", "fact_accuracy", "metrics",
                "differences", "differences_by_metric", "forgetting", "eval_seconds"):
        assert key in scores, key
    assert scores["primary_metric"] == "fact_accuracy" and scores["questions"] == 1
    assert set(scores["valid_loss"]) == {"base", "tuned"}
    for c, loss in scores["valid_loss"].items():
        assert scores["perplexity"][c] == pytest.approx(math.exp(loss))
    assert set(scores["metrics"]) == set().union(*EXPECTED.values())
    assert scores["metric_items"] == {"fact_accuracy": 1, "exact_match": 3, "token_f1": 3, "rouge_l": 3, "json_valid": 2,
                                      "pattern_match": 1}
    assert scores["fact_accuracy"] == scores["metrics"]["fact_accuracy"]
    assert scores["differences"] == scores["differences_by_metric"]["fact_accuracy"]
    for m, by in scores["differences_by_metric"].items():
        assert set(by) == {"tuned_minus_base", "tuned_minus_few_shot"}, m
        for key, d in by.items():
            other = key.removeprefix("tuned_minus_")
            assert d["diff"] == pytest.approx(scores["metrics"][m]["tuned"] - scores["metrics"][m][other])
            assert len(d["ci95"]) == 2 and d["ci95"][0] <= d["ci95"][1]
    assert scores["eval_seconds"] > 0

    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(EXPECTED)
    for item in ITEMS:
        row = by_id[item["id"]]
        assert row["question"] == item["messages"][-1]["content"] and set(row["answers"]) == CONTENDERS
        assert set(row["metrics"]) == EXPECTED[item["id"]]
        for m, per in row["metrics"].items():
            assert per == {c: RECOMPUTE[m](row["answers"][c], item) for c in CONTENDERS}, (item["id"], m)
    assert set(by_id["fact"]["correct"]) == CONTENDERS and by_id["ref"]["correct"] == {}
    for m, per in scores["metrics"].items():
        for c in CONTENDERS:
            assert per[c] == pytest.approx(mean([r["metrics"][m][c] for r in rows if m in r["metrics"]]))

    f = scores["forgetting"]
    assert set(f) == {"questions_file", "general_score", "general_correct", "n_questions", "difference", "kept", "kept_ci95",
                      "by_skill", "text_source", "text_tokens", "perplexity", "perplexity_change", "questions", "flagged",
                      "why", "notes", "seconds"}
    assert f["text_tokens"] > 1000 and set(f["perplexity"]) == {"base", "tuned"}
    assert f["perplexity_change"] == pytest.approx(f["perplexity"]["tuned"] / f["perplexity"]["base"] - 1)
    assert len(f["questions"]) == f["n_questions"] >= 150 and isinstance(f["flagged"], bool) and f["why"]
    assert f["general_correct"]["tuned"] == sum(q["correct"]["tuned"] for q in f["questions"])
    assert f["general_score"]["tuned"] == pytest.approx(f["general_correct"]["tuned"] / f["n_questions"])
    assert "forgetting: general questions" in capsys.readouterr().err


def test_without_facts_token_f1_is_primary_and_forgetting_can_be_off(trained, capsys):
    items = [{k: v for k, v in it.items() if k != "required"} for it in ITEMS]
    scores, rows = _evaluate(trained, items, forgetting=False, contenders=["base", "tuned"])
    assert scores["primary_metric"] == "token_f1" and "fact_accuracy" not in scores
    assert scores["questions"] == 3  # the items token F1 could score
    assert scores["differences"] == scores["differences_by_metric"]["token_f1"]
    assert set(scores["differences"]) == {"tuned_minus_base"}
    assert "fact_accuracy" not in scores["metrics"] and all(r["correct"] == {} for r in rows)
    assert scores["forgetting"] == {}
    assert "forgetting: skipped (eval.forgetting is false)" in capsys.readouterr().err


def test_a_bad_pattern_is_a_data_error_naming_the_item(trained):
    from tunekit.errors import DataError

    with pytest.raises(DataError, match=r"held-out item broken .*not a valid regular expression"):
        _evaluate(trained, [{"id": "broken", "messages": [{"role": "user", "content": "x?"}], "pattern": "([a-z"}])
