"""The forgetting check: did fine-tuning damage what the base model could do in general?

The main signal is a general score: greedy answers to the bundled general questions
(eval/assets/general_questions.jsonl, 178 items across facts, arithmetic, instructions,
formatting, short chat, refusals and multi-turn), each labelled with the answers it
requires exactly as held-out items are, and scored with the same fact-accuracy metric.
Base and tuned answer the same questions, so the paired bootstrap gives an interval for
the share of the base model's general score the tuned model kept.

The flag uses that interval, not a raw count: the tuned model is flagged when even the top
of the interval lies below 1 - eval.forgetting_threshold, i.e. when it lost more than the
threshold with 95% confidence. A loss that is real (the interval excludes no change) but
not clearly beyond the threshold is reported as a note.

The second signal is the perplexity of about 2,000 words of public-domain English prose;
a rise beyond the same threshold is reported as a note beside the verdict.

`probe` measures one model (the eval stage runs its parts, `text_loss` and greedy answers
to `probe_prompts`, one at a time and joins them with `probe_result`); `compare` turns two
probes into the scores.json entry; `forgetting_verdict` is the rule itself, over plain numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tunekit.infer.greedy import greedy_answers
from tunekit.eval.metrics import mean, paired_bootstrap, perplexity, states_facts

ASSETS = Path(__file__).parent / "assets"
TEXT_FILE = ASSETS / "general_text.txt"
QUESTIONS_FILE = ASSETS / "general_questions.jsonl"
TEXT_SOURCE = ("Pride and Prejudice ch. 1-2 (Austen, 1813), the Declaration of Independence (1776), "
               "the Gettysburg Address (1863): public domain")
# Longest chunk scored at once. Perplexity falls with context, but base and tuned see the same
# chunks, so the comparison holds; the cap keeps the logits (chunk x vocabulary) small on a CPU.
MAX_CHUNK = 1024
# Every required answer is short and comes early ("The capital of France is Paris."); a rambling
# answer is cut here, which keeps the check within a minute on two CPU cores.
ANSWER_TOKENS = 32
_ASK = " Answer briefly."


def load_questions() -> list[dict]:
    """The bundled general questions: {"id", "skill", "messages", "required"}."""
    return [json.loads(line) for line in QUESTIONS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _asked(messages: list[dict]) -> list[dict]:
    """The conversation with a request for brevity added to its last user turn."""
    return messages[:-1] + [{**messages[-1], "content": messages[-1]["content"] + _ASK}]


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
    """One model's side of the check: {"perplexity", "text_tokens", "answers", "correct"} (1.0/0.0 per question)."""
    loss, n_tokens = text_loss(model, tokenizer, TEXT_FILE.read_text(encoding="utf-8"))
    answers = greedy_answers(model, tokenizer, probe_prompts(), ANSWER_TOKENS, batch_size, f"forgetting {label}")
    return probe_result(loss, n_tokens, answers)


def probe_prompts() -> list[list[dict]]:
    """The conversations the probe answers, in the order of load_questions."""
    return [_asked(q["messages"]) for q in load_questions()]


def probe_result(loss: float, n_tokens: int, answers: list[str]) -> dict:
    """`probe`'s result from its parts: the general-text loss and its length, and the answers to probe_prompts
    (the eval stage measures the parts one at a time, so a killed run can resume between them)."""
    questions = load_questions()
    return {"perplexity": perplexity(loss), "text_tokens": n_tokens, "answers": answers,
            "correct": [float(states_facts(a, q["required"])) for a, q in zip(answers, questions, strict=True)]}


def kept_share(tuned: list[float], base: list[float], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(tuned score / base score, its paired-bootstrap 95% interval); (1, (1, 1)) when both score nothing."""
    if mean(base) == 0:
        return (1.0, (1.0, 1.0)) if mean(tuned) == 0 else (float("inf"), (float("inf"), float("inf")))
    return mean(tuned) / mean(base), paired_bootstrap(tuned, base, seed=seed, ratio=True)


def forgetting_verdict(kept: float, ci: tuple[float, float], threshold: float) -> tuple[bool, str]:
    """(flagged, why) from the kept share of the base model's general score and its interval."""
    shown = f"kept {kept:.0%} of the base model's general score (95% CI {ci[0]:.0%} to {ci[1]:.0%})"
    if ci[1] < 1 - threshold:
        return True, (f"it {shown}: it lost more than the {threshold:.0%} allowed (eval.forgetting_threshold), "
                      "with 95% confidence")
    if ci[1] < 1:
        return False, f"it {shown}: a real loss, but not clearly more than the {threshold:.0%} allowed"
    return False, f"it {shown}"


def _skills(questions: list[dict], correct: dict[str, list[float]]) -> dict:
    out: dict[str, dict] = {}
    for i, q in enumerate(questions):
        row = out.setdefault(q["skill"], {"questions": 0, **{c: 0 for c in correct}})
        row["questions"] += 1
        for c, values in correct.items():
            row[c] += int(values[i])
    return out


def compare(base: dict, tuned: dict, threshold: float, seed: int = 0) -> dict:
    """The scores.json "forgetting" entry from the two probes."""
    questions = load_questions()
    kept, ci = kept_share(tuned["correct"], base["correct"], seed)
    flagged, why = forgetting_verdict(kept, ci, threshold)
    lo, hi = paired_bootstrap(tuned["correct"], base["correct"], seed=seed)
    ppl_change = tuned["perplexity"] / base["perplexity"] - 1
    notes = []
    if ppl_change > threshold:
        notes.append(f"general-text perplexity rose {ppl_change:+.0%} ({base['perplexity']:.1f} -> {tuned['perplexity']:.1f}): "
                     "the tuned model finds ordinary prose less likely"
                     + (", and it answers general questions worse too" if flagged else
                        ", though the general questions do not show a loss beyond the threshold"))
    return {
        "questions_file": QUESTIONS_FILE.name,
        "general_score": {"base": mean(base["correct"]), "tuned": mean(tuned["correct"])},
        "general_correct": {"base": int(sum(base["correct"])), "tuned": int(sum(tuned["correct"]))},
        "n_questions": len(questions),
        "difference": {"diff": mean(tuned["correct"]) - mean(base["correct"]), "ci95": [lo, hi]},
        "kept": kept,
        "kept_ci95": list(ci),
        "by_skill": _skills(questions, {"base": base["correct"], "tuned": tuned["correct"]}),
        "text_source": TEXT_SOURCE,
        "text_tokens": base["text_tokens"],
        "perplexity": {"base": base["perplexity"], "tuned": tuned["perplexity"]},
        "perplexity_change": ppl_change,
        "questions": [{"id": q["id"], "skill": q["skill"], "question": q["messages"][-1]["content"],
                       "expected": q["required"],
                       "answers": {"base": base["answers"][i], "tuned": tuned["answers"][i]},
                       "correct": {"base": bool(base["correct"][i]), "tuned": bool(tuned["correct"][i])}}
                      for i, q in enumerate(questions)],
        "flagged": flagged,
        "why": why,
        "notes": notes,
    }


def kept_sentence(result: dict) -> str:
    """The verdict's second sentence, e.g. "It kept 96% of the base model's general score (95% CI 88% to 104%)."."""
    lo, hi = result["kept_ci95"]
    n = result["n_questions"]
    s = (f"It kept {result['kept']:.0%} of the base model's general score (95% CI {lo:.0%} to {hi:.0%}, "
         f"{n} general questions)")
    return s + (": FORGETTING FLAGGED." if result["flagged"] else ".")


def summary_line(result: dict) -> str:
    """One console line: general score base -> tuned with the kept share, perplexity, and the flag."""
    if not result:
        return "forgetting: skipped (eval.forgetting is false, or no tuned model to compare)"
    right, n, ppl = result["general_correct"], result["n_questions"], result["perplexity"]
    line = (f"forgetting: general questions {right['base']}/{n} -> {right['tuned']}/{n}, {result['why']}; "
            f"general-text perplexity {ppl['base']:.1f} -> {ppl['tuned']:.1f} ({result['perplexity_change']:+.1%})")
    return line + (": FLAGGED" if result["flagged"] else ": ok")
