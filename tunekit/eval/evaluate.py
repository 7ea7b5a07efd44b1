"""The eval stage: held-out loss, and fact accuracy of greedy answers for three
contenders — the base model, the base model with a few-shot prompt, and the tuned model.

Writes `eval/predictions.jsonl` (every question, reference and each contender's
answer) and `eval/scores.json`.
"""

from __future__ import annotations

from pathlib import Path

from tunekit import atomic
from tunekit.config import Config
from tunekit.data.batches import load_examples
from tunekit.data.records import load_records
from tunekit.eval.fewshot import ShotIndex, few_shot_messages
from tunekit.eval.generate import greedy_answers
from tunekit.eval.metrics import accuracy, paired_bootstrap, states_facts
from tunekit.models.loading import load_model, set_threads
from tunekit.progress import console
from tunekit.train.checkpoint import tuned_checkpoint
from tunekit.train.loop import evaluate_loss

LABELS = {"base": "base model", "few_shot": "base + few-shot prompt", "tuned": "fine-tuned"}


def load_tuned(cfg: Config, run_dir: Path, base_model):
    """The trained model from the run's best checkpoint (train.keep_best) or its final one, adapters merged for speed."""
    ckpt, _ = tuned_checkpoint(run_dir)
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(ckpt)).merge_and_unload()
    return load_model(ckpt, cfg.model.dtype)


def evaluate(cfg: Config, run_dir: Path, model_path: Path, tokenizer) -> dict:
    """Run the eval stage; returns scores (also written to eval/scores.json)."""
    set_threads(cfg.train.threads)
    data = run_dir / "data"
    train_records, _ = load_records(data / "train.jsonl")
    valid_ex = load_examples(data / "valid.jsonl", tokenizer, cfg.data.train_on)
    items = []
    if (data / "eval.jsonl").is_file():
        items, _ = load_records(data / "eval.jsonl", need_assistant=False)
    items = items[: cfg.eval.max_questions] if cfg.eval.max_questions else items
    questions = [it.messages for it in items]
    pad, bs, new = tokenizer.pad_token_id, cfg.eval.batch_size, cfg.eval.max_new_tokens

    model = load_model(model_path, cfg.model.dtype)
    answers: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    if valid_ex:
        losses["base"] = evaluate_loss(model, valid_ex, pad, bs)
    if questions and "base" in cfg.eval.contenders:
        answers["base"] = greedy_answers(model, tokenizer, questions, new, bs, "eval base")
    shots = [r.messages for r in train_records if r.messages]  # documents are no examples to show
    if questions and shots and "few_shot" in cfg.eval.contenders and cfg.eval.few_shot_k > 0:
        index = ShotIndex(shots)
        prompts = [few_shot_messages(index, q, cfg.eval.few_shot_k) for q in questions]
        answers["few_shot"] = greedy_answers(model, tokenizer, prompts, new, bs, "eval few-shot")
    if "tuned" in cfg.eval.contenders:
        model = load_tuned(cfg, run_dir, model)
        if valid_ex:
            # The train stage already measured these weights on this validation set.
            losses["tuned"] = tuned_checkpoint(run_dir)[1] or evaluate_loss(model, valid_ex, pad, bs)
        if questions:
            answers["tuned"] = greedy_answers(model, tokenizer, questions, new, bs, "eval tuned")

    # Only items labelled with required facts can be scored; the rest keep their answers.
    labelled = [i for i, it in enumerate(items) if it.extra.get("required")]
    flags = {k: [states_facts(v[i], items[i].extra["required"]) for i in labelled] for k, v in answers.items()}
    has_facts = bool(labelled)
    slot = {i: j for j, i in enumerate(labelled)}
    scores = {
        "questions": len(labelled) if has_facts else len(items),
        "valid_examples": len(valid_ex),
        "valid_loss": losses,
        "fact_accuracy": {k: accuracy(f) for k, f in flags.items()} if has_facts else {},
        "differences": _differences(flags, cfg.seed) if has_facts else {},
    }
    rows = []
    for i, it in enumerate(items):
        row = {"id": it.extra.get("id", i), "question": it.messages[-1]["content"], "reference": it.extra.get("reference"),
               "required": it.extra.get("required"), "answers": {k: v[i] for k, v in answers.items()},
               "correct": {k: f[slot[i]] for k, f in flags.items()} if i in slot else {}}
        rows.append(row)
    atomic.write_jsonl(run_dir / "eval" / "predictions.jsonl", rows)
    atomic.write_json(run_dir / "eval" / "scores.json", scores)
    for k, acc in scores["fact_accuracy"].items():
        console.print(f"  {LABELS[k]:<24} fact accuracy {acc:6.1%}")
    return scores


def _differences(flags: dict[str, list[bool]], seed: int) -> dict:
    """Tuned minus each other contender, with a paired-bootstrap 95% interval."""
    out = {}
    if "tuned" not in flags:
        return out
    for other in ("base", "few_shot"):
        if other in flags:
            lo, hi = paired_bootstrap(flags["tuned"], flags[other], seed=seed)
            out[f"tuned_minus_{other}"] = {"diff": accuracy(flags["tuned"]) - accuracy(flags[other]), "ci95": [lo, hi]}
    return out
