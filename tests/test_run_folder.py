"""Runs never delete each other's work: the run folder's owner, its lock, what reruns set aside,
and pruning that never removes a checkpoint a finished training names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, offline_env, tiny_run_config, write_config
from tunekit import runfolder
from tunekit.cli import main
from tunekit.train.checkpoint import list_checkpoints

TRAIN = {"save_every": 2, "keep_last": 1, "log_every": 1}


def _cli(tmp: Path, *args: str) -> int:
    mp = offline_env(tmp)
    try:
        return main(list(args))
    finally:
        mp.undo()


def _train(tmp: Path, config: Path, *extra: str) -> int:
    """prepare, then train (the train stage reads the prepared data)."""
    runs = str(tmp / "runs")
    return _cli(tmp, "prepare", str(config), "--runs-dir", runs, *extra) or _cli(tmp, "train", str(config), "--runs-dir", runs, *extra)


def _config(tmp: Path, model_dir: Path, file: str = "tiny.yaml", n: int = 24, **train) -> Path:
    raw = tiny_run_config(tmp, model_dir, n, train={**TRAIN, **train})
    return write_config(tmp / file, raw)


def _hashes(run: Path) -> set[str]:
    return {json.loads((p / "state.json").read_text())["config_hash"] for _, p in list_checkpoints(run / "checkpoints")}


def _final_exists(run: Path) -> bool:
    state = json.loads((run / "train_state.json").read_text())
    return (run / state["final_checkpoint"] / "state.json").is_file()


def test_another_config_file_with_the_same_name_is_refused_then_force_hands_over(tmp_path, tiny_model_dir, capsys):
    first = _config(tmp_path, tiny_model_dir, "first.yaml")
    runs = str(tmp_path / "runs")
    assert _train(tmp_path, first) == 0
    run = tmp_path / "runs" / "tiny"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert json.loads((run / "origin.json").read_text())["config_file"] == str(first.resolve())

    raw = yaml.safe_load(first.read_text())
    raw["train"]["lr"] = 5e-3
    raw["train"]["epochs"] = 2
    second = write_config(tmp_path / "second.yaml", raw)
    capsys.readouterr()
    assert _cli(tmp_path, "train", str(second), "--runs-dir", runs) == 2
    err = capsys.readouterr().err
    assert str(first.resolve()) in err and str(second.resolve()) in err
    assert "train.epochs" in err and "train.lr" in err and "--force" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # untouched

    assert _cli(tmp_path, "train", str(second), "--runs-dir", runs, "--force") == 0
    assert json.loads((run / "origin.json").read_text())["config_file"] == str(second.resolve())
    [kept] = (run / ".previous").iterdir()
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == before
    assert yaml.safe_load((kept / "config.yaml").read_text())["train"]["epochs"] == 1


def test_an_edited_config_sets_aside_what_it_replaces_keeping_the_last(tmp_path, tiny_model_dir):
    path = _config(tmp_path, tiny_model_dir)
    runs = str(tmp_path / "runs")
    run = tmp_path / "runs" / "tiny"
    assert _cli(tmp_path, "run", str(path), "--runs-dir", runs) == 0
    first_scores = (run / "eval" / "scores.json").read_text()
    first_hashes = _hashes(run)

    for lr in (5e-3, 2e-3):
        raw = yaml.safe_load(path.read_text())
        raw["train"]["lr"] = lr
        write_config(path, raw)
        assert _cli(tmp_path, "run", str(path), "--runs-dir", runs) == 0
        if lr == 5e-3:
            [kept] = (run / ".previous").iterdir()
            assert (kept / "eval" / "scores.json").read_text() == first_scores
            assert _hashes(kept) == first_hashes
            assert (kept / "train_state.json").is_file() and (kept / "report.md").is_file()
            assert not (kept / "data").exists()  # prepare did not rerun: its data is still the run's
    [kept] = (run / ".previous").iterdir()  # only the last replaced version
    assert yaml.safe_load((kept / "config.yaml").read_text())["train"]["lr"] == 5e-3
    assert _final_exists(run) and len(_hashes(run)) == 1


def test_no_resume_after_a_config_change_keeps_the_new_runs_checkpoints(tmp_path, tiny_model_dir):
    """The old run trained more steps: left in place, its higher step numbers won the pruning
    and the new run's final checkpoint, which train_state.json names, was deleted."""
    runs = str(tmp_path / "runs")
    run = tmp_path / "runs" / "tiny"
    path = _config(tmp_path, tiny_model_dir, epochs=3)
    assert _train(tmp_path, path) == 0
    raw = yaml.safe_load(path.read_text())
    raw["train"]["epochs"] = 1
    write_config(path, raw)
    assert _cli(tmp_path, "train", str(path), "--runs-dir", runs, "--no-resume") == 0
    assert _final_exists(run)
    assert len(_hashes(run)) == 1


def test_no_resume_with_the_same_config_starts_a_clean_numbering(tmp_path, tiny_model_dir):
    runs = str(tmp_path / "runs")
    run = tmp_path / "runs" / "tiny"
    path = _config(tmp_path, tiny_model_dir)
    assert _train(tmp_path, path) == 0
    old = sorted(p.name for p in (run / "checkpoints").iterdir())
    # A killed run of this config: a checkpoint, no finished stage.
    (run / ".stages" / "train.json").unlink()
    assert _cli(tmp_path, "train", str(path), "--runs-dir", runs, "--no-resume") == 0
    assert _final_exists(run)
    [kept] = (run / ".previous").iterdir()
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == old


def test_pruning_never_removes_the_checkpoint_train_state_names(tmp_path):
    import torch

    from tunekit.train import checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model.save_pretrained = lambda folder, **_: torch.save(model.state_dict(), Path(folder) / "w.pt")
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save(root, step, model, opt, sched, {"best": None}, keep_last=1)
    (tmp_path / "train_state.json").write_text(json.dumps({"final_checkpoint": "checkpoints/step-2",
                                                           "best_checkpoint": None}))
    for step in (3, 4):
        checkpoint.save(root, step, model, opt, sched, {"best": None}, keep_last=1)
    assert [s for s, _ in list_checkpoints(root)] == [2, 4]


def test_a_second_command_on_the_same_run_folder_exits_2_naming_the_holder(tmp_path, tiny_model_dir, capsys):
    path = _config(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tunekit.runfolder import locked\n"
         "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(run)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _cli(tmp_path, "prepare", str(path), "--runs-dir", str(tmp_path / "runs")) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and str(run) in err
        assert not (run / "data").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: the kernel released its lock.
    assert _cli(tmp_path, "prepare", str(path), "--runs-dir", str(tmp_path / "runs")) == 0


def test_differing_keys_lists_every_changed_leaf():
    old = {"train": {"lr": 1, "epochs": 1}, "model": {"chat_template": "base"}, "name": "x"}
    new = {"train": {"lr": 2, "epochs": 1}, "model": {"chat_template": "auto"}, "name": "x", "seed": 3}
    assert runfolder.differing_keys(old, new) == ["seed", "train.lr"]


@pytest.mark.parametrize("recorded", [None, "same"])
def test_a_folder_without_an_owner_or_with_this_one_is_claimed_quietly(tmp_path, recorded):
    from tunekit.config import Config

    run = tmp_path / "run"
    run.mkdir()
    cfg_file = tmp_path / "c.yaml"
    if recorded:
        (run / "origin.json").write_text(json.dumps({"config_file": str(cfg_file.resolve())}))
    runfolder.claim(run, cfg_file, Config.model_validate({"name": "run", "data": {"train": "t.jsonl"}}))
    assert json.loads((run / "origin.json").read_text())["config_file"] == str(cfg_file.resolve())


def test_a_run_resumed_after_its_last_step_reports_its_final_training_loss(tmp_path, tiny_model_dir):
    """Killed between the last checkpoint and train_state.json: the rerun runs no step, and the
    report's final training loss comes from the checkpoint, not NaN."""
    path = _config(tmp_path, tiny_model_dir)
    assert _train(tmp_path, path) == 0
    run = tmp_path / "runs" / "tiny"
    before = json.loads((run / "train_state.json").read_text())["final_train_loss"]
    (run / "train_state.json").unlink()
    (run / ".stages" / "train.json").unlink()
    assert _train(tmp_path, path) == 0
    assert json.loads((run / "train_state.json").read_text())["final_train_loss"] == before
