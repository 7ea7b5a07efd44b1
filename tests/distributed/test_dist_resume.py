"""Jobs of two processes that fail and resume: a process dying inside a checkpoint write, a
process dying under torchrun's restarts, a resume with another number of processes, and two
"machines" (torchrun agents) on this one. Each ends as the uninterrupted single-process run.

Every job here is the real command, `tunekit train` under torchrun; the deaths come from
crashing.py (os._exit in one process at a chosen moment, the training code untouched).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import procs
from conftest import assert_equals_reference, free_port, prepared, run, torchrun
from helpers import ROOT
from tunekit.train.checkpoint import list_checkpoints
from tunekit.train.checkpoint_dcp import is_sharded

CRASHING = str(Path(__file__).with_name("crashing.py"))


def _resumed_from(output: str) -> int:
    found = re.search(r"resuming from \S+ \(step (\d+)\)", " ".join(output.split()))
    assert found, f"no resume:\n{output[-3000:]}"
    return int(found.group(1))


def test_death_inside_a_checkpoint_write_leaves_the_one_before_and_resumes_in_one_process(case, tmp_path):
    """Rank 1 dies after writing its shards of step-4, before the checkpoint is published: step-2 stays
    the newest checkpoint, complete; one process (not two) resumes from it and ends as never interrupted."""
    runs = tmp_path / "runs"
    run_dir = prepared(case, runs)
    env = {**case["env"], "TK_CRASH_RANK": "1", "TK_CRASH_STEP": "4", "TK_CRASH_IN": "save"}
    out = run(torchrun("--standalone", "--nproc-per-node", "2", CRASHING, "train", str(case["config"]),
                       "--runs-dir", str(runs)), env, tmp_path / "crash.log", expect=1)
    assert "rank 1 exits inside the write of checkpoint step-4" in out
    saved = list_checkpoints(run_dir / "checkpoints")
    assert [s for s, _ in saved] == [2] and is_sharded(saved[0][1])
    assert not (run_dir / "train_state.json").exists()

    out = run(procs.tunekit("train", str(case["config"]), "--runs-dir", str(runs)), case["env"], tmp_path / "alone.log")
    assert _resumed_from(out) == 2
    assert_equals_reference(run_dir, case)
    assert not list((run_dir / "checkpoints").glob(".*.partial"))


def test_torchrun_restarts_after_a_process_dies_and_the_job_ends_as_uninterrupted(case, tmp_path):
    """Rank 1 exits (os._exit) at the start of step 3, after checkpoint step-2. torchrun stops the other
    process and starts both again; they resume from step-2 and finish as never interrupted. One restart
    allowed, not more: the second attempt must form its group at once (hardware._attempt_store; before
    it, a stale address from the first attempt failed 1 restart in 4 here, and hung one CI run)."""
    runs = tmp_path / "runs"
    run_dir = prepared(case, runs)
    env = {**case["env"], "TK_CRASH_RANK": "1", "TK_CRASH_STEP": "3", "TK_CRASH_IN": "step"}
    out = run(torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", CRASHING, "train",
                       str(case["config"]), "--runs-dir", str(runs)), env, tmp_path / "restarted.log")
    assert "rank 1 exits at the start of step 3" in out
    assert _resumed_from(out) == 2
    assert_equals_reference(run_dir, case)


def test_two_machines_on_localhost_train_as_one_process(case, tmp_path):
    """Two torchrun agents (--nnodes 2, one process each) meeting through the c10d rendezvous, as two
    machines sharing the run folder would."""
    runs = tmp_path / "runs"
    run_dir = prepared(case, runs)
    port = free_port()
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    started = []
    for i, log in enumerate(logs):
        cmd = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(i), "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tunekit-test", "-m", "tunekit", "train",
                       str(case["config"]), "--runs-dir", str(runs))
        with open(log, "wb") as out:
            started.append(subprocess.Popen(cmd, cwd=ROOT, env=case["env"], stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=procs.WAIT_S) for p in started]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], "\n".join(procs.tail(log) for log in logs)
    assert sum("processes 2 processes, ddp" in " ".join(procs.tail(log, 100000).split()) for log in logs) == 1  # rank 0 prints
    assert_equals_reference(run_dir, case)


def test_sigterm_to_torchrun_saves_every_process_at_one_step_then_resumes(case, tmp_path):
    """Preemption signals torchrun, which passes SIGTERM on to its processes; whichever process sees
    it first, all agree (in the step's all_reduce) on the step to stop after, save it together and
    exit 128 + 15. One process resumes from there and ends as never interrupted."""
    runs = tmp_path / "runs"
    run_dir = prepared(case, runs)
    env = {**case["env"], "TK_CRASH_IN": "slow", "TK_STEP_SLEEP": "0.5"}
    cmd = torchrun("--standalone", "--nproc-per-node", "2", CRASHING, "train", str(case["config"]), "train.save_every=0",
                   "--runs-dir", str(runs))
    log = tmp_path / "stopped.log"
    with procs.started(cmd, env, log) as proc:
        procs.wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2,
                       proc, "two training steps", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=procs.WAIT_S) != 0
    out = " ".join(procs.tail(log, 100000).split())
    saved = list_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1 and 2 <= saved[0][0] < 5 and is_sharded(saved[0][1]), (saved, out[-3000:])
    assert json.loads((saved[0][1] / "state.json").read_text())["processes"] == 2
    assert f"training stopped by SIGTERM after step {saved[0][0]} of 5" in out
    steps_logged = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps_logged) == saved[0][0]  # no process ran past the step they saved

    out = run(procs.tunekit("train", str(case["config"]), "--runs-dir", str(runs)), case["env"], tmp_path / "alone.log")
    assert _resumed_from(out) == saved[0][0]
    assert_equals_reference(run_dir, case)
