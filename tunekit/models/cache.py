"""The model cache: $TUNEKIT_HOME/models/<name>/, one plain Hugging Face folder per model.

A folder counts as complete only when its manifest (tunekit_model.json) is present.
The manifest is written last, inside the same atomic folder write, so a folder without
one was made by something else or left by a crash, and is ignored and replaced.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tunekit.atomic import write_json
from tunekit.errors import ModelError
from tunekit.hardware import tunekit_home

MANIFEST = "tunekit_model.json"
MANIFEST_VERSION = 1
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def models_dir() -> Path:
    return tunekit_home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None if absent or unreadable (= incomplete)."""

    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and read_manifest(folder) is not None


def cached(name: str) -> Path | None:
    """The cached folder for `name` if it is complete."""
    folder = model_dir(name)
    return folder if is_complete(folder) else None


def weight_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in WEIGHT_PATTERNS:
        files.extend(sorted(folder.glob(pattern)))
    return files


def hf_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a usable Hugging Face model folder, or None if it is."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json"
    if not weight_files(folder):
        return f"{folder} has no weights (*.safetensors or pytorch_model*.bin)"
    return None


def check_hf_folder(folder: Path) -> None:
    problem = hf_folder_problem(folder)
    if problem:
        raise ModelError(
            f"{problem}; a model folder needs config.json, weights and tokenizer files "
            "(what `save_pretrained` writes)."
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """One digest over all weight files, so `info` can show what exactly was trained from."""
    files = weight_files(folder)
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_manifest(folder: Path, name: str, source: dict[str, Any], dtype: str | None) -> dict:
    """Write the manifest into `folder` (call last, inside the atomic folder write)."""
    manifest = {
        "version": MANIFEST_VERSION,
        "name": name,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dtype": dtype,
        "weights_sha256": weights_sha256(folder),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def cached_names() -> list[str]:
    """Names of all complete folders in the cache."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and is_complete(p))
