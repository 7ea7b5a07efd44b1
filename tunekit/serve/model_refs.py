"""Model names the API answers to, and what each one is on disk.

- a base model: a cached model (`tunekit models list`), or the model reference one of the
  caller's jobs trained on (a folder, a .gguf file);
- `ft:BASE:OWNER:SUFFIX:JOBID`: a succeeded job's tuned model (its run folder: the best or
  final checkpoint, as `tunekit chat RUN` picks);
- `ft:...:JOBID:ckpt-step-N`: one checkpoint of a job, finished or not, while it is on disk.

`resolve_model` turns a name into the `Target` that tunekit/models/tuned.py loads (the same
one `tunekit chat` and `tunekit generate` use), so the chat route answers as `tunekit chat`
does. A name that is unknown, deleted, or another owner's is one 404.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tunekit.serve import jobs, store
from tunekit.serve.errors import ApiError
from tunekit.serve.settings import Settings

_CKPT = re.compile(r"^ckpt-step-(\d+)$")


def unknown_model(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist for this API key; GET /v1/models lists the models it can use",
                    code="model_not_found", param="model")


def _base_object(name: str, created: int = 0) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunekit", "root": name, "parent": None}


def _tuned_object(job: dict) -> dict:
    return {"id": job["fine_tuned_model"], "object": "model", "created": job["finished_at"] or job["created_at"],
            "owned_by": job["owner"], "root": job["model"], "parent": job["model"]}


def _cached_bases() -> list[str]:
    from tunekit.models import list_models

    return [m["name"] for m in list_models() if m["cached"]]


def _job_bases(db, owner: str) -> list[str]:
    return [r["model"] for r in db.execute("SELECT DISTINCT model FROM jobs WHERE owner = ? ORDER BY model", (owner,))]


def _tuned_jobs(db, owner: str) -> list[dict]:
    return store.select(db, "SELECT * FROM jobs WHERE owner = ? AND status = 'succeeded' AND model_deleted = 0 "
                            "AND fine_tuned_model IS NOT NULL ORDER BY seq", [owner])


def list_models(settings: Settings, owner: str) -> dict:
    with store.connect(settings.root) as db:
        bases = list(dict.fromkeys(_cached_bases() + _job_bases(db, owner)))
        tuned = _tuned_jobs(db, owner)
    return {"object": "list", "data": [_base_object(b) for b in bases] + [_tuned_object(j) for j in tuned]}


def _parse(name: str) -> tuple[str, int | None] | None:
    """(job id, checkpoint step or None) of an ft: name; None when it is not one."""
    parts = name.split(":")
    if parts[0] != "ft" or len(parts) not in (5, 6):
        return None
    step = None
    if len(parts) == 6:
        m = _CKPT.match(parts[5])
        if not m:
            return None
        step = int(m.group(1))
    return parts[4], step


def _job_for(db, owner: str, name: str) -> tuple[dict, int | None]:
    parsed = _parse(name)
    job = store.get(db, "jobs", parsed[0], owner) if parsed else None
    if job is None or jobs.model_name(job) != ":".join(name.split(":")[:5]):
        raise unknown_model(name)
    return job, parsed[1]


def retrieve(settings: Settings, owner: str, name: str) -> dict:
    with store.connect(settings.root) as db:
        if not name.startswith("ft:"):
            if name in _job_bases(db, owner) or name in _cached_bases():
                return _base_object(name)
            raise unknown_model(name)
        job, step = _job_for(db, owner, name)
    if step is None:
        if job["status"] != "succeeded" or job["model_deleted"]:
            raise unknown_model(name)
        return _tuned_object(job)
    if not _checkpoint_dir(settings, job, step).is_dir():
        raise unknown_model(name)
    return {"id": name, "object": "model", "created": job["created_at"], "owned_by": job["owner"],
            "root": job["model"], "parent": job["fine_tuned_model"] or job["model"]}


def delete(settings: Settings, owner: str, name: str) -> dict:
    """Delete a fine-tuned model: its name stops resolving and its checkpoints and exports are
    removed; the job, its events and its result files stay."""
    with store.connect(settings.root) as db, store.transaction(db):
        if not name.startswith("ft:"):
            if name in _job_bases(db, owner) or name in _cached_bases():
                raise ApiError(403, f"{name} is a base model, which every key of this server shares; remove it from "
                                    "the model cache on the server's machine instead", code="model_not_deletable",
                               param="model")
            raise unknown_model(name)
        job, step = _job_for(db, owner, name)
        if step is not None:
            raise ApiError(400, "a checkpoint is deleted with its fine-tuned model; delete "
                                f"{jobs.model_name(job)} instead", code="model_not_deletable", param="model")
        if job["status"] != "succeeded" or job["model_deleted"]:
            raise unknown_model(name)
        store.update(db, "jobs", job["id"], {"model_deleted": 1})
        store.add_event(db, job["id"], f"Fine-tuned model {name} deleted")
    folder = jobs.run_dir(settings, job["id"])
    for sub in ("checkpoints", "export"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    return {"id": name, "object": "model", "deleted": True}


def _checkpoint_dir(settings: Settings, job: dict, step: int) -> Path:
    folder = jobs.run_dir(settings, job["id"]) / "checkpoints" / f"step-{step}"
    return folder if (folder / "state.json").is_file() else folder / "(incomplete)"


def resolve_model(owner: str, name: str, settings: Settings | None = None):
    """The `tunekit.models.tuned.Target` a model name stands for (see the module docstring);
    an ApiError 404 in OpenAI's envelope for a name this owner cannot use. `settings`: the
    running server's (default: the store under $TUNEKIT_HOME/serve)."""
    from tunekit.models.tuned import Target, check_adapter, resolve_target, run_config

    settings = settings or Settings(root=store.serve_home())
    retrieve(settings, owner, name)  # the 404s, in one place
    if not name.startswith("ft:"):
        return resolve_target(name)
    with store.connect(settings.root) as db:
        job, step = _job_for(db, owner, name)
    folder = jobs.run_dir(settings, job["id"])
    if step is None:
        return resolve_target(str(folder))
    from tunekit.models import resolve

    ckpt = _checkpoint_dir(settings, job, step)
    saved = run_config(folder).get("model") or {}
    base = Path(resolve(saved.get("base") or job["model"]))
    template = saved.get("chat_template") or "auto"
    if (ckpt / "adapter_config.json").is_file():
        check_adapter(ckpt, base)
        return Target(model=base, tokenizer=base, adapter=ckpt, label=name, run_dir=folder, chat_template=template)
    return Target(model=ckpt, tokenizer=base, label=name, run_dir=folder, chat_template=template)
