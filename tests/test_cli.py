"""The command line end to end on the tiny model: artefacts, skipping, partial reruns, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import offline_env, ROOT, cli_on_tiny, tiny_run_config, write_config
from tunekit.cli import main

STAGES = ("prepare", "train", "eval", "report")


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    code, path, runs, cfg = cli_on_tiny(tmp_path_factory.mktemp("cli"), tiny_model_dir, "run")
    return code, path, runs / cfg["name"], runs


def test_run_exits_zero_and_leaves_every_artefact(tiny_run):
    code, _, run, _ = tiny_run
    assert code == 0
    for rel in ("config.yaml", "data/train.jsonl", "data/valid.jsonl", "data/rejects.jsonl", "data/eval.jsonl",
                "data/data_report.json", "metrics.jsonl", "train_state.json", "eval/predictions.jsonl",
                "eval/scores.json", "report.md", "report.html"):
        assert (run / rel).is_file(), rel
    state = json.loads((run / "train_state.json").read_text())
    assert (run / state["final_checkpoint"]).name == f"step-{state['steps']}"
    assert (run / state["final_checkpoint"] / "adapter_model.safetensors").is_file()
    scores = json.loads((run / "eval/scores.json").read_text())
    assert scores["questions"] == 4
    assert set(scores["fact_accuracy"]) == {"base", "few_shot", "tuned"}
    preds = [json.loads(x) for x in (run / "eval/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(set(p["answers"]) == {"base", "few_shot", "tuned"} for p in preds)


def test_report_states_the_verdict_first(tiny_run):
    from tunekit.eval.report import verdict

    _, _, run, _ = tiny_run
    lines = (run / "report.md").read_text().splitlines()
    assert lines[0].startswith("# ")
    first = next(x for x in lines[1:] if x.strip())
    assert first.startswith(verdict(json.loads((run / "eval/scores.json").read_text())) + " It kept ")
    assert first.startswith("Fine-tuning")
    html = (run / "report.html").read_text()
    assert html.startswith("<!doctype html>") and first.split(" (")[0].replace("+", "") in html.replace("+", "")


def _stage_stamps(run: Path) -> dict[str, str]:
    return {s: (run / ".stages" / f"{s}.json").read_text() for s in STAGES}


def test_rerun_skips_and_changed_eval_reruns_only_eval_and_report(tiny_run, capsys, monkeypatch):
    _, path, run, runs = tiny_run
    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    train_bytes = (run / "data/train.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    err = capsys.readouterr().err
    for s in STAGES:
        assert f"{s}: already done" in err, err

    before = _stage_stamps(run)
    assert main(["run", str(path), "eval.max_new_tokens=2", "--runs-dir", str(runs)]) == 0
    err = capsys.readouterr().err
    assert "prepare: already done" in err and "train: already done" in err
    assert "eval: already done" not in err and "report: already done" not in err
    after = _stage_stamps(run)
    assert after["prepare"] == before["prepare"] and after["train"] == before["train"]
    assert after["eval"] != before["eval"] and after["report"] != before["report"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts
    assert (run / "data/train.jsonl").read_bytes() == train_bytes
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["max_new_tokens"] == 2


def test_bad_config_exits_2_without_traceback(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"data": {"train": "x.jsonl"}, "train": {"lrr": 1}})
    p = subprocess.run([sys.executable, "-m", "tunekit", "run", str(bad), "--runs-dir", str(tmp_path / "runs")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "TUNEKIT_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert "train.lrr" in p.stderr and "train.lr" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_config_in_process(tmp_path, capsys):
    bad = write_config(tmp_path / "bad.yaml", {"data": {"train": "x.jsonl"}, "method": {"r": 0}})
    assert main(["prepare", str(bad), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "method.r" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_module_help():
    p = subprocess.run([sys.executable, "-m", "tunekit", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for word in ("run", "prepare", "train", "eval", "report", "models"):
        assert word in p.stdout


def test_models_list_table_and_json(offline_home, capsys):
    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out
    assert "smollm2-135m-instruct" in table and "(default)" in table and "cached" in table
    assert main(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(r["name"] == "smollm2-135m-instruct" and r["default"] for r in rows)


def test_settings_without_effect_do_not_invalidate_stages(tmp_path, tiny_model_dir):
    from tunekit.config import Config
    from tunekit.pipeline import stage_hash

    raw = tiny_run_config(tmp_path, tiny_model_dir, 10)
    base = Config.model_validate(raw)
    quiet = base.model_copy(update={"train": base.train.model_copy(update={"threads": 2, "save_every": 7, "keep_last": 5})})
    louder = base.model_copy(update={"train": base.train.model_copy(update={"lr": 0.5})})
    assert stage_hash(base, "train") == stage_hash(quiet, "train")
    assert stage_hash(base, "train") != stage_hash(louder, "train")
    assert stage_hash(base, "prepare") == stage_hash(louder, "prepare")


def test_documents_and_alpaca_csv_run_end_to_end(tiny_model_dir, tmp_path):
    """Domain-adaptation documents and an Alpaca CSV each train through `tunekit run`;
    few-shot is skipped when the training data holds no conversations to show."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"page{i}.md").write_text(f"# Page {i}\n\n" + f"Loomquay feature {i} retries failed runs. " * 30)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("question,context,answer\n" + "".join(f'"What is plan {i}?",,"Plan {i} costs {i} dollars."\n' for i in range(30)))
    mp = offline_env(tmp_path)
    try:
        for name, data in (("docs", {"train": str(docs), "max_length": 96, "chunk_overlap": 8}),
                           ("csv", {"train": str(csv_path), "columns": {"instruction": "question", "input": "context", "output": "answer"}})):
            cfg = tiny_run_config(tmp_path / f"cfg-{name}", tiny_model_dir, 4, n_eval=2, name=name)
            cfg["data"] = {**cfg["data"], **data}
            code = main(["run", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--runs-dir", str(tmp_path / "runs")])
            assert code == 0, name
            report = json.loads((tmp_path / "runs" / name / "data" / "data_report.json").read_text())
            scores = json.loads((tmp_path / "runs" / name / "eval" / "scores.json").read_text())
            if name == "docs":
                assert report["formats"] == {"text": 6} and report["documents"]["chunks"] > 6
                assert "few_shot" not in scores["fact_accuracy"]
            else:
                assert report["formats"] == {"alpaca": 30} and report["kept"] == 30
                assert "few_shot" in scores["fact_accuracy"]
    finally:
        mp.undo()
