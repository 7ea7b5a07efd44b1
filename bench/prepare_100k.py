"""Prepare 100,000 chat records: wall time and peak memory of the whole prepare stage.

Target (issue 3): under 60 s on 2 cores, peak RSS under 2 GB, because prepare streams.
The records are synthetic but shaped like support logs: 1-3 exchanges, an optional
system prompt, 6-60 words a turn, about 3% exact duplicates (case/space variants), 3%
near duplicates (one word changed) and 1% broken lines. Words are real English words
(the model's own vocabulary, Zipf-weighted) so tokenising costs what it costs on real
text, and unrelated records are really unrelated (recombining a few hundred real
sentences would make everything a near duplicate of everything).

The stage runs in a fresh subprocess with the default model's tokenizer; the parent
reads the child's peak RSS. Writes bench/results/prepare_100k.json.

    python bench/prepare_100k.py [--records 100000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["You are Loomquay's support assistant.", "Answer briefly and politely.", "You help customers of an online store."]


def _vocab() -> list[str]:
    """Real English words: the default model's vocabulary entries that are whole lowercase words."""
    from tunekit.models.loading import load_tokenizer
    from tunekit.pipeline import _resolve_model
    from tunekit.config import Config

    tok = load_tokenizer(_resolve_model(Config.model_validate({"data": {"train": "-"}})))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])  # BPE ids rise as words get rarer
    return [w[1:] for w, _ in vocab if w.startswith("\u0120") and w[1:].isalpha() and w[1:].islower() and len(w) > 3]


def _turn(rng: random.Random, vocab: list[str], weights: list[float]) -> str:
    words = rng.choices(vocab, cum_weights=weights, k=rng.randint(6, 60))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "?", "!"])


def make_records(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = _vocab()
    weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(vocab))))  # Zipf-like
    lines: list[str] = []
    rows: list[dict] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.01:
            lines.append('{"messages": [{"role": "user", "content": "cut off')  # a truncated line
            continue
        if r < 0.07 and rows:
            row = json.loads(json.dumps(rng.choice(rows)))
            m = row["messages"][-1]
            if r < 0.04:  # exact duplicate once case and spacing are normalised
                m["content"] = m["content"].upper().replace(" ", "  ", 1)
            else:  # near duplicate: one word changed
                words = m["content"].split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                m["content"] = " ".join(words)
            lines.append(json.dumps(row))
            continue
        msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
        for _ in range(rng.choice([1, 1, 2, 3])):
            msgs += [{"role": "user", "content": _turn(rng, vocab, weights)}, {"role": "assistant", "content": _turn(rng, vocab, weights)}]
        rows.append({"id": len(lines), "messages": msgs})
        lines.append(json.dumps(rows[-1]))
    return lines


CHILD = """
import json, sys, time
from tunekit.config import Config
from tunekit.data.prepare import prepare
from tunekit.models.loading import load_tokenizer
from tunekit.pipeline import _resolve_model
cfg = Config.model_validate({"data": {"train": sys.argv[1]}})
tok = load_tokenizer(_resolve_model(cfg))
t = time.perf_counter()
report = prepare(cfg, sys.argv[2], tok)
print(json.dumps({"seconds": time.perf_counter() - t, "report": report}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("\n".join(make_records(args.records)) + "\n", encoding="utf-8")
        size_mb = data.stat().st_size / 1e6
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(Path(tmp) / "out")],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})  # as the CLI sets it
        wall = time.perf_counter() - t
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        child = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rep = child["report"]
    result = {
        "records": args.records, "input_mb": round(size_mb, 1), "cpus": os.cpu_count(),
        "prepare_seconds": round(child["seconds"], 1), "process_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb),
        "records_per_second": round(args.records / child["seconds"]),
        "kept": rep["kept"], "rejects_by_reason": rep["rejects_by_reason"], "tokens": rep["tokens"],
        "split": rep["split"], "targets": {"prepare_seconds": 60, "peak_rss_mb": 2048},
    }
    result["meets_targets"] = result["prepare_seconds"] < 60 and result["peak_rss_mb"] < 2048
    dest = ROOT / "bench" / "results" / "prepare_100k.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
