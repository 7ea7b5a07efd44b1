"""The forgetting check: did fine-tuning damage what the base model knew in general?

Two probes, bundled under eval/assets/ (README.md there names the sources): the
perplexity of about 2,000 words of public-domain English prose, and greedy answers to
sixteen easy general questions. Each is measured on the base model and on the tuned
one; the tuned model is flagged when its perplexity rises by more than
eval.forgetting_threshold (relative) or it answers more than MAX_QUESTION_DROP fewer
questions correctly than the base model.

`probe` measures one model; `compare` turns the two measurements into the
scores.json entry; `forgetting_verdict` is the rule itself, over plain numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tunekit.eval.generate import greedy_answers
from tunekit.eval.metrics import answer_tokens, perplexity

ASSETS = Path(__file__).parent / "assets"
TEXT_FILE = ASSETS / "general_text.txt"
QUESTIONS_FILE = ASSETS / "general_questions.jsonl"
TEXT_SOURCE = ("Pride and Prejudice ch. 1-2 (Austen, 1813), the Declaration of Independence (1776), "
               "the Gettysburg Address (1863): public domain")
# A few answers may flip on a small model by chance; more than this many lost is a pattern.
MAX_QUESTION_DROP = 2
# Longest chunk scored at once. Perplexity falls with context, but base and tuned see the same
# chunks, so the comparison holds; the cap keeps the logits (chunk x vocabulary) small on a CPU.
MAX_CHUNK = 1024
# Enough for "The capital of France is Paris." and then some; answers are matched anywhere in it.
ANSWER_TOKENS = 24
_ASK = " Answer in a few words."


def load_questions() -> list[dict]:
    """The bundled general questions: {"question", "answers": [accepted alternatives]}."""
    return [json.loads(line) for line in QUESTIONS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def answers_question(answer: str, accepted: list[str]) -> bool:
    """One accepted alternative occurs in the answer as whole normalised words ("4" is not in "14")."""
    said = f" {' '.join(answer_tokens(answer))} "
    return any(f" {' '.join(answer_tokens(alt))} " in said for alt in accepted if answer_tokens(alt))


@torch.no_grad()
def text_loss(model, tokenizer, text: str, max_chunk: int = MAX_CHUNK) -> tuple[float, int]:
    """(mean next-token loss over the text, its length in tokens): plain causal LM, no chat template,
    in consecutive chunks no longer than the model's context."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(text, verbose=False)["input_ids"]  # longer than model_max_length on purpose: chunked below
    context = getattr(model.config, "max_position_embeddings", None) or max_chunk
    chunk = max(2, min(context, max_chunk))
    total, count = 0.0, 0
    for s in range(0, len(ids), chunk):
        piece = torch.tensor([ids[s : s + chunk]], device=device)
        if piece.shape[1] < 2:  # a lone last token has nothing to be predicted from
            continue
        logits = model(input_ids=piece).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, piece[0, 1:], reduction="sum"))
        count += piece.shape[1] - 1
    model.train(was_training)
    return total / max(count, 1), len(ids)


def probe(model, tokenizer, batch_size: int, label: str) -> dict:
    """One model's side of the check: {"perplexity", "text_tokens", "answers", "correct"}."""
    loss, n_tokens = text_loss(model, tokenizer, TEXT_FILE.read_text(encoding="utf-8"))
    questions = load_questions()
    convs = [[{"role": "user", "content": q["question"] + _ASK}] for q in questions]
    answers = greedy_answers(model, tokenizer, convs, ANSWER_TOKENS, batch_size, f"forgetting {label}")
    return {"perplexity": perplexity(loss), "text_tokens": n_tokens, "answers": answers,
            "correct": [answers_question(a, q["answers"]) for a, q in zip(answers, questions, strict=True)]}


def forgetting_verdict(ppl_base: float, ppl_tuned: float, correct_base: int, correct_tuned: int, n_questions: int,
                       threshold: float) -> tuple[bool, str]:
    """(flagged, why): flagged when perplexity rises by more than `threshold` (relative) or the tuned
    model answers more than MAX_QUESTION_DROP fewer general questions correctly than the base."""
    change = ppl_tuned / ppl_base - 1
    lost = correct_base - correct_tuned
    reasons = []
    if change > threshold:
        reasons.append(f"general-text perplexity rose {change:+.1%} ({ppl_base:.2f} -> {ppl_tuned:.2f}), "
                       f"more than the {threshold:.0%} allowed (eval.forgetting_threshold)")
    if lost > MAX_QUESTION_DROP:
        reasons.append(f"the tuned model answers {lost} fewer general questions correctly "
                       f"({correct_base}/{n_questions} -> {correct_tuned}/{n_questions}), more than {MAX_QUESTION_DROP}")
    if reasons:
        return True, "; ".join(reasons)
    return False, (f"general-text perplexity changed {change:+.1%} (within {threshold:.0%}) and general questions went "
                   f"{correct_base}/{n_questions} -> {correct_tuned}/{n_questions}")


def compare(base: dict, tuned: dict, threshold: float) -> dict:
    """The scores.json "forgetting" entry from the two probes."""
    questions = load_questions()
    n_base, n_tuned = sum(base["correct"]), sum(tuned["correct"])
    flagged, why = forgetting_verdict(base["perplexity"], tuned["perplexity"], n_base, n_tuned, len(questions), threshold)
    return {
        "text_source": TEXT_SOURCE,
        "text_tokens": base["text_tokens"],
        "perplexity": {"base": base["perplexity"], "tuned": tuned["perplexity"]},
        "perplexity_change": tuned["perplexity"] / base["perplexity"] - 1,
        "questions": [{"question": q["question"], "expected": q["answers"],
                       "answers": {"base": base["answers"][i], "tuned": tuned["answers"][i]},
                       "correct": {"base": base["correct"][i], "tuned": tuned["correct"][i]}}
                      for i, q in enumerate(questions)],
        "general_correct": {"base": n_base, "tuned": n_tuned},
        "flagged": flagged,
        "why": why,
    }


def summary_line(result: dict) -> str:
    """One console line, e.g. "forgetting: general-text perplexity 12.3 -> 12.9 (+4.9%), general questions 14/16 -> 14/16: ok"."""
    if not result:
        return "forgetting: skipped (eval.forgetting is false, or no tuned model to compare)"
    ppl, n = result["perplexity"], len(result["questions"])
    right = result["general_correct"]
    line = (f"forgetting: general-text perplexity {ppl['base']:.1f} -> {ppl['tuned']:.1f} ({result['perplexity_change']:+.1%}), "
            f"general questions {right['base']}/{n} -> {right['tuned']}/{n}")
    return line + (f": FLAGGED: {result['why']}" if result["flagged"] else ": ok")
