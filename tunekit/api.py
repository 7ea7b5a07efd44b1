"""The public Python API: the stages as functions, for notebooks, the server and scripts.

    import tunekit
    run_dir = tunekit.run("examples/support/config.yaml", runs_dir="runs")

    from tunekit import api
    cfg = api.load({"data": {"train": "train.jsonl"}, "train": {"epochs": 2}})
    api.prepare(cfg); api.train(cfg); api.evaluate(cfg); api.report(cfg)

Every function takes a config as a `Config`, a path to a YAML file, or a dict (the YAML's
content), and a `runs_dir` (the run folder is `<runs_dir>/<config name>`). Each one does
what the command of the same name does: a stage already done with the same inputs is
skipped, training resumes from its last checkpoint, and the run folder's lock keeps two
callers out of one folder. A YAML path also claims the run folder for that file, as the CLI
does (a second file naming the same run is refused); a dict or a Config does not, since it
has no file to name.

`train` and `export` are reached as `tunekit.api.train` and `tunekit.api.export`: at the
package's top level those names are the `tunekit.train` and `tunekit.export` packages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from tunekit.config import Config

ConfigLike = Union[Config, str, Path, dict]


def load(config: ConfigLike, overrides: list[str] = ()) -> Config:
    """A validated Config from a Config, a YAML path or a dict; `overrides` are `key.sub=value`
    strings as on the command line. Relative data paths in a YAML file resolve against its folder."""
    from tunekit.config import _format_errors, load_config
    from tunekit.errors import ConfigError

    if isinstance(config, Config):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    if isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    if not isinstance(config, dict):
        raise ConfigError(f"a config is a Config, a YAML file's path or a dict, not {type(config).__name__}")
    if overrides:
        from tunekit.config import _apply_override, parse_override

        config = _copy(config)
        for text in overrides:
            _apply_override(config, *parse_override(text))
    from pydantic import ValidationError

    try:
        return Config.model_validate(config)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "(dict)")) from None


def _copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy(v) for v in tree]
    return tree


def run_dir(config: ConfigLike, runs_dir: str | Path = "runs") -> Path:
    """Where the run of `config` lives: `<runs_dir>/<name>`."""
    from tunekit import pipeline

    return pipeline.run_dir_for(load(config), runs_dir)


@contextlib.contextmanager
def _holding(config: ConfigLike, runs_dir: str | Path, force: bool) -> Iterator[tuple[Config, Path]]:
    """The loaded config and its run folder, locked (and claimed, for a YAML file) for the block."""
    from tunekit import pipeline, runfolder

    cfg = load(config)
    folder = pipeline.run_dir_for(cfg, runs_dir)
    with runfolder.locked(folder):
        if isinstance(config, (str, Path)):
            runfolder.claim(folder, config, cfg, force)
        yield cfg, folder


def run(config: ConfigLike, runs_dir: str | Path = "runs", *, force: bool = False, resume: bool = True) -> Path:
    """Every stage in order (export only when export.formats is set), each skipped when already
    done; returns the run folder. `force` redoes every stage; `resume=False` ignores checkpoints."""
    from tunekit import pipeline

    with _holding(config, runs_dir, force) as (cfg, folder):
        pipeline.run_all(cfg, folder, force=force, resume=resume)
    return folder


def _stage(stage: str, config: ConfigLike, runs_dir: str | Path, force: bool, resume: bool = True) -> dict | None:
    from tunekit import pipeline

    with _holding(config, runs_dir, force) as (cfg, folder):
        return pipeline.run_stage(cfg, folder, stage, force=force, resume=resume)


def prepare(config: ConfigLike, runs_dir: str | Path = "runs", *, force: bool = False) -> dict | None:
    """Validate, clean, dedupe and split the data into `<run>/data/`; returns the data report
    (None when already done: it is in `<run>/data/data_report.json`)."""
    return _stage("prepare", config, runs_dir, force)


def train(config: ConfigLike, runs_dir: str | Path = "runs", *, force: bool = False, resume: bool = True) -> dict | None:
    """Fine-tune, resuming from the last checkpoint unless `resume=False`; returns the training
    summary (None when already done: it is in `<run>/train_state.json`)."""
    return _stage("train", config, runs_dir, force, resume)


def evaluate(config: ConfigLike, runs_dir: str | Path = "runs", *, force: bool = False) -> dict | None:
    """Score the base, few-shot and tuned models on held-out data; returns scores.json's content
    (None when already done: it is in `<run>/eval/scores.json`)."""
    return _stage("eval", config, runs_dir, force)


def report(config: ConfigLike, runs_dir: str | Path = "runs", *, force: bool = False) -> Path:
    """Write report.md and report.html; returns report.md's path."""
    _stage("report", config, runs_dir, force)
    return run_dir(config, runs_dir) / "report.md"


def export(config: ConfigLike, runs_dir: str | Path = "runs", formats: list[str] | None = None) -> dict:
    """Write and verify the run's exports (`formats`, default the config's export.formats:
    adapter, merged, gguf, ollama) into `<run>/export/`; returns what was written."""
    if formats is not None:
        config = load(config, [f"export.formats=[{', '.join(formats)}]"])
    return _stage("export", config, runs_dir, force=True) or {}
