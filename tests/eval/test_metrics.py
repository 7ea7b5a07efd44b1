"""Answer metrics on hand-computed cases, and the paired bootstrap on bools and floats."""

from __future__ import annotations

import math

import pytest

from tunekit.eval.scoring import item_scorers, score_items, summarise
from tunekit.eval.metrics import (
    accuracy,
    exact_match,
    is_json_reference,
    json_valid,
    lcs_length,
    normalize_answer,
    paired_bootstrap,
    pattern_match,
    perplexity,
    rouge_l,
    states_facts,
    token_f1,
)


@pytest.mark.parametrize("answer,required,ok", [
    ("The Crest plan costs $43 per seat.", [["$43"]], True),
    ("The Crest plan costs $44 per seat.", [["$43"]], False),
    ("Meridian, with at least 75 seats.", [["Meridian"], ["75 seats"]], True),
    ("Meridian is for big companies.", [["Meridian"], ["75 seats"]], False),  # every group needed
    ("You save 17 percent.", [["17%", "17 percent"]], True),  # any alternative
    ("You save 17%.", [["17%", "17 percent"]], True),
    ("open billing  >  invoices >\nhistory", [["Billing > Invoices > History"]], True),  # whitespace collapsed
    ("open Billing > History", [["Billing > Invoices > History"]], False),
    ("Open BILLING > invoices >   History now", [["Billing > Invoices > History"]], True),  # case, whitespace runs
    ("MERIDIAN\n75\tSEATS", [["meridian"], ["75 seats"]], True),
    ("anything", [], True),
])
def test_states_facts(answer, required, ok):
    assert states_facts(answer, required) is ok


@pytest.mark.parametrize("answer,key,ok", [
    ("It costs $299 a month.", "$29", False),  # a longer number is another number
    ("It costs $29.50.", "$29", False),  # so is a decimal continuation
    ("It costs $29.", "$29", True),  # a full stop after it is punctuation
    ("There are 1510 of them.", "151", False),
    ("There are 1,151 of them.", "151", False),  # a thousands group
    ("Up to 2,400 runs.", "2,400", True),
    ("Up to 12,400 runs.", "2,400", False),
    ("It fell to -4 degrees.", "4", False),  # a minus sign makes another number
    ("Pages 10-4 are missing.", "4", True),  # a range dash does not
    ("2 + 2 = 4", "4", True),
    ("The category is wrong.", "cat", False),  # whole words
    ("A cat.", "cat", True),
    ("Error LQ-40312 appeared.", "LQ-4031", False),
    ("Error LQ-4031 appeared.", "LQ-4031", True),
    ("Settings > Security > API keys", "settings > security", True),
])
def test_fact_keys_match_whole_words_and_numbers(answer, key, ok):
    assert states_facts(answer, [[key]]) is ok


def test_bootstrap_ratio_interval():
    base = [1.0] * 40 + [0.0] * 10
    assert paired_bootstrap(base, base, ratio=True) == (1.0, 1.0)
    lo, hi = paired_bootstrap([1.0] * 20 + [0.0] * 30, base, ratio=True)
    assert 0.2 < lo < 0.5 < hi < 0.8


def test_accuracy():
    assert accuracy([]) == 0.0
    assert accuracy([True, False, True, True]) == 0.75


def test_bootstrap_identical_lists_give_zero_interval():
    a = [True, False, True, True, False] * 4
    assert paired_bootstrap(a, list(a)) == (0.0, 0.0)


def test_bootstrap_all_better_gives_interval_at_one():
    assert paired_bootstrap([True] * 12, [False] * 12) == (1.0, 1.0)
    assert paired_bootstrap([False] * 12, [True] * 12) == (-1.0, -1.0)


def test_bootstrap_mixed_interval_contains_difference_and_is_deterministic():
    a = [True] * 14 + [False] * 6
    b = [True] * 10 + [False] * 10
    lo, hi = paired_bootstrap(a, b, seed=3)
    assert lo <= 0.2 <= hi and lo < hi
    assert paired_bootstrap(a, b, seed=3) == (lo, hi)
    assert paired_bootstrap([], []) == (0.0, 0.0)


@pytest.mark.parametrize("text,norm", [
    ("The Crest plan, costs $43!", "crest plan costs 43"),
    ("  An   apple a day  ", "apple day"),
    ("“Paris” — France.", "paris france"),  # curly quotes and dashes count as punctuation
    ("Theatre another", "theatre another"),  # articles only as whole words
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match_after_normalisation():
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("PARIS!!", "  Paris ") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_hand_computed():
    # tokens after normalisation: [cat sat on mat] vs [cat sat on hat]: 3 shared of 4 and 4
    assert token_f1("The cat sat on the mat.", "A cat sat on a hat") == pytest.approx(0.75)
    # 1 shared: precision 1/3, recall 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    assert token_f1("red blue green", "red yellow") == pytest.approx(0.4)
    # repeated tokens count once per occurrence in both: precision 1/3, recall 1
    assert token_f1("x x x", "x") == pytest.approx(0.5)
    assert token_f1("nothing shared", "other words") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "word") == 0.0


def test_lcs_length_known_cases():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length(list("BDCABA"), list("ABCBDAB")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_hand_computed():
    # [police killed gunman] vs [police kill gunman]: LCS "police gunman" = 2, P = R = 2/3
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(2 / 3)
    # word order matters (unlike F1): [gunman kill police] shares an LCS of 1 with the reference
    assert rouge_l("the gunman kill police", "police killed the gunman") == pytest.approx(1 / 3)
    assert token_f1("the gunman kill police", "police killed the gunman") == pytest.approx(2 / 3)
    # LCS 2 of a 4-token answer and a 2-token reference: P 1/2, R 1, F = 2/3
    assert rouge_l("go to settings now", "settings now") == pytest.approx(2 / 3)
    assert rouge_l("Same words.", "same words") == 1.0 and rouge_l("abc", "xyz") == 0.0


@pytest.mark.parametrize("answer,ok", [
    ('{"plan": "Crest", "price": 43}', True),
    ("[1, 2, 3]", True),
    ('```json\n{"plan": "Crest"}\n```', True),
    ('Here it is:\n```json\n{"a": [1, 2]}\n```\nAnything else?', True),
    ("```\n[1, 2]\n```", True),
    ('{"plan": "Crest",}', False),  # trailing comma
    ('```json\n{"plan": }\n```', False),
    ("42", False),  # a bare scalar is no structure
    ("The plan is Crest.", False),
])
def test_json_valid(answer, ok):
    assert json_valid(answer) is ok


def test_json_reference_detection():
    assert is_json_reference('{"a": 1}') and is_json_reference(" [1] ")
    assert not is_json_reference("hello") and not is_json_reference('"a string"') and not is_json_reference(None)


def test_pattern_match():
    assert pattern_match("Error RW-4031 means the signature failed.", r"RW-\d{4}")
    assert not pattern_match("Error RW-40 means nothing.", r"RW-\d{4}")
    assert not pattern_match("42 apples", r"^\d+$") and pattern_match("42", r"^\d+$")


def test_perplexity_is_exp_of_mean_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(12.5)) == pytest.approx(12.5)
    assert perplexity(1e4) == math.inf


def test_item_scorers_follow_what_the_item_carries():
    assert set(item_scorers({})) == set()
    assert set(item_scorers({"required": [["x"]]})) == {"fact_accuracy"}
    assert set(item_scorers({"reference": "Paris"})) == {"exact_match", "token_f1", "rouge_l"}
    assert set(item_scorers({"reference": '{"a": 1}'})) == {"exact_match", "token_f1", "rouge_l", "json_valid"}
    assert set(item_scorers({"reference": {"a": 1}})) == {"exact_match", "token_f1", "rouge_l", "json_valid"}
    assert set(item_scorers({"format": "json", "pattern": "a+"})) == {"json_valid", "pattern_match"}
    score = item_scorers({"required": [["$43"]], "reference": "It costs $43.", "pattern": r"\$\d+"})
    assert score["fact_accuracy"]("$43 a seat") == 1.0 and score["pattern_match"]("no price") == 0.0
    assert score["exact_match"]("it costs 43") == 1.0


def test_scores_without_facts_use_token_f1_as_primary_and_skip_unsupported_metrics():
    extras = [{"reference": "red yellow"}, {"reference": "blue"}, {}]
    answers = {"base": ["green", "green", "x"], "tuned": ["red blue green", "blue", "y"]}
    values, per_item = score_items(extras, answers)
    assert set(values) == {"exact_match", "token_f1", "rouge_l"}  # no item asks for JSON, a pattern or facts
    assert values["token_f1"]["tuned"] == pytest.approx([0.4, 1.0])
    assert per_item[2] == {} and per_item[1]["exact_match"] == {"base": 0.0, "tuned": 1.0}
    s = summarise(values, per_item, seed=0)
    assert s["primary_metric"] == "token_f1" and "fact_accuracy" not in s
    assert s["questions"] == 2 and s["metric_items"] == {"exact_match": 2, "token_f1": 2, "rouge_l": 2}
    assert s["metrics"]["token_f1"] == pytest.approx({"base": 0.0, "tuned": 0.7})
    assert s["differences"] == s["differences_by_metric"]["token_f1"]
    assert s["differences"]["tuned_minus_base"]["diff"] == pytest.approx(0.7)
    assert set(s["differences_by_metric"]["rouge_l"]) == {"tuned_minus_base"}


def test_scores_with_facts_keep_fact_accuracy_primary():
    extras = [{"required": [["43"]], "reference": "43"}, {"reference": "x"}]
    answers = {"base": ["no", "x"], "few_shot": ["43", "x"], "tuned": ["43", "y"]}
    s = summarise(*score_items(extras, answers), seed=0)
    assert s["primary_metric"] == "fact_accuracy" and s["questions"] == 1
    assert s["fact_accuracy"] == {"base": 0.0, "few_shot": 1.0, "tuned": 1.0}
    assert set(s["differences"]) == {"tuned_minus_base", "tuned_minus_few_shot"}
    assert s["differences"]["tuned_minus_base"] == {"diff": 1.0, "ci95": [1.0, 1.0]}
    assert s["metrics"]["exact_match"]["tuned"] == 0.5 and s["metric_items"]["exact_match"] == 2


def test_bootstrap_on_floats():
    tuned = [0.9, 0.8, 1.0, 0.7, 0.85] * 4
    base = [0.1, 0.3, 0.0, 0.2, 0.15] * 4
    lo, hi = paired_bootstrap(tuned, base, seed=1)
    assert 0 < lo <= 0.7 <= hi < 1  # every item better: the interval excludes 0
    assert paired_bootstrap(base, tuned, seed=1) == pytest.approx((-hi, -lo))
    same = [0.25, 0.5, 0.75, 1.0] * 5
    assert paired_bootstrap(same, list(same)) == (0.0, 0.0)
    lo, hi = paired_bootstrap([0.6, 0.2, 0.9, 0.4] * 5, [0.5, 0.3, 0.8, 0.5] * 5)
    assert lo < 0 < hi  # mixed small differences: not distinguishable


def test_unlabelled_held_out_items_are_answered_but_not_scored(tiny_model_dir, tmp_path, monkeypatch):
    import json

    from helpers import tiny_run_config, write_jsonl

    from tunekit import pipeline
    from tunekit.config import Config

    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    raw = tiny_run_config(tmp_path, tiny_model_dir, 20, n_eval=4)
    items = [json.loads(x) for x in open(raw["data"]["eval"])]
    for it in items[:2]:
        del it["required"]
    write_jsonl(tmp_path / "in" / "heldout.jsonl", items)
    cfg = Config.model_validate(raw)
    run_dir = tmp_path / "runs" / cfg.name
    for stage in ("prepare", "train", "eval"):
        pipeline.run_stage(cfg, run_dir, stage)
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert scores["questions"] == 2
    assert [bool(r["correct"]) for r in rows] == [False, False, True, True]
    assert all(set(r["answers"]) == {"base", "few_shot", "tuned"} for r in rows)
