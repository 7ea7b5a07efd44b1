"""What one `tunekit serve` was started with, and the job defaults every job starts from.

A job through the API names only its model, data and three hyperparameters; everything else
(LoRA rank, learning-rate schedule, eval settings, ...) is tunekit's default, or the value in
the `--job-defaults` YAML: a tunekit config without data, checked when the server starts.
"Auto" hyperparameters are those values: `n_epochs: auto` is the defaults' train.epochs, and
`learning_rate_multiplier` multiplies the defaults' train.lr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunekit.errors import ConfigError

# Set per job from the request: a defaults file naming them would be silently overridden.
_PER_JOB = (("name",), ("seed",), ("data", "train"), ("data", "mix"), ("data", "eval"))


@dataclass(frozen=True)
class Settings:
    root: Path  # $TUNEKIT_HOME/serve
    workers: int = 1
    max_queue: int = 64
    max_upload_bytes: int = 512 * 2**20
    defaults: dict = field(default_factory=dict)
    poll_s: float = 0.25  # how often the scheduler looks at the queue and the running jobs
    stop_grace_s: float = 30.0  # SIGTERM (a checkpoint at the next step boundary), then SIGKILL after this
    precision: str | None = None  # chat completions' compute precision; None: each model's own (infer/load.py)


def load_defaults(path: str | Path | None) -> dict:
    """The job defaults YAML as a dict, checked: it must make a valid config once a job adds its data."""
    if path is None:
        return {}
    import yaml

    from tunekit.config import Config, _format_errors

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"--job-defaults {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--job-defaults {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--job-defaults {path} must be a mapping of config sections (model, method, train, eval)")
    for keys in _PER_JOB:
        node = raw
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            raise ConfigError(f"--job-defaults {path} sets {'.'.join(keys)}, which each job sets from its request "
                              f"(files, seed, job id); remove it")
    from pydantic import ValidationError

    probe = {**raw, "data": {**(raw.get("data") or {}), "train": "probe.jsonl"}}
    try:
        Config.model_validate(probe)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, f"--job-defaults {path}")) from None
    return raw
