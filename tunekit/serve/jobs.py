"""Fine-tuning jobs as the API sees them: a request checked and turned into a tunekit config,
the job object, its events and checkpoints, and the status changes a caller asks for.

Statuses: validating_files -> queued -> running -> succeeded | failed | cancelled, and paused
(a running or queued job stopped by `pause`; `resume` queues it again and training continues
from its checkpoint). The request threads only change rows here; the scheduler
(scheduler.py) sees a changed status and starts, stops or finishes the worker process.

Names: a job's model is `ft:BASE:OWNER:SUFFIX:JOBID` (OpenAI's shape; SUFFIX may be empty),
a checkpoint's adds `:ckpt-step-N`. BASE is the base model's short name: a registry name, or
the name of the folder or file a path points at (no ':' or '/', which would break the name).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from tunekit.serve import store
from tunekit.serve.errors import ApiError, bad_request, not_found
from tunekit.serve.settings import Settings

ACTIVE = ("validating_files", "queued", "running", "paused")
TERMINAL = ("succeeded", "failed", "cancelled")
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
_CREATE_KEYS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
                "metadata", "integrations"}


def base_label(model: str) -> str:
    """The BASE field of a tuned model's name for a model reference (see the module docstring)."""
    from tunekit.models.resolve import derive_name

    if "/" in model or "\\" in model or model.lower().endswith(".gguf"):
        return derive_name(Path(model.rstrip("/\\")))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "model"


def model_name(job: dict) -> str:
    return f"ft:{base_label(job['model'])}:{job['owner']}:{job['suffix'] or ''}:{job['id']}"


def checkpoint_name(job: dict, step: int) -> str:
    return f"{model_name(job)}:ckpt-step-{step}"


def run_dir(settings: Settings, job_id: str) -> Path:
    return settings.root / "runs" / job_id


def job_object(job: dict) -> dict:
    hp = job["hyperparameters"]
    return {"id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"],
            "finished_at": job["finished_at"],
            "estimated_finish": job.get("estimated_finish") if job["status"] == "running" else None, "model": job["model"],
            "fine_tuned_model": job["fine_tuned_model"], "organization_id": job["owner"], "status": job["status"],
            "error": job["error"], "hyperparameters": hp,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}, "seed": job["seed"],
            "result_files": job["result_files"], "trained_tokens": job["trained_tokens"],
            "training_file": job["training_file"], "validation_file": job["validation_file"], "integrations": [],
            "metadata": job["metadata"], "user_provided_suffix": job["suffix"]}


def estimated_finish(rows: list[dict], epochs: float, at: float) -> int | None:
    """When training should end, as a Unix time: the epochs left after the newest metrics row
    (written at time `at`) at the pace of the latest stretch of rows; None before two rows. A resumed run restarts its clock
    (elapsed_s falls), so the pace is measured since the last restart. Training only: the
    eval after it is not counted (OpenAI's field is an estimate too)."""
    stretch = rows[-1:]
    for row in reversed(rows[:-1]):
        if row.get("elapsed_s") is None or row["elapsed_s"] >= stretch[0]["elapsed_s"]:
            break
        stretch.insert(0, row)
    if len(stretch) < 2:
        return None
    first, last = stretch[0], stretch[-1]
    pace = (last["epoch"] - first["epoch"]) / (last["elapsed_s"] - first["elapsed_s"])  # epochs per second
    if pace <= 0:
        return None
    return round(at + max(epochs - last["epoch"], 0.0) / pace)


def _number(value, param: str, integer: bool):
    if value == "auto" or value is None:
        return "auto"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer and float(value) != int(value):
        ok = False
    if not ok:
        kind = "a whole number" if integer else "a number"
        raise bad_request(f"{param} must be \"auto\" or {kind} above 0, not {value!r}", param=param)
    return int(value) if integer else float(value)


def hyperparameters(body: dict) -> dict:
    """n_epochs, batch_size, learning_rate_multiplier from method.supervised (or the deprecated
    top-level `hyperparameters`), each a number or "auto"."""
    method = body.get("method")
    prefix = "method.supervised.hyperparameters"
    given = None
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            kind = method.get("type") if isinstance(method, dict) else method
            raise bad_request(f"method.type {kind!r} is not available: tunekit serve trains supervised jobs; "
                              "use {\"type\": \"supervised\"}", param="method.type")
        given = ((method.get("supervised") or {}).get("hyperparameters"))
    if given is None and body.get("hyperparameters") is not None:
        given, prefix = body["hyperparameters"], "hyperparameters"
    given = given or {}
    if not isinstance(given, dict):
        raise bad_request(f"{prefix} must be an object with {', '.join(HYPERPARAMETERS)}", param=prefix)
    unknown = sorted(set(given) - set(HYPERPARAMETERS))
    if unknown:
        raise bad_request(f"{prefix}.{unknown[0]} is not a hyperparameter here; use {', '.join(HYPERPARAMETERS)}",
                          param=f"{prefix}.{unknown[0]}")
    return {"n_epochs": _number(given.get("n_epochs"), f"{prefix}.n_epochs", integer=False),
            "batch_size": _number(given.get("batch_size"), f"{prefix}.batch_size", integer=True),
            "learning_rate_multiplier": _number(given.get("learning_rate_multiplier"),
                                                f"{prefix}.learning_rate_multiplier", integer=False)}


def job_config(settings: Settings, job_id: str, model: str, seed: int, hp: dict, train_path: str,
               eval_path: str | None) -> tuple[dict, dict]:
    """(the tunekit config the job runs, its resolved hyperparameters): the server's job defaults
    with the request's model, data, seed and hyperparameters on top."""
    from pydantic import ValidationError

    from tunekit.config import Config, TrainConfig

    cfg = _copy(settings.defaults)
    cfg.update(name=job_id, seed=seed)
    cfg.setdefault("model", {})["base"] = model
    cfg["data"] = {**cfg.get("data", {}), "train": train_path, **({"eval": eval_path} if eval_path else {})}
    train = cfg.setdefault("train", {})
    if hp["n_epochs"] != "auto":
        train["epochs"] = hp["n_epochs"]
    if hp["batch_size"] != "auto":
        train["batch_size"] = hp["batch_size"]
    multiplier = 1.0 if hp["learning_rate_multiplier"] == "auto" else hp["learning_rate_multiplier"]
    train["lr"] = float(train.get("lr", TrainConfig.model_fields["lr"].default)) * multiplier
    try:
        checked = Config.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        raise bad_request(f"the job's config is invalid at {'.'.join(map(str, first['loc']))}: {first['msg']}",
                          param="method.supervised.hyperparameters") from None
    resolved = {"n_epochs": checked.train.epochs if hp["n_epochs"] == "auto" else hp["n_epochs"],
                "batch_size": checked.train.batch_size, "learning_rate_multiplier": multiplier}
    return checked.model_dump(mode="json"), resolved


def _copy(tree):
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return [_copy(v) for v in tree] if isinstance(tree, list) else tree


def _metadata(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in value.items()):
        raise bad_request("metadata must be up to 16 string pairs, keys up to 64 characters and values up to 512",
                          param="metadata")
    return value


def _file_for(db, owner: str, file_id, param: str) -> dict:
    from tunekit.serve import files

    if not isinstance(file_id, str) or not file_id:
        raise bad_request(f"{param} must be the id of an uploaded file (file-...)", param=param)
    row = files.get(db, owner, file_id, param)
    if row["purpose"] != "fine-tune":
        raise bad_request(f"{param} {file_id} was uploaded with purpose {row['purpose']!r}; upload it with "
                          "purpose \"fine-tune\"", param=param)
    return row


def create(settings: Settings, owner: str, body: dict) -> dict:
    """Check a create request, record the job as validating_files; returns the job object."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - _CREATE_KEYS)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(_CREATE_KEYS))}", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model is required: a registry name (tunekit models list), a model folder or a .gguf file",
                          param="model")
    suffix = body.get("suffix") or None
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise bad_request("suffix must be up to 64 letters, digits, '.', '_' or '-'", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise bad_request(f"seed must be a whole number from 0 to 2^63-1, not {seed!r}", param="seed")
    hp = hyperparameters(body)
    metadata = _metadata(body.get("metadata"))
    job_id = store.new_id("ftjob-")
    with store.connect(settings.root) as db, store.transaction(db):
        train = _file_for(db, owner, body.get("training_file"), "training_file")
        valid = _file_for(db, owner, body["validation_file"], "validation_file") if body.get("validation_file") else None
        waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('validating_files', 'queued')").fetchone()[0]
        if waiting >= settings.max_queue:
            raise ApiError(429, f"the queue is full ({waiting} jobs waiting, --max-queue {settings.max_queue}); "
                                "create the job again when one has started", code="queue_full",
                           headers={"x-should-retry": "false"})
        config, resolved = job_config(settings, job_id, model.strip(), seed, hp, train["path"], valid and valid["path"])
        row = {"id": job_id, "owner": owner, "created_at": store.now(), "status": "validating_files",
               "model": model.strip(), "training_file": train["id"], "validation_file": valid and valid["id"],
               "hyperparameters": resolved, "seed": seed, "suffix": suffix, "metadata": metadata, "config": config,
               "result_files": []}
        store.insert(db, "jobs", row)
        store.add_event(db, job_id, f"Validating training file: {train['id']}"
                        + (f" and validation file: {valid['id']}" if valid else ""))
    return job_object({**row, "finished_at": None, "fine_tuned_model": None, "error": None, "trained_tokens": None})


def get(db, owner: str, job_id: str) -> dict:
    row = store.get(db, "jobs", job_id, owner)
    if row is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return row


def list_page(db, owner: str, after: str | None, limit: int, metadata: dict[str, str]) -> dict:
    if not 1 <= limit <= 1000:
        raise bad_request(f"limit must be 1 to 1000, not {limit}", param="limit")
    where, args = "owner = ?", [owner]
    for k, v in metadata.items():  # metadata[k]=v: json_extract reads the stored object
        where += " AND json_extract(metadata, ?) = ?"
        args += [f'$."{k}"', v]
    rows, more = store.page(db, "jobs", where, args, after, limit)
    return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}


def change_status(settings: Settings, owner: str, job_id: str, action: str) -> dict:
    """cancel, pause or resume; returns the job. A status the action does not apply to is a 400."""
    allowed = {"cancel": ACTIVE, "pause": ("validating_files", "queued", "running"), "resume": ("paused",)}[action]
    target = {"cancel": "cancelled", "pause": "paused", "resume": "queued"}[action]
    with store.connect(settings.root) as db, store.transaction(db):
        job = get(db, owner, job_id)
        if job["status"] not in allowed:
            raise bad_request(f"job {job_id} is {job['status']}; {action} applies to a job that is "
                              f"{' or '.join(allowed)}", param="fine_tuning_job_id", code="invalid_job_status")
        values = {"status": target}
        if action == "cancel":
            values["finished_at"] = store.now()
        if action == "resume" and job["started_at"] is None:  # paused before it was ever validated
            values["status"] = "validating_files"
        store.update(db, "jobs", job_id, values)
        message = {"cancel": "Job cancelled; its checkpoints are kept",
                   "pause": "Job paused; training stops at the next step boundary and saves a checkpoint",
                   "resume": "Job resumed; it continues from its last checkpoint"}[action]
        store.add_event(db, job_id, message)
        return job_object({**job, **values})


def event_object(row: dict) -> dict:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"], "level": row["level"],
            "message": row["message"], "data": row["data"], "type": row["type"]}


def events_page(db, owner: str, job_id: str, after: str | None, limit: int) -> dict:
    get(db, owner, job_id)
    if not 1 <= limit <= 1000:
        raise bad_request(f"limit must be 1 to 1000, not {limit}", param="limit")
    rows, more = store.page(db, "events", "job_id = ?", [job_id], after, limit)
    return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}


def checkpoints_page(settings: Settings, db, owner: str, job_id: str, after: str | None, limit: int) -> dict:
    """The checkpoints on disk, newest first, each with the metrics logged at its step."""
    from tunekit.train.checkpoint import list_checkpoints
    from tunekit.train.metrics import read_metrics

    job = get(db, owner, job_id)
    folder = run_dir(settings, job_id)
    found = list_checkpoints(folder / "checkpoints")
    rows = {r["step"]: r for r in read_metrics(folder / "metrics.jsonl")}
    data = []
    for step, path in reversed(found):
        logged = rows.get(step) or {}
        metrics = {"step": step, "train_loss": logged.get("loss"), "valid_loss": logged.get("valid_loss")}
        data.append({"id": f"ftckpt_{job_id.removeprefix('ftjob-')}_{step}", "object": "fine_tuning.job.checkpoint",
                     "created_at": int((path / "state.json").stat().st_mtime),
                     "fine_tuned_model_checkpoint": checkpoint_name(job, step), "fine_tuning_job_id": job_id,
                     "step_number": step, "metrics": {k: v for k, v in metrics.items() if v is not None}})
    if after:
        ids = [c["id"] for c in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": data[:limit], "first_id": data[0]["id"] if data else None,
            "last_id": data[:limit][-1]["id"] if data else None, "has_more": len(data) > limit}
