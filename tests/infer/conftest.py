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


@pytest.fixture(autouse=True)
def _hermetic(offline_home):
    return offline_home
