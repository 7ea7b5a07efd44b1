"""list_models() and info(): what is known and cached, read from files without loading weights."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from tunekit.errors import ModelError
from tunekit.models.cache import cached, cached_names, folder_size, hf_folder_problem, read_manifest
from tunekit.models.registry import DEFAULT_MODEL, REGISTRY, cache_name, is_valid_name, looks_like_hub_id


def list_models() -> list[dict[str, Any]]:
    """Registry entries and imported models, each with whether it is cached and its size."""
    rows: list[dict[str, Any]] = []
    for spec in REGISTRY.values():
        folder = cached(spec.name)
        manifest = read_manifest(folder) if folder else None
        rows.append({
            "name": spec.name,
            "hub_id": spec.hub_id,
            "description": spec.description,
            "license": spec.license,
            "default": spec.name == DEFAULT_MODEL,
            "in_registry": True,
            "cached": folder is not None,
            "path": str(folder) if folder else None,
            "size_bytes": folder_size(folder) if folder else None,
            "source": manifest["source"].get("kind") if manifest else None,
            "sources": ["hub"] + (["pypi-wheel"] if spec.wheel else []),
        })
    for name in cached_names():
        if name in REGISTRY:
            continue
        folder = cached(name)
        assert folder is not None
        source = (read_manifest(folder) or {}).get("source", {})
        rows.append({
            "name": name,
            "hub_id": source.get("hub_id"),
            "description": f"imported from {source.get('path') or source.get('hub_id') or '?'}",
            "license": None,
            "default": False,
            "in_registry": False,
            "cached": True,
            "path": str(folder),
            "size_bytes": folder_size(folder),
            "source": source.get("kind"),
            "sources": [],
        })
    return rows


def _locate(name: str) -> Path:
    """A cached or local folder for `name`, without fetching anything."""
    if is_valid_name(name) or looks_like_hub_id(name):
        folder = cached(cache_name(name))
        if folder is not None:
            return folder
    local = Path(name).expanduser()
    if local.is_dir() and hf_folder_problem(local) is None:
        return local.resolve()
    raise ModelError(
        f"model {name!r} is not in the cache and is not a local model folder; "
        f"fetch it first with `tunekit models pull {name}` (or import it with `tunekit models import PATH`)."
    )


def _safetensors_stats(folder: Path) -> tuple[int | None, list[str]]:
    """Parameter count and tensor dtypes, read from safetensors headers only (no weights loaded)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, []
    total, dtypes = 0, set()
    for f in files:
        with open(f, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            total += math.prod(meta["shape"])
            dtypes.add(meta["dtype"])
    return total, sorted(dtypes)


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(cfg.get("chat_template"))


# Where architectures record their longest sequence: Llama/Qwen/Mistral/Gemma, GPT-2,
# Falcon-style and ChatGLM-style configs, GPT-J/MPT-style.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx", "max_seq_len")


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence a model's config.json allows, or None when it does not say."""
    text = config.get("text_config", config)  # multimodal configs nest the language model
    for key in _CONTEXT_KEYS:
        value = text.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def read_context_length(folder: Path) -> int | None:
    """context_length() of the config.json in a model folder, reading no weights."""
    try:
        return context_length(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None  # an unreadable config fails later, where the model is loaded, with its own message


def info(name: str) -> dict[str, Any]:
    """Architecture, size and provenance of a cached model or a local model folder."""
    folder = _locate(name)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)  # multimodal configs nest the language model
    params, dtypes = _safetensors_stats(folder)
    manifest = read_manifest(folder)
    archs = config.get("architectures") or [config.get("model_type")]
    return {
        "name": manifest["name"] if manifest else folder.name,
        "path": str(folder),
        "architecture": archs[0],
        "model_type": config.get("model_type"),
        "parameters": params,
        "layers": text.get("num_hidden_layers") or text.get("n_layer"),
        "hidden_size": text.get("hidden_size") or text.get("n_embd"),
        "vocab_size": text.get("vocab_size"),
        "context_length": context_length(config),
        "dtype": ",".join(dtypes) or config.get("dtype") or config.get("torch_dtype"),
        "chat_template": has_chat_template(folder),
        "source": manifest["source"] if manifest else {"kind": "local-folder", "path": str(folder)},
        "sha256": manifest.get("weights_sha256") if manifest else None,
        "size_bytes": folder_size(folder),
        "created": manifest.get("created") if manifest else None,
    }
