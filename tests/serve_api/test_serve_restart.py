"""SIGKILL of the server in the middle of a job, then a restart: the job resumes from its last
checkpoint and ends as an uninterrupted job of the same request ends; nothing uploaded or
finished is lost."""

from __future__ import annotations

import json
import time

import procs
import torch
from api_server import checkpoint_steps, make_key, metrics_steps, running_server, train_file, wait_job
from safetensors.torch import load_file

TOL = 1e-4


def _final_adapter(run) -> dict:
    state = json.loads((run / "train_state.json").read_text())
    return load_file(str(run / state["final_checkpoint"] / "adapter_model.safetensors"))


def test_sigkill_of_the_server_mid_job_then_restart_completes_it_as_uninterrupted(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    key = make_key(home, "alice")
    request = {"model": str(tiny_model_dir), "seed": 5, "suffix": "r",
               "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    with running_server(home, tmp_path / "server-1.log") as server:
        c = server.client(key)
        data = train_file(tmp_path, 200)
        upload = c.files.create(file=data.open("rb"), purpose="fine-tune")
        reference = wait_job(c, c.fine_tuning.jobs.create(training_file=upload.id, **request).id, server=server)
        assert reference.status == "succeeded", reference.error
        job = c.fine_tuning.jobs.create(training_file=upload.id, **request)
        run = server.run_dir(job.id)

        def past_a_checkpoint() -> bool:
            saved = checkpoint_steps(run)
            return bool(saved) and max(metrics_steps(run), default=0) > saved[-1]

        procs.wait_for(past_a_checkpoint, server.proc, "a checkpoint with training past it", server.log)
        procs.sigkill(server.proc)
    # Its worker notices the server is gone, saves a checkpoint at the step boundary and stops.
    worker_log = home / "serve" / "jobs" / f"{job.id}.log"
    deadline = time.monotonic() + procs.WAIT_S
    while "worker: training stopped by SIGTERM" not in procs.tail(worker_log, 100_000):
        assert time.monotonic() < deadline, f"the worker did not stop after the server died:\n{procs.tail(worker_log)}"
        time.sleep(0.05)
    stopped_at = max(metrics_steps(run))
    total = json.loads((server.run_dir(reference.id) / "train_state.json").read_text())["steps"]
    assert stopped_at < total and not (run / "train_state.json").exists()
    assert checkpoint_steps(run)[-1] == stopped_at

    with running_server(home, tmp_path / "server-2.log") as server:
        c = server.client(key)
        done = wait_job(c, job.id, server=server)
        assert done.status == "succeeded", done.error
        events = list(c.fine_tuning.jobs.list_events(job.id, limit=1000))
        messages = " | ".join(e.message for e in events)
        assert "The server restarted" in messages and f"resumed from checkpoint step {stopped_at}" in messages
        # Every step reported once, though steps after the checkpoint ran twice.
        assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, total + 1))

        # The same end as the uninterrupted job.
        want_run, got_run = server.run_dir(reference.id), server.run_dir(job.id)
        want_state, got_state = (json.loads((r / "train_state.json").read_text()) for r in (want_run, got_run))
        assert got_state["steps"] == want_state["steps"] and got_state["tokens_seen"] == want_state["tokens_seen"]
        assert abs(got_state["final_train_loss"] - want_state["final_train_loss"]) < TOL
        want, got = _final_adapter(want_run), _final_adapter(got_run)
        assert got.keys() == want.keys() and want
        for name, tensor in want.items():
            assert torch.allclose(got[name], tensor, atol=TOL, rtol=0), name

        # Nothing uploaded or finished is lost.
        assert c.files.content(upload.id).content == data.read_bytes()
        again = c.fine_tuning.jobs.retrieve(reference.id)
        assert again.status == "succeeded" and again.result_files == reference.result_files
        for f in again.result_files:
            assert c.files.retrieve(f).bytes > 0
        models = {m.id for m in c.models.list()}
        assert {reference.fine_tuned_model, done.fine_tuned_model} <= models


def test_sigterm_stops_the_server_with_its_jobs_checkpointed_and_queued(tiny_model_dir, tmp_path):
    import signal

    from tunekit.serve import store

    home = tmp_path / "home"
    key = make_key(home, "alice")
    with running_server(home, tmp_path / "server.log") as server:
        c = server.client(key)
        upload = c.files.create(file=train_file(tmp_path, 200).open("rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=upload.id, hyperparameters={"n_epochs": 4})
        run = server.run_dir(job.id)
        procs.wait_for(lambda: checkpoint_steps(run) != [], server.proc, "a checkpoint", server.log)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=procs.WAIT_S) == 128 + signal.SIGTERM, procs.tail(server.log)
    with store.connect(home / "serve") as db:
        row = store.get(db, "jobs", job.id)
        messages = [e["message"] for e in store.select(db, "SELECT message FROM events WHERE job_id = ?", [job.id])]
    assert row["status"] == "queued" and row["pid"] is None
    assert "The server stopped; the job is queued again" in messages[-1]
    assert checkpoint_steps(run)[-1] == max(metrics_steps(run))  # it saved where it stopped
