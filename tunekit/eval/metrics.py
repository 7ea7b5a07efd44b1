"""Answer metrics. Fact accuracy: an answer states a fact when, for every group of
accepted surface forms the item lists under `required`, at least one form occurs in
the answer (case-insensitive, whitespace collapsed)."""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text.casefold()).strip()


def states_facts(answer: str, required: list[list[str]]) -> bool:
    """True when every required group has one alternative present in `answer`."""
    a = _norm(answer)
    return all(any(_norm(alt) in a for alt in group) for group in required)


def accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def paired_bootstrap(a: list[bool], b: list[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), resampling questions in pairs."""
    import numpy as np

    if not a:
        return 0.0, 0.0
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
