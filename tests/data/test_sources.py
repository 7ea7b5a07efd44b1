"""Containers: every one reads the same records (JSONL, JSON array, {"data": [...]}, CSV,
TSV, Parquet, Arrow, datasets' save_to_disk folders, folders of documents), with the line
each record starts on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, write_jsonl

from tunekit.data.records import Record, load_records
from tunekit.data.sources import iter_raw, sniff
from tunekit.errors import DataError

ASSETS = ROOT / "tests" / "assets" / "formats"


def U(text):
    return {"role": "user", "content": text}


def A(text, **kw):
    return {"role": "assistant", "content": text, **kw}


# The six rows of the committed fixtures (tests/assets/formats/README.md).
ROWS = [{"messages": [U(f"Question {i}?"), A(f"Answer {i}.")], "id": f"r{i}"} for i in range(6)]
# The rows of alpaca.parquet, written by pandas.
ALPACA = [{"instruction": "Name the plan for teams.", "input": "", "output": "Crest."},
          {"instruction": "What is 2+2?", "input": "show work", "output": "4"}]
ALPACA_MESSAGES = [[U("Name the plan for teams."), A("Crest.")], [U("What is 2+2?\n\nshow work"), A("4")]]


def rows_of(records: list[Record]) -> list[dict]:
    return [r.row() for r in records]


def load_clean(path, **kw) -> list[Record]:
    records, rejects = load_records(path, **kw)
    assert rejects == [], [(r.line, r.reason, r.detail) for r in rejects]
    return records


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---- the same records from every container -----------------------------------------------

def _jsonl(tmp: Path) -> Path:
    return write_jsonl(tmp / "d.jsonl", ROWS)


def _json_array(tmp: Path) -> Path:
    (tmp / "d.json").write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    return tmp / "d.json"


def _json_array_one_line(tmp: Path) -> Path:
    (tmp / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    return tmp / "d.json"


def _json_data_object(tmp: Path) -> Path:
    (tmp / "d.json").write_text(json.dumps({"version": "1.0", "data": ROWS}, indent=1), encoding="utf-8")
    return tmp / "d.json"


def _csv_messages_column(tmp: Path) -> Path:
    return write_csv(tmp / "d.csv", ["id", "messages"], [[r["id"], json.dumps(r["messages"])] for r in ROWS])


def _tsv(tmp: Path) -> Path:
    return write_csv(tmp / "d.tsv", ["messages", "id"], [[json.dumps(r["messages"]), r["id"]] for r in ROWS], "\t")


def _parquet_structs(tmp: Path) -> Path:
    # messages as a list<struct<role, content>> column, as datasets and pandas write them
    pq.write_table(pa.Table.from_pylist(ROWS), tmp / "d.parquet", row_group_size=4)
    return tmp / "d.parquet"


def _parquet_json_strings(tmp: Path) -> Path:
    table = pa.table({"messages": [json.dumps(r["messages"]) for r in ROWS], "id": [r["id"] for r in ROWS]})
    pq.write_table(table, tmp / "d.parquet")
    return tmp / "d.parquet"


def _arrow_file(tmp: Path) -> Path:
    table = pa.Table.from_pylist(ROWS)
    with pa.ipc.new_file(tmp / "d.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=4):
            w.write_batch(batch)
    return tmp / "d.arrow"


def _arrow_stream(tmp: Path) -> Path:
    table = pa.Table.from_pylist(ROWS)
    with pa.ipc.new_stream(tmp / "d.arrow", table.schema) as w:
        w.write_table(table, max_chunksize=4)
    return tmp / "d.arrow"


def _saved_dataset(tmp: Path) -> Path:
    return ASSETS / "saved_dataset"


def _folder_of_jsonl_parts(tmp: Path) -> Path:
    write_jsonl(tmp / "parts" / "part-000.jsonl", ROWS[:3])
    write_jsonl(tmp / "parts" / "part-001.jsonl", ROWS[3:])
    (tmp / "parts" / "README").write_text("not data")
    (tmp / "parts" / ".hidden.jsonl").write_text("not read")
    return tmp / "parts"


@pytest.mark.parametrize("make", [
    _jsonl, _json_array, _json_array_one_line, _json_data_object, _csv_messages_column, _tsv, _parquet_structs,
    _parquet_json_strings, _arrow_file, _arrow_stream, _saved_dataset, _folder_of_jsonl_parts,
])
def test_every_container_reads_the_same_records(tmp_path, make):
    path = make(tmp_path)
    records = load_clean(path)
    assert rows_of(records) == ROWS
    assert all(Path(r.source).is_file() for r in records)


def test_saved_dataset_dict_reads_its_train_split():
    notes: list[str] = []
    raws = list(iter_raw(ASSETS / "saved_dataset_dict", notes))
    assert [r.line for r in raws] == [1, 2, 3, 4]
    assert all("/train/" in r.source for r in raws)
    assert any("DatasetDict" in n and "'train'" in n for n in notes)
    assert rows_of(load_clean(ASSETS / "saved_dataset_dict")) == ROWS[:4]


def test_saved_dataset_dict_without_train_split(tmp_path):
    import shutil

    d = tmp_path / "dd"
    shutil.copytree(ASSETS / "saved_dataset_dict", d)
    (d / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    with pytest.raises(DataError, match="no 'train'"):
        load_records(d)
    # one split's folder is read directly
    assert rows_of(load_clean(d / "test")) == ROWS[4:]


def test_committed_parquet_and_alpaca_csv_read_the_same(tmp_path):
    from_parquet = load_clean(ASSETS / "alpaca.parquet")
    p = write_csv(tmp_path / "alpaca.csv", ["instruction", "input", "output"],
                  [[r["instruction"], r["input"], r["output"]] for r in ALPACA])
    from_csv = load_clean(p)
    assert [r.messages for r in from_parquet] == [r.messages for r in from_csv] == ALPACA_MESSAGES
    assert [r.line for r in from_parquet] == [1, 2]  # Parquet: row numbers
    assert [r.line for r in from_csv] == [2, 3]  # CSV: file lines, after the header


def test_alpaca_csv_without_input_column(tmp_path):
    p = write_csv(tmp_path / "a.csv", ["instruction", "output", "category"], [["Say hi.", "Hi!", "greeting"]])
    (rec,) = load_clean(p)
    assert rec.messages == [U("Say hi."), A("Hi!")] and rec.extra == {"category": "greeting"}


def test_parquet_struct_messages_with_weight_on_some_turns(tmp_path):
    # Arrow structs give every message every key, so a user turn reads {"weight": None}.
    rows = [{"messages": [U("q1"), A("draft", weight=0), U("q2"), A("final", weight=1)]},
            {"messages": [U("q3"), A("a3")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "w.parquet")
    records = load_clean(tmp_path / "w.parquet")
    assert [r.messages for r in records] == [rows[0]["messages"], rows[1]["messages"]]


def test_folder_of_documents(tmp_path):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "a.txt").write_text("Install the agent.\n\nThen log in.\n", encoding="utf-8")
    (docs / "guide" / "b.md").write_text("# Billing\r\n\r\nInvoices are monthly.\r\n", encoding="utf-8")
    (docs / "c.markdown").write_bytes("\ufeffUnicode caf\u00e9".encode("utf-8"))
    (docs / "empty.txt").write_text("  \n")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    notes: list[str] = []
    raws = list(iter_raw(docs, notes))
    assert [(Path(r.source).name, r.line) for r in raws] == [("a.txt", 1), ("c.markdown", 1), ("b.md", 1)]
    assert any("skipped 1 file" in n for n in notes)  # the .png
    records = load_clean(docs)
    assert [r.text for r in records] == ["Install the agent.\n\nThen log in.", "Unicode caf\u00e9", "# Billing\n\nInvoices are monthly."]
    assert all(r.messages == [] for r in records)
    # the same documents as JSONL {"text": ...} rows
    same = write_jsonl(tmp_path / "docs.jsonl", [{"text": (docs / n).read_text(encoding="utf-8-sig")}
                                                 for n in ("a.txt", "c.markdown", "guide/b.md")])
    assert [r.text for r in load_clean(same)] == [r.text for r in records]


def test_folder_with_nothing_readable(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="holds no"):
        load_records(tmp_path / "d")


# ---- line numbers -----------------------------------------------------------------------

def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n" + json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n" + json.dumps({"messages": [U("q")]})
                 + "\n\n", encoding="utf-8")
    records, rejects = load_records(p)
    assert [r.line for r in records] == [2, 5]
    assert [(r.line, r.reason) for r in rejects] == [(6, "no_final_assistant")]


def test_csv_line_numbers_with_multi_line_quoted_cells(tmp_path):
    rows = [
        ["r0", json.dumps(ROWS[0]["messages"], indent=2)],  # 10 lines in one cell
        ["r1", json.dumps([U("line one\nline two\nline three"), A("ok")])],
        ["r2", json.dumps([U("solo")])],  # rejected: its line must be right too
        ["r3", json.dumps(ROWS[3]["messages"])],
    ]
    p = write_csv(tmp_path / "d.csv", ["id", "messages"], rows)
    lines = p.read_text(encoding="utf-8").split("\n")
    starts = [i for i, x in enumerate(lines, 1) if x.startswith("r")]
    assert len(starts) == 4 and starts[1] - starts[0] == 10
    records, rejects = load_records(p)
    assert [r.line for r in records] == [starts[0], starts[1], starts[3]]
    assert [(r.line, r.reason) for r in rejects] == [(starts[2], "no_final_assistant")]
    assert records[1].messages[0]["content"] == "line one\nline two\nline three"


def test_csv_line_numbers_with_crlf_and_multi_line_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b'instruction,output\r\n"first\r\nsecond",one\r\nplain,two\r\n\r\n"a\r\nb\r\nc",three\r\n')
    records = load_clean(p)
    assert [(r.line, r.messages[1]["content"]) for r in records] == [(2, "one"), (4, "two"), (6, "three")]
    assert records[0].messages[0]["content"] == "first\nsecond"


def test_json_array_item_start_lines(tmp_path):
    items = [json.dumps(r, indent=2) for r in ROWS[:3]] + ["\n  " + json.dumps({"messages": [U("q")]})]
    text, starts = "[\n", []
    for item in items:
        starts.append(text.count("\n") + 1 + (item.startswith("\n")))
        text += item + ",\n"
    text = text[:-2] + "\n]\n"
    p = tmp_path / "d.json"
    p.write_text(text, encoding="utf-8")
    records, rejects = load_records(p)
    assert [r.line for r in records] == starts[:3]
    assert [(r.line, r.reason) for r in rejects] == [(starts[3], "no_final_assistant")]
    assert rows_of(records) == ROWS[:3]


def test_json_data_object_item_start_lines(tmp_path):
    p = _json_data_object(tmp_path)
    lines = p.read_text(encoding="utf-8").split("\n")
    starts = [i for i, x in enumerate(lines, 1) if x == "  {"]  # indent=1: items open at depth 2
    assert len(starts) == 6
    assert [r.line for r in load_clean(p)] == starts


def test_json_array_items_on_one_line_share_it(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[" + json.dumps(ROWS[0]) + ", " + json.dumps(ROWS[1]) + ",\n" + json.dumps(ROWS[2]) + "]", encoding="utf-8")
    assert [r.line for r in load_clean(p)] == [1, 1, 2]


def test_json_single_object_is_one_record(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(ROWS[0], indent=2), encoding="utf-8")
    assert [(r.line, r.row()) for r in load_clean(p)] == [(1, ROWS[0])]


def test_json_single_record_with_a_renamed_message_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"dialog": ROWS[0]["messages"], "id": "r0"}, indent=2), encoding="utf-8")
    (rec,) = load_clean(p, columns={"messages": "dialog"})
    assert rec.line == 1 and rec.row() == ROWS[0]


def test_json_lines_in_a_json_file(tmp_path):
    p = write_jsonl(tmp_path / "d.json", ROWS[:3])
    assert [(r.line, r.row()) for r in load_clean(p)] == [(1, ROWS[0]), (2, ROWS[1]), (3, ROWS[2])]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_json_lines_whose_first_line_is_an_array_lose_no_line(tmp_path, name):
    # Found by tests/data/test_properties.py: the file was read as one JSON array (its first
    # line) and every line after it was dropped without a word.
    p = tmp_path / name
    p.write_text("".join(json.dumps(x) + "\n" for x in (ROWS[0]["messages"], ROWS[1], ROWS[2])), encoding="utf-8")
    records, rejects = load_records(p)
    assert [(r.line, r.row()) for r in records] == [(2, ROWS[1]), (3, ROWS[2])]
    assert [(r.line, r.reason) for r in rejects] == [(1, "not_an_object")]


def test_parquet_and_arrow_rows_numbered_across_batches(tmp_path):
    rows = [{"messages": [U(f"q{i}"), A(f"a{i}")]} for i in range(2500)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=700)
    raws = list(iter_raw(tmp_path / "big.parquet", []))
    assert [r.line for r in raws] == list(range(1, 2501))
    assert raws[-1].value == rows[-1]


# ---- sniffing ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, kind", [
    ("a.jsonl", b'{"a": 1}\n', "jsonl"),
    ("a.json", b'{"a": 1}\n', "json"),
    ("a.jsonl", b'[{"a": 1}]', "json"),
    ("a.json", b'\xef\xbb\xbf  \n[{"a": 1}]', "json"),
    ("a.csv", b"a,b\n1,2\n", "csv"),
    ("a.tsv", b"a\tb\n1\t2\n", "tsv"),
    ("a.csv", b'{"a": 1}\n', "jsonl"),  # content beats the extension
    ("a.txt", b'{"a": 1}\n', "jsonl"),
    ("a.md", b"# Title\n", "text"),
    ("a.dat", b"PAR1....", "parquet"),
    ("a.dat", b"ARROW1\x00\x00", "arrow"),
])
def test_sniff(tmp_path, name, content, kind):
    p = tmp_path / name
    p.write_bytes(content)
    assert sniff(p) == kind


def test_content_over_extension_is_noted(tmp_path):
    p = tmp_path / "d.csv"
    write_jsonl(p, ROWS[:2])
    notes: list[str] = []
    assert [r.line for r in iter_raw(p, notes)] == [1, 2]
    assert notes == ["d.csv: extension .csv but the content is jsonl; read as jsonl"]


@pytest.mark.parametrize("first", ["null", "42", '"a string"', "true"])
def test_json_lines_whose_first_line_is_not_an_object_keep_the_rest(tmp_path, first):
    # Found by tests/data/test_properties.py: the whole file was refused ("does not start with
    # a JSON object or array") for its first line.
    p = tmp_path / "d.jsonl"
    p.write_text(first + "\n" + "".join(json.dumps(r) + "\n" for r in ROWS[:2]), encoding="utf-8")
    records, rejects = load_records(p)
    assert [(r.line, r.row()) for r in records] == [(2, ROWS[0]), (3, ROWS[1])]
    assert [(r.line, r.reason) for r in rejects] == [(1, "not_an_object")]
