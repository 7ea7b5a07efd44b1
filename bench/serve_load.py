"""Load on the chat completions engine: N concurrent streaming clients asking the base model and
LoRA adapters on it, served with batching across requests, then one request at a time.

Each client sends R streamed chat completions (temperature 0, max_tokens T) one after another,
cycling over the base and K random adapters; all clients start together. Reported per mode:
first-token latency p50/p95 (stream() called -> first content chunk), total completion tokens/s
(all clients' tokens / wall time), decode steps and the widest batch, and whether every answer
equals the other mode's. Both modes run the same requests in-process through
tunekit.serve.completions.stream (everything but HTTP), alternately, `--pairs` times.

A second table times one decode step at batch 1 and 8 by the rows' adapters (none loaded, one
adapter, three adapters and the base mixed), for both ways of mixing (infer/adapters.py: "own",
stacked LoRA matrices, the default; "peft", PEFT's mixed-adapter batches).

    python bench/serve_load.py [--clients 8] [--requests 2] [--max-tokens 64] [--adapters 3] [--pairs 2]

Writes bench/results/serve_load.json (--out names another stem); serve_load.md is written by hand from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunekit import hardware  # noqa: E402
from tunekit.data.template import prompt_ids  # noqa: E402
from tunekit.infer.adapters import Adapters  # noqa: E402
from tunekit.infer.decode import Batch, Row  # noqa: E402
from tunekit.infer.greedy import stop_ids  # noqa: E402
from tunekit.infer.pool import Served  # noqa: E402
from tunekit.infer.scheduler import Engine  # noqa: E402
from tunekit.models import resolve  # noqa: E402
from tunekit.models.loading import load_model, load_tokenizer  # noqa: E402
from tunekit.serve.completions import stream  # noqa: E402

HELDOUT = ROOT / "examples" / "support" / "data" / "heldout.jsonl"
RESULTS = ROOT / "bench" / "results"


def make_adapters(base: Path, n: int, out: Path) -> list[Path]:
    """n LoRA adapters as tunekit trains them by default (r 16, alpha 32, every linear layer) with random
    non-zero B, so each answers differently; made once per seed and kept under `out`."""
    from peft import LoraConfig, get_peft_model

    made = []
    for seed in range(1, n + 1):
        folder = out / f"random-{seed}"
        if not (folder / "adapter_model.safetensors").is_file():
            model = get_peft_model(load_model(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.004)
            model.save_pretrained(folder)
        made.append(folder)
    return made


def questions(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [r["messages"] for r in rows[:n]]


def run_mode(model, tokenizer, base: Path, adapters: list[Path], convs, args, max_batch: int) -> dict:
    engine = Engine(model, tokenizer.pad_token_id, base, max_batch=max_batch, window_s=0.01, adapter_cap=8)
    stop = stop_ids(model, tokenizer)
    served = [Served(engine, a, tokenizer, stop, "base" if a is None else a.name) for a in [None, *adapters]]
    for s in served[1:]:  # adapters load before the clock starts (first-use loading is not what is measured)
        engine.adapters.name(s.adapter)
    latencies, tokens, answers = [], [], {}
    lock = threading.Lock()
    start_gate = threading.Barrier(args.clients + 1)

    def client(c: int) -> None:
        start_gate.wait()
        for r in range(args.requests):
            which = served[(c + r) % len(served)]
            conv = convs[(c * args.requests + r) % len(convs)]
            body = {"model": which.label, "messages": conv, "temperature": 0, "max_tokens": args.max_tokens,
                    "stream": True, "stream_options": {"include_usage": True}}
            t0, first, text = time.perf_counter(), None, ""
            for chunk in stream(which, body):
                for choice in chunk["choices"]:
                    piece = choice["delta"].get("content")
                    if piece:
                        first = first or time.perf_counter() - t0
                        text += piece
                if chunk.get("usage"):
                    used = chunk["usage"]["completion_tokens"]
            with lock:
                latencies.append(first if first is not None else time.perf_counter() - t0)
                tokens.append(used)
                answers[f"{c}.{r}"] = {"model": which.label, "text": text}

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    engine.close()
    latencies.sort()
    return {"max_batch": max_batch, "wall_s": round(wall, 2), "tokens": sum(tokens),
            "tokens_per_s": round(sum(tokens) / wall, 1),
            "first_token_p50_s": round(statistics.median(latencies), 3),
            "first_token_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
            "steps": engine.steps, "widest_batch": engine.widest, "answers": answers}


def step_costs(base: Path, tokenizer, adapters: list[Path], convs, rounds: int = 5, reps: int = 10) -> dict:
    """ms per decode step (after prefill) by batch and by how the rows' adapters mix, for both ways of
    mixing (infer/adapters.py); the layouts alternate, `rounds` times: min and median of the rounds."""
    prompts = [prompt_ids(tokenizer, c) for c in convs[:8]]
    plain = load_model(base).eval()
    mixes = {m: Adapters(load_model(base).eval(), base, cap=8, mixing=m) for m in ("own", "peft")}
    names = {m: [None] + [a.name(p) for p in adapters[:3]] for m, a in mixes.items()}
    layouts = [("no adapter loaded", None, [None]), ("no adapter loaded", None, [None] * 8)]
    for m in mixes:
        layouts += [(f"{m}: one adapter", m, [names[m][1]]), (f"{m}: one adapter", m, [names[m][1]] * 8),
                    (f"{m}: 3 adapters + base, mixed", m, names[m] * 2)]
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, m, row_names in layouts:
            model, mix = (plain, None) if m is None else (mixes[m].model, mixes[m])
            rows = [Row(prompts[i % len(prompts)], reps + 2, set(), n) for i, n in enumerate(row_names)]
            batch = Batch(model, rows, tokenizer.pad_token_id, adapters=mix)
            batch.step()  # warm
            t0 = time.perf_counter()
            for _ in range(reps):
                batch.step()
            times.setdefault(f"{label}, batch {len(rows)}", []).append(1000 * (time.perf_counter() - t0) / reps)
    return {k: {"min_ms": round(min(v), 1), "median_ms": round(statistics.median(v), 1)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2, help="batched/one-at-a-time runs, alternated")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="serve_load", help="results file stem under bench/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = Path(resolve(args.model))
    home = Path(os.environ.get("TUNEKIT_HOME", Path.home() / ".cache" / "tunekit"))
    adapters = make_adapters(base, args.adapters, home / "bench" / "serve_load_adapters")
    tokenizer = load_tokenizer(base)
    convs = questions(args.clients * args.requests)
    load_before = os.getloadavg()
    runs = []
    for _ in range(args.pairs):
        for max_batch in (16, 1):
            model = load_model(base).eval()  # a fresh base each run: the engine wraps it with the adapters
            runs.append(run_mode(model, tokenizer, base, adapters, convs, args, max_batch))
            print(f"max_batch {max_batch:2}: {runs[-1]['tokens_per_s']} tokens/s, first token p50 "
                  f"{runs[-1]['first_token_p50_s']} s p95 {runs[-1]['first_token_p95_s']} s, wall {runs[-1]['wall_s']} s",
                  flush=True)
    steps = step_costs(base, tokenizer, adapters, convs)
    reference = runs[0]["answers"]
    same = all(r["answers"] == reference for r in runs)
    distinct = len({a["text"] for a in reference.values()})
    batched = [r for r in runs if r["max_batch"] > 1]
    single = [r for r in runs if r["max_batch"] == 1]
    ratio = [round(b["tokens_per_s"] / s["tokens_per_s"], 2) for b, s in zip(batched, single, strict=True)]
    result = {
        "machine": {"cpu": hardware.cpu_model(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "amx": hardware.amx(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"model": args.model, "dtype": "float32 (fp32 compute)", "clients": args.clients,
                     "requests_per_client": args.requests, "max_tokens": args.max_tokens, "adapters": args.adapters,
                     "temperature": 0, "models_cycled": ["base"] + [a.name for a in adapters]},
        "runs": [{k: v for k, v in r.items() if k != "answers"} for r in runs],
        "throughput_ratio_batched_over_one_at_a_time": ratio,
        "identical_answers_across_runs": same, "distinct_answers": distinct, "answers": reference,
        "decode_step_ms": steps,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=1))


if __name__ == "__main__":
    main()
