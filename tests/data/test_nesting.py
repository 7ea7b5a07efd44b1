"""Input that parses badly in other ways than being malformed: JSON nested thousands deep
(json.loads itself overflows the stack on it) and Parquet files damaged inside. Each is a
reject naming its line, or a DataError naming the file; never a traceback, and the valid
records around it are kept."""

from __future__ import annotations

import csv
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunekit.cli import main
from tunekit.data.nesting import MAX_DEPTH
from tunekit.data.records import load_records
from tunekit.errors import DataError


def chat(i: int) -> dict:
    return {"id": f"ok-{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                          {"role": "assistant", "content": f"Answer {i}."}]}


def nested(depth: int) -> str:
    """A JSON value `depth` arrays deep."""
    return "[" * depth + "]" * depth


def record_of_depth(depth: int) -> str:
    """A valid chat record whose extra field brings its whole depth to `depth`."""
    row = json.dumps(chat(9))
    return row[:-1] + ', "meta": ' + nested(depth - 1) + "}"


def lines(*items) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items)


def kept_and_rejected(path):
    records, rejects = load_records(path)
    return [(r.line, r.extra.get("id")) for r in records], [(r.line, r.reason) for r in rejects]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 100_000])
def test_jsonl_line_nested_too_deep_is_a_reject_naming_its_line(tmp_path, depth):
    path = tmp_path / "deep.jsonl"
    path.write_text(lines(chat(1), nested(depth), chat(3), record_of_depth(depth), chat(5)))
    kept, rejected = kept_and_rejected(path)
    assert kept == [(1, "ok-1"), (3, "ok-3"), (5, "ok-5")]
    assert rejected == [(2, "too_deep"), (4, "too_deep")]
    _, rejects = load_records(path)
    assert f"more than {MAX_DEPTH} levels" in rejects[0].detail
    assert len(rejects[0].raw) <= 2000  # the line is not copied whole


def test_depth_is_counted_outside_strings_and_up_to_the_limit(tmp_path):
    brackets = {"id": "in-text", "messages": [{"role": "user", "content": "[" * 5000 + "{" * 5000},
                                              {"role": "assistant", "content": '"]]]" \\" [[[['}]}
    path = tmp_path / "ok.jsonl"
    path.write_text(lines(brackets, record_of_depth(MAX_DEPTH)))
    kept, rejected = kept_and_rejected(path)
    assert kept == [(1, "in-text"), (2, "ok-9")] and rejected == []


def test_json_array_keeps_the_records_around_a_deep_one(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[\n" + ",\n".join([json.dumps(chat(1)), nested(5_000), json.dumps(chat(3)),
                                         record_of_depth(MAX_DEPTH + 1), json.dumps(chat(5))]) + "\n]\n")
    assert kept_and_rejected(path) == ([(2, "ok-1"), (4, "ok-3"), (6, "ok-5")], [(3, "too_deep"), (5, "too_deep")])


def test_json_data_object_keeps_the_records_around_a_deep_one(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"version": 2, "data": [\n' + ",\n".join([json.dumps(chat(1)), nested(5_000), json.dumps(chat(3))])
                    + "\n]}\n")
    assert kept_and_rejected(path) == ([(2, "ok-1"), (4, "ok-3")], [(3, "too_deep")])


@pytest.mark.parametrize("text", [record_of_depth(5_000), "{" + '"a":{' * 3_000 + "}" * 3_001])
def test_json_file_that_is_one_deep_record_is_one_reject(tmp_path, text):
    path = tmp_path / "one.json"
    path.write_text(text)
    kept, rejected = kept_and_rejected(path)
    assert kept == [] and [reason for _, reason in rejected] == ["too_deep"]


def test_json_lines_saved_as_json_with_a_deep_line(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(lines(chat(1), record_of_depth(5_000), chat(3)))
    assert kept_and_rejected(path) == ([(1, "ok-1"), (3, "ok-3")], [(2, "too_deep")])


def test_csv_cell_of_deep_json_is_a_reject(tmp_path):
    path = tmp_path / "deep.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "messages"])
        w.writerow(["ok-1", json.dumps(chat(1)["messages"])])
        w.writerow(["deep", nested(5_000)])
        w.writerow(["deep-dict", '[{"role": "user", "content": ' + nested(3_000) + "}]"])
    kept, rejected = kept_and_rejected(path)
    assert kept == [(2, "ok-1")] and rejected == [(3, "too_deep"), (4, "too_deep")]


def test_csv_prompt_of_brackets_stays_text(tmp_path):
    # A prompt that looks like JSON but is not a message list is the user's text.
    path = tmp_path / "pc.csv"
    path.write_text(f"prompt,completion\n{nested(5_000)},fine\n")
    records, rejects = load_records(path)
    assert rejects == [] and records[0].messages[0]["content"] == nested(5_000)


def test_data_inspect_lists_the_deep_line(tmp_path, tiny_model_dir, offline_home, capsys, monkeypatch):
    path = tmp_path / "data" / "deep.jsonl"
    path.parent.mkdir()
    path.write_text(lines(chat(1), chat(2), nested(5_000), chat(4)))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rejects"]["by_reason"] == {"too_deep": 1}
    assert report["rejects"]["examples"][0]["where"] == "deep.jsonl:3"


# --- Parquet and Arrow: damage inside the file ----------------------------------------------

@pytest.fixture(scope="module")
def parquet_bytes(tmp_path_factory) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"q{i} " * 20}, {"role": "assistant", "content": f"a{i} " * 20}]}
            for i in range(3000)]
    path = tmp_path_factory.mktemp("pq") / "ok.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(5))
def test_damaged_parquet_pages_are_a_data_error_naming_the_file(tmp_path, parquet_bytes, seed):
    data = bytearray(parquet_bytes)
    rng = random.Random(seed)
    for _ in range(20):  # the footer (the last bytes) stays whole: the file opens, its pages do not read
        data[rng.randrange(4, len(data) - 2000)] = rng.randrange(256)
    path = tmp_path / "damaged.parquet"
    path.write_bytes(bytes(data))
    try:
        load_records(path)
    except DataError as e:
        assert "damaged.parquet" in str(e) and "damaged" in str(e)


def test_tables_cannot_nest_past_the_limit(tmp_path):
    """Parquet and Arrow rows get no depth check: pyarrow itself refuses to nest past 64
    levels, and the deepest table it writes reads as records."""
    def column(depth: int) -> list:
        value: object = "x"
        for _ in range(depth):
            value = [value]
        return [value]

    with pytest.raises(pa.ArrowInvalid):
        t = pa.table({"meta": column(MAX_DEPTH + 1)})
        with pa.ipc.new_stream(str(tmp_path / "deep.arrow"), t.schema) as w:
            w.write_table(t)
    t = pa.table({"text": ["hi"], "meta": column(MAX_DEPTH - 4)})
    with pa.ipc.new_stream(str(tmp_path / "ok.arrow"), t.schema) as w:
        w.write_table(t)
    records, rejects = load_records(tmp_path / "ok.arrow")
    assert [r.text for r in records] == ["hi"] and rejects == []


def test_unreadable_dataset_dict_is_a_data_error(tmp_path):
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"')
    with pytest.raises(DataError, match="dataset_dict.json"):
        load_records(tmp_path)
    (tmp_path / "dataset_dict.json").write_text('["train"]')
    with pytest.raises(DataError, match="dataset_dict.json"):
        load_records(tmp_path)
    (tmp_path / "dataset_dict.json").unlink()
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(DataError, match="state.json"):
        load_records(tmp_path)



def test_data_path_longer_than_the_file_system_takes_is_a_data_error(tmp_path, tiny_tokenizer):
    # Path.is_dir() raises OSError (not False) for a name over the OS limit.
    from tunekit.data.chat_templates import apply_template
    from tunekit.data.inspect import inspect_data
    from tunekit.errors import ConfigError

    long = str(tmp_path / ("a/" * 3000)) + "x.jsonl"
    with pytest.raises(DataError, match="not found"):
        load_records(long)
    with pytest.raises(DataError, match="not found"):
        inspect_data(long, tiny_tokenizer)
    with pytest.raises(ConfigError, match="neither"):
        apply_template(tiny_tokenizer, long.replace(".jsonl", ".jinja"))


# --- Numbers Python will not read ------------------------------------------------------------

LONG_NUMBER = "9" * 5_000  # past sys.get_int_max_str_digits(): json.loads raises a bare ValueError


@pytest.mark.parametrize("container", ["jsonl", "array", "csv"])
def test_number_of_thousands_of_digits_is_a_reject(tmp_path, container):
    bad = '{"id": ' + LONG_NUMBER + ', "messages": []}'
    if container == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text(lines(chat(1), bad, chat(3)))
        want = ([(1, "ok-1"), (3, "ok-3")], [(2, "malformed_json")])
    elif container == "array":
        path = tmp_path / "d.json"
        path.write_text("[\n" + ",\n".join([json.dumps(chat(1)), bad, LONG_NUMBER, json.dumps(chat(4))]) + "\n]\n")
        want = ([(2, "ok-1"), (5, "ok-4")], [(3, "malformed_json"), (4, "malformed_json")])
    else:
        path = tmp_path / "d.csv"
        path.write_text(f"id,messages\nok-1,\"{json.dumps(chat(1)['messages']).replace(chr(34), chr(34) * 2)}\"\nx,[{LONG_NUMBER}]\n")
        want = ([(2, "ok-1")], [(3, "malformed_json")])
    assert kept_and_rejected(path) == want
    _, rejects = load_records(path)
    assert all("digits" in r.detail for r in rejects)


@pytest.mark.parametrize("first", [nested(5_000), "[" + LONG_NUMBER + "]", LONG_NUMBER])
def test_json_lines_whose_first_line_json_cannot_read_keep_the_rest(tmp_path, first):
    path = tmp_path / "d.jsonl"
    path.write_text(lines(first, chat(2), chat(3)))
    kept, rejected = kept_and_rejected(path)
    assert kept == [(2, "ok-2"), (3, "ok-3")] and [line for line, _ in rejected] == [1]
