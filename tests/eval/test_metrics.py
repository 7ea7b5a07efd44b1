"""Fact matching and the paired bootstrap."""

from __future__ import annotations

import pytest

from tunekit.eval.metrics import accuracy, paired_bootstrap, states_facts


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
