"""The eval stage's model work split across the processes of a torchrun job, gathered in order.

Greedy answers come in whole batches, cut as one process cuts them (infer.greedy.greedy_batches:
prompts sorted by length, every `batch_size`): batch k goes to process k % world. A batch's
composition can move the numerics and so the greedy tokens, so keeping whole batches makes every
answer the one a single process writes, and the verdict with it. The answers are gathered and
rank 0 journals them batch by batch in eval/partial/ as one process would (tunekit/eval/partial.py),
so a killed job resumes with any number of processes, or alone.

Single numbers (a held-out loss, the forgetting check's text loss) are computed by rank 0 and
shared. Alone (no process group), both are partial.answers and partial.value.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from tunekit import hardware
from tunekit.eval import partial
from tunekit.infer.greedy import greedy_batches
from tunekit.progress import console


def answers(journal: partial.Journal, model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
            batch_size: int, label: str) -> list[str]:
    """partial.answers, with the batches left split across the job's processes. Every process calls it
    with the same journal (rank 0's, see `journals`)."""
    if not hardware.joined() or journal.complete:
        return partial.answers(journal, model, tokenizer, conversations, max_new_tokens, batch_size, label)
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    left = range(len(journal.records), journal.total)
    t0 = time.perf_counter()
    mine = {}
    with _quiet():  # one line per batch from greedy_batches' bar; one line for the whole below
        for k in (k for k in left if k % world == rank):
            batches = greedy_batches(model, tokenizer, conversations, max_new_tokens, batch_size, label, skip=k)
            idx, outputs = next(batches)
            batches.close()
            mine[k] = [[i, text] for i, (text, _) in zip(idx, outputs)]
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    rows = {k: v for part in parts for k, v in part.items()}
    records = [{"batch": k, "rows": rows[k]} for k in left]
    if rank == 0:
        for r in records:
            journal.append(r)
    else:
        journal.records.extend(records)  # rank 0 wrote them; this copy only reads them back
    console.print(f"{label}: {len(conversations)} answers, {len(records)} batches over {world} processes "
                  f"in {time.perf_counter() - t0:.0f}s")
    return partial.answers(journal, model, tokenizer, conversations, max_new_tokens, batch_size, label)


def value(journal: partial.Journal, compute: Callable[[], Any]) -> Any:
    """partial.value; in a job, computed (and journaled) by rank 0 and shared."""
    return hardware.agree(partial.value, journal, compute)


def journals(make: Callable[..., dict], *args, **kwargs) -> dict:
    """The stage's journals, opened (and created or cut) by rank 0 alone; the others get copies to read."""
    return hardware.agree(make, *args, **kwargs)


@contextlib.contextmanager
def _quiet():
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before
