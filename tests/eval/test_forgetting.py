"""The forgetting check: the interval flag rule over plain numbers, the kept share and its
interval, the scores.json entry, scoring with the held-out fact metric, and the chunked
text loss against the model's own loss. The bundled files: tests/eval/test_general_sets.py."""

from __future__ import annotations

import math

import pytest
import torch

from tunekit.eval import forgetting
from tunekit.eval.forgetting import compare, forgetting_verdict, kept_sentence, kept_share, summary_line, text_loss


def _scores(n: int, right: int) -> list[float]:
    return [1.0 if i < right else 0.0 for i in range(n)]


def test_the_flag_needs_the_whole_interval_beyond_the_threshold():
    # 60 of 100 -> 30 of 100: kept 50%, the interval far below 90%
    kept, ci = kept_share(_scores(100, 30), _scores(100, 60))
    assert kept == pytest.approx(0.5) and ci[1] < 0.9
    flagged, why = forgetting_verdict(kept, ci, 0.10)
    assert flagged and "kept 50%" in why and "more than the 10% allowed" in why and "95% confidence" in why
    assert not forgetting_verdict(kept, ci, 0.60)[0]  # the threshold is the config's


def test_a_raw_drop_inside_the_interval_is_not_flagged():
    # 12 of 16 -> 10 of 16 looked like a loss by count; with 16 questions the interval spans no change
    kept, ci = kept_share(_scores(16, 10), _scores(16, 12))
    assert ci[1] >= 0.9
    assert not forgetting_verdict(kept, ci, 0.10)[0]


def test_a_real_but_small_loss_is_reported_not_flagged():
    flagged, why = forgetting_verdict(0.95, (0.91, 0.99), 0.10)
    assert not flagged and "a real loss, but not clearly more than the 10% allowed" in why
    assert forgetting_verdict(0.80, (0.70, 0.89), 0.10)[0]
    assert not forgetting_verdict(1.02, (0.96, 1.08), 0.10)[0]


def test_kept_share_interval_is_a_paired_bootstrap_of_the_ratio():
    base, tuned = _scores(50, 40), _scores(50, 40)
    assert kept_share(tuned, base) == (1.0, (1.0, 1.0))  # the same answers: no uncertainty about the ratio
    swapped = [1.0 - x for x in _scores(50, 10)]  # the same total, different questions right
    kept, (lo, hi) = kept_share(swapped, base)
    assert kept == pytest.approx(1.0) and lo < 1 < hi
    assert kept_share([0.0] * 5, [0.0] * 5) == (1.0, (1.0, 1.0))


def _probe(ppl: float, right: int) -> dict:
    n = len(forgetting.load_questions())
    return {"perplexity": ppl, "text_tokens": 2500, "answers": [f"a{i}" for i in range(n)],
            "correct": _scores(n, right)}


def test_compare_builds_the_scores_entry_and_the_console_line():
    n = len(forgetting.load_questions())
    result = compare(_probe(12.3, 120), _probe(12.9, 118), 0.10)
    assert result["perplexity"] == {"base": 12.3, "tuned": 12.9} and result["notes"] == []
    assert result["perplexity_change"] == pytest.approx(12.9 / 12.3 - 1)
    assert result["general_correct"] == {"base": 120, "tuned": 118} and result["n_questions"] == n
    assert result["kept"] == pytest.approx(118 / 120) and not result["flagged"]
    assert sum(row["questions"] for row in result["by_skill"].values()) == n
    assert sum(row["base"] for row in result["by_skill"].values()) == 120
    q = result["questions"][0]
    assert set(q) == {"id", "skill", "question", "expected", "answers", "correct"} and q["expected"] == [["Paris"]]
    assert q["answers"] == {"base": "a0", "tuned": "a0"} and q["correct"] == {"base": True, "tuned": True}
    line = summary_line(result)
    assert line.startswith(f"forgetting: general questions 120/{n} -> 118/{n}, it kept 98%") and line.endswith(": ok")
    assert "general-text perplexity 12.3 -> 12.9 (+4.9%)" in line
    assert kept_sentence(result).startswith("It kept 98% of the base model's general score (95% CI ")
    bad = compare(_probe(12.3, 120), _probe(30.0, 40), 0.10)
    assert bad["flagged"] and summary_line(bad).endswith(": FLAGGED") and kept_sentence(bad).endswith("FORGETTING FLAGGED.")
    assert "perplexity rose +144%" in bad["notes"][0]


def test_probe_scores_answers_with_the_held_out_fact_metric(monkeypatch, tiny):
    """The general questions are scored by states_facts, as held-out items are (whole words and numbers)."""
    questions = forgetting.load_questions()
    canned = {q["id"]: " and ".join(g[0] for g in q["required"]) for q in questions}
    canned[questions[0]["id"]] = "I do not know"
    monkeypatch.setattr(forgetting, "greedy_answers",
                        lambda model, tok, convs, *a: [canned[q["id"]] for q in questions])
    model, tok = tiny
    result = forgetting.probe(model, tok, 8, "base")
    assert result["correct"][0] == 0.0 and all(x == 1.0 for x in result["correct"][1:])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_tokenizer):
    from tunekit.models.loading import load_model

    return load_model(tiny_model_dir).eval(), tiny_tokenizer


def _hf_loss_sum(model, ids: list[int]) -> tuple[float, int]:
    """The model's own mean loss (labels = inputs) times the tokens it predicts."""
    with torch.no_grad():
        t = torch.tensor([ids])
        return float(model(input_ids=t, labels=t).loss) * (len(ids) - 1), len(ids) - 1


def test_text_loss_is_the_models_causal_lm_loss(tiny):
    model, tok = tiny
    text = "It is a truth universally acknowledged, that a single man must be in want of a wife."
    ids = tok(text)["input_ids"]
    loss, n = text_loss(model, tok, text)
    assert n == len(ids)
    total, count = _hf_loss_sum(model, ids)
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert math.exp(loss) == pytest.approx(forgetting.perplexity(loss))


def test_text_loss_in_chunks_weights_each_chunk_by_its_tokens(tiny):
    model, tok = tiny
    text = "Four score and seven years ago our fathers brought forth on this continent, a new nation."
    ids = tok(text)["input_ids"]
    size = next(c for c in range(6, 16) if len(ids) % c >= 2)  # a short last chunk that still predicts something
    loss, _ = text_loss(model, tok, text, max_chunk=size)
    parts = [_hf_loss_sum(model, ids[s : s + size]) for s in range(0, len(ids), size)]
    assert loss == pytest.approx(sum(t for t, _ in parts) / sum(c for _, c in parts), rel=1e-5)
    assert loss != pytest.approx(text_loss(model, tok, text)[0], rel=1e-3)  # chunking changed the context seen
