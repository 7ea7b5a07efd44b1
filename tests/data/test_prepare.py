"""The prepare stage on the bundled example: every planted defect rejected on its line,
counts that add up, a disjoint deterministic split, the invalid-share stop, eval.jsonl."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import EXAMPLE

from tunekit.config import Config
from tunekit.data.dedup import find_near_duplicates, signatures
from tunekit.data.prepare import prepare
from tunekit.errors import DataError

MANIFEST = json.loads((EXAMPLE / "noise_manifest.json").read_text())


def _cfg(model_dir, **data) -> Config:
    return Config.model_validate({
        "model": {"base": str(model_dir)},
        "data": {"train": str(EXAMPLE / "train.jsonl"), "eval": str(EXAMPLE / "heldout.jsonl"), **data},
    })


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    report = prepare(_cfg(tiny_model_dir), out, tiny_tokenizer)
    return report, out


DUP = ("exact_duplicate", "near_duplicate")


def test_every_planted_defect_is_rejected_on_its_line(prepared):
    report, out = prepared
    rejects = {r["line"]: r for r in _jsonl(out / "rejects.jsonl")}
    for d in MANIFEST["defects"]:
        if d["of_line"] is not None:
            assert d["of_line"] < d["line"], d  # the manifest names the later copy as the duplicate
        assert d["line"] in rejects, f"defect not rejected: {d}"
        got = rejects[d["line"]]
        if d["kind"] in DUP:
            # The generator's "near" edits include case/whitespace-only changes, which the
            # exact hash (case-folded, whitespace collapsed) rightly calls exact.
            assert got["reason"] in DUP, (d, got)
            assert str(d["of_line"]) in got["detail"], (d, got)
            orig = rejects.get(d["of_line"])
            assert orig is None or orig["reason"] in DUP, f"the original of a duplicate was dropped as invalid: {d}"
        else:
            assert got["reason"] == d["kind"], (d, got)
    counts = dict(report["rejects_by_reason"])
    planted = dict(MANIFEST["counts"])
    for k in DUP:
        counts.pop(k, None), planted.pop(k, None)
    assert counts == planted  # invalid records: exactly the planted ones
    # Extra rejections of unplanted lines may only be near duplicates (typo/greeting
    # variants of another line); anything else would be a clean record lost.
    extra = {n: r["reason"] for n, r in rejects.items() if n not in {d["line"] for d in MANIFEST["defects"]}}
    assert set(extra.values()) <= {"near_duplicate"}, extra
    assert len(extra) <= 0.02 * MANIFEST["valid_lines"], extra


def test_counts_add_up(prepared):
    report, out = prepared
    assert report["lines_read"] == MANIFEST["total_lines"]
    assert report["kept"] + report["rejected"] == report["lines_read"]
    assert report["train"] + report["valid"] == report["kept"]
    assert sum(report["rejects_by_reason"].values()) == report["rejected"]
    assert len(_jsonl(out / "rejects.jsonl")) == report["rejected"]
    assert len(_jsonl(out / "train.jsonl")) == report["train"]
    assert len(_jsonl(out / "valid.jsonl")) == report["valid"]
    assert report["valid"] > 0
    on_disk = json.loads((out / "data_report.json").read_text())
    assert on_disk == report


def _key(row: dict) -> str:
    return hashlib.sha1(json.dumps(row["messages"], sort_keys=True).encode()).hexdigest()


def test_train_and_valid_are_disjoint(prepared):
    _, out = prepared
    train = {_key(r) for r in _jsonl(out / "train.jsonl")}
    valid = {_key(r) for r in _jsonl(out / "valid.jsonl")}
    assert train and valid and not (train & valid)


def test_split_is_deterministic(prepared, tiny_model_dir, tiny_tokenizer, tmp_path):
    _, out = prepared
    prepare(_cfg(tiny_model_dir), tmp_path / "again", tiny_tokenizer)
    for name in ("train.jsonl", "valid.jsonl", "rejects.jsonl", "eval.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_eval_file_written_without_leaks(prepared):
    report, out = prepared
    items = _jsonl(out / "eval.jsonl")
    n = len((EXAMPLE / "heldout.jsonl").read_text().splitlines())
    assert len(items) == n == report["eval"]["items"]
    assert report["eval"]["leaked_into_train"] == 0
    assert all(it["messages"][-1]["role"] == "user" and it["required"] for it in items)


def test_leaked_question_is_counted(tiny_model_dir, tiny_tokenizer, tmp_path):
    train = [json.loads(x) for x in (EXAMPLE / "train.jsonl").read_text().splitlines()[:3]]
    q = train[0]["messages"][[m["role"] for m in train[0]["messages"]].index("user")]["content"]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "h.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "  " + q.upper()}]}) + "\n")
    cfg = Config.model_validate({"data": {"train": str(tmp_path / "t.jsonl"), "eval": str(tmp_path / "h.jsonl"),
                                          "valid_fraction": 0.0}})
    report = prepare(cfg, tmp_path / "out", tiny_tokenizer)
    assert report["eval"]["leaked_into_train"] == 1


def test_too_many_invalid_records_stop_the_run(tiny_model_dir, tiny_tokenizer, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(_cfg(tiny_model_dir, max_reject_fraction=0.01), tmp_path / "data", tiny_tokenizer)
    msg = str(e.value)
    assert "max_reject_fraction" in msg and "rejects.jsonl" in msg
    # The evidence is still written so the user can see why.
    assert (tmp_path / "data" / "rejects.jsonl").is_file()


def test_near_duplicates_found_and_distinct_texts_kept():
    base = "user: how much does the crest plan cost per seat each month for our team\nassistant: the crest plan costs $43 per seat per month."
    edited = base.replace("for our team", "for our whole team")
    other = "user: where do i rotate an api key?\nassistant: go to settings > security > api keys and click rotate."
    dup = find_near_duplicates(signatures([base, other, edited]), threshold=0.85)
    assert set(dup) == {2} and dup[2][0] == 0 and dup[2][1] >= 0.85
