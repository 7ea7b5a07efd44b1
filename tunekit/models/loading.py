"""Load a resolved model folder into memory for training, evaluation or generation."""

from __future__ import annotations

from pathlib import Path

import torch

from tunekit.data.chat_templates import apply_template
from tunekit.errors import ModelError
from tunekit.hardware import set_threads  # noqa: F401  (where the stages have always imported it from)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str | Path, chat_template: str = "auto"):
    """The tokenizer in `path` with the chat template `chat_template` (data/chat_templates.py) set on it."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the tokenizer from {path}: {e}") from None
    tok.tunekit_template = apply_template(tok, chat_template, source=str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_architecture(path: str | Path) -> None:
    """Name the architecture when transformers cannot build a causal LM from it (its own error
    suggests upgrading; the usual cause is a model that is not a text generator, or too new)."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = Path(path) / "config.json"
    if not config.is_file():
        return
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as e:
        raise ModelError(f"{config} is not valid JSON: {e}") from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        import transformers

        raise ModelError(f"{path} is a {model_type!r} model, which transformers {transformers.__version__} cannot load as a "
                         f"causal language model; tunekit fine-tunes text-generation models such as llama, qwen2, mistral, "
                         f"gemma or phi3 ({len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)} architectures are known)")


def load_model(path: str | Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    check_architecture(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a causal language model from {path}: {e}") from None
    model.config.use_cache = False
    return model
