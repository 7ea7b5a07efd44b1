"""Dataset mixing (data.mix): config checks, weights honoured in train.jsonl, repeats and
subsamples counted, a deterministic interleave, per-source reject limits, per-source report
entries that add up to the totals, and data.train (one source) byte-for-byte as before."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import EXAMPLE, write_jsonl

from tunekit.config import Config, load_config
from tunekit.data import mix
from tunekit.data.prepare import prepare
from tunekit.errors import ConfigError, DataError

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "su", "ti", "vo", "ze") for b in range(60)]


def chats(n: int, tag: str, seed: int) -> list[dict]:
    """n conversations of random words: distinct enough that none is a near duplicate of another."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"src": tag, "messages": [{"role": "user", "content": say(12)}, {"role": "assistant", "content": say(12)}]}
            for _ in range(n)]


def _cfg(tmp_path: Path, sources: list[tuple[list[dict], float]], **data) -> Config:
    mixed = [{"path": str(write_jsonl(tmp_path / f"s{i}.jsonl", rows)), "weight": w} for i, (rows, w) in enumerate(sources)]
    return Config.model_validate({"data": {"mix": mixed, **data}})


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# ---- config ------------------------------------------------------------------------------

def _config_error(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


TWO = [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl", "weight": 2}]


@pytest.mark.parametrize("data,says", [
    ({}, "set data.train (one file) or data.mix (several sources with weights)"),
    ({"train": "a.jsonl", "mix": TWO}, "data.train and data.mix are both set"),
    ({"mix": TWO[:1]}, "a mix needs at least 2. For one file set data.train"),
    ({"mix": [{"path": "a.jsonl", "weight": 0}, TWO[1]]}, "data.mix.0.weight: Input should be greater than 0"),
    ({"mix": [TWO[0], {"path": "b.jsonl", "weight": -1.5}]}, "data.mix.1.weight: Input should be greater than 0"),
    ({"mix": [TWO[0], {"path": "b.jsonl"}]}, "data.mix.1.weight: required but missing"),
    ({"mix": [TWO[0], {"path": "b.jsonl", "wieght": 1}]}, "did you mean 'data.mix.1.weight'"),
    ({"mix": TWO, "format": "chat"}, "with data.mix set format and columns on each source"),
])
def test_config_errors_name_data_mix(tmp_path, data, says):
    msg = _config_error(tmp_path, data)
    assert says in msg and "data.mix" in msg


def test_mix_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / "d" / name).write_text("")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"mix": [{"path": "d/a.jsonl", "weight": 2, "format": "chat"},
                                                     {"path": "d/b.jsonl", "weight": 1, "columns": {"prompt": "q"}}]}}))
    cfg = load_config(path)
    assert cfg.data.train is None
    assert [(s.path, s.weight, s.format, s.columns) for s in cfg.data.sources()] == [
        (str((tmp_path / "d" / "a.jsonl").resolve()), 2.0, "chat", {}),
        (str((tmp_path / "d" / "b.jsonl").resolve()), 1.0, "auto", {"prompt": "q"})]
    one = Config.model_validate({"data": {"train": "t.jsonl", "format": "alpaca"}})
    assert [tuple(s) for s in one.data.sources()] == [("t.jsonl", 1.0, "alpaca", {})]


# ---- the plan, without files ---------------------------------------------------------------

def test_interleave_spreads_every_source_evenly():
    order = mix.interleave([6, 2, 0, 4])
    assert Counter(order.tolist()) == {0: 6, 1: 2, 3: 4}
    for k in range(1, len(order) + 1):  # any prefix holds the mix, within one row per source
        got = Counter(order[:k].tolist())
        for src, c in ((0, 6), (1, 2), (3, 4)):
            assert abs(got[src] - k * c / 12) <= 1, (k, src)


def test_plan_subsamples_and_repeats():
    rng_rows = [np.arange(0, 10), np.arange(10, 110), np.arange(110, 114)]
    valid = [np.arange(200, 201), np.arange(201, 221), np.arange(221, 222)]
    p = mix.plan(rng_rows, valid, [1.0, 2.0, 1.0], seed=0)
    a, b, c = p.per_source
    assert (a["train"], a["repeated"], a["unused"]) == (10, 0, 0)
    assert (b["train"], b["unused"], b["valid"], b["valid_unused"]) == (20, 80, 4, 16)  # valid at the train ratio 1/5
    assert (c["train"], c["repeated"], c["valid"]) == (10, 6, 1)  # all 4 rows, then repeats; valid never repeated
    assert sorted(Counter(p.train[np.isin(p.train, rng_rows[2])].tolist()).values()) == [2, 2, 3, 3]
    assert len(set(p.valid.tolist())) == len(p.valid)


# ---- prepare ------------------------------------------------------------------------------

def test_weights_are_honoured(tmp_path, tiny_tokenizer):
    cfg = _cfg(tmp_path, [(chats(60, "a", 1), 3.0), (chats(400, "b", 2), 1.0)])
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    train = [r["src"] for r in _rows(tmp_path / "out" / "train.jsonl")]
    n = len(train)
    a, b = report["sources"]
    assert a["anchor"] and (a["train"], b["train"]) == (Counter(train)["a"], Counter(train)["b"])
    assert a["unused"] == a["repeated"] == 0 and b["unused"] > 300 and b["repeated"] == 0
    assert abs(Counter(train)["a"] / n - 0.75) <= 1 / n and abs(b["share"] - 0.25) <= 1 / n
    for k in (4, 10, 33, n):  # any prefix holds the mix
        assert abs(train[:k].count("a") - 0.75 * k) <= 1
    # valid rows of the big source kept at its train ratio, so they do not swamp valid.jsonl
    valid = Counter(r["src"] for r in _rows(tmp_path / "out" / "valid.jsonl"))
    assert valid["b"] == b["valid"] and b["valid"] + b["valid_unused"] > 4 * b["valid"]
    assert valid["a"] == a["valid"] and a["valid_unused"] == 0


def test_a_small_source_is_repeated_and_counted(tmp_path, tiny_tokenizer):
    small = chats(10, "b", 2)
    cfg = _cfg(tmp_path, [(chats(60, "a", 1), 1.0), (small, 1.0)], valid_fraction=0.0)
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    a, b = report["sources"]
    rows = _rows(tmp_path / "out" / "train.jsonl")
    seen = Counter(json.dumps(r["messages"]) for r in rows if r["src"] == "b")
    assert a["train"] == 60 and b["train"] == 60 and b["repeated"] == 50 and b["unused"] == 0
    assert set(seen) == {json.dumps(r["messages"]) for r in small}  # every row used
    assert sorted(seen.values()) == [6] * 10  # 60 = 6 whole copies
    assert report["train"] == len(rows) == 120


def test_same_seed_same_bytes(tmp_path, tiny_tokenizer):
    sources = [(chats(50, "a", 1), 2.0), (chats(200, "b", 2), 1.0), (chats(7, "c", 3), 1.0)]
    outs = []
    for i, seed in enumerate((5, 5, 6)):
        cfg = _cfg(tmp_path, sources)
        cfg.seed = seed
        prepare(cfg, tmp_path / f"out{i}", tiny_tokenizer)
        outs.append((tmp_path / f"out{i}" / "train.jsonl").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_reject_limit_applies_per_source_and_names_the_file(tmp_path, tiny_tokenizer):
    bad = [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}] * 3
    cfg = _cfg(tmp_path, [(chats(100, "a", 1), 1.0), (chats(10, "b", 2) + bad, 1.0)], max_reject_fraction=0.1)
    with pytest.raises(DataError) as e:
        prepare(cfg, tmp_path / "out", tiny_tokenizer)  # 3 of 113 overall, but 3 of 13 in s1.jsonl
    msg = str(e.value)
    assert f"3 of 13 records (23%) in {tmp_path / 's1.jsonl'}" in msg and "data.max_reject_fraction" in msg
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())  # written before stopping
    assert report["sources"][1]["rejects_by_reason"] == {"unknown_role": 3}


def test_source_entries_add_up_to_the_totals(tmp_path, tiny_tokenizer):
    a, b = chats(80, "a", 1), chats(150, "b", 2)
    dup = dict(a[3], src="b")  # the same conversation in both: the anchor keeps it
    broken = {"messages": [{"role": "user", "content": "only a question"}]}
    cfg = _cfg(tmp_path, [(a, 1.0), (b + [dup, broken], 0.5)], valid_fraction=0.1)
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    src = report["sources"]
    for key in ("lines_read", "kept", "rejected", "rejected_invalid", "train", "valid"):
        assert sum(s[key] for s in src) == report[key], key
    reasons = sum((Counter(s["rejects_by_reason"]) for s in src), Counter())
    assert dict(reasons) == report["rejects_by_reason"]
    assert src[1]["rejects_by_reason"] == {"exact_duplicate": 1, "no_final_assistant": 1}
    assert src[0]["rejected"] == 0 and sum(s["share"] for s in src) == pytest.approx(1.0, abs=1e-3)
    rejects = _rows(tmp_path / "out" / "rejects.jsonl")
    assert any(r["reason"] == "exact_duplicate" and str(tmp_path / "s0.jsonl") in r["detail"] for r in rejects)
    assert report["train"] == len(_rows(tmp_path / "out" / "train.jsonl"))
    assert report["valid"] == len(_rows(tmp_path / "out" / "valid.jsonl"))


def test_single_file_output_unchanged(tmp_path, tiny_tokenizer):
    cfg = Config.model_validate({"data": {"train": str(EXAMPLE / "train.jsonl")}})
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    train = (tmp_path / "out" / "train.jsonl").read_bytes()
    # Written by prepare before data.mix existed, on the bundled example with the tiny tokenizer;
    # a deliberate change to what prepare writes updates it.
    assert hashlib.sha256(train).hexdigest() == "4eb07ab09507d1b43e5e024a439f91500e789421e4c9890b2ed9851e47dc9794"
    (only,) = report["sources"]
    assert (only["train"], only["repeated"], only["unused"], only["share"]) == (report["train"], 0, 0, 1.0)
    assert report["source"] == str(EXAMPLE / "train.jsonl")


def test_report_and_inspect_show_a_source_table(tmp_path, tiny_tokenizer):
    from tunekit.data.inspect import inspect_sources
    from tunekit.data.inspect_view import render_sources
    from tunekit.eval.report import _data_section

    cfg = _cfg(tmp_path, [(chats(30, "a", 1), 2.0), (chats(30, "b", 2), 1.0)])
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    tables = [b for b in _data_section(report) if b["kind"] == "table"]
    assert len(tables) == 1 and [r[0] for r in tables[0]["rows"]] == [s.path for s in cfg.data.sources()]
    assert not [b for b in _data_section({**report, "sources": report["sources"][:1]}) if b["kind"] == "table"]

    seen = inspect_sources(cfg.data.sources(), tiny_tokenizer, max_length=200)
    assert [s["records"]["read"] for s in seen["sources"]] == [30, 30] and seen["sources"][0]["weight_share"] == 0.6667
    text = render_sources(seen)
    assert "data.mix: 2 sources" in text and "s0.jsonl" in text and "s1.jsonl" in text


def test_cli_inspects_each_mix_source(tmp_path, tiny_model_dir, offline_home, capsys, monkeypatch):
    from helpers import write_config

    from tunekit.cli import main

    write_jsonl(tmp_path / "a" / "x.jsonl", chats(20, "a", 1))
    write_jsonl(tmp_path / "b" / "y.jsonl", chats(25, "b", 2))
    cfg = write_config(tmp_path / "c.yaml", {"model": {"base": str(tiny_model_dir)},
                                             "data": {"mix": [{"path": "a/x.jsonl", "weight": 1}, {"path": "b/y.jsonl", "weight": 3}]}})
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "data.mix: 2 sources" in out and "x.jsonl" in out and "y.jsonl" in out and "75%" in out
    folder = tmp_path / "runs" / "inspect" / "c"  # named after the config: the sources live in different folders
    saved = json.loads((folder / "inspect.json").read_text())
    assert [s["records"]["read"] for s in saved["sources"]] == [20, 25]
    assert (folder / "token_lengths.0.png").is_file() and (folder / "token_lengths.1.png").is_file()
