"""What `train.distributed: auto` picks, and the memory estimate under FSDP2's sharding."""

from __future__ import annotations

import pytest

GIB = 1024**3


def test_auto_picks_ddp_for_adapters_and_fsdp2_for_a_full_model_that_does_not_fit():
    from tunekit.train.distributed import auto_strategy

    assert auto_strategy("lora", 100 * GIB, (1 * GIB, "the GPU has"))[0] == "ddp"  # adapters: always a replica
    assert auto_strategy("dora", 1 * GIB, None)[0] == "ddp"
    assert auto_strategy("full", 10 * GIB, (8 * GIB, "the GPU has"))[0] == "fsdp2"
    assert auto_strategy("full", 6 * GIB, (8 * GIB, "the GPU has"))[0] == "ddp"
    assert auto_strategy("full", 6 * GIB, None)[0] == "ddp"
    strategy, why = auto_strategy("full", 10 * GIB, (8 * GIB, "the GPU has"))
    assert "10.0 GiB" in why and "8.0 GiB" in why


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sharding_divides_what_fsdp2_shards(kind):
    from tunekit.config import DataConfig, MethodConfig, TrainConfig
    from tunekit.hardware import FP32
    from tiny import build_model
    from tunekit.train.methods import apply_method

    method = MethodConfig(kind=kind, r=4, alpha=8)
    model, _ = apply_method(build_model(400, layers=12), method)  # blocks outweigh the root, as in real models
    train, data = TrainConfig(batch_size=2), DataConfig(train="x.jsonl", max_length=256)
    from tunekit.train.memory import estimate_memory

    one = estimate_memory(model, method, train, data, FP32, 64)
    four = estimate_memory(model, method, train, data, FP32, 64, shards=4)
    assert four["activations"] == one["activations"] and four["logits"] == one["logits"]  # per process either way
    assert four["optimizer"] == one["optimizer"] // 4 and four["gradients"] < one["gradients"]
    assert four["weights"] < one["weights"] and "per process (sharded over 4)" in four["description"]
    blocks = [p.numel() * 4 for n, p in model.named_parameters() if ".layers." in n]
    # The root (embeddings, norm) stays whole; two blocks' weights are gathered at a time.
    assert four["weights"] >= (one["weights"] - sum(blocks)) + sum(blocks) // 4
