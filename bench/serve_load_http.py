"""Load on a real `tunekit serve` over HTTP: N concurrent streaming clients of the official openai
client on localhost, asking the base model and fine-tuned adapters on it, first all at once (the
server batches across requests) and then one request at a time.

The adapters are real: the script creates a key, uploads a slice of the demo's training data,
runs one short fine-tuning job on the base model through the API, and uses the job's fine-tuned
model and its checkpoints (each a callable model: `ft:...:ckpt-step-N`). Each client sends R
streamed chat completions (temperature 0, max_tokens T) one after another, cycling over the
models; all clients start together. Reported per mode: first-token latency p50/p95 (request
sent -> first content chunk, as the client sees it), total completion tokens/s (all tokens /
wall time), and whether every answer equals the other mode's.

The server's state goes under $TUNEKIT_HOME/serve (the model store there must hold the base).

    python bench/serve_load_http.py [--clients 8] [--requests 2] [--max-tokens 64] [--port 8765]

Writes bench/results/serve_load_http.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "examples" / "support" / "data"
TUNEKIT = [sys.executable, "-m", "tunekit"]
# A short job: LoRA as the demo trains it, a checkpoint every 2 steps, no replay, no eval.
JOB_DEFAULTS = {"method": {"kind": "lora", "r": 16, "alpha": 32},
                "train": {"epochs": 1, "batch_size": 4, "lr": 5e-4, "save_every": 2, "keep_last": 4,
                          "replay": {"fraction": 0.0}},
                "eval": {"forgetting": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tunekit serve exited ({proc.returncode})")
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
        except urllib.error.HTTPError:  # 401 without a key: it answers
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("tunekit serve did not answer")


def _fine_tuned_models(client, base: str, examples: int) -> list[str]:
    """One short job through the API; its fine-tuned model and checkpoints, newest first."""
    planted = {d["line"] for d in json.loads((DATA / "noise_manifest.json").read_text())["defects"]}
    lines = (DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for i, x in enumerate(lines, 1) if i not in planted][:examples]  # the demo's defects left out
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    train = client.files.create(file=open(f.name, "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=base, training_file=train.id, suffix="bench")
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"the bench's job {job.status}: {job.error}")
    steps = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=10).data]
    return [job.fine_tuned_model] + [s for s in steps if not s.endswith(f":ckpt-step-{max_step(steps)}")]


def max_step(names: list[str]) -> int:
    return max(int(n.rsplit("-", 1)[1]) for n in names)


def _questions(n: int) -> list[str]:
    lines = (DATA / "heldout.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(x)["messages"][-1]["content"] for x in lines]


def run_mode(client, models: list[str], questions: list[str], clients: int, requests: int, max_tokens: int,
             serial: bool) -> dict:
    """Every client's requests, all clients started together; `serial`: one request in flight at a time."""
    gate = threading.Lock() if serial else None
    firsts, answers, tokens = [], {}, [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one(c: int, r: int) -> None:
        i = c * requests + r
        model, question = models[i % len(models)], questions[i % len(questions)]
        t0 = time.perf_counter()
        first, text, used = None, [], 0
        for chunk in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens,
                stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - t0
                text.append(chunk.choices[0].delta.content)
            if chunk.usage:
                used = chunk.usage.completion_tokens
        with lock:
            firsts.append(first if first is not None else time.perf_counter() - t0)
            answers[i] = "".join(text)
            tokens[0] += used

    def client_thread(c: int) -> None:
        start.wait()
        for r in range(requests):
            if gate:
                with gate:
                    one(c, r)
            else:
                one(c, r)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    firsts.sort()
    return {"serial": serial, "wall_s": round(wall, 2), "tokens": tokens[0], "tokens_per_s": round(tokens[0] / wall, 1),
            "first_token_p50_s": round(statistics.median(firsts), 3),
            "first_token_p95_s": round(firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))], 3),
            "answers": [answers[i] for i in sorted(answers)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--examples", type=int, default=24, help="training examples of the bench's job")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                    help="`tunekit serve --precision` (default: none given, each model's own)")
    ap.add_argument("--out", default="serve_load_http")
    args = ap.parse_args()
    from openai import OpenAI

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    (work / "job.yaml").write_text(json.dumps(JOB_DEFAULTS))
    key = subprocess.run(TUNEKIT + ["keys", "create", f"bench-{os.getpid()}"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    port = _free_port()
    log = open(work / "server.log", "wb")
    chosen = ["--precision", args.precision] if args.precision else []
    server = subprocess.Popen(TUNEKIT + ["serve", "--port", str(port), "--job-defaults", str(work / "job.yaml"), *chosen],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_up(url, server)
        client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
        models = [args.model] + _fine_tuned_models(client, args.model, args.examples)
        questions = _questions(args.clients * args.requests)
        # A warm-up request per model: loading the base and each adapter is not what is measured.
        run_mode(client, models, questions, len(models), 1, 4, serial=True)
        batched = run_mode(client, models, questions, args.clients, args.requests, args.max_tokens, serial=False)
        serial = run_mode(client, models, questions, args.clients, args.requests, args.max_tokens, serial=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    same = batched["answers"] == serial["answers"]
    differing = sum(a != b for a, b in zip(batched["answers"], serial["answers"]))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "name": os.environ.get("TUNEKIT_BENCH_MACHINE")},
              "over": "HTTP, the official openai client, streaming, against `tunekit serve` on 127.0.0.1",
              "models": models, "clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
              "batched": {k: v for k, v in batched.items() if k != "answers"},
              "one_at_a_time": {k: v for k, v in serial.items() if k != "answers"},
              "speedup": round(batched["tokens_per_s"] / max(serial["tokens_per_s"], 1e-9), 2),
              "identical_answers": same, "differing_answers": differing,
              # Without --precision the base answers in the precision `auto` picks here, and a run in the
              # one it trained in: in bf16 a row's rounding depends on its batch; in fp32 batching
              # changes no answer (tests/infer).
              "precision": args.precision or os.environ.get("TUNEKIT_BENCH_PRECISION_NOTE")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
