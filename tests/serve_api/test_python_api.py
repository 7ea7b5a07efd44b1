"""tunekit/api.py: the stages as functions over a Config, a YAML path or a dict."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, tiny_run_config, write_config

import tunekit
from tunekit import api
from tunekit.errors import ConfigError


def test_import_tunekit_stays_cheap():
    code = ("import sys, tunekit; f = tunekit.run; assert callable(f) and tunekit.api.train; "
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_run_takes_a_dict_and_each_stage_then_finds_its_work_done(tiny_model_dir, tmp_path, offline_home):
    raw = tiny_run_config(tmp_path, tiny_model_dir, 20, n_eval=2, eval={"forgetting": False})
    runs = tmp_path / "runs"
    run_dir = tunekit.run(raw, runs_dir=runs)
    assert run_dir == runs / "tiny" and (run_dir / "report.md").is_file() and (run_dir / "eval" / "scores.json").is_file()
    adapter = (run_dir / "checkpoints").stat().st_mtime_ns
    # The same config as a YAML file: every stage already done with these inputs is skipped.
    path = write_config(tmp_path / "tiny.yaml", raw)
    assert api.prepare(path, runs) is None and api.train(path, runs) is None and api.evaluate(raw, runs) is None
    assert api.report(api.load(path), runs) == run_dir / "report.md"
    assert (run_dir / "checkpoints").stat().st_mtime_ns == adapter
    # force: trains again; what it replaces is set aside, not lost.
    assert api.train(raw, runs, force=True)["steps"] > 0
    assert list((run_dir / ".previous").glob("*/checkpoints"))


def test_load_names_a_bad_key_and_applies_overrides(tmp_path):
    with pytest.raises(ConfigError) as e:
        api.load({"data": {"train": "x.jsonl"}, "trian": {"epochs": 2}})
    assert "trian" in str(e.value) and "did you mean 'train'" in str(e.value)
    with pytest.raises(ConfigError, match="a config is a Config"):
        api.load(42)
    cfg = api.load({"data": {"train": "x.jsonl"}}, ["train.epochs=3", "method.r=8"])
    assert cfg.train.epochs == 3 and cfg.method.r == 8
    assert api.load(cfg) is cfg and api.load(cfg, ["seed=4"]).seed == 4
    assert api.run_dir(cfg, tmp_path) == tmp_path / "run"
