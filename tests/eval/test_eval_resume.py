"""A killed eval stage resumes from its last completed batch and writes what an uninterrupted run writes.

The kill is simulated in-process by a greedy_batch that raises KeyboardInterrupt after k batches
(one call per generation batch), and once for real: `python -m tunekit eval` in its own process,
SIGKILLed as soon as a batch is journaled in eval/partial/.

Batches per uninterrupted run here (10 held-out items, 12 general questions, eval.batch_size 4):
base answers 3, few-shot 3, base probe 3, tuned answers 3, tuned probe 3.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import procs
from helpers import heldout_items, offline_env, tiny_run_config, write_config, write_jsonl

from tunekit import pipeline
from tunekit.config import Config
from tunekit.eval import evaluate as ev
from tunekit.eval import forgetting, partial
from tunekit.infer import greedy as generate

PROBE_QUESTIONS = 12  # of the 178 general questions: the same check, a fraction of the time
BATCHES = {"base": 3, "few_shot": 3, "base probe": 3, "tuned": 3, "tuned probe": 3}
TOTAL = sum(BATCHES.values())
BASE_DONE = 9  # base answers, few-shot answers and the base probe: all the base model's work
TIMING = ("eval_seconds", "peak_memory")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A prepared and trained tiny run (copied by each test), its config, and an uninterrupted eval's output."""
    from tunekit.models.loading import load_tokenizer

    tmp = tmp_path_factory.mktemp("eval-resume")
    mp = offline_env(tmp)
    mp.setattr(forgetting, "load_questions", _few_questions)
    try:
        raw = tiny_run_config(tmp, tiny_model_dir, 20, n_eval=10, eval={"batch_size": 4})
        cfg = Config.model_validate(raw)
        run_dir = tmp / "runs" / cfg.name
        for stage in ("prepare", "train"):
            pipeline.run_stage(cfg, run_dir, stage)
        tok = load_tokenizer(tiny_model_dir)
        ref_dir = tmp / "reference"
        shutil.copytree(run_dir, ref_dir)
        batches = Batches(mp)
        ev.evaluate(cfg, ref_dir, tiny_model_dir, tok)
        assert batches.calls == TOTAL
    finally:
        mp.undo()
    return {"raw": raw, "run_dir": run_dir, "model_dir": tiny_model_dir, "tok": tok, "reference": _outcome(ref_dir)}


_ALL_QUESTIONS = forgetting.load_questions


def _few_questions() -> list[dict]:
    return _ALL_QUESTIONS()[:PROBE_QUESTIONS]


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    """A fresh copy of the trained run, with the short forgetting probe."""
    monkeypatch.setattr(forgetting, "load_questions", _few_questions)
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run_dir)
    return run_dir


def _outcome(run_dir: Path) -> dict:
    """predictions.jsonl as text, and scores.json without what measures time or memory."""
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    for key in TIMING:
        scores.pop(key)
    scores["forgetting"].pop("seconds", None)
    return {"predictions": (run_dir / "eval" / "predictions.jsonl").read_text(), "scores": scores}


class Batches:
    """Counts greedy_batch calls (one per generation batch); with `fail_after`, the next call is a Ctrl-C."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.calls, self.fail_after, real = 0, fail_after, generate.greedy_batch

        def spy(*args, **kwargs):
            if self.calls == self.fail_after:
                raise KeyboardInterrupt
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(generate, "greedy_batch", spy)


class Loads:
    """Model loads: `tuned` counts load_tuned; `models` counts load_model, which load_tuned also calls for a
    LoRA run (the base under the adapter), so the base model was loaded on its own when models > tuned."""

    def __init__(self, monkeypatch):
        self.models = self.tuned = 0
        real_model, real_tuned = ev.load_model, ev.load_tuned

        def load_model(*args, **kwargs):
            self.models += 1
            return real_model(*args, **kwargs)

        def load_tuned(*args, **kwargs):
            self.tuned += 1
            return real_tuned(*args, **kwargs)

        monkeypatch.setattr(ev, "load_model", load_model)
        monkeypatch.setattr(ev, "load_tuned", load_tuned)


def _eval(trained, run_dir: Path, **eval_overrides) -> None:
    raw = trained["raw"]
    cfg = Config.model_validate({**raw, "eval": {**raw["eval"], **eval_overrides}})
    ev.evaluate(cfg, run_dir, trained["model_dir"], trained["tok"])


def _interrupt(trained, run_dir: Path, monkeypatch, after: int, **eval_overrides) -> None:
    with monkeypatch.context() as m:
        Batches(m, fail_after=after)
        with pytest.raises(KeyboardInterrupt):
            _eval(trained, run_dir, **eval_overrides)
    assert not (run_dir / "eval" / "scores.json").exists()


def _console(capsys) -> str:
    """What the stage printed, without whitespace: the console wraps long lines where it likes."""
    return "".join(capsys.readouterr().err.split())


def _journal_lines(run_dir: Path, name: str) -> list[str]:
    return (partial.folder(run_dir) / f"{name}.jsonl").read_text().splitlines()


@pytest.mark.parametrize("after", [2, 7, 10, 13])
def test_interrupted_run_resumes_to_the_uninterrupted_result(trained, run, monkeypatch, capsys, after):
    _interrupt(trained, run, monkeypatch, after)
    assert len(_journal_lines(run, "base.answers")) == 1 + min(after, 3)  # the key, then a line per batch
    capsys.readouterr()
    batches, loads = Batches(monkeypatch), Loads(monkeypatch)
    _eval(trained, run)
    assert _outcome(run) == trained["reference"]
    assert batches.calls == TOTAL - after  # only the batches the killed run had not finished
    assert loads.tuned == 1
    # The base model is loaded only while it has work left.
    assert loads.models - loads.tuned == (1 if after < BASE_DONE else 0)
    err = _console(capsys)
    assert f"resumingeval:base{min(after * 4, 10)}/10answersalreadydone" in err
    assert not partial.folder(run).exists()


def test_interrupted_after_the_last_batch_loads_no_model(trained, run, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(ev, "score", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            _eval(trained, run)
    batches, loads = Batches(monkeypatch), Loads(monkeypatch)
    _eval(trained, run)
    assert (batches.calls, loads.models, loads.tuned) == (0, 0, 0)
    assert _outcome(run) == trained["reference"]


def test_a_torn_last_line_is_dropped(trained, run, monkeypatch):
    _interrupt(trained, run, monkeypatch, 2)
    answers = partial.folder(run) / "base.answers.jsonl"
    with open(answers, "a") as f:  # a SIGKILL in the middle of the third batch's line
        f.write('{"batch": 2, "rows": [[4, "half an ans')
    loss = partial.folder(run) / "base.loss.jsonl"
    whole = loss.read_bytes()
    loss.write_bytes(whole[: len(whole) - 5])  # the loss line torn: measured again
    batches = Batches(monkeypatch)
    _eval(trained, run)
    assert batches.calls == TOTAL - 2
    assert _outcome(run) == trained["reference"]


def test_journals_from_another_checkpoint_are_discarded(trained, run, monkeypatch, capsys):
    _interrupt(trained, run, monkeypatch, BASE_DONE + 1)
    state = json.loads((run / "train_state.json").read_text())
    adapter = run / (state.get("best_checkpoint") or state["final_checkpoint"]) / "adapter_model.safetensors"
    os.utime(adapter, ns=(adapter.stat().st_atime_ns, adapter.stat().st_mtime_ns + 10**9))  # as if retrained
    capsys.readouterr()
    batches, loads = Batches(monkeypatch), Loads(monkeypatch)
    _eval(trained, run)
    assert batches.calls == TOTAL - BASE_DONE  # the tuned batch is done again; the base model's work is kept
    assert loads.models - loads.tuned == 0
    err = _console(capsys)
    assert "eval:discardingeval/partial/tuned.answers.jsonl:madefromotherinputs(checkpoint)" in err
    assert "discardingeval/partial/base." not in err and "resumingeval:base10/10answersalreadydone" in err
    assert _outcome(run) == trained["reference"]


def test_journals_from_another_config_are_discarded(trained, run, monkeypatch, capsys):
    _interrupt(trained, run, monkeypatch, 7, max_new_tokens=3)  # base and few-shot done, 1 base probe batch
    capsys.readouterr()
    batches = Batches(monkeypatch)
    _eval(trained, run)  # max_new_tokens 4 again: the answers are redone, the probe (32 tokens) is not
    assert batches.calls == TOTAL - 1
    err = _console(capsys)
    assert "discardingeval/partial/base.answers.jsonl:madefromotherinputs(max_new_tokens)" in err
    assert "discardingeval/partial/few_shot.answers.jsonl" in err
    assert "resumingeval:forgetting-base4/12answersalreadydone" in err and "resumingeval:baselossalreadydone" in err
    assert _outcome(run) == trained["reference"]


def test_journals_are_removed_when_the_stage_finishes(trained, run, monkeypatch):
    _interrupt(trained, run, monkeypatch, 4)
    stale = partial.folder(run) / "tuned-old.answers.jsonl"  # left by an earlier, other config
    stale.write_text('{"key": "0"}\n')
    _eval(trained, run)
    assert not partial.folder(run).exists()
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["predictions.jsonl", "scores.json"]


def test_journal_reads_whole_lines_only(tmp_path, capsys):
    root = tmp_path / "partial"
    journal = partial.open_journal(root, "x.loss", {"a": 1}, 3)
    header = journal.path.read_text()
    journal.path.write_text(header[:-3])  # torn in its header: nothing was done
    assert partial.open_journal(root, "x.loss", {"a": 1}, 3).records == []
    journal.path.write_text(header + '{"value": 1}\n[2]\n{"value": 3}\n')  # a line that is no record, and after it
    journal = partial.open_journal(root, "x.loss", {"a": 1}, 3)
    assert journal.records == [{"value": 1}] and not journal.complete
    journal.append({"value": 2})
    assert journal.path.read_text() == header + '{"value": 1}\n{"value": 2}\n'
    err = _console(capsys)
    assert "discarding" not in err and "resumingeval:xlossalreadydone" in err
    assert partial.open_journal(root, "x.loss", {"a": 2, "b": 0}, 3).records == []
    assert "discardingeval/partial/x.loss.jsonl:madefromotherinputs(a,b)" in _console(capsys)


# The real thing: a separate `tunekit eval` process, SIGKILLed.

def _journaled_batches(run_dir: Path) -> int:
    """Batch lines in eval/partial (the key lines aside); a line still being written counts too, harmlessly."""
    root = partial.folder(run_dir)
    files = list(root.glob("*.answers.jsonl")) if root.is_dir() else []
    return sum(max(0, len(f.read_bytes().splitlines()) - 1) for f in files)


def test_sigkill_during_eval_then_rerun_matches_uninterrupted(trained, tmp_path, monkeypatch):
    """40 held-out questions one per batch, no forgetting probe (the process cannot be given the short
    one): 120 batches, so the kill lands mid-stage, and the in-process runs stay quick."""
    raw = {**trained["raw"], "eval": {**trained["raw"]["eval"], "batch_size": 1, "forgetting": False}}
    config = write_config(tmp_path / "tiny.yaml", raw)
    runs = tmp_path / "runs"
    ref_dir, run_dir = tmp_path / "reference", runs / raw["name"]
    for folder in (ref_dir, run_dir):
        shutil.copytree(trained["run_dir"], folder)
        write_jsonl(folder / "data" / "eval.jsonl", heldout_items(40))
    cfg = Config.model_validate(raw)
    ev.evaluate(cfg, ref_dir, trained["model_dir"], trained["tok"])

    log = tmp_path / "killed.log"
    with procs.started(procs.tunekit("eval", str(config), "--runs-dir", str(runs)), procs.env(tmp_path / "home"), log) as proc:
        procs.wait_for(lambda: _journaled_batches(run_dir) >= 2, proc, "two journaled batches", log, poll=0.005)
        procs.sigkill(proc)
    assert not (run_dir / "eval" / "scores.json").exists(), "killed too late"

    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEKIT_OFFLINE", "1")
    batches = Batches(monkeypatch)
    pipeline.run_stage(cfg, run_dir, "eval")
    assert 0 < batches.calls <= 3 * 40 - 2
    assert _outcome(run_dir) == _outcome(ref_dir)
    assert not partial.folder(run_dir).exists()
