"""One measured run of bench/vs_trl.py, in a fresh process: tunekit or TRL training, or
tunekit or `transformers` generation. Not run by hand; vs_trl.py starts it with a spec
(JSON) and reads the result (JSON) it writes.

    python bench/vs_trl_child.py SPEC.json RESULT.json

The held-out loss of both training tools is computed here, after training, by one
function (`heldout_loss`) over the same tokenised valid.jsonl (tunekit's tokenisation
and loss mask), so the two numbers are comparable.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunekit.data.batches import load_examples  # noqa: E402
from tunekit.data.template import IGNORE  # noqa: E402
from tunekit.models.loading import load_tokenizer  # noqa: E402


def rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def threads() -> int:
    return len(os.sched_getaffinity(0))


@torch.no_grad()
def heldout_loss(model, examples, pad_id: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per supervised token over `examples`, through the model's plain forward.

    The same function for both tools: right-padded batches sorted by length, full logits,
    labels shifted by one, IGNORE positions left out.
    """
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        rows = [examples[i] for i in order[s : s + batch_size]]
        width = max(len(e.input_ids) for e in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, e in enumerate(rows):
            n = len(e.input_ids)
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        y = labels[:, 1:]
        total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum"))
        count += int((y != IGNORE).sum())
    return total / max(count, 1)


def _epochs_for(spec: dict, n_examples: int) -> float:
    """tunekit has no max_steps: an epoch fraction whose ceil'd step count is exactly max_steps."""
    if not spec["max_steps"]:
        return float(spec["epochs"])
    per_epoch = -(-n_examples // spec["batch_size"])
    return (spec["max_steps"] * spec["grad_accum"] - 0.01) / per_epoch


def train_tunekit(spec: dict) -> dict:
    """tunekit's real training code (tunekit.train.loop.train) on a run folder holding the shared data."""
    from tunekit.config import Config
    from tunekit.train.checkpoint import final_checkpoint
    from tunekit.train import loop

    # TRL evaluates nothing in its loop; tunekit's held-out loss after the last step is timed and
    # taken out of its loop time (both get the same loss measurement below instead).
    in_eval, evaluate_loss = [0.0], loop.evaluate_loss

    def timed_evaluate_loss(*a, **k):
        t = time.perf_counter()
        try:
            return evaluate_loss(*a, **k)
        finally:
            in_eval[0] += time.perf_counter() - t

    loop.evaluate_loss = timed_evaluate_loss

    run = Path(spec["run_dir"])
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "train.jsonl").write_bytes(Path(spec["train"]).read_bytes())
    (run / "data" / "valid.jsonl").write_bytes(Path(spec["valid"]).read_bytes())
    n = sum(1 for line in (run / "data" / "train.jsonl").open() if line.strip())
    method = {"kind": spec["method"], "layers": None}
    if spec["method"] != "full":
        method.update(r=spec["r"], alpha=spec["alpha"], target_modules="all-linear", lora_plus_ratio=None, dropout=0.0)
    raw = {
        "name": "vs-trl", "seed": spec["seed"], "model": {"base": spec["model"]},
        "data": {"train": spec["train"], "max_length": spec["max_length"]},
        "method": method,
        "train": {"epochs": _epochs_for(spec, n), "lr": spec["lr"], "batch_size": spec["batch_size"],
                  "grad_accum": spec["grad_accum"], "schedule": "cosine", "warmup_ratio": spec["warmup_ratio"],
                  "weight_decay": 0.0, "max_grad_norm": 1.0, "save_every": 0, "keep_last": 1, "keep_best": False,
                  "eval_every": 0, "log_every": 10**6},
    }
    for key, value in spec.get("tunekit_overrides", {}).items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    cfg = Config.model_validate(raw)
    tok = load_tokenizer(spec["model"])
    result = loop.train(cfg, run, Path(spec["model"]), tok, resume=False)
    peak = rss_mb()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # elapsed_s: from before the first step to after the last (and its held-out loss); the final checkpoint comes after
    seconds = round(rows[-1]["elapsed_s"] - in_eval[0], 2)

    from tunekit.models.loading import load_model

    ckpt = final_checkpoint(run)
    model = load_model(spec["model"])
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(ckpt))
    else:
        model = load_model(ckpt)
    return {"steps": result["steps"], "train_seconds": seconds, "peak_rss_mb": peak,
            "precision": result["precision"], "tunekit_tokens_seen": result["tokens_seen"],
            "tunekit_valid_loss": result["valid_loss"], "tunekit_eval_seconds": round(in_eval[0], 2),
            "heldout_loss": heldout_loss(model, load_examples(spec["valid"], tok), tok.pad_token_id)}


def train_trl(spec: dict) -> dict:
    """TRL SFTTrainer (+ PEFT for LoRA) on the same tokenised examples, labels included."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads())  # as tunekit does; torch's own default can undercount
    torch.manual_seed(spec["seed"])
    tok = load_tokenizer(spec["model"])
    train_ex = load_examples(spec["train"], tok)
    assert max(len(e.input_ids) for e in train_ex) <= spec["max_length"]  # prepare dropped longer ones
    ds = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels, "length": len(e.input_ids)} for e in train_ex])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    peft_config = None
    if spec["method"] != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    per_epoch = -(-len(train_ex) // (spec["batch_size"] * spec["grad_accum"]))
    total = spec["max_steps"] or int(per_epoch * spec["epochs"] + 0.999)
    o = spec["trl"]
    args = SFTConfig(
        output_dir=str(Path(spec["run_dir"]) / "out"), seed=spec["seed"], use_cpu=True,
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=spec["grad_accum"],
        learning_rate=spec["lr"], num_train_epochs=spec["epochs"], max_steps=spec["max_steps"] or -1,
        lr_scheduler_type="cosine", warmup_steps=int(spec["warmup_ratio"] * total), weight_decay=0.0,
        max_grad_norm=1.0, optim=o["optim"], bf16=o["bf16"], gradient_checkpointing=False,
        padding_free=o["padding_free"], packing=False, max_length=None if o["padding_free"] else spec["max_length"],
        train_sampling_strategy=o["sampling"], dataloader_num_workers=o["dataloader_num_workers"], dataloader_pin_memory=False,
        torch_compile=o["torch_compile"], save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=10**6, disable_tqdm=True,
    )
    clock = _Clock()

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            clock.end = time.perf_counter()

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[Timer()])
    out = trainer.train()
    peak = rss_mb()
    model = trainer.model
    return {"steps": out.global_step, "train_seconds": round(clock.end - clock.start, 2), "peak_rss_mb": peak,
            "precision": "bf16" if o["bf16"] else "fp32",
            "heldout_loss": heldout_loss(model, load_examples(spec["valid"], tok), tok.pad_token_id)}


class _Clock:
    start = end = 0.0


def generate(spec: dict) -> dict:
    """Greedy answers to the held-out questions in the same batches: tunekit's loop or `generate`."""
    from tunekit.data.records import load_records
    from tunekit.data.template import prompt_ids
    from tunekit.infer.greedy import greedy_batch, stop_ids
    from tunekit.models.loading import load_model, set_threads

    set_threads(None)
    tok = load_tokenizer(spec["model"])
    items, _ = load_records(spec["questions"], need_assistant=False)
    prompts = [prompt_ids(tok, it.messages) for it in items[: spec["questions_limit"] or None]]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # as greedy_answers batches them
    # Both tools generate in the run's precision (vs_trl.py decides it once), with the weights cast
    # as tunekit's eval stage casts them (hardware.for_inference).
    model = load_model(spec["model"]).to({"bf16": torch.bfloat16}.get(spec.get("precision"), torch.float32)).eval()
    stop, pad, bs, new = stop_ids(model, tok), tok.pad_token_id, spec["gen_batch_size"], spec["max_new_tokens"]
    outputs: list[list[int]] = [[] for _ in prompts]
    t0 = time.perf_counter()
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        batch = [prompts[i] for i in idx]
        got = greedy_batch(model, batch, new, stop, pad) if spec["tool"] == "tunekit" else _hf_generate(model, batch, new, stop, pad)
        for i, toks in zip(idx, got):
            outputs[i] = toks
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "new_tokens": sum(len(o) for o in outputs), "peak_rss_mb": rss_mb(),
            "outputs": outputs}


@torch.no_grad()
def _hf_generate(model, prompts: list[list[int]], max_new_tokens: int, stop: set[int], pad_id: int) -> list[list[int]]:
    """`generate`, greedy, left-padded like tunekit's loop; each answer cut before its first stop token."""
    from tunekit.infer.decode import left_pad

    ids, mask = left_pad(prompts, pad_id)
    width = ids.shape[1]
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         num_beams=1, eos_token_id=sorted(stop), pad_token_id=pad_id, use_cache=True,
                         temperature=None, top_p=None, top_k=None)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), len(row))
        answers.append(row[:cut])
    return answers


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    kind = spec["kind"]
    if kind == "train":
        result = train_tunekit(spec) if spec["tool"] == "tunekit" else train_trl(spec)
    else:
        result = generate(spec)
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
