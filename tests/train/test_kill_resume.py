"""`tunekit train --resume` after a real SIGKILL ends exactly where an uninterrupted run ends.

Every run here is a separate `python -m tunekit train` process. The reference trains to the
end. The killed run is watched from outside: once a checkpoint `step-N` is on disk *and*
metrics.jsonl shows a step after N, it gets SIGKILL (no handler runs, nothing is flushed).
The data set is sized so that many steps remain after that moment; the kill lands between
checkpoints, so the resumed run must redo steps and rewrite their metric lines.

A kill inside a checkpoint write cannot be hit by polling (the write takes milliseconds), so
those runs go through stop_in_checkpoint_write.py, which stops the process at a chosen
point of the write until the test kills it: deterministic, and the training code untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import procs
from helpers import offline_env, tiny_run_config, write_config
from tunekit import pipeline
from tunekit.config import load_config
from tunekit.train.checkpoint import list_checkpoints

TOL = 1e-4  # the bound; fp32 on the tiny model is expected to match to the last bit
STOPPER = Path(__file__).with_name("stop_in_checkpoint_write.py")


def _write_config(tmp: Path, model_dir: Path) -> Path:
    # 300 conversations x 3 epochs at 12 examples a step is ~70 steps: several seconds of
    # training after the first checkpoint, so the kill cannot miss the run.
    raw = tiny_run_config(tmp, model_dir, 300, train={"epochs": 3, "batch_size": 6, "grad_accum": 2,
                                                      "save_every": 2, "keep_last": 2, "log_every": 1})
    return write_config(tmp / "tiny.yaml", raw)


def _prepare(config: Path, runs: Path) -> Path:
    """Run the prepare stage in this process (cheap: no model weights) into `runs/<name>`."""
    mp = offline_env(runs)
    try:
        cfg = load_config(config)
        run_dir = pipeline.run_dir_for(cfg, runs)
        pipeline.run_stage(cfg, run_dir, "prepare")
    finally:
        mp.undo()
    return run_dir


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(run_dir / "checkpoints")]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        with contextlib.suppress(ValueError):  # a line still being written
            rows.append(json.loads(line))
    return rows


def _resumed_from(output: str) -> int:
    found = re.search(r"resuming from \S+ \(step (\d+)\)", " ".join(output.split()))
    assert found, f"the rerun did not resume:\n{output[-3000:]}"
    return int(found.group(1))


def _outcome(run_dir: Path) -> dict:
    state = json.loads((run_dir / "train_state.json").read_text())
    return {"state": state, "metrics": _metrics(run_dir),
            "adapter": load_file(str(run_dir / state["final_checkpoint"] / "adapter_model.safetensors"))}


def _assert_same_as_reference(run_dir: Path, ref: dict) -> None:
    got, want = _outcome(run_dir), ref["outcome"]
    steps = want["state"]["steps"]
    assert got["state"]["steps"] == steps
    assert got["state"]["tokens_seen"] == want["state"]["tokens_seen"]
    assert abs(got["state"]["final_train_loss"] - want["state"]["final_train_loss"]) < TOL
    assert want["state"]["valid_loss"] is not None
    assert abs(got["state"]["valid_loss"] - want["state"]["valid_loss"]) < TOL
    # Each step logged exactly once, with the uninterrupted run's loss.
    assert [m["step"] for m in got["metrics"]] == list(range(1, steps + 1))
    assert [m["loss"] for m in got["metrics"]] == pytest.approx([m["loss"] for m in want["metrics"]], abs=TOL)
    assert got["adapter"].keys() == want["adapter"].keys() and got["adapter"]
    for name, tensor in want["adapter"].items():
        assert torch.allclose(got["adapter"][name], tensor, atol=TOL, rtol=0), name


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> dict:
    """The config, and an uninterrupted run of it in its own process."""
    tmp = tmp_path_factory.mktemp("kill-resume")
    config = _write_config(tmp, tiny_model_dir)
    runs = tmp / "reference"
    run_dir = _prepare(config, runs)
    env = procs.env(tmp / "home")
    procs.run_to_end(procs.tunekit("train", str(config), "--runs-dir", str(runs)), env, tmp / "reference.log")
    outcome = _outcome(run_dir)
    assert outcome["state"]["steps"] >= 40, "too few steps for the kill to land mid-run"
    return {"config": config, "env": env, "outcome": outcome}


def test_sigkill_mid_training_then_resume_matches_uninterrupted(reference, tmp_path):
    config, env, steps = reference["config"], reference["env"], reference["outcome"]["state"]["steps"]
    runs = tmp_path / "runs"
    run_dir = _prepare(config, runs)
    log = tmp_path / "killed.log"

    def past_a_checkpoint() -> bool:
        saved = _checkpoint_steps(run_dir)
        return bool(saved) and max((m["step"] for m in _metrics(run_dir)), default=0) > saved[-1]

    with procs.started(procs.tunekit("train", str(config), "--runs-dir", str(runs)), env, log) as proc:
        procs.wait_for(past_a_checkpoint, proc, "a checkpoint with training past it", log)
        procs.sigkill(proc)
    saved = _checkpoint_steps(run_dir)
    assert saved and saved[-1] < steps, f"killed too late: checkpoints {saved} of {steps} steps"
    assert not (run_dir / "train_state.json").exists()
    assert not pipeline.is_done(load_config(config), run_dir, "train")

    output = procs.run_to_end(procs.tunekit("train", str(config), "--runs-dir", str(runs), "--resume"), env,
                         tmp_path / "resumed.log")
    assert _resumed_from(output) == saved[-1]
    _assert_same_as_reference(run_dir, reference)


def _kill_inside_write(config: Path, runs: Path, env: dict, at: str, when: str, log: Path) -> Path:
    """Run training until it stops inside the write of checkpoint `at` (see STOPPER), SIGKILL
    it there, and return the `.partial` folder it leaves."""
    stop_file = log.with_suffix(".stopped")
    env = {**env, "TK_STOP_AT": at, "TK_STOP_WHEN": when, "TK_STOP_FILE": str(stop_file)}
    with procs.started([sys.executable, str(STOPPER), "train", str(config), "--runs-dir", str(runs), "--resume"], env, log) as proc:
        procs.wait_for(stop_file.exists, proc, f"the stop inside the {at} checkpoint write", log)
        procs.sigkill(proc)
    partial = Path(stop_file.read_text())
    assert partial.is_dir() and partial.name.startswith(f".{at}.") and partial.name.endswith(".partial")
    return partial


def test_sigkill_inside_checkpoint_writes_then_resume_matches_uninterrupted(reference, tmp_path):
    """Killed twice while writing a checkpoint, resumed each time: the same end as never killed.

    First right after step-4's temporary folder appears (empty); then, in the resumed run,
    when step-6 is complete, state.json included, but not yet renamed into place.
    """
    config, env = reference["config"], reference["env"]
    runs = tmp_path / "runs"
    run_dir = _prepare(config, runs)

    partial = _kill_inside_write(config, runs, env, "step-4", "empty", tmp_path / "killed-1.log")
    assert not any(partial.iterdir())
    assert _checkpoint_steps(run_dir) == [2]

    partial = _kill_inside_write(config, runs, env, "step-6", "filled", tmp_path / "killed-2.log")
    assert (partial / "state.json").is_file() and (partial / "adapter_model.safetensors").is_file()
    assert _resumed_from((tmp_path / "killed-2.log").read_text(errors="replace")) == 2
    assert _checkpoint_steps(run_dir) == [2, 4]  # the complete-looking folder is not taken for step-6

    output = procs.run_to_end(procs.tunekit("train", str(config), "--runs-dir", str(runs), "--resume"), env,
                         tmp_path / "resumed.log")
    assert _resumed_from(output) == 4
    _assert_same_as_reference(run_dir, reference)
    assert not list((run_dir / "checkpoints").glob(".*.partial"))  # the killed writes' leftovers are cleared


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_mid_training_saves_at_the_step_boundary_then_resume_matches_uninterrupted(reference, tmp_path, sig):
    """Preemption sends SIGTERM: the step under way finishes, its checkpoint is written (here the
    only one: periodic saves are off), the command exits 128 + the signal saying how to resume,
    and the resumed run ends as the uninterrupted one."""
    config, env, steps = reference["config"], reference["env"], reference["outcome"]["state"]["steps"]
    runs = tmp_path / "runs"
    run_dir = _prepare(config, runs)
    log = tmp_path / "stopped.log"
    cmd = procs.tunekit("train", str(config), "train.save_every=0", "--runs-dir", str(runs))
    with procs.started(cmd, env, log) as proc:
        procs.wait_for(lambda: len(_metrics(run_dir)) >= 3, proc, "three training steps", log)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=procs.WAIT_S) == 128 + sig
    output = " ".join(procs.tail(log).split())
    saved = _checkpoint_steps(run_dir)
    assert len(saved) == 1 and 3 <= saved[0] < steps, saved
    assert f"stopped by {signal.Signals(sig).name} after step {saved[0]} of {steps}" in output, output
    assert "rerun the same command to resume" in output and "Traceback" not in output
    assert max(m["step"] for m in _metrics(run_dir)) == saved[0]  # no step ran past the checkpoint

    resumed = procs.run_to_end(procs.tunekit("train", str(config), "--runs-dir", str(runs)), env, tmp_path / "resumed.log")
    assert _resumed_from(resumed) == saved[0]
    _assert_same_as_reference(run_dir, reference)
