"""The forgetting check: the flag rule over plain numbers, answer matching, the bundled
probe files, and the chunked text loss against the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from tunekit.eval import forgetting
from tunekit.eval.forgetting import answers_question, compare, forgetting_verdict, summary_line, text_loss


def test_small_changes_are_not_flagged():
    flagged, why = forgetting_verdict(10.0, 10.5, 14, 14, 16, 0.10)
    assert not flagged and "+5.0%" in why and "14/16 -> 14/16" in why
    # losing exactly MAX_QUESTION_DROP questions is still within chance
    assert not forgetting_verdict(10.0, 9.0, 14, 12, 16, 0.10)[0]


def test_perplexity_rise_beyond_the_threshold_is_flagged():
    flagged, why = forgetting_verdict(10.0, 11.5, 14, 14, 16, 0.10)
    assert flagged and "perplexity rose +15.0%" in why and "fewer" not in why
    assert not forgetting_verdict(10.0, 11.5, 14, 14, 16, 0.20)[0]  # the threshold is the config's


def test_lost_general_questions_are_flagged():
    flagged, why = forgetting_verdict(10.0, 10.0, 14, 11, 16, 0.10)
    assert flagged and "3 fewer general questions" in why and "14/16 -> 11/16" in why and "perplexity rose" not in why


def test_both_reasons_are_given():
    flagged, why = forgetting_verdict(10.0, 13.0, 15, 5, 16, 0.10)
    assert flagged and "perplexity rose +30.0%" in why and "10 fewer" in why


@pytest.mark.parametrize("answer,accepted,ok", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("paris", ["Paris"], True),
    ("It is 14.", ["4", "four"], False),  # whole words: "4" is not in "14"
    ("2 + 2 = 4", ["4", "four"], True),
    ("Leonardo da Vinci painted it.", ["Leonardo", "da Vinci"], True),
    ("Plants take in carbon dioxide (CO2).", ["carbon dioxide", "CO2"], True),
    ("Lyon", ["Paris"], False),
])
def test_answers_question(answer, accepted, ok):
    assert answers_question(answer, accepted) is ok


def test_bundled_probe_files():
    questions = forgetting.load_questions()
    assert 10 <= len(questions) <= 20
    assert all(q["question"].endswith("?") and q["answers"] and all(q["answers"]) for q in questions)
    words = len(forgetting.TEXT_FILE.read_text(encoding="utf-8").split())
    assert 1500 <= words <= 3000  # about 2-4k tokens for a 49k-vocabulary tokenizer
    assert (forgetting.ASSETS / "README.md").is_file()


def _probe(ppl: float, right: int) -> dict:
    n = len(forgetting.load_questions())
    return {"perplexity": ppl, "text_tokens": 2500, "answers": [f"a{i}" for i in range(n)],
            "correct": [i < right for i in range(n)]}


def test_compare_builds_the_scores_entry_and_the_console_line():
    result = compare(_probe(12.3, 14), _probe(12.9, 14), 0.10)
    assert set(result) == {"text_source", "text_tokens", "perplexity", "perplexity_change", "questions",
                           "general_correct", "flagged", "why"}
    assert result["perplexity"] == {"base": 12.3, "tuned": 12.9}
    assert result["perplexity_change"] == pytest.approx(12.9 / 12.3 - 1)
    assert result["general_correct"] == {"base": 14, "tuned": 14} and not result["flagged"]
    q = result["questions"][0]
    assert set(q) == {"question", "expected", "answers", "correct"} and q["expected"] == ["Paris"]
    assert q["answers"] == {"base": "a0", "tuned": "a0"} and q["correct"] == {"base": True, "tuned": True}
    assert summary_line(result) == ("forgetting: general-text perplexity 12.3 -> 12.9 (+4.9%), "
                                    "general questions 14/16 -> 14/16: ok")
    bad = compare(_probe(12.3, 14), _probe(12.3, 10), 0.10)
    assert bad["flagged"] and summary_line(bad).endswith(": FLAGGED: " + bad["why"])


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
