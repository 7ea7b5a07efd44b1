import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama + tokenizer saved as a plain HF folder, built once per session."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def untied_model_dir(tmp_path_factory) -> Path:
    """The tiny model with an LM head of its own (not tied to the embeddings)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-untied") / "model", tied=False)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless Chromium for the session's browser tests (tests/browser.py)."""
    from browser import Browser, chromium

    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(chromium(), tmp / "profile", tmp / "chromium.log")
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tunekit.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(autouse=True)
def bf16_slow_here(monkeypatch):
    """Every test sees a machine where bf16 measures slower than fp32, so `precision: auto` means fp32
    whatever CPU runs the suite (AMX, AVX512-BF16 or AVX2): results do not depend on the machine.
    Tests of the bf16 paths ask for bf16 themselves; tests/test_hardware.py restores `measure`."""
    from tunekit import hardware

    monkeypatch.setattr(hardware, "measure", lambda shapes, device, use_cache=True: {"fp32": 100.0, "bf16": 10.0, "cached": True})


@pytest.fixture
def offline_home(tmp_path, monkeypatch) -> Path:
    """An empty TUNEKIT_HOME and no network sources: runs on the tiny model touch nothing else."""
    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "tk-home"))
    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "tk-home"


def pytest_configure(config):
    # Tiny models gain nothing from threads, and on a shared machine a second OpenMP
    # thread fighting another process for a core makes small matmuls ~20x slower.
    import torch

    torch.set_num_threads(1)
