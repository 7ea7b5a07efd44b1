"""Settings that need the model to judge (data.max_length against its context) and the
--resume / --no-resume / --force flags: rejected with exit code 2 before a run folder changes."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_run_config, write_config
from tunekit.cli import build_parser, main
from tunekit.models.catalog import context_length, read_context_length


def _tiny_limit(tiny_model_dir) -> int:
    return json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]


@pytest.mark.parametrize("command", ["prepare", "train", "run"])
def test_max_length_beyond_the_models_context_exits_2_naming_both(command, tiny_model_dir, tmp_path, offline_home, capsys):
    limit = _tiny_limit(tiny_model_dir)
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tiny_model_dir, 10, data={"max_length": limit + 1}))
    assert main([command, str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"data.max_length {limit + 1} exceeds {tiny_model_dir}'s context of {limit} tokens" in err, err
    assert "lower data.max_length" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # rejected before anything was written


def test_train_before_prepare_says_to_prepare(tiny_model_dir, tmp_path, offline_home, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tiny_model_dir, 10))
    assert main(["train", str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "the prepare stage has not run for this run; run `tunekit prepare` with this config first" in err, err
    assert "Traceback" not in err


def test_max_length_at_the_models_context_is_accepted(tiny_model_dir, tmp_path, offline_home):
    limit = _tiny_limit(tiny_model_dir)
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tiny_model_dir, 10, data={"max_length": limit}))
    assert main(["prepare", str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 0


def test_a_bad_max_length_leaves_the_finished_run_alone(tiny_model_dir, tmp_path, offline_home):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tiny_model_dir, 10))
    runs = tmp_path / "runs"
    assert main(["prepare", str(cfg), "--runs-dir", str(runs)]) == 0
    before = (runs / "tiny" / "config.yaml").read_text()
    assert main(["prepare", str(cfg), "data.max_length=100000", "--runs-dir", str(runs)]) == 2
    assert (runs / "tiny" / "config.yaml").read_text() == before
    assert (runs / "tiny" / ".stages" / "prepare.json").is_file()


@pytest.mark.parametrize("config,want", [
    ({"max_position_embeddings": 8192}, 8192),
    ({"n_positions": 1024, "model_type": "gpt2"}, 1024),
    ({"text_config": {"max_position_embeddings": 4096}, "vision_config": {}}, 4096),
    ({"seq_length": 2048}, 2048),
    ({"hidden_size": 32}, None),  # unknown: no check rather than a guess
])
def test_context_length_reads_each_architectures_key(config, want):
    assert context_length(config) == want


def test_read_context_length_of_the_tiny_model(tiny_model_dir, tmp_path):
    assert read_context_length(tiny_model_dir) == _tiny_limit(tiny_model_dir)
    assert read_context_length(tmp_path) is None  # no config.json


def test_resume_flags(tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "c.yaml", "--resume"]).resume
    assert parser.parse_args(["run", "c.yaml", "--no-resume"]).no_resume
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "c.yaml", "--resume", "--no-resume"])
    assert "not allowed with" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.yaml"), "--resume", "--force"]) == 2
    assert "--resume" in capsys.readouterr().err
