"""`tunekit run CONFIG --nproc-per-node 2`: tunekit launches torchrun itself, and the whole path
(prepare, train, eval, report, export) ends with what one process writes: the same answers,
scores and verdict, and the same exported adapter. Both processes train, and both answer the
held-out and general questions (whole batches each, gathered in order: eval/spread.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import procs
from conftest import TOL, max_difference, outcome, run
from helpers import offline_env, tiny_run_config, write_config


def _scores(run_dir: Path) -> dict:
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    scores["forgetting"].pop("seconds", None)
    for key in ("eval_seconds", "peak_memory", "precision"):
        scores.pop(key)
    return scores


def _same(a, b, path: str = "scores") -> None:
    """Equal, floats within 1e-6 (perplexities move in the 8th digit with the weights' ~2e-7)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


def _answers(run_dir: Path) -> list[dict]:
    return [json.loads(x)["answers"] for x in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]


def _verdict(run_dir: Path) -> str:
    return (run_dir / "report.md").read_text().split("\n## ")[0]


def test_run_with_nproc_per_node_ends_as_one_process(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tunekit.cli import main

    raw = tiny_run_config(tmp_path, tiny_model_dir, 41, n_eval=6, export={"formats": ["adapter"]},
                          train={"batch_size": 4, "grad_accum": 2, "save_every": 2, "precision": "fp32"})
    config = write_config(tmp_path / "tiny.yaml", raw)
    mp = offline_env(tmp_path)
    try:
        assert main(["run", str(config), "--runs-dir", str(tmp_path / "one")]) == 0
    finally:
        mp.undo()
    one = tmp_path / "one" / "tiny"
    out = run(procs.tunekit("run", str(config), "--runs-dir", str(tmp_path / "two"), "--nproc-per-node", "2"),
              procs.env(tmp_path / "home"), tmp_path / "two.log")
    two = tmp_path / "two" / "tiny"
    flat = " ".join(out.split())
    assert "launching 2 processes" in out and flat.count("processes 2 processes, ddp") == 1
    for label in ("eval base", "eval few-shot", "eval tuned", "forgetting base", "forgetting tuned"):  # split, gathered
        assert f"{label}: " in flat and re.search(rf"{label}: \d+ answers, \d+ batches over 2 processes", flat), label
    assert outcome(two)["state"]["processes"] == 2
    assert [m["step"] for m in outcome(two)["metrics"]] == [m["step"] for m in outcome(one)["metrics"]]  # one writer
    assert max_difference(outcome(two)["adapter"], outcome(one)["adapter"]) <= TOL
    assert _answers(two) == _answers(one)
    _same(_scores(two), _scores(one))
    assert _verdict(two) == _verdict(one) and "held-out questions" in _verdict(one)
    exported = [load_file(str(d / "export" / "adapter" / "adapter_model.safetensors")) for d in (one, two)]
    assert max_difference(*exported) <= TOL
