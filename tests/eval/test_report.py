"""The verdict sentence: win, loss, not distinguishable."""

from __future__ import annotations

from tunekit.eval.report import verdict


def _scores(tuned, base, few, ci):
    return {"questions": 40, "fact_accuracy": {"base": base, "few_shot": few, "tuned": tuned},
            "differences": {"tuned_minus_base": {"diff": tuned - base, "ci95": ci},
                            "tuned_minus_few_shot": {"diff": tuned - few, "ci95": ci}}}


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
