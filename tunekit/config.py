"""Typed configuration: one YAML file, sections data/model/method/train/eval/export.

Unknown keys and bad values are errors that name the key path (and the closest valid
key for a typo). CLI overrides are `key.sub=value`, parsed as YAML scalars. The fully
resolved config, every default written out, is saved as `runs/<name>/config.yaml`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunekit.atomic import is_there
from tunekit.data.chat_templates import is_path_setting
from tunekit.errors import ConfigError


class _Section(BaseModel):
    # No setting means anything at inf or nan (`train.epochs=1e309` would run forever).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    base: str = "smollm2-135m-instruct"
    """Registry name, local HF folder, .gguf file or hub id."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """The dtype the base model's weights load in; compute follows train.precision, and a full fine-tune keeps fp32 master weights."""
    chat_template: str = "auto"
    """The model's own template (auto; tunekit's plain-text `base` for a model without one), a named one
    (chatml, llama3, gemma, mistral, phi3, base) or a Jinja file. Every stage and export uses it."""



COLUMN_KEYS = ("messages", "conversations", "role", "content", "prompt", "completion",
               "instruction", "input", "output", "system", "text")
DataFormat = Literal["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text"]


def _check_columns(v: dict[str, str]) -> dict[str, str]:
    for k in v:
        if k not in COLUMN_KEYS:
            close = difflib.get_close_matches(k, COLUMN_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown standard field '{k}'{hint}; map one of {', '.join(COLUMN_KEYS)} to your column name")
    return v


class Source(NamedTuple):
    """One training source as prepare reads it: data.train, or one entry of data.mix."""

    path: str
    weight: float
    format: str
    columns: dict[str, str]


class MixSource(_Section):
    path: str
    """A file or folder, read like data.train."""
    weight: float = Field(gt=0, allow_inf_nan=False)
    """Relative share of training rows; only the ratios between sources matter."""
    format: DataFormat = "auto"
    """Record format of this source, as data.format."""
    columns: dict[str, str] = {}
    """Your column name for a standard field in this source, as data.columns."""

    _columns = field_validator("columns")(_check_columns)


class DataConfig(_Section):
    """Where training data comes from and how prepare cleans, splits and mixes it.

    Give exactly one of `train` (one file or folder) and `mix` (two or more sources with
    weights). With a mix, every source is read, validated, cleaned and deduplicated (across
    sources too: the earlier source keeps a record both hold) like one file, and
    `max_reject_fraction` applies to each source on its own. The train/valid split is made
    over all kept records. The first source is the anchor: each of its training rows is
    used once. Source i then gets round(anchor_train_rows * weight_i / weight_anchor)
    training rows: a seeded subsample without replacement when it has more, every row plus
    seeded repeats when it has fewer. Its validation rows are kept at the same ratio
    (subsampled, never repeated), so a large general set does not swamp valid.jsonl.
    train.jsonl interleaves the sources evenly, so any prefix of it holds the mix.
    """

    train: str | None = None
    """Training data: a file (JSONL, JSON, CSV, Parquet, .txt/.md) or a folder (.txt/.md files, or `save_to_disk`)."""
    mix: list[MixSource] | None = None
    """Instead of train: sources [{path, weight, format, columns}], the first the anchor (see above)."""
    eval: str | None = None
    """Held-out questions for generation metrics (optional)."""
    format: DataFormat = "auto"
    """Record format of data.train; "auto" detects it from the fields of the records."""
    columns: dict[str, str] = {}
    """Your column name for a standard field in data.train, e.g. {prompt: question, completion: answer}."""
    valid_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of the kept records held out in valid.jsonl for the held-out loss."""
    max_length: int = Field(512, gt=8)
    """Tokens per training example, chat template included; longer conversations follow over_length, and documents are cut into chunks."""
    over_length: Literal["drop", "truncate_history"] = "drop"
    """A conversation longer than max_length is dropped, or loses its oldest exchanges until it fits."""
    chunk_overlap: int = Field(64, ge=0)
    """Plain-text documents are cut into max_length-token chunks sharing this many tokens of context."""
    dedup: bool = True
    """Remove exact duplicates and near duplicates (rejects exact_duplicate and near_duplicate)."""
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0)
    """Estimated Jaccard similarity (MinHash over character 5-grams) at which a record is a near duplicate of an earlier one."""
    split_similarity: float = Field(0.7, gt=0.0, le=1.0)
    """Records at least this similar (estimated Jaccard) stay on the same side of the train/valid split."""
    mask_pii: list[Literal["email", "phone", "card"]] = []
    """Replace these in every text with [EMAIL], [PHONE], [CARD]."""
    train_on: Literal["all_assistant", "last_assistant", "all"] = "all_assistant"
    """Which tokens carry loss: every assistant answer, the last one only, or every token."""
    packing: bool = False
    """Pack each micro-batch's examples into rows without padding, isolated from each other."""
    max_reject_fraction: float = Field(0.10, ge=0.0, le=1.0)
    """Stop before training when more than this share of records is rejected."""

    _columns = field_validator("columns")(_check_columns)

    @model_validator(mode="after")
    def _overlap_fits(self) -> "DataConfig":
        if self.chunk_overlap >= self.max_length // 2:
            raise ValueError(f"data.chunk_overlap ({self.chunk_overlap}) must be below half of data.max_length ({self.max_length})")
        return self

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> "DataConfig":
        if self.train is None and self.mix is None:
            raise ValueError("data.train or data.mix is required: set data.train (one file) or data.mix (several sources with weights)")
        if self.train is not None and self.mix is not None:
            raise ValueError("data.train and data.mix are both set; keep data.train for one file, "
                             "or move it into data.mix as the first source (the anchor) with a weight")
        if self.mix is not None and len(self.mix) < 2:
            raise ValueError(f"data.mix has {len(self.mix)} source(s); a mix needs at least 2. "
                             "For one file set data.train instead")
        if self.mix is not None and (self.format != "auto" or self.columns):
            # Silently ignoring them would read a source with the wrong mapping.
            raise ValueError("data.format and data.columns apply to data.train only; "
                             "with data.mix set format and columns on each source")
        return self

    def sources(self) -> list[Source]:
        """The training sources in order, the anchor first; data.train is one source of weight 1."""
        if self.mix is None:
            return [Source(self.train, 1.0, self.format, self.columns)]
        return [Source(m.path, m.weight, m.format, m.columns) for m in self.mix]


class MethodConfig(_Section):
    kind: Literal["lora", "dora", "rslora", "full"] = "lora"
    """lora; dora (weight-decomposed LoRA); rslora (LoRA scaled by alpha/sqrt(r)); full (the weights themselves)."""
    r: int = Field(16, gt=0)
    """LoRA rank: the inner width of each adapter's two matrices."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scale: the update is multiplied by alpha / r (alpha / sqrt(r) for rslora)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on each adapter's input while training."""
    target_modules: str | list[str] = "all-linear"
    """all-linear, a list of module names (q_proj, ...), or one regex matched against full module names."""
    lora_plus_ratio: float | None = Field(None, ge=1.0)
    """LoRA+: B matrices learn this many times faster than A (the paper suggests 16)."""
    layers: str | None = None
    """Which transformer blocks train: null (all), "last:K", or a range "A-B" (inclusive)."""
    train_embeddings: bool = False
    """Also train the input embeddings (LoRA: saved whole with the adapter; full: with chosen layers)."""
    train_lm_head: bool = False
    """Also train the output layer; where it is tied to the embeddings (SmolLM2, many small models) that trains them too."""
    parameters: list[str] = []
    """full only: regexes searched in parameter names (e.g. "mlp\\.", "layers\\.2[0-9]\\."); only matching
    parameters train, plus the embeddings / LM head when asked (replaces layers)."""

    @field_validator("layers")
    @classmethod
    def _layers_spec(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"last:\d+|\d+-\d+", v.strip()):
            raise ValueError('must be "last:K" or a range "A-B", e.g. "last:12" or "10-29"')
        return v.strip()


class ReplayConfig(_Section):
    fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of each epoch's training examples that are general conversations, so the model keeps
    answering ordinary questions (0: off). Without `file`, they are the base model's own answers to
    bundled general prompts, generated once per base model and cached (tunekit/train/replay.py)."""
    file: str | None = None
    """Your own general chat data (any training format) to replay instead of the base model's answers."""
    kl: float = Field(0.0, ge=0.0)
    """Weight of a KL term pulling the tuned model's next-token distribution on replay answers toward
    the base model's (the same model with its adapters disabled: LoRA kinds only); 0: plain replay."""


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0)
    """Passes over the training examples; a fraction ends part-way through the last."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate, reached after warmup."""
    batch_size: int = Field(8, gt=0)
    """Examples per micro-batch (under torchrun, the global micro-batch the processes share)."""
    grad_accum: int = Field(1, gt=0)
    """Micro-batches per optimiser step; the step's loss is normalised by the supervised tokens of all of them."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """How the learning rate moves after warmup."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of the optimiser steps over which the learning rate rises from 0 to lr."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW's decoupled weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Clip the gradient's global norm to this before each step."""
    save_every: int = Field(100, ge=0)
    """Checkpoint every N optimiser steps (0: only at the end)."""
    keep_last: int = Field(2, gt=0)
    """How many of the newest checkpoints are kept; the best one (keep_best) is kept besides."""
    log_every: int = Field(5, gt=0)
    """Write a line of metrics.jsonl every N optimiser steps."""
    eval_every: int = Field(0, ge=0)
    """Held-out loss every N optimiser steps (0: only at the end)."""
    early_stopping_patience: int = Field(0, ge=0)
    """Stop after this many evaluations without a better held-out loss (0: never)."""
    keep_best: bool = True
    """Keep the checkpoint with the best held-out loss besides the last keep_last."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """The precision of every stage of the run (training, held-out loss, evaluation, chat, generate):
    bf16 autocast with fp32 master weights, fp16 autocast with a gradient scaler (GPUs without bf16),
    or fp32. auto: bf16 where it measures fast (tunekit doctor), fp16 on a GPU without bf16, else fp32."""
    tensorboard: bool = False
    """Also write TensorBoard event files under <run>/tensorboard (needs the tensorboard package)."""
    lean_memory: bool = False
    """Return freed activation memory to the system at once (glibc): a lower peak RSS, but slower
    training on a CPU (page faults on every fresh mapping). Measured in tunekit/train/allocator.py."""
    threads: int | None = Field(None, gt=0)
    """Threads torch uses on a CPU (null: every core this process may use, shared out among the
    processes torchrun starts on one machine)."""
    replay: ReplayConfig = ReplayConfig()
    """General conversations mixed into training against forgetting."""
    distributed: Literal["auto", "ddp", "fsdp2"] = "auto"
    """Under torchrun (several processes): ddp keeps a whole copy of the model in every process;
    fsdp2 shards weights, gradients and optimiser state across them, per decoder layer. auto: ddp
    for LoRA kinds (their gradients are small); for full, fsdp2 when the memory estimate says a
    whole copy does not fit one process's memory. A single process ignores it."""


class EvalConfig(_Section):
    few_shot_k: int = Field(3, ge=0)
    """Training examples shown to the few-shot contender, the most similar to each question (0: no few-shot contender)."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest answer a contender may give, in tokens."""
    batch_size: int = Field(32, gt=0)
    """Questions answered, and held-out examples scored, per batch."""
    max_questions: int | None = Field(None, gt=0)
    """Ask only the first N held-out questions (null: all)."""
    contenders: list[Literal["base", "few_shot", "tuned"]] = ["base", "few_shot", "tuned"]
    """Who answers the held-out questions: the base model, the base model with a few-shot prompt, the tuned model."""
    forgetting: bool = True
    """The forgetting check: base and tuned answer 178 bundled general questions (scored as held-out
    facts are) and score general English prose (perplexity, a second signal)."""
    forgetting_threshold: float = Field(0.10, gt=0, lt=1)
    """Flag forgetting when, with 95% confidence, the tuned model kept less than 1 - this share of the
    base model's general score (the whole paired-bootstrap interval below it); a perplexity rise
    beyond it is noted."""


class ExportConfig(_Section):
    formats: list[Literal["adapter", "merged", "gguf", "ollama"]] = []
    """What tunekit run exports as its last stage (empty: nothing); tunekit export --format chooses for itself."""
    # The merged folder's dtype; auto: the base model's own (config.json), so the export is its size.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gguf_type: Literal["f16", "bf16", "q8_0"] = "f16"
    """Tensor type of model.gguf."""
    # Each written model answers this many held-out questions greedily; all must match the adapter model.
    check_answers: int = Field(5, ge=0)


class Config(_Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """The run's name: its folder is runs/<name>, and a second config file with the same name is refused."""
    seed: int = Field(0, ge=0, lt=2**63)  # what numpy's and torch's generators all take
    """Seed of every random choice (split, data order, initialisation, sampling, bootstrap intervals): the same seed, data and config give the same run."""
    model: ModelConfig = ModelConfig()
    data: DataConfig
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.method.kind == "full" and self.method.target_modules != "all-linear":
            raise ValueError("method.target_modules applies to LoRA methods only; for full use method.layers or method.parameters")
        if self.method.lora_plus_ratio and self.method.kind == "full":
            raise ValueError("method.lora_plus_ratio applies to LoRA methods (B matrices); kind full has none")
        if self.method.parameters and self.method.kind != "full":
            raise ValueError("method.parameters applies to kind full; LoRA methods choose modules with method.target_modules")
        if self.method.parameters and self.method.layers:
            raise ValueError("method.parameters and method.layers both choose what trains; set one of them")
        if self.train.replay.kl and self.method.kind == "full":
            raise ValueError("train.replay.kl compares with the base model through disabled adapters, which kind full "
                             "does not have; use a LoRA method or set train.replay.kl: 0")
        if self.train.early_stopping_patience and not self.train.eval_every:
            raise ValueError("train.early_stopping_patience needs train.eval_every > 0 (how often to measure the held-out loss)")
        return self


def _valid_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names at `path` inside `model` (for 'did you mean')."""
    for part in path:
        if part.isdigit():  # an item of a list of sections (data.mix.0)
            continue
        field = model.model_fields.get(part)
        ann = _section_in(getattr(field, "annotation", None)) if field else None
        if ann is None:
            return []
        model = ann
    return list(model.model_fields)


def _section_in(ann: Any) -> type[BaseModel] | None:
    """The section class inside an annotation: Section, list[Section], Section | None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((m for m in map(_section_in, get_args(ann)) if m is not None), None)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            choices = _valid_keys(Config, loc[:-1])
            close = difflib.get_close_matches(loc[-1], choices, n=1)
            hint = f" (did you mean '{'.'.join(loc[:-1] + close)}'?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}; valid keys here: {', '.join(choices)}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `key.sub=value`; the value is read as a YAML scalar (1e-4, true, [a, b])."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError) as e:  # PyYAML's parser is pure Python: a deep [[[... unwinds cleanly
        raise ConfigError(f"override '{_short(text)}': the value is not valid YAML ({_first_line(e)}); "
                          "quote it if it is text, e.g. key='value: with colon'") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return path, value


def _short(text: str, keep: int = 80) -> str:
    return text if len(text) <= keep else text[:keep] + "..."


def _first_line(e: Exception) -> str:
    return str(e).strip().split("\n")[0] if isinstance(e, yaml.YAMLError) else "nested too deep"


def _apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), base_dir: Path | None = None) -> Config:
    """Read, override and validate a config. Relative data paths resolve against the file's folder."""
    raw: dict = {}
    source = "(overrides only)"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not is_there(path):
            raise ConfigError(f"config file {_short(str(path))} not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"config {path} is not valid YAML: {e if isinstance(e, yaml.YAMLError) else 'nested too deep'}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not UTF-8 text; save it as UTF-8") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping of sections (data, model, ...)")
        base_dir = base_dir or path.parent
    for text in overrides:
        _apply_override(raw, *parse_override(text))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    if base_dir is not None:
        if cfg.data.train is not None:
            cfg.data.train = _resolve_path(cfg.data.train, base_dir)
        for m in cfg.data.mix or []:
            m.path = _resolve_path(m.path, base_dir)
        if cfg.data.eval:
            cfg.data.eval = _resolve_path(cfg.data.eval, base_dir)
        if cfg.train.replay.file:
            cfg.train.replay.file = _resolve_path(cfg.train.replay.file, base_dir)
        if is_path_setting(cfg.model.chat_template):
            cfg.model.chat_template = _resolve_path(cfg.model.chat_template, base_dir)
    return cfg


def _resolve_path(p: str, base_dir: Path) -> str:
    q = Path(p)
    try:
        if q.is_absolute() or q.exists():
            return str(q)
        return str((base_dir / q).resolve()) if (base_dir / q).exists() else str(q)
    except (OSError, ValueError):  # a name longer than the file system takes: the stage reading it says so
        return str(q)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
