"""The eval stage: held-out loss and perplexity, and answer metrics of greedy answers for
three contenders — the base model, the base model with a few-shot prompt, and the tuned
model — with paired-bootstrap intervals for the tuned model's lead; then the forgetting
check (tunekit/eval/forgetting.py).

Each held-out item is scored by every metric it supports; the primary metric, which the
verdict uses, is chosen from what the items carry (tunekit/eval/scoring.py).

Writes `eval/predictions.jsonl` (every question, reference, each contender's answer and
its value per metric) and `eval/scores.json`. Until then every finished batch of answers, and
each loss, is journaled in `eval/partial/` (tunekit/eval/partial.py): a killed stage's rerun
generates only the batches left and writes the same files an uninterrupted run writes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from tunekit import atomic, hardware
from tunekit.config import Config
from tunekit.data.batches import load_examples
from tunekit.data.records import Record, load_records
from tunekit.errors import DataError
from tunekit.eval import forgetting, partial, spread
from tunekit.eval.fewshot import ShotIndex, few_shot_messages
from tunekit.eval.metrics import perplexity
from tunekit.eval.scoring import METRIC_LABELS, score
from tunekit.hardware import for_inference
from tunekit.models.loading import load_model, set_threads
from tunekit.models.tuned import run_precision
from tunekit.progress import console
from tunekit.train.checkpoint import tuned_checkpoint
from tunekit.train.loop import evaluate_loss
from tunekit.train.metrics import peak_memory_mb

LABELS = {"base": "base model", "few_shot": "base + few-shot prompt", "tuned": "fine-tuned"}


def load_tuned(cfg: Config, run_dir: Path, model_path: Path) -> torch.nn.Module:
    """The trained model from the run's best checkpoint (train.keep_best) or its final one, on the
    CPU: an adapter merged into the fp32 base for speed. `for_inference` then moves and casts it."""
    ckpt, _ = tuned_checkpoint(run_dir)
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model_path, cfg.model.dtype), str(ckpt)).merge_and_unload()
    return load_model(ckpt, cfg.model.dtype)


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

    shots = [r.messages for r in train_records if r.messages]  # documents are no examples to show
    few_shot_prompts = []
    if questions and shots and "few_shot" in cfg.eval.contenders and cfg.eval.few_shot_k > 0:
        index = ShotIndex(shots)
        if not index.shots:
            console.print("[yellow]warning[/] few-shot: no training conversation is a single user turn and its answer, "
                          "so the few-shot prompt has no examples and this contender is the base model again")
        few_shot_pool = len(index.shots)
        few_shot_prompts = [few_shot_messages(index, q, cfg.eval.few_shot_k) for q in questions]

    precision = run_precision(run_dir, model_path, cfg.train.precision)
    console.print(f"[bold]precision[/] {precision.describe()}")
    pack_to = cfg.data.max_length if cfg.data.packing else None
    # What each model has to do, as journals (eval/partial.py): a killed run's rerun does only the rest.
    base_id = {"model_config": cfg.model.model_dump(mode="json"), "precision": [precision.name, precision.device.type],
               "base_model": [str(model_path), partial.fingerprint(model_path)]}
    # Under torchrun the processes share the answers to generate (eval/spread.py); rank 0 keeps the journals.
    base_jobs = spread.journals(_jobs, cfg, run_dir, "base", base_id, tokenizer, valid_ex,
                      {"base": questions if "base" in cfg.eval.contenders else [], "few_shot": few_shot_prompts})
    tuned_jobs: dict[str, partial.Journal] = {}
    if "tuned" in cfg.eval.contenders:
        ckpt, trained_loss = tuned_checkpoint(run_dir)
        tuned_id = {**base_id, "checkpoint": [str(ckpt), partial.fingerprint(ckpt)]}
        tuned_jobs = spread.journals(_jobs, cfg, run_dir, "tuned", tuned_id, tokenizer, valid_ex if trained_loss is None else [],
                           {"tuned": questions})

    # One model in memory at a time: everything the base model does happens before it is replaced;
    # a model whose work the journals hold whole is not loaded at all.
    # The base model's held-out loss is measured as training measured the tuned model's: a full
    # fine-tune's fp32 weights under autocast; for LoRA, the base cast to the compute dtype (cast_frozen).
    model = None
    answers: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    if not all(j.complete for j in base_jobs.values()):
        model = load_model(model_path, cfg.model.dtype)
        if "loss" in base_jobs and cfg.method.kind == "full":
            losses["base"] = spread.value(base_jobs["loss"], lambda: evaluate_loss(
                model.to(precision.device), valid_ex, pad, bs, pack_to, precision))
        model = for_inference(model, precision)
    if "loss" in base_jobs and "base" not in losses:
        losses["base"] = spread.value(base_jobs["loss"], lambda: evaluate_loss(model, valid_ex, pad, bs, pack_to, precision))
    for c, label in (("base", "eval base"), ("few_shot", "eval few-shot")):
        if c in base_jobs:
            conversations = questions if c == "base" else few_shot_prompts
            answers[c] = spread.answers(base_jobs[c], model, tokenizer, conversations, new, bs, label)
    t_check = time.perf_counter()
    base_probe = _probe(base_jobs, model, tokenizer, bs, "base") if check_forgetting else None
    t_check = time.perf_counter() - t_check
    forgot: dict = {}
    if "tuned" in cfg.eval.contenders:
        model = None
        if not all(j.complete for j in tuned_jobs.values()):
            model = for_inference(load_tuned(cfg, run_dir, model_path), precision)
        if valid_ex:
            # The train stage already measured these weights on this validation set.
            losses["tuned"] = trained_loss if trained_loss is not None else spread.value(
                tuned_jobs["loss"], lambda: evaluate_loss(model, valid_ex, pad, bs, pack_to, precision))
        if questions:
            answers["tuned"] = spread.answers(tuned_jobs["tuned"], model, tokenizer, questions, new, bs, "eval tuned")
        if base_probe is not None:
            t0 = time.perf_counter()
            tuned_probe = _probe(tuned_jobs, model, tokenizer, bs, "tuned")
            forgot = forgetting.compare(base_probe, tuned_probe, cfg.eval.forgetting_threshold, cfg.seed)
            forgot["seconds"] = round(t_check + time.perf_counter() - t0, 1)  # both probes: what the check costs
    del model

    summary, per_item = score([it.extra for it in items], answers, cfg.seed)
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
    hardware.agree(_write, run_dir, rows, scores)
    _print_scores(scores, cfg)
    return scores


def _write(run_dir: Path, rows: list[dict], scores: dict) -> None:
    atomic.write_jsonl(run_dir / "eval" / "predictions.jsonl", rows)
    atomic.write_json(run_dir / "eval" / "scores.json", scores)
    partial.clear(run_dir)  # only now: a kill before the line above resumes from the journals


def _jobs(cfg: Config, run_dir: Path, name: str, model_id: dict, tokenizer, valid_ex: list,
          contenders: dict[str, list]) -> dict[str, partial.Journal]:
    """The journals of one model's work, each keyed by that work's inputs: "loss" (held-out loss; when
    `valid_ex`), one per contender of `contenders` {contender: conversations} that has conversations, and
    "probe text" and "probe answers" (the forgetting check)."""
    root, bs = partial.folder(run_dir), cfg.eval.batch_size
    jobs = {}
    if valid_ex:
        parts = {**model_id, "valid_examples": [[e.input_ids, e.labels] for e in valid_ex], "batch_size": bs,
                 "pack_to": cfg.data.max_length if cfg.data.packing else None, "method": cfg.method.kind}
        jobs["loss"] = partial.open_journal(root, f"{name}.loss", parts, 1)
    for c, conversations in contenders.items():
        if conversations:
            jobs[c] = partial.answers_journal(root, f"{c}.answers", model_id, tokenizer, conversations,
                                              cfg.eval.max_new_tokens, bs)
    if cfg.eval.forgetting and "tuned" in cfg.eval.contenders:
        text = {**model_id, "general_text": forgetting.TEXT_FILE.read_text(encoding="utf-8")}
        jobs["probe text"] = partial.open_journal(root, f"forgetting-{name}.text-loss", text, 1)
        jobs["probe answers"] = partial.answers_journal(root, f"forgetting-{name}.answers", model_id, tokenizer,
                                                        forgetting.probe_prompts(), forgetting.ANSWER_TOKENS, bs)
    return jobs


def _probe(jobs: dict[str, partial.Journal], model, tokenizer, bs: int, label: str) -> dict:
    """forgetting.probe, resumed from the journals (`model` may be None when they are complete)."""
    text = forgetting.TEXT_FILE.read_text(encoding="utf-8")
    loss, n_tokens = spread.value(jobs["probe text"], lambda: forgetting.text_loss(model, tokenizer, text))
    answers = spread.answers(jobs["probe answers"], model, tokenizer, forgetting.probe_prompts(), forgetting.ANSWER_TOKENS,
                              bs, f"forgetting {label}")
    return forgetting.probe_result(loss, n_tokens, answers)


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
