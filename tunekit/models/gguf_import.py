"""GGUF file -> plain Hugging Face folder, by dequantising with transformers.

transformers already reads GGUF (through the `gguf` package) into a normal torch model;
all that is left by hand is clearing the quantization marker it sets, which otherwise
makes save_pretrained refuse and training treat the model as quantized.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tunekit.errors import ModelError
from tunekit.models._log import say as _say


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """Dequantise `gguf_path` into `out_dir` as safetensors + tokenizer + chat template.

    `out_dir` should be a temporary folder (tunekit.atomic.directory): this writes into it
    in place.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file {gguf_path} does not exist.")
    size_mb = gguf_path.stat().st_size / 1e6
    _say(f"reading GGUF {gguf_path.name} ({size_mb:.0f} MB); dequantising takes about 40 s per 100 MB on CPU")
    start = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        _say(f"tokenizer read ({time.monotonic() - start:.1f} s); reading weights")
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as e:
        raise ModelError(
            f"transformers could not read GGUF file {gguf_path}: {e}. Only architectures that "
            "transformers supports in GGUF form can be imported (llama, qwen2, mistral, ...); "
            "otherwise import a Hugging Face folder instead."
        ) from e
    _say(f"weights read ({time.monotonic() - start:.1f} s); saving as safetensors")

    # The model is now ordinary dense torch tensors, but still flagged as quantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _say(f"converted in {time.monotonic() - start:.1f} s")
