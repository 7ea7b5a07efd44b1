"""Stages in order, each reading the previous stage's artefacts from the run folder.

A finished stage leaves a marker (`.stages/<stage>.json`) holding a hash of the config
sections it depends on. Rerunning skips a stage whose marker matches; a stage whose
inputs changed reruns, and so does everything after it. `force` reruns everything.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tunekit import atomic, runfolder
from tunekit.config import Config, dump_config
from tunekit.progress import console

STAGES = ("prepare", "train", "eval", "report", "export")
# Which config sections each stage's output depends on (cumulative along the path).
_DEPENDS = {
    "prepare": ("seed", "model", "data"),
    "train": ("seed", "model", "data", "method", "train"),
    "eval": ("seed", "model", "data", "method", "train", "eval"),
    "report": ("seed", "model", "data", "method", "train", "eval"),
    "export": ("seed", "model", "data", "method", "train", "export"),
}


# What each stage writes: what a rerun of it replaces, and so sets aside (runfolder.set_aside).
_OUTPUTS = {
    "prepare": ("data",),
    "train": ("checkpoints", "metrics.jsonl", "train_state.json", "loss.png", "tensorboard"),
    "eval": ("eval",),
    "report": ("report.md", "report.html"),
    "export": ("export",),
}

# Settings that change how a run is carried out, not what it computes.
# `distributed` too: DDP and FSDP2 compute the same update as one process (tests/distributed).
_NO_EFFECT = ("threads", "log_every", "save_every", "keep_last", "distributed")


def stage_hash(cfg: Config, stage: str) -> str:
    dumped = cfg.model_dump(mode="json")
    relevant = {k: dumped[k] for k in _DEPENDS[stage]}
    if relevant["model"].get("chat_template") == "auto":  # as before the key existed: runs made then stay done
        del relevant["model"]["chat_template"]
    if "train" in relevant:
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in _NO_EFFECT}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def run_dir_for(cfg: Config, runs_root: str | Path) -> Path:
    return Path(runs_root) / cfg.name


def _marker(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.json"


def is_done(cfg: Config, run_dir: Path, stage: str) -> bool:
    m = _marker(run_dir, stage)
    return m.is_file() and json.loads(m.read_text()).get("hash") == stage_hash(cfg, stage)


def _invalidate_from(run_dir: Path, stage: str) -> None:
    for later in STAGES[STAGES.index(stage):]:
        _marker(run_dir, later).unlink(missing_ok=True)


def _checkpoints_hash(run_dir: Path) -> str | None:
    """The config hash the newest checkpoint was trained with (None: no checkpoint)."""
    from tunekit.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    return json.loads((found[-1][1] / "state.json").read_text()).get("config_hash") if found else None


def replaced_outputs(cfg: Config, run_dir: Path, stage: str, force: bool, resume: bool) -> list[Path]:
    """What running `stage` now would replace: the outputs of it and every later stage that
    finished with other inputs (with `force`, all but the exports); and the checkpoints of an unfinished
    training that cannot be continued (another config, or `resume` off)."""
    out = []
    for later in STAGES[STAGES.index(stage):]:
        m = _marker(run_dir, later)
        # Exports are rewritten format by format (`tunekit export` forces the stage for one format, and
        # the others stay); they are set aside only when made from other inputs.
        done_before = m.is_file() and ((force and later != "export") or json.loads(m.read_text()).get("hash") != stage_hash(cfg, later))
        unfinished_train = later == "train" and (_checkpoints_hash(run_dir) not in (None, "", stage_hash(cfg, "train"))
                                                 or (stage == "train" and not resume))
        if done_before or unfinished_train:
            out += [run_dir / name for name in _OUTPUTS[later] if (run_dir / name).exists()]
    return out


def _resolve_model(cfg: Config) -> Path:
    from tunekit.models import resolve

    return Path(resolve(cfg.model.base))


# Stages that read the base model; report works from files the others wrote.
_USES_MODEL = ("prepare", "train", "eval", "export")


def check_model_limits(cfg: Config) -> None:
    """Reject settings the resolved base model cannot honour, before a stage does any work.

    The config alone cannot know the model's context, so this runs once the model is
    resolved; config.json is read, the weights are not.
    """
    from tunekit.errors import ConfigError
    from tunekit.models.catalog import read_context_length

    limit = read_context_length(_resolve_model(cfg))
    if limit is not None and cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds {cfg.model.base}'s context of {limit} tokens; "
                          f"lower data.max_length (at most {limit})")


def settle_template(cfg: Config) -> Config:
    """`model.chat_template: auto` for a model without a template of its own is tunekit's default,
    written as such into the run's config.yaml: the later stages, chat and exports read there which
    template the run trained with, and a template added to the model folder later changes nothing."""
    from tunekit.data.chat_templates import resolved_setting
    from tunekit.errors import TunekitError
    from tunekit.models.catalog import has_chat_template

    if cfg.model.chat_template != "auto":
        return cfg
    try:
        folder = _resolve_model(cfg)
    except TunekitError:
        return cfg  # the stage that needs the model says why it cannot have it
    setting = resolved_setting("auto", has_chat_template(folder))
    if setting == "auto":
        return cfg
    settled = cfg.model_copy(deep=True)
    settled.model.chat_template = setting
    return settled


def load_run_tokenizer(cfg: Config, path: Path):
    """The base model's tokenizer with the run's chat template; says which when it is not the model's own."""
    from tunekit.models.catalog import has_chat_template
    from tunekit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(path, cfg.model.chat_template)
    if tokenizer.tunekit_template != "own":
        why = "" if has_chat_template(path) else f", as {cfg.model.base} has no chat template of its own"
        console.print(f"[bold]chat template[/] {tokenizer.tunekit_template} (model.chat_template in the run's config.yaml{why}; "
                      f"every stage, chat and export use it)")
    return tokenizer


# Stages every process of a job runs together (torchrun); rank 0 alone runs the others while the
# rest wait for its outcome (hardware.agree).
_ALL_RANKS = ("train", "eval")


def run_stage(cfg: Config, run_dir: Path, stage: str, force: bool = False, resume: bool = True) -> dict | None:
    """Run one stage unless it is already done with the same inputs.

    Under torchrun every process calls this; rank 0 decides whether the stage runs and alone
    writes the run folder (config.yaml, what is set aside, the marker)."""
    from tunekit import hardware

    cfg = settle_template(cfg)
    if not hardware.agree(_before_stage, cfg, run_dir, stage, force, resume):
        return None
    t0 = time.time()
    if stage in _ALL_RANKS or not hardware.joined():
        result = _STAGE_FUNCS[stage](cfg, run_dir, force=force, resume=resume)
    else:
        result = hardware.agree(_STAGE_FUNCS[stage], cfg, run_dir, force=force, resume=resume)
    hardware.agree(atomic.write_json, _marker(run_dir, stage), {"hash": stage_hash(cfg, stage), "seconds": round(time.time() - t0, 1)})
    return result


def _before_stage(cfg: Config, run_dir: Path, stage: str, force: bool, resume: bool) -> bool:
    """Whether `stage` runs; if so, what it replaces is set aside and config.yaml written."""
    if not force and is_done(cfg, run_dir, stage):
        console.print(f"[dim]{stage}: already done (use --force to redo)[/]")
        return False
    # Before anything in the run folder changes: a bad config leaves the last good run intact.
    if stage == "export" and not cfg.export.formats:
        from tunekit.errors import ConfigError

        raise ConfigError("export.formats is empty; set it, e.g. `export.formats=[adapter, merged]`")
    if stage in _USES_MODEL:
        check_model_limits(cfg)
    if stage == "train" and not (run_dir / "data" / "train.jsonl").is_file():
        from tunekit.errors import DataError

        raise DataError(f"{run_dir / 'data' / 'train.jsonl'} is missing: the prepare stage has not run for this run; "
                        "run `tunekit prepare` with this config first, or `tunekit run` for every stage")
    replaced = replaced_outputs(cfg, run_dir, stage, force, resume)
    if replaced:
        kept = runfolder.set_aside(run_dir, replaced, runfolder.previous_key(run_dir))
        console.print(f"[dim]moved what this rerun replaces ({', '.join(p.name for p in replaced)}) to {kept}[/]")
    _invalidate_from(run_dir, stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", dump_config(cfg))
    console.rule(f"[bold]{stage}")
    return True


def run_all(cfg: Config, run_dir: Path, force: bool = False, resume: bool = True) -> Path:
    """Every stage in order, each skipped when already done; `resume` as for the train stage.

    Under torchrun, once only stages of rank 0 alone are left, the other processes finish and
    rank 0 goes on by itself: waiting for it in a collective, they would time out (after
    hardware.DEFAULT_TIMEOUT_S) when its eval or export takes longer."""
    from tunekit import hardware

    for i, stage in enumerate(STAGES):
        if stage == "export" and not cfg.export.formats:
            continue
        if hardware.joined() and not set(STAGES[i:]) & set(_ALL_RANKS):
            main = hardware.is_main()
            hardware.leave_process_group()
            if not main:
                break
        run_stage(cfg, run_dir, stage, force=force, resume=resume)
    return run_dir / "report.md"


def _prepare(cfg: Config, run_dir: Path, **_) -> dict:
    from tunekit.data.prepare import prepare

    report = prepare(cfg, run_dir / "data", load_run_tokenizer(cfg, _resolve_model(cfg)))
    console.print(f"kept {report['kept']} of {report['lines_read']} records (train {report['train']}, valid {report['valid']}); "
                  f"rejected {report['rejected']}: {report['rejects_by_reason']}")
    if len(report["sources"]) > 1:
        for s in report["sources"]:
            console.print(f"  {s['path']} (weight {s['weight']:g}): kept {s['kept']} of {s['lines_read']}, "
                          f"train {s['train']} ({s['share']:.0%}, repeated {s['repeated']}, unused {s['unused']}), "
                          f"valid {s['valid']}, rejected {s['rejected']}")
    for note in report["notes"]:
        console.print(f"[yellow]note[/] {note}")
    return report


def _train(cfg: Config, run_dir: Path, force: bool = False, resume: bool = True) -> dict:
    from tunekit.train.loop import train

    path = _resolve_model(cfg)
    result = train(cfg, run_dir, path, load_run_tokenizer(cfg, path), resume=resume and not force, config_hash=stage_hash(cfg, "train"))
    console.print(f"trained {result['steps']} steps in {result['seconds']:.0f}s at {result['tokens_per_s']:.0f} tokens/s; "
                  f"peak memory {result['peak_rss_mb']} MB")
    return result


def _eval(cfg: Config, run_dir: Path, **_) -> dict:
    from tunekit.eval.evaluate import evaluate

    path = _resolve_model(cfg)
    return evaluate(cfg, run_dir, path, load_run_tokenizer(cfg, path))


def _report(cfg: Config, run_dir: Path, **_) -> dict:
    from tunekit.eval.report import build_report

    return {"report": str(build_report(run_dir))}


def _export(cfg: Config, run_dir: Path, **_) -> dict:
    from tunekit.export.run import export_target
    from tunekit.models.tuned import resolve_target

    e = cfg.export
    return export_target(resolve_target(str(run_dir)), e.formats, run_dir / "export", e.dtype, e.gguf_type, e.check_answers)


_STAGE_FUNCS = {"prepare": _prepare, "train": _train, "eval": _eval, "report": _report, "export": _export}
