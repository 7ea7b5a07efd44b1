"""The second bundled example (examples/tickets): its files are what the generator writes, and
its config runs end to end (on the tiny model here) to a verdict on label accuracy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import offline_env
from tunekit import pipeline
from tunekit.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tickets"
sys.path.insert(0, str(ROOT / "tools"))

import make_tickets  # noqa: E402


def test_the_shipped_tickets_are_the_generators_and_held_out_wording_is_new():
    train, heldout = make_tickets.build()
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        shipped = [json.loads(x) for x in (EXAMPLE / "data" / name).read_text().splitlines()]
        assert shipped == rows
    assert {r["label"] for r in heldout} == set(make_tickets.LABELS)
    assert all(sum(r["label"] == c for r in heldout) == 20 for c in make_tickets.LABELS)
    seen = {r["messages"][1]["content"] for r in train}
    assert not any(r["messages"][1]["content"] in seen for r in heldout)


def test_the_example_runs_end_to_end_to_a_label_verdict(tmp_path, tiny_model_dir):
    # The tiny random model answers no general prompt to the end, so it has no replay answers.
    cfg = load_config(EXAMPLE / "config.yaml", [f"model.base={tiny_model_dir}", "train.replay.fraction=0", "method.layers=last:2",
                                                "train.threads=1", "eval.forgetting=false"])
    mp = offline_env(tmp_path)
    try:
        report = pipeline.run_all(cfg, tmp_path / "run")
    finally:
        mp.undo()
    scores = json.loads((tmp_path / "run" / "eval" / "scores.json").read_text())
    assert scores["primary_metric"] == "label_accuracy"
    assert scores["questions"] == 100
    assert set(scores["macro_f1"]) == {"base", "few_shot", "tuned"}
    assert scores["few_shot_pool"] > 200  # the tickets carry a system message, and are still usable shots
    assert "label accuracy" in report.read_text()
