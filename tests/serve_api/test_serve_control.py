"""Pause, resume and cancel a job in the middle of its training; a full queue answers 429."""

from __future__ import annotations

import time

import openai
import pytest
import procs
from api_server import checkpoint_steps, metrics_steps, train_file, wait_job


def _wait(condition, what: str, server) -> None:
    procs.wait_for(condition, server.proc, what, server.log)


def _messages(client, job_id: str) -> str:
    return " | ".join(e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000) if e.type == "message")


def test_pause_resume_and_cancel_mid_run_keep_the_checkpoints(server, tiny_model_dir, tmp_path):
    c = server.client(server.keys["alice"])
    f = c.files.create(file=train_file(tmp_path, 300).open("rb"), purpose="fine-tune")
    # ~540 steps, over 10 s here: the job is still training when each control call lands.
    job = c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id, seed=1, hyperparameters={"n_epochs": 12})
    run = server.run_dir(job.id)

    def past_a_checkpoint() -> bool:
        saved = checkpoint_steps(run)
        return bool(saved) and max(metrics_steps(run), default=0) > saved[-1]

    _wait(past_a_checkpoint, "a checkpoint with training past it", server)
    _wait(lambda: c.fine_tuning.jobs.retrieve(job.id).estimated_finish is not None, "an estimated finish", server)
    assert c.fine_tuning.jobs.retrieve(job.id).estimated_finish >= int(time.time()) - 1

    # One job trains; one more may wait (--max-queue 1); a third is refused, and not retried.
    waiting = c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id)
    assert wait_job(c, waiting.id, until=("queued",)).status == "queued"
    with pytest.raises(openai.RateLimitError) as e:
        c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id)
    assert e.value.code == "queue_full" and e.value.response.headers["x-should-retry"] == "false"
    assert c.fine_tuning.jobs.cancel(waiting.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as e:
        c.files.delete(f.id)  # the running job still reads it when it resumes
    assert e.value.code == "file_in_use" and job.id in e.value.message

    assert c.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait(lambda: "Job paused; it continues" in _messages(c, job.id), "the paused worker to stop", server)
    stopped = max(metrics_steps(run))
    assert checkpoint_steps(run)[-1] == stopped  # saved at the step boundary where it stopped
    assert c.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert c.fine_tuning.jobs.retrieve(job.id).estimated_finish is None  # only a running job has one
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.pause(job.id)
    assert e.value.code == "invalid_job_status"

    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    _wait(lambda: max(metrics_steps(run)) > stopped, "training after the resume", server)
    assert f"resumed from checkpoint step {stopped}" in _messages(c, job.id)

    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    _wait(lambda: "The worker stopped" in _messages(c, job.id), "the cancelled worker to stop", server)
    steps = max(metrics_steps(run))
    time.sleep(1.0)  # nothing trains on: the worker's group is gone
    assert max(metrics_steps(run)) == steps
    assert not (run / "train_state.json").exists()  # cancelled before training finished

    job = c.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.result_files == []
    listed = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert listed and [k.step_number for k in listed] == sorted(checkpoint_steps(run), reverse=True)
    assert listed[0].step_number == steps  # the stop saved where it was
    assert c.models.retrieve(listed[0].fine_tuned_model_checkpoint).id == listed[0].fine_tuned_model_checkpoint
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.resume(job.id)
