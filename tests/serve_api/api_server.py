"""A real `tunekit serve` in a subprocess, called through the official openai client.

Each server gets its own TUNEKIT_HOME (offline, one thread) and a free port on 127.0.0.1.
Jobs train the session's tiny model with the job defaults below: LoRA r=4, no replay (a
random tiny model finishes no answer of its own), a checkpoint every 2 steps, a metrics row
every step, no forgetting check.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import procs
from helpers import example_conversations, heldout_items, write_jsonl

JOB_DEFAULTS = {
    "data": {"valid_fraction": 0.1},
    "method": {"kind": "lora", "r": 4, "alpha": 8},
    "train": {"epochs": 1, "lr": 1e-2, "batch_size": 6, "save_every": 2, "keep_last": 2, "log_every": 1,
              "threads": 1, "warmup_ratio": 0.0, "replay": {"fraction": 0.0}},
    "eval": {"few_shot_k": 1, "max_new_tokens": 4, "batch_size": 8, "forgetting": False},
}
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    home: Path
    port: int
    proc: object
    log: Path
    keys: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.home / "serve"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str):
        from openai import OpenAI

        # No retries: a refusal must reach the test as the server sent it.
        return OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def run_dir(self, job_id: str) -> Path:
        return self.root / "runs" / job_id

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def running_server(home: Path, log: Path, *args: str, port: int | None = None) -> Iterator[Server]:
    """`tunekit serve` on `home` with the job defaults, answering; killed when the block ends."""
    defaults = home.parent / "job-defaults.yaml"
    defaults.write_text(yaml.safe_dump(JOB_DEFAULTS))
    port = port or free_port()
    cmd = procs.tunekit("serve", "--port", str(port), "--job-defaults", str(defaults), *args)
    with procs.started(cmd, procs.env(home), log) as proc:
        server = Server(home, port, proc, log)

        def up() -> bool:  # 401 without a key is an answer
            try:
                urllib.request.urlopen(f"{server.url}/models", timeout=2)
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        procs.wait_for(up, proc, "the server answering", log, poll=0.1)
        yield server


def make_key(home: Path, name: str, owner: str | None = None) -> str:
    from tunekit.serve import keys

    return keys.create(home / "serve", name, owner)


def wait_job(client, job_id: str, until=TERMINAL, server: Server | None = None, timeout: float = procs.WAIT_S):
    """Poll the job until its status is in `until`; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        if server is not None and not server.alive():
            pytest.fail(f"the server exited ({server.proc.returncode}) while job {job_id} was {job.status}:\n"
                        f"{procs.tail(server.log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job.status} after {timeout:.0f}s" +
                        (f":\n{procs.tail(server.log)}" if server else ""))
        time.sleep(0.1)


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written
    return steps


def checkpoint_steps(run_dir: Path) -> list[int]:
    from tunekit.train.checkpoint import list_checkpoints

    return [s for s, _ in list_checkpoints(run_dir / "checkpoints")]


def train_file(tmp: Path, n: int, name: str = "train.jsonl") -> Path:
    return write_jsonl(tmp / name, example_conversations(n))


def heldout_file(tmp: Path, n: int) -> Path:
    return write_jsonl(tmp / "heldout.jsonl", heldout_items(n))
