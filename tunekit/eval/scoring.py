"""Scoring held-out answers: which metrics an item supports, each contender's values, the
tuned model's lead with its interval, and what else the answers show.

Each held-out item is scored by every metric it supports (`item_scorers`); a metric no item
supports is left out. The primary metric, which `differences` and the verdict use: fact
accuracy when items are labelled with required facts; else label accuracy when they carry a
class `label`; else exact match when every reference is short (at most SHORT_REFERENCE
words: there F1 would give half marks for a wrong short answer); else token F1.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tunekit.eval.metrics import (
    exact_match,
    fact_clusters,
    is_json_reference,
    json_valid,
    label_of,
    macro_f1,
    mean,
    paired_bootstrap,
    pattern_match,
    rouge_l,
    states_facts,
    token_f1,
)

METRIC_LABELS = {"fact_accuracy": "fact accuracy", "exact_match": "exact match", "token_f1": "token F1",
                 "rouge_l": "ROUGE-L", "json_valid": "valid JSON", "pattern_match": "pattern match",
                 "label_accuracy": "label accuracy"}
# Metrics that are a share of answers right or wrong: the report gives them Wilson intervals.
RATES = {"fact_accuracy", "exact_match", "json_valid", "pattern_match", "label_accuracy"}
SHORT_REFERENCE = 5


def _reference_text(extra: dict) -> str | None:
    ref = extra.get("reference")
    if isinstance(ref, (dict, list)):  # a structured reference written as JSON rather than as a string
        return json.dumps(ref, ensure_ascii=False)
    return ref if isinstance(ref, str) and ref.strip() else None


def fact_keys(extras: list[dict]) -> dict[str, list[list[str]]]:
    """Each fact id's required answer groups, from the items that ask about that one fact alone."""
    keys: dict[str, list[list[str]]] = {}
    for e in extras:
        facts = e.get("facts") or []
        if len(facts) == 1 and e.get("required"):
            keys.setdefault(str(facts[0]), e["required"])
    return keys


def other_facts_stated(answer: str, extra: dict, keys: dict[str, list[list[str]]]) -> int:
    """How many facts other than the item's own the answer states in full. A fact that shares a
    key with the item's own required answers is not counted: stating that key is the answer."""
    own = {str(f) for f in extra.get("facts") or []}
    mine = {alt.casefold() for group in extra.get("required") or [] for alt in group}
    return sum(1 for fact, groups in keys.items()
               if fact not in own and not any(alt.casefold() in mine for g in groups for alt in g)
               and states_facts(answer, groups))


def class_labels(extras: list[dict]) -> list[str]:
    """The classes the items' `label` fields name, in order of first appearance."""
    return list(dict.fromkeys(e["label"] for e in extras if isinstance(e.get("label"), str)))


class Beyond:
    """What an answer says beyond its own item, found once per answer and shared by the metrics
    and the answer statistics: how many other facts it states (`fact_keys`), which class it names."""

    def __init__(self, extras: list[dict]):
        self.keys, self.labels = fact_keys(extras), class_labels(extras)
        self._others: dict[tuple[int, str], int] = {}
        self._label: dict[str, str | None] = {}

    def others(self, extra: dict, answer: str) -> int:
        key = (id(extra), answer)
        if key not in self._others:
            self._others[key] = other_facts_stated(answer, extra, self.keys)
        return self._others[key]

    def label(self, answer: str) -> str | None:
        if answer not in self._label:
            self._label[answer] = label_of(answer, self.labels)
        return self._label[answer]


def item_scorers(extra: dict, beyond: Beyond | None = None) -> dict[str, Callable[[str], float]]:
    """The metrics one held-out item supports, each a function from an answer to [0, 1]:
    fact accuracy when it lists `required` facts (with `beyond`, an answer that states more other
    facts than the item asks about is a list, not an answer, and is wrong); exact match, token F1
    and ROUGE-L when it has a reference (prepare keeps a given final assistant turn as
    `reference`); JSON validity when the reference is a JSON object/array or the item says
    "format": "json"; a regex match for "pattern"; label accuracy for a `label` (with `beyond`)."""
    out: dict[str, Callable[[str], float]] = {}
    ref = _reference_text(extra)
    if extra.get("required"):
        asked = max(len(extra.get("facts") or []), 1)
        out["fact_accuracy"] = lambda a: float(states_facts(a, extra["required"])
                                               and (beyond is None or beyond.others(extra, a) <= asked))
    if ref is not None:
        out["exact_match"] = lambda a: exact_match(a, ref)
        out["token_f1"] = lambda a: token_f1(a, ref)
        out["rouge_l"] = lambda a: rouge_l(a, ref)
    if extra.get("format") == "json" or is_json_reference(ref):
        out["json_valid"] = lambda a: float(json_valid(a))
    if extra.get("pattern"):
        out["pattern_match"] = lambda a: float(pattern_match(a, extra["pattern"]))
    if isinstance(extra.get("label"), str) and beyond is not None and beyond.labels:
        out["label_accuracy"] = lambda a: float(beyond.label(a) == extra["label"])
    return out


def score_items(extras: list[dict], answers: dict[str, list[str]],
                beyond: Beyond | None = None) -> tuple[dict, list[dict]]:
    """({metric: {contender: [value per supporting item]}}, per item {metric: {contender: value}}).

    Every contender answers every item, so a metric's lists are paired item by item."""
    beyond = beyond or Beyond(extras)
    values: dict[str, dict[str, list[float]]] = {}
    per_item = []
    for i, extra in enumerate(extras):
        row = {}
        for name, score in item_scorers(extra, beyond).items():
            row[name] = {c: score(a[i]) for c, a in answers.items()}
            column = values.setdefault(name, {})
            for c, v in row[name].items():
                column.setdefault(c, []).append(v)
        per_item.append(row)
    order = list(METRIC_LABELS)
    return {m: values[m] for m in sorted(values, key=order.index)}, per_item


def answer_stats(extras: list[dict], answers: dict[str, list[str]], beyond: Beyond | None = None) -> dict:
    """Per contender: the mean answer length in words; macro-F1 where items carry a `label`; and
    where items carry fact ids, the share of answers stating some other fact in full (a model
    listing every key it knows shows here)."""
    beyond = beyond or Beyond(extras)
    out = {"answer_words": {c: mean([len(x.split()) for x in a]) for c, a in answers.items()}}
    classified = [i for i, e in enumerate(extras) if isinstance(e.get("label"), str)]
    if classified:
        gold = [extras[i]["label"] for i in classified]
        out["macro_f1"] = {c: macro_f1([beyond.label(a[i]) for i in classified], gold) for c, a in answers.items()}
    labelled = [i for i, e in enumerate(extras) if e.get("facts") and e.get("required")]
    if beyond.keys and labelled:
        out["other_fact_rate"] = {c: mean([float(beyond.others(extras[i], a[i]) > 0) for i in labelled])
                                  for c, a in answers.items()}
    return out


def differences(values: dict[str, list[float]], seed: int, clusters: list[int] | None = None) -> dict:
    """Tuned minus each other contender on one metric, with a paired-bootstrap 95% interval
    (over clusters of items sharing a fact, when `clusters` gives them)."""
    out = {}
    if "tuned" not in values:
        return out
    for other in ("base", "few_shot"):
        if other in values:
            lo, hi = paired_bootstrap(values["tuned"], values[other], seed=seed, clusters=clusters)
            out[f"tuned_minus_{other}"] = {"diff": mean(values["tuned"]) - mean(values[other]), "ci95": [lo, hi]}
    return out


def primary_metric(values: dict, extras: list[dict] | None = None) -> str:
    """The metric the verdict uses (see the module docstring)."""
    refs = [r for r in (_reference_text(e) for e in extras or []) if r is not None]
    short = bool(refs) and all(len(r.split()) <= SHORT_REFERENCE for r in refs)
    for metric, applies in (("fact_accuracy", True), ("label_accuracy", True), ("exact_match", short)):
        if metric in values and applies:
            return metric
    return "token_f1"


def score(extras: list[dict], answers: dict[str, list[str]], seed: int) -> tuple[dict, list[dict]]:
    """(the answer part of scores.json, per item {metric: {contender: value}}) for items' `extras`
    and each contender's answers; intervals resample items sharing a fact together."""
    beyond = Beyond(extras)
    values, per_item = score_items(extras, answers, beyond)
    clusters = fact_clusters([e.get("facts") for e in extras])
    summary = summarise(values, per_item, seed, clusters, primary_metric(values, extras))
    return {**summary, **answer_stats(extras, answers, beyond)}, per_item


def summarise(values: dict, per_item: list[dict], seed: int, clusters: list[int] | None = None,
              primary: str | None = None) -> dict:
    """The answer-metric part of scores.json (see `evaluate`) from `score_items`' results;
    `clusters`: a cluster id per item (metrics.fact_clusters), resampled whole by the bootstrap;
    `primary`: the verdict's metric (`primary_metric`; by default without the references' lengths)."""
    primary = primary or primary_metric(values)
    counts = {m: sum(m in row for row in per_item) for m in values}
    by_metric = {m: differences(v, seed, None if clusters is None else [c for c, row in zip(clusters, per_item) if m in row])
                 for m, v in values.items()}
    out = {
        # How many items the primary metric scored (all items when no item supports it).
        "questions": counts.get(primary, len(per_item)),
        "primary_metric": primary,
        "metrics": {m: {c: mean(x) for c, x in v.items()} for m, v in values.items()},
        "metric_items": counts,
        "differences": by_metric.get(primary, {}),
        "differences_by_metric": by_metric,
    }
    if "fact_accuracy" in values:
        out["fact_accuracy"] = out["metrics"]["fact_accuracy"]
    return out


