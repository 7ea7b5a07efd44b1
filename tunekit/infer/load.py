"""Loading what a user names (a run, an adapter folder, a model) to answer with, in the dtype and
precision the run's eval used, so chat, generate and the server answer as eval scored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunekit.errors import ConfigError
from tunekit.hardware import Precision, choose_precision
from tunekit.models.tuned import Target, load_target, resolve_target, run_config, run_precision

DTYPES = ("float32", "bfloat16")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    target: Target
    dtype: str
    precision: Precision


def open_model(spec: str, base: str | None = None, runs_dir: str | Path = "runs", dtype: str | None = None,
               precision: str | None = None) -> Loaded:
    """Resolve and load what `spec` names (see tuned.resolve_target). dtype: by default the run's
    model.dtype for a run, else float32. precision (auto | fp32 | bf16 | fp16): by default what the
    eval stage uses (tuned.run_precision: the precision the run trained in), else auto, so a run's
    chat and generate answer as its eval did."""
    target = resolve_target(spec, base=base, runs_dir=runs_dir)
    dtype = answer_dtype(target, dtype)
    chosen = answer_precision(target, precision)
    model, tokenizer = load_target(target, dtype, chosen)
    return Loaded(model, tokenizer, target, dtype, chosen)


def answer_dtype(target: Target, dtype: str | None = None) -> str:
    """`dtype`, else the run's model.dtype, else float32; ConfigError for another."""
    dtype = dtype or _run_setting(target, "model", "dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def answer_precision(target: Target, precision: str | None = None) -> Precision:
    if precision:
        return choose_precision(precision, model_dir=target.model, key="--precision")
    return run_precision(target.run_dir, target.model)  # a run answers in the precision it trained (and its eval ran) in


def _run_setting(target: Target, section: str, key: str) -> str | None:
    if target.run_dir is None:
        return None
    return (run_config(target.run_dir).get(section) or {}).get(key)


def describe(loaded: Loaded) -> str:
    """One line: what was loaded, from where, in which dtype."""
    t = loaded.target
    how = f"{loaded.dtype} weights, computing in {loaded.precision.describe()}"
    if t.adapter:
        return f"{t.label} (base {t.model}, adapter {t.adapter}; {how})"
    if Path(t.label).expanduser().resolve() == t.model.resolve():  # a folder named by its path
        return f"{t.model} ({how})"
    return f"{t.label} (weights {t.model}; {how})"


def context_window(model) -> int | None:
    """The model's context in tokens; None: no known limit."""
    return getattr(model.config, "max_position_embeddings", None) or None
