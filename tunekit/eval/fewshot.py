"""Few-shot prompts: the k training examples most similar to the question.

This is the prompt-engineering baseline a fine-tune has to beat: the base model is
shown worked answers from the user's own data, chosen by TF-IDF cosine similarity
between the question and each example's user turn (retrieval, so the shots are
usually about the same topic as the question).
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9$][a-z0-9$.,>-]*")


def _words(text: str) -> list[str]:
    return [w.strip(".,") for w in _WORD.findall(text.casefold())]


class ShotIndex:
    """TF-IDF index over single-turn training conversations (a system message is left out: the
    question brings its own). `shots` is empty when none has that shape; the caller says so."""

    def __init__(self, conversations: list[list[dict]]):
        turns = ([m for m in c if m["role"] != "system"] for c in conversations)
        self.shots = [t for t in turns if [m["role"] for m in t] == ["user", "assistant"]]
        docs = [Counter(_words(c[0]["content"])) for c in self.shots]
        df = Counter(w for d in docs for w in d)
        n = len(docs)
        self.idf = {w: math.log((n + 1) / (f + 1)) + 1 for w, f in df.items()}
        self.vecs = [self._vec(d) for d in docs]

    def _vec(self, counts: Counter) -> dict[str, float]:
        v = {w: c * self.idf.get(w, 0.0) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def nearest(self, question: str, k: int) -> list[list[dict]]:
        q = self._vec(Counter(_words(question)))
        scored = sorted(range(len(self.vecs)), key=lambda i: -sum(q.get(w, 0.0) * x for w, x in self.vecs[i].items()))
        return [self.shots[i] for i in scored[:k]]


def few_shot_messages(index: ShotIndex, messages: list[dict], k: int) -> list[dict]:
    """The question preceded by k example exchanges (most similar last, nearest the question)."""
    question = messages[-1]["content"]
    shots = index.nearest(question, k)[::-1]
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return system + [m for shot in shots for m in shot] + rest
