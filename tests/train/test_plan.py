"""The step plan: which examples each micro-batch holds, across epochs and accumulation."""

from __future__ import annotations

from tunekit.config import Config
from tunekit.data.batches import epoch_batches
from tunekit.data.template import Tokenized
from tunekit.train.loop import make_plan


def test_micro_batches_walk_every_epoch_in_its_own_order():
    examples = [Tokenized([1] * (i + 2), [1] * (i + 2)) for i in range(10)]
    cfg = Config.model_validate({"data": {"train": "x.jsonl"}, "seed": 3,
                                 "train": {"batch_size": 3, "grad_accum": 2, "epochs": 2.5}})
    plan = make_plan(cfg, examples)
    assert (plan.batches_per_epoch, plan.total_steps) == (4, 5)
    walked = [b for step in range(plan.total_steps) for b in plan.micro_batches(step)]
    expected = epoch_batches(examples, 3, 3, 0) + epoch_batches(examples, 3, 3, 1) + epoch_batches(examples, 3, 3, 2)[:2]
    assert walked == expected
    assert epoch_batches(examples, 3, 3, 0) != epoch_batches(examples, 3, 3, 1)
    # Asking again for an earlier step (as a resumed run does) gives the same batches.
    assert make_plan(cfg, examples).micro_batches(3) == walked[6:8]
