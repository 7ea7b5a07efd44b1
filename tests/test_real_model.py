"""End to end on the real default base model, when `make setup` has put it in the cache.

Never downloads: the model is looked up offline, and the test is skipped without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import example_conversations, heldout_items, write_jsonl
from tunekit import pipeline
from tunekit.config import Config
from tunekit.errors import ModelError
from tunekit.models import DEFAULT_MODEL, resolve, tunekit_home

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def real_model():
    try:
        return resolve(DEFAULT_MODEL, offline=True)
    except ModelError:
        pytest.skip(f"{DEFAULT_MODEL} is not in the model cache at {tunekit_home()} (run `make setup`, or set TUNEKIT_HOME)")


def test_prepare_train_eval_on_real_model(real_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = Config.model_validate({
        "name": "real",
        "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", example_conversations(24))),
                 "eval": str(write_jsonl(tmp_path / "heldout.jsonl", heldout_items(4))),
                 "valid_fraction": 0.05},
        "method": {"kind": "lora", "layers": "last:2"},
        # One thread: on a shared 2-core machine a second thread contending for a busy core
        # slows small matmuls ~20x.
        # 23 training records and round(23 * 0.2 / 0.8) = 6 replay examples / batch 4 = 8 batches per
        # epoch; 0.25 epochs = 2 optimiser steps. The replay answers are the ones shipped with tunekit.
        "train": {"epochs": 0.25, "batch_size": 4, "log_every": 1, "save_every": 0, "threads": 1,
                  "replay": {"fraction": 0.2}},
        # Batch 64 as the demo: the forgetting check's 178 questions, twice, are most of this test
        # (AVX2-only EPYC, fp32, one thread: 146 s in all against 370 s at batch 4).
        "eval": {"max_new_tokens": 8, "contenders": ["base", "tuned"], "batch_size": 64},
    })
    run = tmp_path / "run"
    data = pipeline.run_stage(cfg, run, "prepare")
    assert data["kept"] == 24 and data["valid"] == 1
    result = pipeline.run_stage(cfg, run, "train")
    assert result["steps"] == 2
    replay = result["replay"]
    assert replay["examples"] == 6 and replay["domain_examples"] == 23
    # The default model's answers ship with the package: the cache key matches this machine's copy.
    from tunekit.train.replay import SHIPPED

    assert not replay["generated_now"] and (SHIPPED / Path(replay["cache"]).name).is_file(), replay
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(x) for x in losses) and losses[0] < 10
    assert math.isfinite(result["final_train_loss"]) and math.isfinite(result["valid_loss"])
    assert (run / result["final_checkpoint"] / "adapter_model.safetensors").is_file()
    scores = pipeline.run_stage(cfg, run, "eval")
    for rel in ("eval/predictions.jsonl", "eval/scores.json", "data/eval.jsonl"):
        assert (run / rel).is_file(), rel
    assert scores["questions"] == 4
    assert set(scores["fact_accuracy"]) == {"base", "tuned"}
    assert all(0.0 <= v <= 1.0 for v in scores["fact_accuracy"].values())
    assert set(scores["valid_loss"]) == {"base", "tuned"}
    preds = [json.loads(x) for x in (run / "eval/predictions.jsonl").read_text().splitlines()]
    assert all(p["answers"]["base"] for p in preds)  # the real model writes something
