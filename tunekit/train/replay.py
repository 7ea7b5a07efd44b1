"""Replay: general conversations mixed into training, so the tuned model keeps answering
ordinary questions the way the base model did.

Trained on one persona only, a small model learns that every question deserves a product
answer (the demo's base model answered 113 of 178 general questions; tuned without replay,
12). Replay shows it, in every batch, that other questions still get ordinary answers.

Where the general conversations come from:
- self-distillation (the default): the base model's own answers to the bundled
  general prompts (assets/replay_prompts.jsonl, written for tunekit; disjoint from the
  forgetting check's questions). An answer is kept only if it is one to learn from (`verdict`):
  - finished within the token cap, so no example teaches stopping mid-sentence;
  - stating the right answer where it is known (`required`, as held-out items): a 135M model
    gets many two-number sums wrong, and replaying them would teach its mistakes;
  - not declining an ordinary request ("I'm sorry for any misunderstanding, but as a chatbot I
    don't have the ability ..."): replayed, that taught the tuned demo model to answer "What is
    my name?" so.
  Where the greedy answer is wrong, declines, or is cut off where the right answer is known, the
  base model tries again, sampled, up to RETRIES times, and its first kept answer is replayed
  (rejection sampling): still the base model's own words, but of what it can do, so a skill it
  gets right only sometimes is replayed rather than left out. They are generated once per base model and chat template, and cached
  in the model store ($TUNEKIT_HOME/models/.replay/<key>.jsonl); the default model's answers
  ship with tunekit (assets/replay/), so the demo never pays it.
- `train.replay.file`: the user's own general chat data instead, read like training data.

`train.replay.fraction` is the share of each epoch's examples that are replay: n domain
examples get round(n * f / (1 - f)) replay examples, drawn without repeats while the pool
lasts, deterministically from the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tunekit import atomic
from tunekit.data.records import load_records
from tunekit.data.template import Tokenized, render, tokenize_chat
from tunekit.errors import DataError
from tunekit.eval.metrics import states_facts
from tunekit.progress import console

ASSETS = Path(__file__).parent / "assets"
PROMPTS_FILE = ASSETS / "replay_prompts.jsonl"
SHIPPED = ASSETS / "replay"
# Long enough for a few sentences or a short list; longer answers are dropped, not cut.
MAX_NEW_TOKENS = 160
GENERATION_BATCH = 64
# Sampled tries for a prompt whose greedy answer is wrong or declines; a cut-off answer is retried
# only where the right answer is known (an open-ended prompt that runs past the cap asks for length).
RETRIES = 6
RETRY_TEMPERATURE, RETRY_TOP_P = 0.7, 0.95
# How SmolLM2-class models decline an ordinary request. Not applied to the refusal prompts, where
# declining is the answer.
DECLINES = re.compile(r"^I'?m sorry for|^I apologi[sz]e|\bas an? (?:AI|chatbot|text-based AI|language model)\b"
                      r"|\bI (?:don'?t|do not) have the (?:ability|capability)\b|\bI'?m not equipped\b", re.IGNORECASE)
# Fixed so a shipped cache matches every machine; part of the cache key.
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
          {"role": "user", "content": "R"}]


@dataclass
class ReplayPool:
    """Complete general conversations to mix into training, and where they came from."""

    conversations: list[list[dict]]
    source: str  # "self-distillation" or the user's file
    cache: str | None = None  # the cache file the answers came from (self-distillation)
    generation_seconds: float | None = None  # what generating the answers cost, when it was paid
    generated_now: bool = False
    prompts: int = 0
    dropped_unfinished: int = 0
    dropped_wrong: int = 0
    dropped_declining: int = 0
    sampled: int = 0  # kept answers that came from a sampled retry, not the greedy answer

    def describe(self) -> str:
        if self.source != "self-distillation":
            return f"{len(self.conversations)} conversations from {self.source}"
        how = "generated now" if self.generated_now else "cached"
        cost = f", generation took {self.generation_seconds:.0f} s once for this base model" if self.generation_seconds else ""
        return (f"{len(self.conversations)} base-model answers to {self.prompts} general prompts ({how}{cost}; "
                f"{self.sampled} of them found by sampling where the greedy answer failed; "
                f"left out: {self.dropped_unfinished} unfinished at {MAX_NEW_TOKENS} tokens, "
                f"{self.dropped_wrong} not stating a known answer, {self.dropped_declining} declining an ordinary request)")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights_digest(model_path: Path) -> str:
    from tunekit.models.cache import read_manifest, weights_sha256

    manifest = read_manifest(model_path) or {}
    return manifest.get("weights_sha256") or weights_sha256(model_path)


def cache_key(model_path: Path, tokenizer) -> str:
    """Names the answers of one base model (its weights), chat template and prompt set."""
    rules = f"{MAX_NEW_TOKENS} {RETRIES} {RETRY_TEMPERATURE} {RETRY_TOP_P} {DECLINES.pattern}"
    parts = [_weights_digest(Path(model_path)), _sha(render(tokenizer, _PROBE, add_generation_prompt=True).encode()),
             _sha(PROMPTS_FILE.read_bytes()), rules]
    return _sha("\n".join(parts).encode())[:20]


def store_dir() -> Path:
    from tunekit.models.cache import models_dir

    return models_dir() / ".replay"


def _read_cache(path: Path) -> ReplayPool | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        meta = json.loads(lines[0])["meta"]
        convs = [json.loads(line)["messages"] for line in lines[1:] if line.strip()]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # unreadable: generated again and replaced
    return ReplayPool(convs, "self-distillation", str(path), meta.get("generation_seconds"), False,
                      meta.get("prompts", 0), meta.get("dropped_unfinished", 0), meta.get("dropped_wrong", 0),
                      meta.get("dropped_declining", 0), meta.get("sampled", 0))


def cached_pool(model_path: Path, tokenizer) -> ReplayPool | None:
    """The cached base-model answers for this model and template: the store's, else the shipped ones."""
    key = cache_key(model_path, tokenizer)
    for path in (store_dir() / f"{key}.jsonl", SHIPPED / f"{key}.jsonl"):
        if path.is_file() and (pool := _read_cache(path)) is not None:
            return pool
    return None


def load_prompts() -> list[dict]:
    """The bundled general prompts: {"id", "skill", "messages"} (ending with a user turn), and
    "required" (groups of accepted answers, as held-out items) where the right answer is known."""
    return [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdict(prompt: dict, text: str, finished: bool) -> str | None:
    """Why a base-model answer to a replay prompt is not replayed ("unfinished", "wrong",
    "declining"), or None when it is."""
    if not finished or not text:
        return "unfinished"
    if prompt.get("required") and not states_facts(text, prompt["required"]):
        return "wrong"
    if prompt["skill"] != "refusals" and DECLINES.search(text):
        return "declining"
    return None


def _retried(prompt: dict, why: str | None) -> bool:
    return why in ("wrong", "declining") or (why == "unfinished" and bool(prompt.get("required")))


def _try_seed(prompt_id: str, attempt: int) -> int:
    """Each prompt's own random stream per try: the same tries on every run, whatever else is retried."""
    return int(_sha(f"{prompt_id}/{attempt}".encode())[:15], 16)


def answer_prompts(model, tokenizer, prompts: list[dict]) -> tuple[list[str | None], list[str | None], list[bool]]:
    """(kept answer or None, why the greedy answer was not kept or None, whether the kept one was
    sampled) per prompt: the greedy answer, or the first kept one of up to RETRIES sampled tries
    where the greedy one fails."""
    import torch

    from tunekit.infer.greedy import greedy_outputs
    from tunekit.infer.sampling import sampler

    outputs = greedy_outputs(model, tokenizer, [p["messages"] for p in prompts], MAX_NEW_TOKENS, GENERATION_BATCH,
                             "replay answers")
    why = [verdict(p, text, done) for p, (text, done) in zip(prompts, outputs, strict=True)]
    kept = [text if w is None else None for (text, _), w in zip(outputs, why, strict=True)]
    sampled = [False] * len(prompts)
    for attempt in range(RETRIES):
        pending = [i for i, p in enumerate(prompts) if kept[i] is None and _retried(p, why[i])]
        if not pending:
            break
        samplers = [sampler(RETRY_TEMPERATURE, RETRY_TOP_P, torch.Generator().manual_seed(_try_seed(prompts[i]["id"], attempt)))
                    for i in pending]
        tries = greedy_outputs(model, tokenizer, [prompts[i]["messages"] for i in pending], MAX_NEW_TOKENS,
                               GENERATION_BATCH, f"replay retries {attempt + 1}/{RETRIES}", samplers)
        for i, (text, done) in zip(pending, tries, strict=True):
            if verdict(prompts[i], text, done) is None:
                kept[i], why[i], sampled[i] = text, None, True
    return kept, why, sampled


def generate_pool(model_path: Path, tokenizer, precision, dtype: str = "float32") -> ReplayPool:
    """Have the base model answer the general prompts, and cache the answers worth replaying."""
    from tunekit.hardware import for_inference
    from tunekit.models.loading import load_model

    prompts = load_prompts()
    console.print(f"replay: the base model answers {len(prompts)} general prompts once; cached for later runs")
    t0 = time.perf_counter()
    model = for_inference(load_model(model_path, dtype), precision)
    kept, why, sampled = answer_prompts(model, tokenizer, prompts)
    del model
    seconds = round(time.perf_counter() - t0, 1)
    rows = [{"id": p["id"], "skill": p["skill"], "messages": p["messages"] + [{"role": "assistant", "content": text}],
             **({"sampled": True} if s else {})}
            for p, text, s in zip(prompts, kept, sampled, strict=True) if text is not None]
    dropped = {w: why.count(w) for w in ("unfinished", "wrong", "declining")}
    if not rows:
        raise DataError(f"the base model gave no usable answer to {len(prompts)} general prompts "
                        f"({dropped['unfinished']} unfinished within {MAX_NEW_TOKENS} tokens, {dropped['wrong']} not "
                        f"stating a known answer, {dropped['declining']} declining), so there is nothing to replay; "
                        "give your own general chat data as train.replay.file, or set train.replay.fraction: 0")
    meta = {"key": cache_key(model_path, tokenizer), "model": str(model_path), "prompts": len(prompts),
            "dropped_unfinished": dropped["unfinished"], "dropped_wrong": dropped["wrong"],
            "dropped_declining": dropped["declining"], "sampled": sum(sampled), "max_new_tokens": MAX_NEW_TOKENS,
            "generation_seconds": seconds, "precision": precision.name, "device": precision.device.type}
    path = store_dir() / f"{meta['key']}.jsonl"
    atomic.write_jsonl(path, [{"meta": meta}, *rows])
    return ReplayPool([r["messages"] for r in rows], "self-distillation", str(path), seconds, True, len(prompts),
                      dropped["unfinished"], dropped["wrong"], dropped["declining"], sum(sampled))


def file_pool(path: str) -> ReplayPool:
    """The user's own general conversations (train.replay.file), validated as training data is."""
    records, rejects = load_records(path)
    convs = [r.messages for r in records if r.messages]
    if not convs:
        why = f"; first problem at line {rejects[0].line}: {rejects[0].reason}: {rejects[0].detail}" if rejects else ""
        raise DataError(f"train.replay.file {path} holds no usable conversations{why}")
    if rejects:
        console.print(f"[yellow]note[/] train.replay.file {path}: {len(rejects)} rows skipped "
                      f"(first at line {rejects[0].line}: {rejects[0].reason})")
    return ReplayPool(convs, path)


def pool_for(cfg, model_path: Path, tokenizer, precision) -> ReplayPool | None:
    """The run's replay conversations (None when train.replay.fraction is 0), generating the base
    model's answers first when no cache has them."""
    r = cfg.train.replay
    if r.fraction <= 0:
        return None
    if r.file:
        return file_pool(r.file)
    return cached_pool(model_path, tokenizer) or generate_pool(model_path, tokenizer, precision, cfg.model.dtype)


def replay_count(n_domain: int, fraction: float) -> int:
    """Replay examples that make up `fraction` of an epoch beside n_domain domain examples."""
    return 0 if fraction <= 0 else round(n_domain * fraction / (1 - fraction))


def replay_examples(pool: ReplayPool, tokenizer, n_domain: int, fraction: float, max_length: int, seed: int,
                    train_on: str = "all_assistant") -> list[Tokenized]:
    """The replay examples of a run: `replay_count` of them from the pool, tokenised; a conversation
    longer than data.max_length is skipped. Drawn without repeats until the pool runs out.

    Self-distilled conversations carry loss on the base model's answer only (their earlier
    assistant turns were written for the prompt set); a user's file follows data.train_on."""
    if pool.source == "self-distillation":
        train_on = "last_assistant"
    want = replay_count(n_domain, fraction)
    # Marked, so train.replay.kl can find their tokens in a batch (loss.distill_sum).
    fitting = [dataclasses.replace(ex, distill=True) for ex in (tokenize_chat(tokenizer, c, train_on) for c in pool.conversations)
               if len(ex.input_ids) <= max_length and ex.supervised]
    if not want:
        return []
    if not fitting:
        raise DataError(f"no replay conversation fits data.max_length {max_length}; raise it or set train.replay.fraction: 0")
    rng = random.Random(seed * 7_919 + 14)
    out: list[Tokenized] = []
    for _ in range(math.ceil(want / len(fitting))):
        order = list(range(len(fitting)))
        rng.shuffle(order)
        out += [fitting[i] for i in order]
    return out[:want]
