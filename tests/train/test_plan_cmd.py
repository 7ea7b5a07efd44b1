"""`tunekit plan`: the extrapolation from timed steps, plan.json on a tiny run, and the learning curve."""

from __future__ import annotations

import json
import math

import pytest
from helpers import cli_on_tiny, tiny_run_config, write_config

from tunekit.cli import main
from tunekit.errors import ConfigError
from tunekit.plan.curve import curve_sentence, nested_subsets, parse_fractions
from tunekit.plan.estimate import (
    Costs,
    StepSizes,
    choose_probe_steps,
    eval_steps,
    fit_line,
    padded_tokens,
    predict_steps,
    relative_spread,
    save_count,
    train_seconds,
)

# --- the arithmetic -------------------------------------------------------------------------


def test_the_fitted_line_is_summed_over_every_planned_step():
    samples = [(t, 0.4 + 0.002 * t) for t in (100, 250, 400, 900)]
    sizes = [120, 300, 300, 800, 1000, 64]
    assert predict_steps(samples, sizes) == pytest.approx(sum(0.4 + 0.002 * n for n in sizes))
    # Noise around the line averages out rather than following one sample.
    noisy = [(t, (0.4 + 0.002 * t) * f) for t, f in zip((100, 250, 400, 900), (1.05, 0.95, 1.04, 0.97), strict=True)]
    assert predict_steps(noisy, sizes) == pytest.approx(sum(0.4 + 0.002 * n for n in sizes), rel=0.05)


def test_one_step_slowed_by_another_process_barely_moves_the_estimate():
    line = [(t, 0.3 + 0.007 * t) for t in (376, 456, 512, 760, 1352)]
    sizes = [400, 500, 600, 700, 800] * 20
    exact = sum(0.3 + 0.007 * n for n in sizes)
    hit = [(t, s * (1.8 if t == 376 else 1.0)) for t, s in line]
    assert predict_steps(hit, sizes) == pytest.approx(exact, rel=0.03)
    assert relative_spread(hit, *fit_line(hit)) > 0.3  # but the range says the timings were noisy


def test_the_fit_stays_physical():
    assert fit_line([(200, 1.0)]) == (0.0, pytest.approx(0.005))  # one size: through the origin
    assert fit_line([(100, 2.0), (200, 1.0), (300, 1.5)]) == (pytest.approx(1.5), 0.0)  # falling: the median
    a, b = fit_line([(100, 0.05), (1000, 2.0)])  # the line would cross below zero
    assert a == 0.0 and b > 0 and a + b * 10 > 0


def test_train_seconds_adds_evaluations_checkpoints_and_one_offs():
    costs = Costs(a=1.0, b=0.01, spread=0.1, warmup_s=2.0, eval_s=3.0, save_s=0.5, plot_s=1.0)
    t = train_seconds(costs, [100, 200], evals=2, saves=3)
    assert (t["steps"], t["heldout"], t["checkpoints"], t["other"]) == (5.0, 6.0, 1.5, 3.0)
    assert t["total"] == 15.5 and (t["low"], t["high"]) == (pytest.approx(13.95), pytest.approx(17.05))


def test_evaluation_and_checkpoint_counts_follow_the_loop():
    assert eval_steps(10, 0) == [10] and eval_steps(10, 4) == [4, 8, 10] and eval_steps(8, 4) == [4, 8]
    assert save_count(101, 25, [101], keep_best=True) == 5  # 25, 50, 75, 100 and the last
    assert save_count(10, 0, [4, 8, 10], keep_best=True) == 3
    assert save_count(10, 0, [4, 8, 10], keep_best=False) == 1


def test_padded_tokens_as_make_batch_builds_them():
    assert padded_tokens([3, 5, 4]) == 15
    assert padded_tokens([3, 5, 4], pack_to=8) == 16  # rows [5, 3] and [4], 8 wide


def test_probe_steps_span_the_sizes_and_hold_the_widest_micro_batch():
    padded = [500, 100, 900, 300, 700, 200, 800, 400, 600, 1000, 150, 350]
    widest = list(padded)
    widest[4] = 5000  # with accumulation the widest micro-batch need not be in the largest step
    picks = choose_probe_steps(StepSizes(padded, padded, widest), 5)
    assert {1, 9, 4} <= set(picks) and len(picks) <= 6
    assert [padded[s] for s in picks] == sorted(padded[s] for s in picks)
    assert choose_probe_steps(StepSizes([5, 9, 7], [5, 9, 7], [5, 9, 7]), 5) == [0, 1, 2]  # a tiny run: every step


# --- the learning curve's pieces -------------------------------------------------------------


def test_curve_subsets_are_nested_and_seeded():
    subsets = nested_subsets(100, [0.1, 0.25, 0.5, 1.0], seed=0)
    assert [len(s) for s in subsets] == [10, 25, 50, 100]
    assert all(set(a) < set(b) for a, b in zip(subsets[:-1], subsets[1:], strict=True))
    assert nested_subsets(100, [0.1, 0.25, 0.5, 1.0], seed=0) == subsets
    assert nested_subsets(100, [0.1], seed=1)[0] != subsets[0]
    assert subsets[0] != list(range(10))  # drawn, not the file's first lines
    assert len(nested_subsets(7, [0.1, 1.0], seed=0)[0]) == 1  # never empty


def _points(metric, *scores):
    return [{"fraction": f, "examples": n, "score": s, "metric": metric}
            for f, n, s in zip((0.25, 0.5, 1.0), (200, 400, 800), scores, strict=False)]


def test_the_sentence_reads_the_last_segment_with_its_numbers():
    rising = curve_sentence(_points("fact_accuracy", 0.30, 0.40, 0.52))
    assert "50% to 100%" in rising and "400 to 800 examples" in rising
    assert "40% to 52%" in rising and "+12 points" in rising and "more data is likely to help" in rising
    flat = curve_sentence(_points("fact_accuracy", 0.30, 0.50, 0.51))
    assert "flat" in flat and "unlikely to help much" in flat and "+1.0 points" in flat
    falling = curve_sentence(_points("fact_accuracy", 0.30, 0.55, 0.50))
    assert "lowered" in falling and "-5 points" in falling and "unlikely to help" in falling
    loss = curve_sentence(_points("valid_loss", 1.4, 1.2, 1.0))
    assert "held-out loss from 1.200 to 1.000" in loss and "more data is likely to help" in loss
    assert "flat" in curve_sentence(_points("valid_loss", 1.4, 1.2, 1.195))
    assert "at least two" in curve_sentence(_points("valid_loss", 1.0)[:1])


def test_fractions_are_percentages():
    assert parse_fractions("10,25,50,100") == [0.1, 0.25, 0.5, 1.0]
    for bad in ("", "0,50", "50,10", "10,120", "ten"):
        with pytest.raises(ConfigError):
            parse_fractions(bad)


# --- the command on the tiny model -----------------------------------------------------------


@pytest.fixture(scope="module")
def planned(tiny_model_dir, tmp_path_factory):
    code, path, runs, _ = cli_on_tiny(tmp_path_factory.mktemp("plan"), tiny_model_dir, "plan", train={"save_every": 2})
    return code, path, runs


def test_plan_writes_positive_times_for_the_steps_make_plan_gives(planned, tiny_tokenizer):
    from tunekit.config import load_config
    from tunekit.data.batches import load_examples
    from tunekit.train.loop import make_plan

    code, path, runs = planned
    assert code == 0
    run = runs / "tiny"
    plan = json.loads((run / "plan" / "plan.json").read_text())
    cfg = load_config(path)
    steps = make_plan(cfg, load_examples(run / "data" / "train.jsonl", tiny_tokenizer)).total_steps
    assert plan["steps"] == steps and steps > 1
    t = plan["train_seconds"]
    assert 0 < t["steps"] and 0 < t["low"] < t["total"] < t["high"] and t["heldout"] > 0 and t["checkpoints"] > 0
    assert plan["checkpoints"] == save_count(steps, 2, [steps], True)
    assert plan["probe"] and all(p["seconds"] > 0 and p["padded_tokens"] > 0 for p in plan["probe"])
    assert plan["tokens_per_s"] > 0 and plan["tokens"] <= plan["padded_tokens"]
    mem = plan["memory"]
    assert mem["peak_rss_mb"] > 0 and mem["estimated_mb"] > 0
    # Under torchrun: DDP holds the whole estimate in each process; auto keeps LoRA on DDP.
    procs = mem["processes"]
    assert procs["count"] >= 2 and procs["ddp_mb"] == mem["estimated_mb"] and procs["fsdp2_mb"] > 0
    assert procs["auto"] == "ddp" and "adapters" in procs["auto_reason"]


def test_the_probe_leaves_nothing_a_training_would_resume_from(planned, capsys, monkeypatch):
    _, path, runs = planned
    run = runs / "tiny"
    assert not (run / "checkpoints").exists() and not (run / "train_state.json").exists()
    assert [p.name for p in (run / "plan").iterdir()] == ["plan.json"]
    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    capsys.readouterr()
    assert main(["train", str(path), "--runs-dir", str(runs)]) == 0
    assert "resuming" not in capsys.readouterr().err
    state = json.loads((run / "train_state.json").read_text())
    assert state["steps"] == json.loads((run / "plan" / "plan.json").read_text())["steps"]


def test_plan_prints_the_estimate(tiny_model_dir, tmp_path, offline_home, capsys):
    cfg = tiny_run_config(tmp_path, tiny_model_dir, 20)
    path = write_config(tmp_path / "tiny.yaml", cfg)
    capsys.readouterr()
    assert main(["plan", str(path), "--runs-dir", str(tmp_path / "runs")]) == 0
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    for words in ("estimated train time", "tokens/s", "peak memory", "MB measured", "MB estimated", "MB available", "wrote"):
        assert words in err, err


def test_curve_end_to_end_on_two_fractions(tiny_model_dir, tmp_path, offline_home):
    cfg = tiny_run_config(tmp_path, tiny_model_dir, 40, n_eval=4)
    path = write_config(tmp_path / "tiny.yaml", cfg)
    runs = tmp_path / "runs"
    assert main(["plan", str(path), "--runs-dir", str(runs), "--curve", "--fractions", "50,100"]) == 0
    out = runs / "tiny" / "plan"
    curve = json.loads((out / "learning_curve.json").read_text())
    assert set(curve) == {"points", "sentence"}
    points = curve["points"]
    total = len((runs / "tiny" / "data" / "train.jsonl").read_text().splitlines())
    half_n = math.ceil(total / 2)
    assert [p["fraction"] for p in points] == [0.5, 1.0]
    assert [p["examples"] for p in points] == [half_n, total]
    assert all(p["metric"] == "fact_accuracy" and 0 <= p["score"] <= 1 for p in points)
    assert "50% to 100%" in curve["sentence"]
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    half, full = (set((out / f"curve-{p}" / "data" / "train.jsonl").read_text().splitlines()) for p in (50, 100))
    assert half < full and full == set((runs / "tiny" / "data" / "train.jsonl").read_text().splitlines())
    for p, n in ((50, half_n), (100, total)):
        assert json.loads((out / f"curve-{p}" / "train_state.json").read_text())["train_examples"] == n
    assert not (runs / "tiny" / "checkpoints").exists()  # the curve trains beside the run, not in it
