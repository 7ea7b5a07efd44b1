"""The malformed-input corpus (tests/assets/malformed/, see its README): every broken file
gives a clear DataError naming the file and what to do, or a reject with its reason code
and line; never a traceback, never a hang; and no valid record in a file is lost. Checked
on load_records and on the full prepare stage."""

from __future__ import annotations

import base64
import json
import shutil
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, write_jsonl

from tunekit.config import Config
from tunekit.data import prepare as prepare_module
from tunekit.data.prepare import prepare
from tunekit.data.records import load_records
from tunekit.data.sources import RAW_KEEP, iter_raw
from tunekit.errors import DataError

CORPUS = ROOT / "tests" / "assets" / "malformed"

# file -> (line and id of each valid record, (line, reason) of each reject)
READABLE = {
    "truncated.jsonl": (
        [(1, "truncated-0"), (2, "truncated-1"), (4, "truncated-2"), (6, "truncated-3")],
        [(3, "malformed_json"), (5, "malformed_json"), (7, "malformed_json")],
    ),
    "truncated_array.json": ([(2, "array-0"), (15, "array-1"), (28, "array-2")], [(41, "malformed_json")]),
    "truncated_array_after_comma.json": ([(2, "comma-0"), (15, "comma-1"), (28, "comma-2")], [(41, "malformed_json")]),
    "truncated_data_object.json": ([(4, "dataobj-0"), (17, "dataobj-1")], [(30, "malformed_json")]),
    "bom.jsonl": ([(1, "bom-0"), (2, "bom-1"), (4, "bom-2")], [(3, "no_final_assistant")]),
    "bom.csv": ([(2, "bomcsv-0"), (3, "bomcsv-1"), (5, "bomcsv-2")], []),
    "bom.json": ([(2, "bomjson-0"), (15, "bomjson-1")], []),
    "crlf.jsonl": ([(1, "crlf-0"), (3, "crlf-1"), (5, "crlf-2")], [(4, "malformed_json")]),
    "crlf.csv": ([(2, "crlfcsv-0"), (4, "crlfcsv-1"), (8, "crlfcsv-2")], [(6, "empty_turn")]),
    "wrong_types.jsonl": (
        [(1, "types-0"), (5, "types-1"), (17, "types-2")],
        [(2, "wrong_type"), (3, "wrong_type"), (4, "unknown_role"), (6, "wrong_type"), (7, "wrong_type"),
         (8, "wrong_type"), (9, "wrong_type"), (10, "bad_weight"), (11, "wrong_type"), (12, "wrong_type"),
         (13, "not_an_object"), (14, "not_an_object"), (15, "not_an_object"), (16, "wrong_type")],
    ),
    "missing_roles.jsonl": (
        [(1, "missing-0"), (5, "missing-1"), (10, "missing-2")],
        [(2, "unknown_role"), (3, "wrong_type"), (4, "unknown_role"), (6, "unknown_role"), (7, "wrong_type"),
         (8, "bad_turn_order"), (9, "no_final_assistant")],
    ),
    "unknown_roles.jsonl": (
        [(1, "unknown-0"), (7, "unknown-sg"), (9, "unknown-1")],
        [(2, "unknown_role"), (3, "unknown_role"), (4, "unknown_role"), (5, "unknown_role"), (6, "unknown_role"),
         (8, "unknown_role")],
    ),
    "invalid_utf8.jsonl": (
        [(1, "utf8-0"), (3, "utf8-1"), (5, "utf8-2")],
        [(2, "bad_encoding"), (4, "bad_encoding"), (6, "bad_encoding")],
    ),
    "invalid_utf8.csv": ([(2, "utf8csv-0"), (4, "utf8csv-1")], [(3, "bad_encoding")]),
    "invalid_utf8.json": ([(2, "utf8json-0"), (4, "utf8json-2")], [(3, "bad_encoding")]),
    "lone_surrogate.jsonl": (
        [(1, "surrogate-1"), (3, "surrogate-2"), (5, "surrogate-3")], [(2, "bad_encoding"), (4, "bad_encoding")],
    ),
    "lone_surrogate.csv": ([(2, "surrcsv-0"), (4, "surrcsv-1")], [(3, "bad_encoding")]),
    "lone_surrogate.json": ([(2, "surrjson-0"), (4, "surrjson-2")], [(3, "bad_encoding")]),
    "nul_bytes.jsonl": ([(1, "nul-0"), (3, "nul-1")], [(2, "malformed_json"), (4, "malformed_json")]),
    "nul_in_cell.csv": ([(2, "nulcsv-0"), (3, "nulcsv-1")], []),
    "jsonl_saved_as.csv": ([(1, "ext-0"), (3, "ext-1")], [(2, "malformed_json")]),
    "jsonl_saved_as.parquet": ([(1, "pq-0"), (2, "pq-1")], []),
}

# file -> what the DataError must say besides the file's path
UNREADABLE = {
    "empty.jsonl": ("is empty", "point data.train at a file with data"),
    "blank.jsonl": ("is empty", "point data.train at a file with data"),
    "csv_saved_as.jsonl": ("does not start with a JSON object", "rename it to .csv"),
    "text_saved_as.parquet": ("is not a parquet file",),
    "gzipped.jsonl": ("binary file", "unpack it"),
    "utf16.jsonl": ("UTF-16", "re-save it as UTF-8"),
}

# readable, but hold no record at all
EMPTY = ("header_only.csv", "empty_array.json")

# a detail word each reason's message must contain, so the user knows what to fix
HINTS = {
    "malformed_json": "JSON", "bad_encoding": "UTF-", "wrong_type": "must be", "unknown_role": "use ",
    "not_an_object": "expected a JSON object", "empty_turn": "empty", "no_final_assistant": "assistant",
    "bad_turn_order": "user", "bad_weight": "weight",
}


@pytest.fixture(autouse=True)
def no_hang():
    """Fail, rather than hang, when a file sends a reader into a loop."""
    def expire(*_):
        raise TimeoutError("reading a malformed file took over 60 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_the_corpus_is_all_covered():
    named = set(READABLE) | set(UNREADABLE) | set(EMPTY) | {"README.md", ".gitattributes"}
    assert {p.name for p in CORPUS.iterdir()} == named


def _holds(path: Path, line: int, ident: str) -> bool:
    """The record `ident` starts on `line` (its id sits on that line or the two after it)."""
    lines = path.read_bytes().split(b"\n")
    return ident.encode() in b"\n".join(lines[line - 1 : line + 2])


@pytest.mark.parametrize("name", sorted(READABLE))
def test_load_records(name):
    path = CORPUS / name
    valid, bad = READABLE[name]
    assert all(_holds(path, n, ident) for n, ident in valid)  # the table itself is right
    records, rejects = load_records(path)
    assert [(r.line, r.extra.get("id")) for r in records] == valid
    assert [(r.line, r.reason) for r in rejects] == bad
    for r in rejects:
        assert r.source == str(path)
        assert HINTS[r.reason] in r.detail, (r.reason, r.detail)
        row = json.dumps(r.to_json(), ensure_ascii=False)
        row.encode("utf-8")  # writable to rejects.jsonl, even for bytes that were not UTF-8
        assert len(row) < 6 * RAW_KEEP
    for r in records:
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in r.messages)
        assert "\r" not in json.dumps(r.row()) and "\x00" not in json.dumps(r.row())


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_file_is_a_clear_data_error(name):
    path = CORPUS / name
    with pytest.raises(DataError) as e:
        load_records(path)
    msg = str(e.value)
    assert str(path) in msg
    for phrase in UNREADABLE[name]:
        assert phrase in msg, msg


@pytest.mark.parametrize("name", EMPTY)
def test_file_without_records(name):
    assert load_records(CORPUS / name) == ([], [])


def test_file_read_by_its_content_says_so():
    notes: list[str] = []
    list(iter_raw(CORPUS / "jsonl_saved_as.csv", notes))
    list(iter_raw(CORPUS / "jsonl_saved_as.parquet", notes))
    assert notes == ["jsonl_saved_as.csv: extension .csv but the content is jsonl; read as jsonl",
                     "jsonl_saved_as.parquet: extension .parquet but the content is jsonl; read as jsonl"]


def test_truncated_parquet(tmp_path):
    pq.write_table(pa.table({"text": ["a document"] * 100}), tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.parquet is not a readable Parquet file"):
        load_records(tmp_path / "t.parquet")


def test_folder_of_the_whole_corpus_skips_unreadable_files_and_keeps_every_valid_record(tmp_path):
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS, folder, ignore=shutil.ignore_patterns("README.md"))
    records, rejects = load_records(folder)
    assert sorted(r.extra["id"] for r in records) == sorted(i for v, _ in READABLE.values() for _, i in v)
    assert len(rejects) == sum(len(b) for _, b in READABLE.values())
    notes: list[str] = []
    list(iter_raw(folder, notes))
    skipped = [n for n in notes if n.startswith("skipped ")]
    assert len(skipped) == len(UNREADABLE)
    assert all(any(f"{folder / name} " in n for n in skipped) for name in UNREADABLE), skipped


# ---- the full prepare stage -------------------------------------------------------------

def _cfg(train: Path, **data) -> Config:
    return Config.model_validate({"data": {"train": str(train), "max_reject_fraction": 1.0, **data}})


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", sorted(READABLE))
def test_prepare(name, tiny_tokenizer, tmp_path):
    valid, bad = READABLE[name]
    report = prepare(_cfg(CORPUS / name), tmp_path / "data", tiny_tokenizer)
    kept = _jsonl(tmp_path / "data" / "train.jsonl") + _jsonl(tmp_path / "data" / "valid.jsonl")
    assert sorted(r["id"] for r in kept) == sorted(i for _, i in valid)
    rejects = _jsonl(tmp_path / "data" / "rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == bad
    assert all(r["source"] == str(CORPUS / name) and r["detail"] for r in rejects)
    assert report["lines_read"] == len(valid) + len(bad) == report["kept"] + report["rejected"]
    assert report["rejected_invalid"] == len(bad)


@pytest.mark.parametrize("name", sorted(UNREADABLE) + list(EMPTY))
def test_prepare_stops_with_a_data_error(name, tiny_tokenizer, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(_cfg(CORPUS / name), tmp_path / "data", tiny_tokenizer)
    assert str(CORPUS / name) in str(e.value)
    if name in EMPTY:
        assert "contains no records" in str(e.value)


def test_prepare_stops_when_most_of_a_file_is_broken(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(_cfg(CORPUS / "wrong_types.jsonl", max_reject_fraction=0.5), tmp_path / "data", tiny_tokenizer)
    assert "14 of 17 records" in str(e.value) and "rejects.jsonl" in str(e.value)
    assert len(_jsonl(tmp_path / "data" / "rejects.jsonl")) == 14


# ---- a single 50 MB line ----------------------------------------------------------------

BIG = 50_000_000


@pytest.fixture(scope="module")
def huge_line_file(tmp_path_factory) -> Path:
    """Valid records around a 50 MB answer (a pasted base64 image) and a 5 MB line cut short."""
    blob = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * (BIG // 340)).decode()
    assert len(blob) >= BIG
    def chat(i, answer):
        return {"id": f"big-{i}", "messages": [{"role": "user", "content": f"Question number {i} about the image?"},
                                                {"role": "assistant", "content": answer}]}
    path = write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl",
                       [chat(0, "It is a logo."), chat(1, blob), chat(2, "A chart of monthly revenue.")])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(chat(3, blob))[: BIG // 10] + "\n")
        f.write(json.dumps(chat(4, "Nothing unusual in it.")) + "\n")
    return path


def test_huge_line_load_records(huge_line_file):
    records, rejects = load_records(huge_line_file)
    assert [(r.line, r.extra["id"]) for r in records] == [(1, "big-0"), (2, "big-1"), (3, "big-2"), (5, "big-4")]
    assert len(records[1].messages[1]["content"]) >= BIG  # valid JSON: prepare judges its length
    (cut,) = rejects
    assert (cut.line, cut.reason) == (4, "malformed_json")
    assert len(cut.raw) == RAW_KEEP  # the broken line is not copied whole into rejects.jsonl


def test_huge_line_is_over_long_without_being_tokenised(huge_line_file, tiny_tokenizer, tmp_path, monkeypatch):
    seen: list[int] = []
    count = prepare_module.rendered_lengths

    def spy(tokenizer, texts):
        seen.extend(map(len, texts))
        return count(tokenizer, texts)

    monkeypatch.setattr(prepare_module, "rendered_lengths", spy)
    report = prepare(_cfg(huge_line_file, valid_fraction=0.0), tmp_path / "data", tiny_tokenizer)
    assert seen and max(seen) < 10_000  # the 50 MB text never reached the tokenizer
    assert [r["id"] for r in _jsonl(tmp_path / "data" / "train.jsonl")] == ["big-0", "big-2", "big-4"]
    rejects = _jsonl(tmp_path / "data" / "rejects.jsonl")
    rejects.sort(key=lambda r: r["line"])  # over-long ones are found when their batch is measured
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "over_long"), (4, "malformed_json")]
    assert "characters > data.max_length" in rejects[0]["detail"]
    assert (tmp_path / "data" / "rejects.jsonl").stat().st_size < 20 * RAW_KEEP
    assert report["rejects_by_reason"] == {"malformed_json": 1, "over_long": 1}


# --- What prepare writes back: any value a row carries, one row a line -------------------------
# Both found by tests/data/test_properties.py.

def test_parquet_extra_columns_json_cannot_write(tmp_path, tiny_tokenizer):
    """Bytes and timestamps in a Parquet row's extra columns ended prepare with a TypeError."""
    import datetime

    msgs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}] for i in range(3)]
    msgs[2] = None  # a reject carries the row's extra columns too
    table = pa.table({"messages": msgs, "blob": [b"\x00\x01", b"", b"\xff"],
                      "at": pa.array([datetime.datetime(2024, 5, 1, 12, 0)] * 3, pa.timestamp("s"))})
    pq.write_table(table, tmp_path / "train.parquet")
    report = prepare(_cfg(tmp_path / "train.parquet", valid_fraction=0.0), tmp_path / "data", tiny_tokenizer)
    rows = _jsonl(tmp_path / "data" / "train.jsonl")
    assert [r["blob"] for r in rows] == ["b'\\x00\\x01'", "b''"] and rows[0]["at"] == "2024-05-01 12:00:00"
    assert report["rejects_by_reason"] == {"wrong_type": 1}
    assert _jsonl(tmp_path / "data" / "rejects.jsonl")[0]["record"]["blob"] == "b'\\xff'"


def test_line_separators_in_text_stay_inside_their_row(tmp_path, tiny_tokenizer):
    """U+2028, U+2029 and U+0085 (in an extra field; cleaning removes C1 controls from turns)
    were written raw; str.splitlines(), which export and the learning curve read these files
    with, broke a row in two there."""
    rows = [{"id": f"r{i}\x85", "messages": [{"role": "user", "content": f"Question {i}\u2028 on two lines?"},
                                             {"role": "assistant", "content": f"Answer\u2029{i}."}]} for i in range(3)]
    rows.append({"id": "bad\u2028", "messages": []})
    prepare(_cfg(write_jsonl(tmp_path / "train.jsonl", rows), valid_fraction=0.0), tmp_path / "data", tiny_tokenizer)
    train = (tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rejects = (tmp_path / "data" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in train] == ["r0\x85", "r1\x85", "r2\x85"]
    assert json.loads(train[0])["messages"][0]["content"] == "Question 0\u2028 on two lines?"
    assert [json.loads(x)["record"]["id"] for x in rejects] == ["bad\u2028"]
