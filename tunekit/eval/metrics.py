"""Answer metrics, each a plain function of one answer and what the item supplies.

- fact accuracy (`states_facts`): for every group of accepted surface forms the item lists
  under `required`, at least one form occurs in the answer (case-insensitive, whitespace
  collapsed) as whole words and whole numbers: "$29" is not found in "$299" or "$29.50",
  "151" not in "1510" or "1,151", "4" not in "-4", "cat" not in "category". Numbers compare
  by value: "0.50" is "0.5", "1,000" is "1000"; the minus sign and the decimal point count.
- exact match, token F1: SQuAD's definitions over normalised text (casefold, punctuation
  and the articles a/an/the removed, whitespace collapsed), against the item's reference;
  but a number keeps its sign and decimal point, by value ("-52.4" is not "52.4").
- ROUGE-L: F-measure of the longest common subsequence of normalised tokens. Written here
  rather than taken from `rouge-score`: it is twenty lines, and that package would pull in
  nltk and absl for them.
- JSON validity: the answer (or a fenced block in it) parses as a JSON object or array.
- pattern match: the item's regular expression matches somewhere in the answer.

Every metric is a number in [0, 1] per item, so the paired bootstrap treats them alike.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter

_WS = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


# A number as written: optional minus sign (not after a letter or digit: "10-4" is a range, "LQ-5023"
# a code), digits with optional thousands commas, optional decimals; never a piece of a longer
# dotted run such as a version or an address ("10.0.0.1" is left alone).
_NUMBER = re.compile(r"(?<![\w.,])([-\u2212](?=\d))?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\d]|[.,]\d)")


def _number_text(sign: str | None, whole: str, frac: str | None) -> str:
    """A number (`_NUMBER`'s groups) by its value: "1,000" is "1000", "0.50" is "0.5", "2.0" is "2"; the sign stays."""
    return ("-" if sign else "") + whole.replace(",", "") + (frac or "").rstrip("0").rstrip(".")


def canonical_numbers(text: str) -> str:
    """`text` with every number written by its value, so numbers compare by value."""
    return _NUMBER.sub(lambda m: _number_text(*m.groups()), text)


def _norm(text: str) -> str:
    return canonical_numbers(_WS.sub(" ", text.casefold()).strip())


def _extends_number(text: str, i: int, step: int) -> bool:
    """The separator at text[i] continues a number ("1.5", "1,500"; a minus sign "-4" before it)."""
    if not (0 <= i < len(text)) or text[i] not in ".,-\u2212":
        return False
    beyond = i + step
    if text[i] in "-\u2212":  # "-4" negates; "10-4" is a range and leaves "4" whole
        return step < 0 and not (0 <= beyond < len(text) and text[beyond].isalnum())
    return 0 <= beyond < len(text) and text[beyond].isdigit()


def contains_whole(text: str, part: str) -> bool:
    """`part` occurs in `text` without being the inside of a longer word or number."""
    if not part:
        return False
    start = text.find(part)
    while start >= 0:
        end = start + len(part)
        before = start - 1
        ok = not (part[0].isalnum() and before >= 0 and text[before].isalnum())
        ok = ok and not (part[0].isdigit() and _extends_number(text, before, -1))
        ok = ok and not (part[-1].isalnum() and end < len(text) and text[end].isalnum())
        ok = ok and not (part[-1].isdigit() and _extends_number(text, end, 1))
        if ok:
            return True
        start = text.find(part, start + 1)
    return False


def states_facts(answer: str, required: list[list[str]]) -> bool:
    """True when every required group has one alternative present in `answer` (`contains_whole`)."""
    a = _norm(answer)
    return all(any(contains_whole(a, _norm(alt)) for alt in group) for group in required)


def _is_punct(ch: str) -> bool:
    # SQuAD strips ASCII punctuation only; models also write curly quotes and dashes.
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (casefold, drop punctuation and articles, collapse whitespace),
    except inside numbers: their sign and decimal point stay and they compare by value, so "-52.4"
    is not "52.4", "0.3" is not "3" and "1,000" is "1000"."""
    parts = _NUMBER.split(text.casefold())  # text, then the number's three groups, repeated
    out = []
    for i in range(0, len(parts), 4):
        out.append("".join(" " if _is_punct(ch) else ch for ch in parts[i]))
        if i + 3 < len(parts):
            out.append(f" {_number_text(*parts[i + 1 : i + 4])} ")
    return " ".join(_ARTICLES.sub(" ", "".join(out)).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(answer: str, reference: str) -> float:
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the bag of normalised tokens."""
    pred, ref = answer_tokens(answer), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if not same:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row kept)."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], (prev_diag + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (beta 1) over normalised tokens."""
    pred, ref = answer_tokens(answer), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if not lcs:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def _json_container(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def is_json_reference(reference: str | None) -> bool:
    """True when the reference is a JSON object or array: then answers are checked for valid JSON."""
    return bool(reference) and _json_container(reference.strip())


def json_valid(answer: str) -> bool:
    """The answer is a JSON object or array, bare or inside a ``` / ```json fence.

    A bare scalar does not count: "42" parses as JSON, yet an item asking for JSON wants structure.
    """
    if _json_container(answer.strip()):
        return True
    return any(_json_container(block.strip()) for block in _FENCE.findall(answer))


def pattern_match(answer: str, pattern: str) -> bool:
    """The item's regular expression matches somewhere in the answer (anchor it for a full match)."""
    return re.search(pattern, answer) is not None


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def accuracy(flags: list[bool]) -> float:
    return mean([float(f) for f in flags])


def perplexity(loss: float) -> float:
    """exp of a mean loss per token (nats); inf where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def fact_clusters(facts: list[list[str] | None]) -> list[int]:
    """A cluster id per item: items that share a fact id, directly or through other items, share a
    cluster; an item without fact ids is a cluster of its own."""
    parent = list(range(len(facts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, ids in enumerate(facts):
        for f in ids or []:
            j = first.setdefault(str(f), i)
            parent[root(i)] = root(j)
    roots = [root(i) for i in range(len(facts))]
    number = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [number[r] for r in roots]


def paired_bootstrap(a: list[float], b: list[float], n: int = 2000, seed: int = 0,
                     ratio: bool = False, clusters: list[int] | None = None) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) (bools count as 0/1), resampling items in pairs; with
    `ratio`, of mean(a) / mean(b) (resamples where mean(b) is 0 are left out).

    `clusters` (an id per item, `fact_clusters`): whole clusters are resampled, with all their
    items. Questions about one fact are not independent evidence (a model that knows the fact
    answers them all), so resampling them one by one would give too narrow an interval."""
    import numpy as np

    if not a:
        return 0.0, 0.0
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ids = np.arange(len(x)) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    k = int(ids.max()) + 1
    sum_x, sum_y = np.bincount(ids, weights=x, minlength=k), np.bincount(ids, weights=y, minlength=k)
    size = np.bincount(ids, minlength=k).astype(float)
    picks = np.random.default_rng(seed).integers(0, k, size=(n, k))
    top, bottom, count = sum_x[picks].sum(axis=1), sum_y[picks].sum(axis=1), size[picks].sum(axis=1)
    if ratio:
        stats = top[bottom > 0] / bottom[bottom > 0]
        if not len(stats):
            return 0.0, 0.0
    else:
        stats = (top - bottom) / count
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def label_of(answer: str, labels: list[str]) -> str | None:
    """The class an answer names among `labels`: the one it is (normalised), else the only one it
    mentions as whole words; None when it names none or several ("billing or refunds" is no answer)."""
    said = normalize_answer(answer)
    by_norm = {normalize_answer(x): x for x in labels}
    if said in by_norm:
        return by_norm[said]
    named = [x for n, x in by_norm.items() if n and contains_whole(f" {said} ", f" {n} ")]
    return named[0] if len(named) == 1 else None


def macro_f1(predicted: list[str | None], gold: list[str]) -> float:
    """Mean over the gold classes of each class's F1 (a prediction of no class is wrong for every class)."""
    scores = []
    for c in sorted(set(gold)):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return mean(scores)
