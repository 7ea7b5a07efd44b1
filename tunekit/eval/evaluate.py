"""The eval stage: held-out loss and perplexity, and answer metrics of greedy answers for
three contenders — the base model, the base model with a few-shot prompt, and the tuned
model — with paired-bootstrap intervals for the tuned model's lead; then the forgetting
check (tunekit/eval/forgetting.py).

Each held-out item is scored by every metric it supports (see `item_scorers`); a metric
no item supports is left out. The primary metric, which `differences` and the verdict
use, is fact accuracy when items are labelled with required facts, else token F1.

Writes `eval/predictions.jsonl` (every question, reference, each contender's answer and
its value per metric) and `eval/scores.json`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.config import Config
from tunekit.data.batches import load_examples
from tunekit.data.records import Record, load_records
from tunekit.errors import DataError
from tunekit.eval import forgetting
from tunekit.eval.fewshot import ShotIndex, few_shot_messages
from tunekit.eval.generate import greedy_answers
from tunekit.eval.metrics import (
    exact_match,
    fact_clusters,
    is_json_reference,
    json_valid,
    mean,
    paired_bootstrap,
    pattern_match,
    perplexity,
    rouge_l,
    states_facts,
    token_f1,
)
from tunekit.hardware import for_inference
from tunekit.models.loading import load_model, set_threads
from tunekit.models.tuned import run_precision
from tunekit.progress import console
from tunekit.train.checkpoint import tuned_checkpoint
from tunekit.train.loop import evaluate_loss
from tunekit.train.metrics import peak_memory_mb

LABELS = {"base": "base model", "few_shot": "base + few-shot prompt", "tuned": "fine-tuned"}
METRIC_LABELS = {"fact_accuracy": "fact accuracy", "exact_match": "exact match", "token_f1": "token F1",
                 "rouge_l": "ROUGE-L", "json_valid": "valid JSON", "pattern_match": "pattern match"}


def load_tuned(cfg: Config, run_dir: Path, model_path: Path) -> torch.nn.Module:
    """The trained model from the run's best checkpoint (train.keep_best) or its final one, on the
    CPU: an adapter merged into the fp32 base for speed. `for_inference` then moves and casts it."""
    ckpt, _ = tuned_checkpoint(run_dir)
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model_path, cfg.model.dtype), str(ckpt)).merge_and_unload()
    return load_model(ckpt, cfg.model.dtype)


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


def item_scorers(extra: dict, keys: dict[str, list[list[str]]] | None = None) -> dict[str, Callable[[str], float]]:
    """The metrics one held-out item supports, each a function from an answer to [0, 1]:
    fact accuracy when it lists `required` facts (with `keys` from `fact_keys`, an answer that
    states more other facts than the item asks about is a list, not an answer, and is wrong);
    exact match, token F1 and ROUGE-L when it has a
    reference (prepare keeps a given final assistant turn as `reference`); JSON validity when the
    reference is a JSON object/array or the item says "format": "json"; a regex match for "pattern"."""
    out: dict[str, Callable[[str], float]] = {}
    ref = _reference_text(extra)
    if extra.get("required"):
        asked = max(len(extra.get("facts") or []), 1)
        out["fact_accuracy"] = lambda a: float(states_facts(a, extra["required"])
                                               and (not keys or other_facts_stated(a, extra, keys) <= asked))
    if ref is not None:
        out["exact_match"] = lambda a: exact_match(a, ref)
        out["token_f1"] = lambda a: token_f1(a, ref)
        out["rouge_l"] = lambda a: rouge_l(a, ref)
    if extra.get("format") == "json" or is_json_reference(ref):
        out["json_valid"] = lambda a: float(json_valid(a))
    if extra.get("pattern"):
        out["pattern_match"] = lambda a: float(pattern_match(a, extra["pattern"]))
    return out


def _check_patterns(items: list[Record], source: str) -> None:
    """A bad regular expression is the item author's error: say so before any model loads."""
    for i, it in enumerate(items):
        pattern = it.extra.get("pattern")
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise DataError(f"held-out item {it.extra.get('id', i + 1)} (item {i + 1} of {source}): \"pattern\" {pattern!r} "
                            f"is not a valid regular expression ({e}); fix or remove it") from None


def score_items(extras: list[dict], answers: dict[str, list[str]]) -> tuple[dict, list[dict]]:
    """({metric: {contender: [value per supporting item]}}, per item {metric: {contender: value}}).

    Every contender answers every item, so a metric's lists are paired item by item."""
    values: dict[str, dict[str, list[float]]] = {}
    per_item = []
    keys = fact_keys(extras)
    for i, extra in enumerate(extras):
        row = {}
        for name, score in item_scorers(extra, keys).items():
            row[name] = {c: score(a[i]) for c, a in answers.items()}
            column = values.setdefault(name, {})
            for c, v in row[name].items():
                column.setdefault(c, []).append(v)
        per_item.append(row)
    order = list(METRIC_LABELS)
    return {m: values[m] for m in sorted(values, key=order.index)}, per_item


def answer_stats(extras: list[dict], answers: dict[str, list[str]]) -> dict:
    """Per contender: the mean answer length in words, and where items carry fact ids, the share of
    answers stating some other fact in full (a model listing every key it knows shows here)."""
    keys = fact_keys(extras)
    out = {"answer_words": {c: mean([len(x.split()) for x in a]) for c, a in answers.items()}}
    labelled = [i for i, e in enumerate(extras) if e.get("facts") and e.get("required")]
    if keys and labelled:
        out["other_fact_rate"] = {c: mean([float(other_facts_stated(a[i], extras[i], keys) > 0) for i in labelled])
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


def summarise(values: dict, per_item: list[dict], seed: int, clusters: list[int] | None = None) -> dict:
    """The answer-metric part of scores.json (see `evaluate`) from `score_items`' results;
    `clusters`: a cluster id per item (metrics.fact_clusters), resampled whole by the bootstrap."""
    primary = "fact_accuracy" if "fact_accuracy" in values else "token_f1"
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


def evaluate(cfg: Config, run_dir: Path, model_path: Path, tokenizer) -> dict:
    """Run the eval stage; returns scores (also written to eval/scores.json).

    scores.json: questions, valid_examples, valid_loss {contender: loss}, perplexity {contender},
    primary_metric, fact_accuracy {contender} (only when items are labelled with facts), metrics
    {metric: {contender: mean}}, metric_items {metric: items scored}, differences (primary metric)
    and differences_by_metric {metric: {"tuned_minus_<other>": {"diff", "ci95"}}}, forgetting
    (forgetting.compare; {} when skipped), precision {name, device, reason}, peak_memory
    (the process's peak RSS, and the GPU allocator's peak on a GPU), eval_seconds.
    """
    start = time.perf_counter()
    set_threads(cfg.train.threads)
    data = run_dir / "data"
    train_records, _ = load_records(data / "train.jsonl")
    valid_ex = load_examples(data / "valid.jsonl", tokenizer, cfg.data.train_on)
    items = []
    if (data / "eval.jsonl").is_file():
        items, _ = load_records(data / "eval.jsonl", need_assistant=False)
        _check_patterns(items, cfg.data.eval or str(data / "eval.jsonl"))
    items = items[: cfg.eval.max_questions] if cfg.eval.max_questions else items
    questions = [it.messages for it in items]
    pad, bs, new = tokenizer.pad_token_id, cfg.eval.batch_size, cfg.eval.max_new_tokens
    few_shot_pool = None
    check_forgetting = cfg.eval.forgetting and "tuned" in cfg.eval.contenders

    precision = run_precision(run_dir, model_path, cfg.train.precision)
    console.print(f"[bold]precision[/] {precision.describe()}")
    pack_to = cfg.data.max_length if cfg.data.packing else None
    # One model in memory at a time: everything the base model does happens before it is replaced.
    # Its held-out loss is measured as training measured the tuned model's: a full fine-tune's
    # fp32 weights under autocast; for LoRA, the base cast to the compute dtype (cast_frozen).
    model = load_model(model_path, cfg.model.dtype)
    answers: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    if valid_ex and cfg.method.kind == "full":
        losses["base"] = evaluate_loss(model.to(precision.device), valid_ex, pad, bs, pack_to, precision)
    model = for_inference(model, precision)
    if valid_ex and "base" not in losses:
        losses["base"] = evaluate_loss(model, valid_ex, pad, bs, pack_to, precision)
    if questions and "base" in cfg.eval.contenders:
        answers["base"] = greedy_answers(model, tokenizer, questions, new, bs, "eval base")
    shots = [r.messages for r in train_records if r.messages]  # documents are no examples to show
    if questions and shots and "few_shot" in cfg.eval.contenders and cfg.eval.few_shot_k > 0:
        index = ShotIndex(shots)
        if not index.shots:
            console.print("[yellow]warning[/] few-shot: no training conversation is a single user turn and its answer, "
                          "so the few-shot prompt has no examples and this contender is the base model again")
        few_shot_pool = len(index.shots)
        prompts = [few_shot_messages(index, q, cfg.eval.few_shot_k) for q in questions]
        answers["few_shot"] = greedy_answers(model, tokenizer, prompts, new, bs, "eval few-shot")
    t_check = time.perf_counter()
    base_probe = forgetting.probe(model, tokenizer, bs, "base") if check_forgetting else None
    t_check = time.perf_counter() - t_check
    forgot: dict = {}
    if "tuned" in cfg.eval.contenders:
        del model
        model = for_inference(load_tuned(cfg, run_dir, model_path), precision)
        if valid_ex:
            # The train stage already measured these weights on this validation set.
            losses["tuned"] = tuned_checkpoint(run_dir)[1] or evaluate_loss(model, valid_ex, pad, bs, pack_to, precision)
        if questions:
            answers["tuned"] = greedy_answers(model, tokenizer, questions, new, bs, "eval tuned")
        if base_probe is not None:
            t0 = time.perf_counter()
            tuned_probe = forgetting.probe(model, tokenizer, bs, "tuned")
            forgot = forgetting.compare(base_probe, tuned_probe, cfg.eval.forgetting_threshold, cfg.seed)
            forgot["seconds"] = round(t_check + time.perf_counter() - t0, 1)  # both probes: what the check costs
    del model

    extras = [it.extra for it in items]
    values, per_item = score_items(extras, answers)
    summary = {**summarise(values, per_item, cfg.seed, fact_clusters([e.get("facts") for e in extras])),
               **answer_stats(extras, answers)}
    scores = {"questions": summary.pop("questions"), "valid_examples": len(valid_ex), "valid_loss": losses,
              "perplexity": {c: perplexity(x) for c, x in losses.items()}, **summary, "forgetting": forgot,
              "few_shot_pool": few_shot_pool,  # training examples the few-shot prompt could show (None: not run)
              # one precision for every contender: the run's (models.tuned.run_precision)
              "precision": {"name": precision.name, "device": precision.device.type, "reason": precision.reason},
              "peak_memory": peak_memory_mb(precision.device),
              "eval_seconds": round(time.perf_counter() - start, 1)}
    rows = []
    for i, it in enumerate(items):
        facts = per_item[i].get("fact_accuracy", {})
        rows.append({"id": it.extra.get("id", i), "question": it.messages[-1]["content"], "reference": it.extra.get("reference"),
                     "required": it.extra.get("required"), "answers": {c: a[i] for c, a in answers.items()},
                     "correct": {c: v == 1.0 for c, v in facts.items()}, "metrics": per_item[i]})
    atomic.write_jsonl(run_dir / "eval" / "predictions.jsonl", rows)
    atomic.write_json(run_dir / "eval" / "scores.json", scores)
    _print_scores(scores, cfg)
    return scores


def _print_scores(scores: dict, cfg: Config) -> None:
    if scores["perplexity"]:
        console.print("  held-out perplexity: " + ", ".join(f"{LABELS[c]} {p:.2f}" for c, p in scores["perplexity"].items()))
    metrics = scores["metrics"]
    for c in LABELS:
        if any(c in v for v in metrics.values()):
            cells = "  ".join(f"{METRIC_LABELS[m]} {v[c]:6.1%}" for m, v in metrics.items() if c in v)
            console.print(f"  {LABELS[c]:<24} {cells}")
    if scores["forgetting"]:
        console.print(forgetting.summary_line(scores["forgetting"]))
    elif not cfg.eval.forgetting:
        console.print("forgetting: skipped (eval.forgetting is false)")
    elif "tuned" not in cfg.eval.contenders:
        console.print("forgetting: skipped (no tuned model among eval.contenders)")
