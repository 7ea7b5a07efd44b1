"""Fixtures for the inference engine: the lively tiny model of tests/serve and three LoRA adapters on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "serve"))
from serve_builders import make_adapter, save_model  # noqa: E402


@pytest.fixture(scope="session")
def lively_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("lively-infer") / "model")


@pytest.fixture(scope="session")
def adapters(lively_dir, tmp_path_factory) -> list[Path]:
    """Three adapters with random non-zero lora_B: each changes the answers."""
    root = tmp_path_factory.mktemp("infer-adapters")
    return [make_adapter(lively_dir, root / name, seed=seed) for seed, name in enumerate(("one", "two", "three"), 11)]


@pytest.fixture(scope="session")
def dora_adapter(lively_dir, tmp_path_factory) -> Path:
    """A DoRA adapter (PEFT cannot mix it with others in a batch) with non-zero lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunekit.models.loading import load_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)
    model = get_peft_model(load_model(lively_dir), config)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    out = tmp_path_factory.mktemp("infer-dora") / "dora"
    model.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _hermetic(offline_home):
    return offline_home
