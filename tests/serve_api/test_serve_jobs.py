"""Upload -> create -> poll to succeeded, through the official openai client; what a finished job
shows (events, checkpoints, models, result files); the Files API; a malformed upload."""

from __future__ import annotations

import json

import openai
import pytest
import yaml
from api_server import checkpoint_steps, heldout_file, metrics_steps, train_file, wait_job

from tunekit.serve.errors import ApiError


@pytest.fixture(scope="module")
def finished(server, tiny_model_dir, tmp_path_factory):
    """A job on 40 conversations and 4 held-out items, 2 epochs, run to the end."""
    tmp = tmp_path_factory.mktemp("finished")
    c = server.client(server.keys["alice"])
    train_path, held_path = train_file(tmp, 40), heldout_file(tmp, 4)
    train = c.files.create(file=train_path.open("rb"), purpose="fine-tune")
    held = c.files.create(file=held_path.open("rb"), purpose="fine-tune")
    created = c.fine_tuning.jobs.create(
        model=str(tiny_model_dir), training_file=train.id, validation_file=held.id, suffix="support", seed=3,
        metadata={"team": "support"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5}}})
    job = wait_job(c, created.id, server=server)
    return {"client": c, "created": created, "job": job, "train": train, "held": held, "train_path": train_path,
            "run": server.run_dir(created.id)}


def test_upload_create_poll_to_succeeded(server, finished, tiny_model_dir):
    job, created, train = finished["job"], finished["created"], finished["train"]
    assert created.status == "validating_files" and created.fine_tuned_model is None
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:model:alice:support:{job.id}"
    assert job.organization_id == "alice" and job.seed == 3 and job.metadata == {"team": "support"}
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.learning_rate_multiplier == 0.5
    assert job.hyperparameters.batch_size == 6  # "auto": the server's job defaults
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at
    # The job ran tunekit's own config: defaults, then the request on top.
    cfg = yaml.safe_load((finished["run"] / "config.yaml").read_text())
    assert cfg["train"]["lr"] == pytest.approx(5e-3) and cfg["train"]["epochs"] == 2 and cfg["seed"] == 3
    assert cfg["model"]["base"] == str(tiny_model_dir) and cfg["method"]["r"] == 4
    stored = [p.name for p in (server.root / "files").iterdir()]
    assert f"{train.id}.jsonl" in stored and "train.jsonl" not in stored  # under its id, not the user's name
    assert cfg["data"]["train"] == str(server.root / "files" / f"{train.id}.jsonl")
    assert (finished["run"] / "eval" / "scores.json").is_file() and (finished["run"] / "report.md").is_file()


def test_events_carry_every_step_metrics_and_the_status_changes(server, finished):
    c, job = finished["client"], finished["job"]
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=7))  # several pages, followed by the client
    assert len({e.id for e in events}) == len(events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)  # newest first
    metrics = [e for e in events if e.type == "metrics"]
    steps = metrics_steps(finished["run"])
    assert sorted(e.data["step"] for e in metrics) == steps == list(range(1, len(steps) + 1))
    logged = {json.loads(line)["step"]: json.loads(line) for line in (finished["run"] / "metrics.jsonl").read_text().splitlines()}
    for e in metrics:
        assert e.data["train_loss"] == logged[e.data["step"]]["loss"]
    assert "valid_loss" in next(e for e in metrics if e.data["step"] == steps[-1]).data  # measured at the end
    messages = " | ".join(e.message for e in reversed(events) if e.type == "message")
    for part in ("Validating training file", "queued", "started", "Stage prepare done", "Stage train done",
                 "Stage eval done", f"New fine-tuned model created: {job.fine_tuned_model}", "successfully completed"):
        assert part in messages, messages


def test_checkpoints_are_listed_with_metrics_and_callable_names(server, finished):
    c, job = finished["client"], finished["job"]
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    on_disk = checkpoint_steps(finished["run"])
    assert [k.step_number for k in ckpts] == sorted(on_disk, reverse=True) and len(on_disk) >= 2
    logged = {json.loads(line)["step"]: json.loads(line) for line in (finished["run"] / "metrics.jsonl").read_text().splitlines()}
    for k in ckpts:
        assert k.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{k.step_number}"
        assert k.fine_tuning_job_id == job.id and k.metrics.train_loss == logged[k.step_number]["loss"]
        assert c.models.retrieve(k.fine_tuned_model_checkpoint).id == k.fine_tuned_model_checkpoint
    second = c.fine_tuning.jobs.checkpoints.list(job.id, after=ckpts[0].id, limit=1)
    assert [k.id for k in second.data] == [ckpts[1].id]


def test_models_lists_and_resolves_the_tuned_model_for_its_owner_only(server, finished, tiny_model_dir):
    from tunekit.serve.model_refs import resolve_model
    from tunekit.serve.settings import Settings

    c, job = finished["client"], finished["job"]
    listed = {m.id: m for m in c.models.list()}
    assert job.fine_tuned_model in listed and str(tiny_model_dir) in listed
    assert listed[job.fine_tuned_model].owned_by == "alice"
    assert c.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    bob = server.client(server.keys["bob"])
    assert job.fine_tuned_model not in {m.id for m in bob.models.list()}
    with pytest.raises(openai.NotFoundError):
        bob.models.retrieve(job.fine_tuned_model)

    settings = Settings(root=server.root)
    target = resolve_model("alice", job.fine_tuned_model, settings)
    assert target.run_dir == finished["run"] and target.adapter.parent == finished["run"] / "checkpoints"
    step = checkpoint_steps(finished["run"])[0]
    ckpt = resolve_model("alice", f"{job.fine_tuned_model}:ckpt-step-{step}", settings)
    assert ckpt.adapter == finished["run"] / "checkpoints" / f"step-{step}" and ckpt.model == tiny_model_dir
    for owner, name in (("bob", job.fine_tuned_model), ("alice", f"{job.fine_tuned_model}:ckpt-step-99999"),
                        ("alice", job.fine_tuned_model.replace(":support:", ":other:"))):
        with pytest.raises(ApiError) as e:
            resolve_model(owner, name, settings)
        assert e.value.status == 404 and e.value.body()["error"]["param"] == "model"


def test_chat_with_the_fine_tuned_model_streamed_and_not_gives_the_evals_answers(server, finished):
    """The tuned model answers through /v1/chat/completions as the eval stage scored it: greedy, the
    same tokens; streamed, the chunks join to the same text and end with the usage."""
    c, job = finished["client"], finished["job"]
    rows = [json.loads(line) for line in (finished["run"] / "eval" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        messages = [{"role": "user", "content": row["question"]}]
        reply = c.chat.completions.create(model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=4)
        assert reply.choices[0].message.content == row["answers"]["tuned"]
        assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens <= 4
        chunks = list(c.chat.completions.create(model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=4,
                                                stream=True, stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == row["answers"]["tuned"]
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens
    bob = server.client(server.keys["bob"])
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])


def test_result_files_hold_metrics_scores_and_report(server, finished):
    c, job = finished["client"], finished["job"]
    results = {c.files.retrieve(f).filename: f for f in job.result_files}
    assert set(results) == {f"{job.id}-metrics.jsonl", f"{job.id}-scores.json", f"{job.id}-report.md"}
    for f in results.values():
        assert c.files.retrieve(f).purpose == "fine-tune-results"
    assert c.files.content(results[f"{job.id}-metrics.jsonl"]).content == (finished["run"] / "metrics.jsonl").read_bytes()
    scores = json.loads(c.files.content(results[f"{job.id}-scores.json"]).content)
    assert scores["questions"] == 4
    assert c.files.content(results[f"{job.id}-report.md"]).content == (finished["run"] / "report.md").read_bytes()


def test_jobs_list_pages_and_filters_by_metadata(server, finished):
    c, job = finished["client"], finished["job"]
    assert job.id in [j.id for j in c.fine_tuning.jobs.list(metadata={"team": "support"})]
    assert c.fine_tuning.jobs.list(metadata={"team": "sales"}).data == []
    first = c.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1
    if first.has_more:
        assert c.fine_tuning.jobs.list(limit=1, after=first.data[0].id).data[0].id != first.data[0].id
    assert job.id not in [j.id for j in server.client(server.keys["bob"]).fine_tuning.jobs.list()]


def test_files_list_retrieve_content_delete(server, tmp_path):
    c = server.client(server.keys["bob"])
    paths = [train_file(tmp_path, 3 + i, f"part{i}.jsonl") for i in range(3)]
    made = [c.files.create(file=p.open("rb"), purpose="fine-tune") for p in paths]
    evil = c.files.create(file=("../../evil.jsonl", paths[0].read_bytes()), purpose="fine-tune")
    assert evil.filename == "evil.jsonl" and not list(server.root.rglob("evil*"))
    ids = [f.id for f in c.files.list(order="asc", purpose="fine-tune")]
    assert ids == [f.id for f in made] + [evil.id]
    assert [f.id for f in c.files.list(order="desc", limit=2)] [:2] == [evil.id, made[2].id]
    page = c.files.list(order="asc", limit=2, after=made[0].id)
    assert [f.id for f in page.data] == [made[1].id, made[2].id] and page.has_more
    assert c.files.list(purpose="batch").data == []
    assert c.files.retrieve(made[1].id).bytes == paths[1].stat().st_size
    assert c.files.content(made[1].id).content == paths[1].read_bytes()
    assert c.files.delete(made[1].id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(made[1].id)
    assert not list((server.root / "files").glob(f"{made[1].id}*"))
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=paths[0].open("rb"), purpose="homework")
    assert e.value.body["param"] == "purpose"


def test_a_malformed_upload_fails_the_job_with_its_line_number(server, tiny_model_dir, tmp_path):
    c = server.client(server.keys["alice"])
    good = train_file(tmp_path, 6).read_text().splitlines()
    good[2] = '{"messages": [{"role": "user", "content": "broken'  # line 3: cut off
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good) + "\n")
    f = c.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert f.status == "error" and "line 3" in f.status_details and "malformed_json" in f.status_details
    job = wait_job(c, c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id).id, server=server)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert f.id in job.error.message and "line 3" in job.error.message and "malformed_json" in job.error.message
    assert not server.run_dir(job.id).exists()  # refused before any work
    errors = [e for e in c.fine_tuning.jobs.list_events(job.id) if e.level == "error"]
    assert errors and "line 3" in errors[0].message


def test_held_out_items_are_a_validation_file_but_not_training_data(server, tiny_model_dir, tmp_path):
    c = server.client(server.keys["alice"])
    held = c.files.create(file=heldout_file(tmp_path, 3).open("rb"), purpose="fine-tune")
    assert held.status == "processed"  # good held-out items (questions without answers)
    job = wait_job(c, c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=held.id).id, server=server)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "line 1" in job.error.message and "no_final_assistant" in job.error.message


def test_bad_requests_name_their_field(server, finished, tiny_model_dir):
    c, train = finished["client"], finished["train"]
    cases = [
        ({"model": str(tiny_model_dir), "training_file": "file-nope"}, openai.NotFoundError, "training_file"),
        ({"model": str(tiny_model_dir), "training_file": train.id, "suffix": "a:b"}, openai.BadRequestError, "suffix"),
        ({"model": str(tiny_model_dir), "training_file": train.id,
          "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}},
         openai.BadRequestError, "method.supervised.hyperparameters.n_epochs"),
        ({"model": str(tiny_model_dir), "training_file": train.id, "hyperparameters": {"batch_size": 2.5}},
         openai.BadRequestError, "hyperparameters.batch_size"),
        ({"model": str(tiny_model_dir), "training_file": train.id, "method": {"type": "dpo"}},
         openai.BadRequestError, "method.type"),
    ]
    for body, error, param in cases:
        with pytest.raises(error) as e:
            c.fine_tuning.jobs.create(**body)
        assert e.value.body["param"] == param, body
        assert e.value.response.headers["x-should-retry"] == "false"


def test_a_model_tunekit_cannot_find_fails_the_job_naming_the_model(server, finished):
    c = finished["client"]
    job = wait_job(c, c.fine_tuning.jobs.create(model="no-such-model", training_file=finished["train"].id).id,
                   server=server)
    assert job.status == "failed" and job.error.code == "invalid_model" and job.error.param == "model"
    assert "no-such-model" in job.error.message
    assert str(server.root) not in job.error.message  # the server's paths mean nothing to the caller


# Last in this module: it deletes the tuned model that the tests above call.
def test_deleting_the_tuned_model_keeps_the_job_and_its_results(server, finished, tiny_model_dir):
    c, job = finished["client"], finished["job"]
    with pytest.raises(openai.PermissionDeniedError):
        c.models.delete(str(tiny_model_dir))  # base models are shared
    with pytest.raises(openai.NotFoundError):
        server.client(server.keys["bob"]).models.delete(job.fine_tuned_model)
    assert c.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in {m.id for m in c.models.list()}
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve(job.fine_tuned_model)
    assert not (finished["run"] / "checkpoints").exists()
    again = c.fine_tuning.jobs.retrieve(job.id)
    assert again.status == "succeeded" and again.result_files == job.result_files
    assert c.files.content(job.result_files[0]).content
    assert c.files.delete(finished["train"].id).deleted  # its job has finished: the file may go
