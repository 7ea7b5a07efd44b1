"""Fixtures for chat and generate: a tiny model that writes varied tokens, and LoRA adapters on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_builders import make_adapter, save_model


@pytest.fixture(scope="session")
def lively_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("lively") / "model")


@pytest.fixture(scope="session")
def adapter_a(lively_dir, tmp_path_factory) -> Path:
    return make_adapter(lively_dir, tmp_path_factory.mktemp("adapters") / "alpha", seed=1)


@pytest.fixture(scope="session")
def adapter_b(lively_dir, tmp_path_factory) -> Path:
    return make_adapter(lively_dir, tmp_path_factory.mktemp("adapters") / "beta", seed=2)


@pytest.fixture(scope="session")
def wide_adapter(tmp_path_factory) -> Path:
    """An adapter made on a tiny model of another hidden size: it fits no other tiny model."""
    base = save_model(tmp_path_factory.mktemp("wide") / "model", hidden=48)
    return make_adapter(base, tmp_path_factory.mktemp("adapters") / "wide", seed=3)


@pytest.fixture(autouse=True)
def _hermetic(offline_home, monkeypatch):
    # The CLI sets torch's threads to every core; the suite keeps one (see tests/conftest.py).
    monkeypatch.setattr("tunekit.models.loading.set_threads", lambda threads=None: None)
    return offline_home
