"""What `chat`, `generate` and `export` work on: a finished run, a PEFT adapter folder on its
base, or a plain model (name, hub id, HF folder, GGUF file, a merged export).

An adapter only means something on the base it was trained on. A wrong base of another
size fails loudly in PEFT, but one of the same shapes (SmolLM2-135M base instead of
-Instruct, say) loads silently and answers nonsense, so the base is checked twice before
any weights load: by shape (every LoRA matrix against the base's matrix it adapts, read
from the safetensors headers) and by identity (when the base recorded in
adapter_config.json is on this machine, a slice of both embeddings must agree).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from tunekit.errors import CheckpointError, ModelError
from tunekit.hardware import FP32, Precision, choose_precision, for_inference, pick_device
from tunekit.models._log import say

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Rows compared to tell two same-shaped bases apart, spread over the whole tensor (the first
# rows of an embedding are special and byte tokens, which a fine-tune moves least). bf16 and
# fp32 copies of one model agree within bf16 rounding (2^-8 relative); a fine-tuned sibling
# (base vs -Instruct) does not.
_IDENTITY_ROWS = 64
_IDENTITY_RTOL = 1e-2


@dataclass(frozen=True)
class Target:
    model: Path  # HF folder with the weights: the base, or a full fine-tune's checkpoint
    tokenizer: Path  # folder with the tokenizer and chat template
    adapter: Path | None = None  # PEFT adapter folder to put on `model`
    label: str = ""
    run_dir: Path | None = None
    chat_template: str = "auto"  # model.chat_template: a run's setting, so chat and exports format as training did


def run_config(run_dir: Path) -> dict:
    """The run's resolved config (config.yaml, every default written out) as plain data."""
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read {run_dir / 'config.yaml'}: {e}") from None


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "train_state.json").is_file() or (path / "checkpoints").is_dir())


def resolve_target(spec: str, base: str | None = None, runs_dir: str | Path = "runs") -> Target:
    """A run folder (or a run name under `runs_dir`), an adapter folder (its base from `base`,
    else the one adapter_config.json records), or anything `resolve()` accepts."""
    from tunekit.models import resolve

    path = Path(spec).expanduser()
    for run in (path, Path(runs_dir) / spec):
        if run.is_dir() and is_run(run):
            return _run_target(run, base)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return _adapter_target(path, base)
    if base:
        raise ModelError(f"--base applies to an adapter, and {spec} is not an adapter folder (no adapter_config.json)")
    try:
        folder = Path(resolve(spec))
    except ModelError as e:
        raise ModelError(f"{spec} is not a run folder (no config.yaml + train_state.json), not an adapter folder "
                         f"(no adapter_config.json), and not a model tunekit can find: {e}") from None
    return Target(model=folder, tokenizer=folder, label=spec)


def _run_target(run_dir: Path, base: str | None) -> Target:
    from tunekit.models import resolve
    from tunekit.train.checkpoint import tuned_checkpoint

    if not (run_dir / "train_state.json").is_file():
        raise CheckpointError(f"run {run_dir} has no finished training (no train_state.json), so there is no tuned model "
                              f"to use yet; finish it with `tunekit train {run_dir / 'config.yaml'}` (it resumes)")
    ckpt, _ = tuned_checkpoint(run_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"run {run_dir} names checkpoint {ckpt} as its tuned model, but the folder is gone; "
                              f"retrain with `tunekit train {run_dir / 'config.yaml'} --force`")
    recorded = run_config(run_dir).get("model", {}).get("base")
    if not recorded and not base:
        raise CheckpointError(f"{run_dir / 'config.yaml'} names no model.base; give the base with --base MODEL")
    base_dir = Path(resolve(base or recorded))
    label = run_dir.name
    template = run_config(run_dir).get("model", {}).get("chat_template") or "auto"
    if (ckpt / "adapter_config.json").is_file():
        check_adapter(ckpt, base_dir)
        return Target(model=base_dir, tokenizer=base_dir, adapter=ckpt, label=label, run_dir=run_dir, chat_template=template)
    if not (ckpt / "config.json").is_file():
        raise CheckpointError(f"checkpoint {ckpt} holds neither an adapter (adapter_config.json) nor full weights (config.json)")
    return Target(model=ckpt, tokenizer=base_dir, label=label, run_dir=run_dir, chat_template=template)


def _adapter_target(adapter: Path, base: str | None) -> Target:
    from tunekit.models import resolve

    config = read_adapter_config(adapter)
    recorded = config.get("base_model_name_or_path")
    if base is None and not recorded:
        raise ModelError(f"adapter {adapter} does not record its base model (adapter_config.json has no "
                         f"base_model_name_or_path); name it with --base MODEL")
    base_dir = Path(resolve(base)) if base else _recorded_base(adapter, recorded)
    check_adapter(adapter, base_dir)
    # An exported adapter carries the tokenizer it was trained with, chat template included.
    tokenizer = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
    return Target(model=base_dir, tokenizer=tokenizer, adapter=adapter, label=adapter.name)


def _recorded_base(adapter: Path, recorded: str) -> Path:
    local = _local_copy(recorded)
    if local is None:
        raise ModelError(f"adapter {adapter} was trained on {recorded} (recorded in adapter_config.json), which is not "
                         f"on this machine; name its base with --base MODEL (a registry name, hub id or folder)")
    return local


def _local_copy(name_or_path: str) -> Path | None:
    """`name_or_path` as a folder already on this machine (a path or a cache entry); never fetches."""
    from tunekit.models.cache import cached
    from tunekit.models.registry import cache_name, is_valid_name, looks_like_hub_id

    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if is_valid_name(name_or_path) or looks_like_hub_id(name_or_path):
        return cached(cache_name(name_or_path))
    return None


def read_adapter_config(adapter: Path) -> dict:
    missing = [f for f in ADAPTER_FILES if not (adapter / f).is_file()]
    if missing:
        raise CheckpointError(f"adapter folder {adapter} is missing {' and '.join(missing)}; an adapter is PEFT's "
                              f"folder format ({', '.join(ADAPTER_FILES)})")
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{adapter / 'adapter_config.json'} is not valid JSON: {e}") from None


def _shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for every *.safetensors in `folder`, from the headers alone."""
    from safetensors import safe_open

    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def _base_key(adapter_key: str) -> tuple[str, str] | None:
    """"base_model.model.X.lora_A.weight" -> ("X.weight", "lora_A"); None for keys that adapt nothing."""
    key = adapter_key.removeprefix("base_model.model.")
    for part in ("lora_embedding_A", "lora_embedding_B", "lora_A", "lora_B"):
        # Linear LoRA keys end ".lora_A.weight"; embedding LoRA keys end ".lora_embedding_A" (a parameter).
        for marker in (f".{part}.", f".{part}"):
            if marker in key and (marker.endswith(".") or key.endswith(marker)):
                return f"{key.split(marker)[0]}.weight", part
    return None


def check_adapter(adapter: Path, base_dir: Path) -> None:
    """Raise ModelError unless the adapter fits `base_dir` by shape and, where the recorded base
    is on this machine, is the same model."""
    config = read_adapter_config(adapter)
    base_shapes = _shapes(base_dir)
    if not base_shapes:
        raise ModelError(f"base model {base_dir} has no *.safetensors weights to check the adapter against")
    if "lm_head.weight" not in base_shapes and "model.embed_tokens.weight" in base_shapes:
        base_shapes["lm_head.weight"] = base_shapes["model.embed_tokens.weight"]  # tied head
    problems = []
    for key, shape in _shapes(adapter).items():
        found = _base_key(key)
        if found is None:
            continue
        base_key, part = found
        want = base_shapes.get(base_key)
        if want is None:
            problems.append(f"it adapts {base_key.removesuffix('.weight')}, which the base does not have")
        elif len(want) == 2 and not _fits(part, shape, want):
            problems.append(f"{key} is {list(shape)} but the base's {base_key} is {list(want)}")
        if len(problems) >= 3:
            break
    recorded = config.get("base_model_name_or_path") or "an unrecorded base"
    if problems:
        raise ModelError(f"adapter {adapter} does not fit base model {base_dir}: " + "; ".join(problems)
                         + f". The adapter was trained on {recorded} (adapter_config.json); load it on that model")
    _check_identity(adapter, base_dir, recorded)


def _fits(part: str, shape: tuple[int, ...], base: tuple[int, ...]) -> bool:
    out_f, in_f = base  # nn.Linear weight is [out, in]; nn.Embedding weight is [num, dim]
    return {
        "lora_A": shape[-1] == in_f,
        "lora_B": shape[0] == out_f,
        "lora_embedding_A": shape[-1] == out_f,
        "lora_embedding_B": shape[0] == in_f,
    }[part]


def _check_identity(adapter: Path, base_dir: Path, recorded: str) -> None:
    recorded_dir = _local_copy(recorded)
    if recorded_dir is None:
        say(f"adapter {adapter.name} records base {recorded}, which is not on this machine; checked by shape only")
        return
    if recorded_dir.resolve() == base_dir.resolve():
        return
    import torch

    for a, b in zip(_identity_sample(recorded_dir), _identity_sample(base_dir), strict=False):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=_IDENTITY_RTOL, atol=1e-3):
            raise ModelError(f"adapter {adapter} was trained on {recorded} (adapter_config.json), and {base_dir} is a "
                             f"different model of the same shapes (their weights differ); load the adapter on {recorded}")


def _identity_sample(folder: Path) -> list:
    """Rows spread over the input embedding and over the first attention projection, as fp32."""
    from safetensors import safe_open

    wanted = ("embed_tokens.weight", "wte.weight", "self_attn.q_proj.weight", "attn.c_attn.weight")
    found = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in sorted(st.keys()):
                kind = next((w for w in wanted if k.endswith(w)), None)
                if kind is None or any(x.endswith(kind) for x in found):
                    continue
                t = st.get_slice(k)
                rows = t.get_shape()[0]
                step = max(1, rows // _IDENTITY_ROWS)
                found[k] = t[0:rows:step].float() if rows > 1 else t[:].float()
    return [found[k] for k in sorted(found, key=lambda k: next(i for i, w in enumerate(wanted) if k.endswith(w)))]


def load_target(target: Target, dtype: str = "float32", precision: Precision = FP32):
    """(model, tokenizer) ready to generate on the precision's device: eval mode, KV cache on.

    In fp32 a model with an adapter is a PeftModel (its adapter named "tuned"), so chat can switch
    adapters. In bf16/fp16 the adapter is merged into the fp32 weights before they are cast, as the
    eval stage does: an adapter applied beside cast weights rounds differently and could change a
    greedy answer away from the one the eval scored."""
    from tunekit.models.loading import load_tokenizer

    return (load_answering(target.model, target.adapter, dtype, precision),
            load_tokenizer(target.tokenizer, target.chat_template))


def run_precision(run_dir: Path | None, model_dir: Path, setting: str | None = None) -> Precision:
    """The precision a run's later stages (eval, chat, generate, the curve) compute in.

    What its training resolved to (train_state.json) when this machine has that kind of device:
    a cache measured anew, or other thread counts, must not move a finished run to another
    precision. Otherwise (no training yet, or a run moved between a GPU and a CPU) `setting`,
    by default the run's train.precision, decided on this machine."""
    state = {}
    if run_dir is not None and (run_dir / "train_state.json").is_file():
        state = json.loads((run_dir / "train_state.json").read_text())
    if state.get("precision") and state.get("device") == pick_device().type:
        chosen = choose_precision(state["precision"], model_dir=model_dir)
        return dataclasses.replace(chosen, reason=f"as the run trained ({state.get('precision_reason', state['precision'])})")
    if setting is None and run_dir is not None:
        setting = (run_config(run_dir).get("train") or {}).get("precision")
    return choose_precision(setting or "auto", model_dir=model_dir)


def load_answering(model_dir: Path, adapter: Path | None, dtype: str, precision: Precision):
    """The model that answers: `model_dir`'s weights with `adapter` on them (see load_target).
    Loaded and merged on the CPU; `for_inference` moves it, cast, to the device."""
    from tunekit.models.loading import load_model

    model = load_model(model_dir, dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), adapter_name="tuned")
        if precision.dtype is not None:
            model = model.merge_and_unload()
    model = for_inference(model, precision)
    model.config.use_cache = True
    return model


def attach_adapter(model, adapter: Path, base_dir: Path, name: str):
    """Check `adapter` against `base_dir`, load it onto `model` as `name` and make it active;
    returns the (possibly newly wrapped) model."""
    check_adapter(adapter, base_dir)
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if name not in model.peft_config:
            model.load_adapter(str(adapter), adapter_name=name)
        model.set_adapter(name)
        return model.eval()
    return PeftModel.from_pretrained(model, str(adapter), adapter_name=name).eval()
