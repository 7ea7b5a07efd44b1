"""Reading chat JSONL: every reject reason with its line; BOM, CRLF; normalisation; nothing valid lost."""

from __future__ import annotations

import json

import pytest

from tunekit.data.records import load_records, normalize_text
from tunekit.errors import DataError


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


GOOD = {"messages": [U("hi"), A("hello")]}

# line -> (raw line text, expected reason or None for a valid record)
CASES = [
    (json.dumps(GOOD), None),
    ('{"messages": [{"role": "user", "content": "hi"}', "malformed_json"),
    ("[1, 2, 3]", "not_an_object"),
    (json.dumps({"conversation": [U("hi"), A("yo")]}), "missing_messages"),
    (json.dumps({"messages": [{"role": "bot", "content": "hi"}, A("x")]}), "unknown_role"),
    (json.dumps({"messages": [U("hi"), {"role": "assistant", "content": 42}]}), "wrong_type"),
    (json.dumps({"messages": "hi"}), "wrong_type"),
    (json.dumps({"messages": [U("hi"), A("   \n ")]}), "empty_turn"),
    (json.dumps({"messages": [U("hi"), A("yo"), U("and?")]}), "no_final_assistant"),
    (json.dumps({"messages": [A("hello"), U("hi"), A("yo")]}), "bad_turn_order"),
    (json.dumps({"messages": [U("a"), U("b"), A("yo")]}), "bad_turn_order"),
    (json.dumps({"messages": [U("a"), S("late"), A("yo")]}), "misplaced_system"),
    (json.dumps({"id": 7, "messages": [S("be brief"), U("q1"), A("a1"), U("q2"), A("a2")]}), None),
]


def test_each_reject_reason_with_its_line_number(tmp_path):
    lines = []
    expected = {}
    for text, reason in CASES:
        lines.append(text)
        expected[len(lines)] = reason
        lines.append("")  # blank lines are skipped but still counted in line numbers
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records, rejects = load_records(p)
    got = {r.line: r.reason for r in rejects}
    assert got == {n: r for n, r in expected.items() if r}
    assert [r.line for r in records] == [n for n, r in expected.items() if r is None]
    for r in rejects:
        assert r.detail and r.source == str(p)
        json.dumps(r.to_json())  # every reject is writable to rejects.jsonl
    assert records[1].extra == {"id": 7}
    malformed = next(r for r in rejects if r.reason == "malformed_json")
    assert malformed.raw == CASES[1][0]  # the broken text itself is kept


def test_invalid_utf8_is_rejected_not_altered(tmp_path):
    p = tmp_path / "t.jsonl"
    good = json.dumps({"messages": [U("q"), A("a")]}).encode()
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "x"}]}'
    p.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"q"', b'"q2"') + b"\n")
    records, rejects = load_records(p)
    assert [r.line for r in records] == [1, 3]
    assert [(r.line, r.reason) for r in rejects] == [(2, "bad_encoding")]


def test_bom_and_crlf(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [json.dumps({"messages": [U(f"q{i}"), A(f"a{i}")]}) for i in range(3)]
    p.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    records, rejects = load_records(p)
    assert rejects == []
    assert [r.line for r in records] == [1, 2, 3]
    assert records[0].messages[0]["content"] == "q0"


def test_text_normalisation():
    assert normalize_text("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert normalize_text("a\x00b\x07c\x1bd\x7f") == "abcd"  # control characters removed
    assert normalize_text("line one  \r\nline two\rthree\t \n") == "line one\nline two\nthree"
    assert normalize_text("tab\tstays") == "tab\tstays"


def test_normalised_content_in_records(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"messages": [U("Cafe\u0301?\r\n"), A("yes\x07 ")]}) + "\n", encoding="utf-8")
    (rec,), _ = load_records(p)
    assert rec.messages == [U("Caf\u00e9?"), A("yes")]


def test_no_valid_record_lost(tmp_path):
    rows, bad = [], 0
    for i in range(200):
        if i % 7 == 3:
            rows.append('{"messages": [')
            bad += 1
        else:
            rows.append(json.dumps({"i": i, "messages": [U(f"question {i}"), A(f"answer {i}")]}))
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(rows) + "\n")
    records, rejects = load_records(p)
    assert len(records) + len(rejects) == 200
    assert len(rejects) == bad
    assert sorted(r.extra["i"] for r in records) == [i for i in range(200) if i % 7 != 3]


def test_held_out_items_end_with_the_question_and_a_given_answer_becomes_the_reference(tmp_path):
    p = tmp_path / "h.jsonl"
    rows = [{"messages": [U("q")]}, {"messages": [U("q2"), A("a2")]}, {"messages": [A("a")]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, rejects = load_records(p, need_assistant=False)
    assert [(r.line, r.messages[-1]["content"], r.extra.get("reference")) for r in records] == [(1, "q", None), (2, "q2", "a2")]
    assert [(r.line, r.reason) for r in rejects] == [(3, "bad_turn_order")]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_records(tmp_path / "nope.jsonl")
