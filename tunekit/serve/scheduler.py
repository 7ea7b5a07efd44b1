"""The job queue: validates new jobs, starts workers, watches them, records what they did.

One thread in the server process, waking every `poll_s`. Request threads only change rows
(jobs.py); this thread turns rows into processes and processes back into rows:

- validating_files: the files' checks (files.py) decide queued or failed, naming the line;
- queued: up to `workers` jobs run at once, each a `tunekit.serve.worker` process in a
  session of its own, so its process group can be signalled whole;
- a job paused or cancelled while its worker runs: SIGTERM to the group (training saves a
  checkpoint at the next step boundary and exits 143), SIGKILL after `stop_grace_s`;
- running: new metrics.jsonl rows become `metrics` events, finished stages `message` events;
- a worker that exits: succeeded (result files copied into the file store, the model named),
  failed (error.code/message/param from its error file), or left paused/cancelled.

Restart safety: every state change is a committed row before the next step acts on it.
At start, `recover` stops workers a killed server left behind and queues their jobs again;
training resumes from the last checkpoint, and stages already done are skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from tunekit import atomic
from tunekit.pipeline import STAGES
from tunekit.serve import files, jobs, store
from tunekit.serve.settings import Settings
from tunekit.serve.worker import error_file

_TAIL_EVERY_S = 1.0


@dataclass
class Worker:
    job_id: str
    proc: subprocess.Popen
    log: IO
    signalled_at: float | None = None
    tailed_at: float = 0.0
    stages: set = field(default_factory=set)


def config_path(settings: Settings, job_id: str) -> Path:
    return settings.root / "jobs" / f"{job_id}.yaml"


def _error(code: str, message: str, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param}


def _fail(db, job_id: str, error: dict) -> None:
    store.update(db, "jobs", job_id, {"status": "failed", "error": error, "finished_at": store.now(), "pid": None})
    store.add_event(db, job_id, f"Job failed: {error['message']}", level="error")


def validate(settings: Settings, db, job: dict) -> None:
    """validating_files -> queued, or failed naming the file, line and reason."""
    for param, use in (("training_file", "train"), ("validation_file", "heldout")):
        if not job[param]:
            continue
        row = store.get(db, "files", job[param])
        if row is None or not Path(row["path"]).is_file():
            _fail(db, job["id"], _error(f"invalid_{param}", f"{param} {job[param]} was deleted before the job started; "
                                                             "upload it again and create a new job", param))
            return
        problem = (row["checks"] or {}).get(use)
        if problem:
            what = "training data" if use == "train" else "held-out items"
            _fail(db, job["id"], _error(f"invalid_{param}", f"{param} {row['id']} ({row['filename']}) is not valid "
                                        f"{what}: {files.describe_problem(problem, row['checks']['records'])}. "
                                        "Fix it, upload it again and create a new job", param))
            return
    store.update(db, "jobs", job["id"], {"status": "queued"})
    store.add_event(db, job["id"], "Files validated, moving job to queued state")


def _alive(pid: int, job_id: str) -> bool:
    """Whether `pid` is still this job's worker (not a recycled pid, not a zombie)."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").is_dir():  # no procfs: the best that can be known
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"tunekit.serve.worker" in cmdline and job_id.encode() in cmdline


def _stop_group(pid: int, job_id: str, grace_s: float, signalled: bool = False) -> None:
    """SIGTERM the worker's group, wait up to `grace_s` for it to go, then SIGKILL. `signalled`:
    it has had its SIGTERM already; a second one would stop it inside its checkpoint write."""
    steps = ((None, grace_s),) if signalled else ((signal.SIGTERM, grace_s),)
    for sig, wait in (*steps, (signal.SIGKILL, 10.0)):
        if not _alive(pid, job_id):
            return
        try:
            if sig is not None:
                os.killpg(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid, job_id):
            time.sleep(0.1)


def recover(settings: Settings) -> None:
    """After a restart: stop what the last server left running, and queue its running jobs again."""
    files.sweep(settings.root)
    with store.connect(settings.root) as db:
        left = store.select(db, "SELECT * FROM jobs WHERE pid IS NOT NULL OR status = 'running'")
    for job in left:
        if job["pid"]:
            # The dead server's workers stop by themselves (worker.py watches its parent): they may be
            # saving their checkpoint, and only one that outlives the grace is killed.
            _stop_group(job["pid"], job["id"], settings.stop_grace_s, signalled=True)
        with store.connect(settings.root) as db, store.transaction(db):
            values = {"pid": None}
            if store.get(db, "jobs", job["id"])["status"] == "running":
                values["status"] = "queued"
                store.add_event(db, job["id"], "The server restarted; the job is queued again and resumes from its "
                                               "last checkpoint")
            store.update(db, "jobs", job["id"], values)


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


class Scheduler:
    """The thread described in the module docstring; `start()` once, `stop()` at shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workers: dict[str, Worker] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunekit-scheduler", daemon=True)

    def start(self) -> None:
        recover(self.settings)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout if timeout is not None else self.settings.stop_grace_s + 15)

    def _loop(self) -> None:
        # Workers are started and stopped from this thread only: Linux sends a worker its
        # parent-death signal when the thread that started it ends, so it must outlive them.
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad tick must not end the queue; the next one retries
                traceback.print_exc()
            self._stop.wait(self.settings.poll_s)
        self._shutdown()

    def tick(self) -> None:
        with store.connect(self.settings.root) as db:
            for job in store.select(db, "SELECT * FROM jobs WHERE status = 'validating_files' ORDER BY seq"):
                with store.transaction(db):
                    if store.get(db, "jobs", job["id"])["status"] == "validating_files":
                        validate(self.settings, db, job)
            for w in list(self.workers.values()):
                self._watch(db, w)
            free = self.settings.workers - len(self.workers)
            if free > 0:
                waiting = store.select(db, "SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq")
                for job in [j for j in waiting if j["id"] not in self.workers][:free]:
                    self._spawn(db, job)

    def _spawn(self, db, job: dict) -> None:
        from tunekit.train.checkpoint import list_checkpoints

        s = self.settings
        with store.transaction(db):
            if store.get(db, "jobs", job["id"])["status"] != "queued":
                return
            store.update(db, "jobs", job["id"], {"status": "running", "started_at": job["started_at"] or store.now()})
        path = config_path(s, job["id"])
        atomic.write_text(path, yaml.safe_dump(job["config"], sort_keys=False))
        error_file(path).unlink(missing_ok=True)
        log = open(s.root / "jobs" / f"{job['id']}.log", "ab")
        cmd = [sys.executable, "-m", "tunekit.serve.worker", str(path), "--runs-dir", str(s.root / "runs"),
               "--parent", str(os.getpid())]
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=s.root, start_new_session=True)
        except OSError as e:
            log.close()
            with store.transaction(db):
                _fail(db, job["id"], _error("worker_failed", f"could not start the worker process: {e}"))
            return
        run = jobs.run_dir(s, job["id"])
        w = Worker(job["id"], proc, log, stages={p.stem for p in (run / ".stages").glob("*.json")})
        self.workers[job["id"]] = w
        saved = list_checkpoints(run / "checkpoints")
        with store.transaction(db):
            store.update(db, "jobs", job["id"], {"pid": proc.pid})
            store.add_event(db, job["id"], f"Fine-tuning job resumed from checkpoint step {saved[-1][0]}" if saved
                            else "Fine-tuning job started")

    def _watch(self, db, w: Worker) -> None:
        job = store.get(db, "jobs", w.job_id)
        code = w.proc.poll()
        if code is None:
            if job["status"] in ("paused", "cancelled", "queued", "validating_files"):
                self._signal(w)
            elif time.monotonic() - w.tailed_at >= _TAIL_EVERY_S:
                self._tail(db, job, w)
            return
        self._tail(db, job, w)
        w.log.close()
        del self.workers[w.job_id]
        with store.transaction(db):
            self._finish(db, store.get(db, "jobs", w.job_id), code)

    def _signal(self, w: Worker) -> None:
        """Stop a worker whose job was paused or cancelled: SIGTERM first, SIGKILL after the grace."""
        try:
            if w.signalled_at is None:
                os.killpg(w.proc.pid, signal.SIGTERM)
                w.signalled_at = time.monotonic()
            elif time.monotonic() - w.signalled_at > self.settings.stop_grace_s:
                os.killpg(w.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _tail(self, db, job: dict, w: Worker) -> None:
        """New metrics rows and finished stages of a running job, as events."""
        from tunekit.train.metrics import read_metrics

        w.tailed_at = time.monotonic()
        run = jobs.run_dir(self.settings, w.job_id)
        # A resumed run rewrites the steps after its checkpoint with the same values: each step once.
        every = read_metrics(run / "metrics.jsonl")
        rows = [r for r in every if r["step"] > job["metrics_step"]]
        done = {p.stem for p in (run / ".stages").glob("*.json")}
        stages = [st for st in STAGES if st in done and st not in w.stages]
        # Timed from the file's last write (its newest row), so it moves only when training does;
        # a resume truncates the file, so a paused job's old estimate is replaced at once.
        finish = jobs.estimated_finish(every, job["config"]["train"]["epochs"], _mtime(run / "metrics.jsonl"))
        if not rows and not stages and finish == job.get("estimated_finish"):
            return
        with store.transaction(db):
            for r in rows:
                data = {"step": r["step"], "train_loss": r.get("loss"), "valid_loss": r.get("valid_loss"),
                        "epoch": r.get("epoch"), "learning_rate": r.get("lr")}
                data = {k: v for k, v in data.items() if v is not None}
                shown = f"Step {r['step']}: training loss={r.get('loss')}" + (
                    f", validation loss={r['valid_loss']}" if r.get("valid_loss") is not None else "")
                store.add_event(db, w.job_id, shown, type="metrics", data=data)
            store.update(db, "jobs", w.job_id, {"estimated_finish": finish, **({"metrics_step": rows[-1]["step"]} if rows else {})})
            for stage in stages:
                store.add_event(db, w.job_id, f"Stage {stage} done")
        w.stages.update(stages)

    def _finish(self, db, job: dict, code: int) -> None:
        status = job["status"]
        store.update(db, "jobs", job["id"], {"pid": None})
        if code == 0 and status != "cancelled":
            self._succeed(db, job)
        elif status == "cancelled":
            store.add_event(db, job["id"], "The worker stopped; checkpoints are kept")
        elif status == "paused":
            store.add_event(db, job["id"], "Job paused; it continues from its last checkpoint when resumed")
        elif status in ("queued", "validating_files"):
            pass  # paused and resumed while the worker was stopping: the queue starts it again
        elif code == 128 + signal.SIGTERM:  # stopped from outside the server: kept resumable
            store.update(db, "jobs", job["id"], {"status": "paused"})
            store.add_event(db, job["id"], "The worker was stopped by SIGTERM from outside the server; the job is "
                                           "paused: resume it to continue from its last checkpoint", level="warn")
        else:
            _fail(db, job["id"], self._worker_error(job, code))

    def _worker_error(self, job: dict, code: int) -> dict:
        import json

        log = f"jobs/{job['id']}.log under the server's folder"
        try:
            found = json.loads(error_file(config_path(self.settings, job["id"])).read_text())
        except (OSError, ValueError):
            why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return _error("worker_crashed", f"the worker process was {why} (out of memory?); its output is in {log}")
        message = found["message"]
        param = None
        train_path, valid_path = (job["config"]["data"].get("train"), job["config"]["data"].get("eval"))
        # The caller knows its files by id, not by where the server keeps them.
        if valid_path and valid_path in message:
            message, param = message.replace(valid_path, f"validation_file {job['validation_file']}"), "validation_file"
        if train_path and train_path in message:
            message, param = message.replace(train_path, f"training_file {job['training_file']}"), param or "training_file"
        kind = found["kind"]
        code_for = {"data error": "invalid_training_file" if param != "validation_file" else "invalid_validation_file",
                    "model error": "invalid_model", "config error": "invalid_config",
                    "checkpoint error": "checkpoint_error", "out of memory": "out_of_memory",
                    "not enough disk space": "disk_full", "internal": "internal_error"}
        if kind == "model error":
            param = "model"
        elif kind == "out of memory":
            param = "method.supervised.hyperparameters.batch_size"
        return _error(code_for.get(kind, "job_error"), message, param)

    def _succeed(self, db, job: dict) -> None:
        import json

        run = jobs.run_dir(self.settings, job["id"])
        results = []
        for name in ("metrics.jsonl", "eval/scores.json", "report.md"):
            if (run / name).is_file():
                results.append(files.add_result(db, self.settings.root, job["owner"], run / name,
                                                f"{job['id']}-{Path(name).name}"))
        state = json.loads((run / "train_state.json").read_text()) if (run / "train_state.json").is_file() else {}
        name = jobs.model_name(job)
        store.update(db, "jobs", job["id"], {"status": "succeeded", "fine_tuned_model": name, "result_files": results,
                                             "trained_tokens": state.get("tokens_seen"), "finished_at": store.now()})
        store.add_event(db, job["id"], f"New fine-tuned model created: {name}")
        store.add_event(db, job["id"], "The job has successfully completed")

    def _shutdown(self) -> None:
        """Server stopping: each worker saves its checkpoint and stops; its job is queued again."""
        for w in self.workers.values():  # all at once: their checkpoints are written side by side
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
        for w in list(self.workers.values()):
            _stop_group(w.proc.pid, w.job_id, self.settings.stop_grace_s, signalled=True)
            code = w.proc.wait()
            w.log.close()
            del self.workers[w.job_id]
            with store.connect(self.settings.root) as db:
                job = store.get(db, "jobs", w.job_id)
                self._tail(db, job, w)
                with store.transaction(db):
                    job = store.get(db, "jobs", w.job_id)
                    if job["status"] != "running" or code == 0:
                        self._finish(db, job, code)  # it finished, or was paused or cancelled anyway
                        continue
                    store.update(db, "jobs", w.job_id, {"pid": None, "status": "queued"})
                    store.add_event(db, w.job_id, "The server stopped; the job is queued again and resumes from "
                                                  "its last checkpoint when the server starts")
