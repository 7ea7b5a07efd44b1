"""Speed of near-duplicate detection on 100,000 synthetic support conversations.

Texts (~1,000 characters of conversation_key text each) recombine sentences from the
bundled example with random character edits; 5% are lightly edited copies of an
earlier text, so there are real near duplicates to find. Prints one JSON line:
wall seconds for `signatures` (batches of 2,000), `find_near_duplicates` at 0.85 and
`similar_groups` at 0.7, the process CPU seconds of all three, the counts they found,
and peak memory.

    python bench/dedup_speed.py [--n 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunekit.data.dedup import conversation_key, find_near_duplicates, signatures, similar_groups  # noqa: E402
from tunekit.data.records import load_records  # noqa: E402

EXAMPLE = ROOT / "examples" / "support" / "data" / "train.jsonl"
BATCH = 2000


def _sentences() -> list[str]:
    records, _ = load_records(EXAMPLE)
    found = {s.strip() for r in records for m in r.messages for s in re.split(r"(?<=[.?!])\s+", m["content"])}
    return sorted(s for s in found if 10 < len(s) <= 300)  # the example plants a few over-long lines


def _edit(text: str, rng: random.Random, n: int) -> str:
    """n random character substitutions, deletions or insertions."""
    chars = list(text)
    for _ in range(n):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice("abcdefghijklmnopqrstuvwxyz "))
    return "".join(chars)


def make_texts(n: int, seed: int) -> list[str]:
    """Synthetic conversation keys: sentence recombinations, 5% near copies of earlier ones."""
    rng = random.Random(seed)
    pool = _sentences()
    texts: list[str] = []
    for i in range(n):
        if i > 100 and rng.random() < 0.05:
            texts.append(_edit(texts[rng.randrange(i)], rng, rng.randint(1, 8)))
            continue
        msgs, size, target = [], 0, rng.randint(500, 1500)
        while size < target:
            role = "user" if len(msgs) % 2 == 0 else "assistant"
            content = " ".join(rng.sample(pool, rng.randint(1, 4)))
            content = _edit(content, rng, rng.randint(0, 3))
            msgs.append({"role": role, "content": content})
            size += len(content) + len(role) + 3
        texts.append(conversation_key(msgs)[:1500])
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    texts = make_texts(args.n, args.seed)
    c0, t0 = time.process_time(), time.perf_counter()
    sigs = np.concatenate([signatures(texts[i : i + BATCH], seed=args.seed) for i in range(0, len(texts), BATCH)])
    t1 = time.perf_counter()
    dup = find_near_duplicates(sigs, 0.85)
    t2 = time.perf_counter()
    groups = similar_groups(sigs, 0.7)
    t3, c3 = time.perf_counter(), time.process_time()
    print(json.dumps({
        "texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
        "signatures_s": round(t1 - t0, 2),
        "find_near_duplicates_s": round(t2 - t1, 2),
        "similar_groups_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "total_cpu_s": round(c3 - c0, 2),  # this process only: a busy shared machine inflates total_s
        "near_duplicates": len(dup),
        "groups": int(groups.max()) + 1 if len(groups) else 0,
        "signature_mb": round(sigs.nbytes / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
