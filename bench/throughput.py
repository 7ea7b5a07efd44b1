"""tunekit's own throughput on this machine: training tokens/s, generation tokens/s, and
both as a share of the measured matmul peak (MFU).

Run by `make bench`. Writes bench/results/throughput.json and prints a markdown table.
Side-by-side comparisons with other tools (TRL) belong in their own scripts here.

    python bench/throughput.py [--steps 12] [--questions 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunekit import hardware  # noqa: E402
from tunekit.config import load_config  # noqa: E402
from tunekit.data.batches import collate, epoch_batches  # noqa: E402
from tunekit.data.records import load_records  # noqa: E402
from tunekit.data.template import prompt_ids, tokenize_chat  # noqa: E402
from tunekit.infer.greedy import greedy_batch, stop_ids  # noqa: E402
from tunekit.models import resolve  # noqa: E402
from tunekit.models.loading import load_model, load_tokenizer, set_threads  # noqa: E402
from tunekit.train.loop import optimizer_step  # noqa: E402
from tunekit.train.methods import apply_method  # noqa: E402
from tunekit.train.optim import make_optimizer, make_scheduler  # noqa: E402

CONFIG = ROOT / "examples" / "support" / "config.yaml"


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def block_params(model) -> tuple[int, int]:
    """(parameters in the transformer blocks, parameters of the output layer)."""
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    return blocks, model.get_output_embeddings().weight.numel()


def bench_train(cfg, path: Path, tok, steps: int) -> dict:
    """`steps` optimiser steps of the real training step (after one warm-up step)."""
    records, _ = load_records(cfg.data.train)
    examples = [tokenize_chat(tok, r.messages) for r in records[: cfg.train.batch_size * (steps + 2)]]
    model, summary = apply_method(load_model(path), cfg.method)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, cfg.train, cfg.method.lora_plus_ratio)
    sched = make_scheduler(opt, cfg.train, steps + 1)
    batches = epoch_batches(examples, cfg.train.batch_size, cfg.seed, 0)
    tokens = supervised = 0
    for i, idx in enumerate(batches[: steps + 1]):
        if i == 1:  # the first step warms up allocators and kernels
            t0, tokens, supervised = time.perf_counter(), 0, 0
        b = collate(examples, idx, tok.pad_token_id)
        optimizer_step(model, [b], params, opt, sched, cfg.train.max_grad_norm)
        tokens, supervised = tokens + b.tokens, supervised + b.supervised
    seconds = time.perf_counter() - t0
    blocks, head = block_params(model.get_base_model())
    trained_share = len(summary.layers) / model.config.num_hidden_layers
    # Forward through every block (2 FLOPs a weight a token), backward to the lowest
    # trained block for the activations' gradients, and the output layer forward and
    # backward on supervised positions only.
    flops = tokens * 2 * blocks * (1 + trained_share) + supervised * 4 * head
    return {"tokens_per_s": tokens / seconds, "supervised_tokens_per_s": supervised / seconds,
            "gflops": flops / seconds / 1e9, "steps": steps, "method": summary.describe()}


def bench_generate(cfg, path: Path, tok, questions: int) -> dict:
    items, _ = load_records(cfg.data.eval, need_assistant=False)
    prompts = sorted((prompt_ids(tok, it.messages) for it in items[:questions]), key=len)
    model = load_model(path).eval()
    stop, new = stop_ids(model, tok), cfg.eval.max_new_tokens
    t0 = time.perf_counter()
    ours = []
    for s in range(0, len(prompts), cfg.eval.batch_size):
        ours += greedy_batch(model, prompts[s : s + cfg.eval.batch_size], new, stop, tok.pad_token_id)
    ours_s = time.perf_counter() - t0
    generated = sum(len(o) for o in ours)
    prefill = sum(len(p) for p in prompts)
    blocks, head = block_params(model)
    return {"new_tokens": generated, "new_tokens_per_s": generated / ours_s,
            "gflops": (prefill * 2 * blocks + (generated + len(prompts)) * 2 * (blocks + head)) / ours_s / 1e9,
            "questions": len(prompts), "seconds": ours_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--questions", type=int, default=64)
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cfg = load_config(CONFIG)
    set_threads(None)
    path = Path(resolve(cfg.model.base))
    tok = load_tokenizer(path)
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    train = bench_train(cfg, path, tok, args.steps)
    gen = bench_generate(cfg, path, tok, args.questions)
    result = {
        # get_cpu_capability names the vector ISA only (never AMX); tunekit.hardware knows the rest.
        "machine": {"cpu_model": hardware.cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "amx": hardware.amx(), "avx512_bf16": "avx512_bf16" in hardware.cpu_flags(),
                    "threads": torch.get_num_threads(), "arch": platform.machine(), "torch": torch.__version__},
        "matmul_peak_gflops": peak,
        "train": {**train, "mfu_fp32": train["gflops"] / peak["fp32"]},
        "generate": {**gen, "mfu_fp32": gen["gflops"] / peak["fp32"]},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = ROOT / "bench" / "results" / "throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| what | tokens/s | GFLOP/s | MFU (fp32 peak {peak['fp32']:.0f} GFLOP/s; bf16 {peak['bf16']:.0f}) |")
    print("|---|---|---|---|")
    print(f"| train ({train['method']}) | {train['tokens_per_s']:.0f} | {train['gflops']:.0f} | {result['train']['mfu_fp32']:.0%} |")
    print(f"| greedy generation | {gen['new_tokens_per_s']:.0f} new | {gen['gflops']:.0f} | {result['generate']['mfu_fp32']:.0%} |")
    m = result["machine"]
    print(f"\n{m['cpu_model']}: {m['cpu_capability']}, AMX {'yes' if m['amx'] else 'no'}, {m['threads']} threads; written to {out}")


if __name__ == "__main__":
    main()
