"""import_model, list_models, info, and the cache's completeness rule, on a tiny model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from model_builders import REAL_HOME
from tunekit.errors import ModelError
from tunekit.models import DEFAULT_MODEL, MANIFEST, REGISTRY, import_model, info, list_models, resolve, sources


def test_import_folder_copies_and_loads(tiny_folder: Path, home: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = import_model(tiny_folder)
    assert path == home / "models" / "tiny-llama"
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["name"] == "tiny-llama"
    assert manifest["source"] == {"kind": "local-folder", "path": str(tiny_folder.resolve())}
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.hidden_size == 32
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_interrupted_import_leaves_no_half_folder(tiny_folder: Path, home: Path, monkeypatch) -> None:
    def copy_half(src, dst, **kwargs):
        shutil.copy(Path(src) / "config.json", Path(dst) / "config.json")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sources.shutil, "copytree", copy_half)
    with pytest.raises(RuntimeError):
        import_model(tiny_folder, "tiny")
    assert list((home / "models").iterdir()) == []


def test_failed_reimport_keeps_previous_version(tiny_folder: Path, home: Path, monkeypatch) -> None:
    first = import_model(tiny_folder, "tiny")
    before = (first / MANIFEST).read_text()

    def die(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(sources.shutil, "copytree", die)
    with pytest.raises(RuntimeError):
        import_model(tiny_folder, "tiny")
    assert (first / MANIFEST).read_text() == before
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny"]


def test_folder_without_manifest_is_incomplete(tiny_folder: Path, home: Path, monkeypatch) -> None:
    half = home / "models" / "tiny"
    shutil.copytree(tiny_folder, half)  # looks like a model, but no manifest: not ours / crashed
    assert all(row["name"] != "tiny" for row in list_models())
    with pytest.raises(ModelError, match="incomplete"):
        resolve("tiny")
    path = import_model(tiny_folder, "tiny")
    assert (path / MANIFEST).is_file()
    assert resolve("tiny") == path


def test_list_models(tiny_folder: Path) -> None:
    rows = {r["name"]: r for r in list_models()}
    assert set(REGISTRY) <= set(rows)
    assert rows[DEFAULT_MODEL]["default"] and not rows[DEFAULT_MODEL]["cached"]
    assert rows[DEFAULT_MODEL]["sources"] == ["hub", "pypi-wheel"]
    import_model(tiny_folder, "tiny")
    row = {r["name"]: r for r in list_models()}["tiny"]
    assert row["cached"] and not row["in_registry"] and row["source"] == "local-folder"
    assert row["size_bytes"] > 0


def test_info(tiny_folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = import_model(tiny_folder, "tiny")
    data = info("tiny")
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    assert data["architecture"] == "LlamaForCausalLM"
    assert (data["layers"], data["hidden_size"], data["context_length"]) == (2, 32, 512)
    assert data["parameters"] == n_params
    assert data["chat_template"] is True and data["dtype"] == "F32"
    assert data["source"]["kind"] == "local-folder" and len(data["sha256"]) == 64
    assert info(str(tiny_folder))["source"] == {"kind": "local-folder", "path": str(tiny_folder.resolve())}


def test_info_on_missing_model_says_how_to_fetch() -> None:
    with pytest.raises(ModelError, match="tunekit models pull smollm2-360m-instruct"):
        info("smollm2-360m-instruct")


@pytest.mark.real_model
def test_real_default_model_info(monkeypatch) -> None:
    if not (REAL_HOME / "models" / DEFAULT_MODEL / MANIFEST).is_file():
        pytest.skip(f"{DEFAULT_MODEL} not in {REAL_HOME}; run `tunekit models pull {DEFAULT_MODEL}`")
    monkeypatch.setenv("TUNEKIT_HOME", os.fspath(REAL_HOME))
    data = info(DEFAULT_MODEL)
    assert data["architecture"] == "LlamaForCausalLM"
    assert (data["layers"], data["hidden_size"], data["vocab_size"]) == (30, 576, 49152)
    assert 130e6 < data["parameters"] < 140e6
    assert data["chat_template"] is True
