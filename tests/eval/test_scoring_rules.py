"""Scores that cannot be fooled (issue 15): numbers by value, signs and decimals kept, a list of
keys is not an answer, items that share a fact are resampled together, and each contender's
answer length and other-fact rate are reported. Hand-written cases, plus the bundled demo's items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.eval.scoring import answer_stats, fact_keys, other_facts_stated, score, score_items, summarise
from tunekit.eval.fewshot import ShotIndex
from tunekit.eval.metrics import exact_match, fact_clusters, paired_bootstrap, states_facts, token_f1
from tunekit.eval.report import headline

DEMO_ITEMS = Path(__file__).resolve().parents[2] / "examples" / "support" / "data" / "heldout.jsonl"


def test_numbers_compare_by_value_with_sign_and_decimal_point():
    assert states_facts("It is 0.50 of the total.", [["0.5"]])
    assert states_facts("You get 1,000 runs.", [["1000 runs"]]) and states_facts("You get 1000 runs.", [["1,000 runs"]])
    assert states_facts("The Crest plan is $29.00 a seat.", [["$29"]])
    assert not states_facts("The Crest plan is $29.50 a seat.", [["$29"]])
    assert not states_facts("The change was 52.4 points.", [["-52.4"]])
    assert not states_facts("The change was -52.4 points.", [["52.4"]])
    assert not states_facts("A ratio of 3.", [["0.3"]])
    assert states_facts("Connect to 10.0.0.1 now.", [["10.0.0.1"]]) and not states_facts("Connect to 10.0.0.1.", [["10"]])
    assert states_facts("Error LQ-5023 means reauthorize.", [["LQ-5023"]])


def test_exact_match_and_f1_keep_signs_and_decimal_points():
    assert exact_match("-52.4", "52.4") == 0.0
    assert exact_match("0.3", "3") == 0.0
    assert exact_match("The total is 1,000.", "total is 1000") == 1.0
    assert exact_match("It costs $29.00!", "it costs 29") == 1.0  # punctuation outside numbers still goes
    assert token_f1("minus -4 degrees", "minus 4 degrees") < 1.0


def _items(n: int) -> list[dict]:
    return [{"id": f"q{i}", "facts": [f"F{i}"], "required": [[f"code {100 + i}"]]} for i in range(n)]


def test_a_list_of_keys_is_not_an_answer_but_one_extra_fact_is_allowed():
    items = _items(25)
    keys = fact_keys(items)
    shotgun = " ".join(f"code {100 + i}." for i in range(20))
    targeted = [f"It is code {100 + i}." for i in range(25)]
    chatty = [f"It is code {100 + i}; see also code {100 + (i + 1) % 25}." for i in range(25)]
    values, _ = score_items(items, {"constant": [shotgun] * 25, "targeted": targeted, "chatty": chatty})
    fa = values["fact_accuracy"]
    assert sum(fa["constant"]) == 0  # it states 19 other facts on every question it gets right
    assert sum(fa["targeted"]) == 25 and sum(fa["chatty"]) == 25
    assert other_facts_stated(shotgun, items[0], keys) == 19
    stats = answer_stats(items, {"constant": [shotgun] * 25, "targeted": targeted, "chatty": chatty})
    assert stats["other_fact_rate"] == {"constant": 1.0, "targeted": 0.0, "chatty": 1.0}
    assert stats["answer_words"]["targeted"] == 4.0


def test_a_fact_sharing_a_key_with_the_question_is_not_another_fact():
    items = [{"facts": ["A"], "required": [["$29"]]}, {"facts": ["B"], "required": [["$29"], ["5,000 runs"]]}]
    assert other_facts_stated("A Run Pack is $29 for 5,000 runs.", items[0], fact_keys(items)) == 0


def test_the_constant_answer_on_the_demo_scores_nothing():
    """Issue 15's case: twenty fact keys in one constant answer would beat the few-shot prompt."""
    items = [json.loads(line) for line in DEMO_ITEMS.read_text().splitlines()]
    keys = fact_keys(items)
    constant = " ".join(groups[0][0] for groups in list(keys.values())[:20])
    values, _ = score_items(items, {"constant": [constant] * len(items)})
    naive = sum(states_facts(constant, it["required"]) for it in items) / len(items)
    assert naive > 0.3  # it states the required facts of a third of the questions (few-shot: 23.5%)
    assert sum(values["fact_accuracy"]["constant"]) == 0


def test_items_sharing_a_fact_are_one_cluster_and_widen_the_interval():
    assert fact_clusters([["A"], ["B"], ["A", "C"], ["C"], None, []]) == [0, 1, 0, 0, 2, 3]
    # 10 facts, each asked 8 times; the tuned model knows 6 of them, the other contender 4.
    tuned = [float(f < 6) for f in range(10) for _ in range(8)]
    other = [float(f < 4) for f in range(10) for _ in range(8)]
    clusters = [f for f in range(10) for _ in range(8)]
    lo_items, hi_items = paired_bootstrap(tuned, other, seed=1)
    lo_facts, hi_facts = paired_bootstrap(tuned, other, seed=1, clusters=clusters)
    assert hi_facts - lo_facts > 2 * (hi_items - lo_items)  # 10 facts of evidence, not 80 questions
    assert paired_bootstrap(tuned, other, seed=1, clusters=list(range(80))) == (lo_items, hi_items)


def test_summarise_resamples_by_fact():
    items = [{"facts": [f"F{f}"], "required": [[f"code {100 + f}"]]} for f in range(10) for _ in range(8)]
    answers = {"tuned": [f"code {100 + f}" if f < 6 else "no" for f in range(10) for _ in range(8)],
               "base": [f"code {100 + f}" if f < 4 else "no" for f in range(10) for _ in range(8)]}
    values, per_item = score_items(items, answers)
    plain = summarise(values, per_item, 0)["differences"]["tuned_minus_base"]["ci95"]
    by_fact = summarise(values, per_item, 0, fact_clusters([it["facts"] for it in items]))["differences"]["tuned_minus_base"]["ci95"]
    assert by_fact[1] - by_fact[0] > plain[1] - plain[0]


def test_few_shot_uses_conversations_with_a_system_message_and_says_when_it_has_none():
    with_system = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "A."}]]
    assert ShotIndex(with_system).shots == [with_system[0][1:]]
    multi = [[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."},
              {"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}]]
    assert ShotIndex(multi).shots == []
    lines = headline({"fact_accuracy": {"base": 0.1, "few_shot": 0.1, "tuned": 0.5}, "primary_metric": "fact_accuracy",
                      "metrics": {"fact_accuracy": {"base": 0.1, "few_shot": 0.1, "tuned": 0.5}}, "questions": 10,
                      "few_shot_pool": 0, "answer_words": {"base": 30.0, "few_shot": 12.5, "tuned": 9.0}})
    text = "\n".join(lines)
    assert "warning, few-shot: no training conversation" in text
    assert "mean answer length: base model 30.0 words" in text


def test_a_label_field_gives_label_accuracy_as_the_primary_metric_and_macro_f1():
    extras = [{"label": "billing"}, {"label": "bug"}, {"label": "billing"}, {"label": "account"}]
    answers = {"tuned": ["Billing", "This is a bug.", "billing or bug", "account"], "base": ["bug"] * 4}
    s, _ = score(extras, answers, 0)
    assert s["primary_metric"] == "label_accuracy"
    assert s["metrics"]["label_accuracy"] == {"tuned": 0.75, "base": 0.25}  # "billing or bug" names two classes: wrong
    assert s["macro_f1"]["tuned"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert s["macro_f1"]["base"] == pytest.approx((0 + 2 / 5 + 0) / 3)  # always "bug": one class right, F1 0.4
    assert "macro-F1 over the labels: base model 13.3, fine-tuned 88.9" in "\n".join(headline(s))


def test_short_references_without_facts_make_exact_match_primary():
    short = [{"reference": "Paris"}, {"reference": "42 km"}]
    long = short + [{"reference": "The capital of France is Paris, on the Seine."}]
    answers = {"tuned": ["Paris", "42 km"], "base": ["Paris is it", "about 42 km"]}
    assert score(short, answers, 0)[0]["primary_metric"] == "exact_match"
    answers = {c: a + ["Paris."] for c, a in answers.items()}
    assert score(long, answers, 0)[0]["primary_metric"] == "token_f1"
    assert score([{**e, "required": [["Paris"]]} for e in short], {"tuned": ["Paris", "x"]}, 0)[0]["primary_metric"] == "fact_accuracy"
