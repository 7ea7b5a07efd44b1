"""Record formats: each one detected and converted to canonical chat messages or a document;
an explicit data.format that does not fit names the missing field; column mapping; extra
fields carried through; mixed formats counted per format."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import write_jsonl

from tunekit.data.formats import FormatError, detect, to_canonical
from tunekit.data.records import iter_records, load_records


def U(text):
    return {"role": "user", "content": text}


def A(text, **kw):
    return {"role": "assistant", "content": text, **kw}


def S(text):
    return {"role": "system", "content": text}


def load_one(tmp_path, row, **kw):
    """(records, rejects) of a one-row JSONL file."""
    return load_records(write_jsonl(tmp_path / "one.jsonl", [row]), **kw)


def record(tmp_path, row, **kw):
    records, rejects = load_one(tmp_path, row, **kw)
    assert rejects == [], [(r.reason, r.detail) for r in rejects]
    (rec,) = records
    return rec


def rejected(tmp_path, row, **kw):
    records, rejects = load_one(tmp_path, row, **kw)
    assert records == []
    (rej,) = rejects
    assert rej.line == 1 and rej.detail
    json.dumps(rej.to_json())
    return rej


# ---- detection --------------------------------------------------------------------------

@pytest.mark.parametrize("row, fmt", [
    ({"messages": [U("q"), A("a")]}, "chat"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
    ({"instruction": "do", "input": "x", "output": "y"}, "alpaca"),
    ({"instruction": "do", "output": "y"}, "alpaca"),
    ({"prompt": "q", "completion": "a"}, "prompt_completion"),
    ({"text": "a document"}, "text"),
    ({"question": "q", "answer": "a"}, None),
    ({"instruction": "do"}, None),  # Alpaca needs an output
    ({"prompt": "q"}, None),
])
def test_detect(row, fmt):
    assert detect(row) == fmt


# ---- chat -------------------------------------------------------------------------------

def test_chat_kept_with_weights_on_messages(tmp_path):
    row = {"messages": [S("be brief"), U("q1"), A("draft", weight=0), U("q2"), A("final", weight=1)]}
    rec = record(tmp_path, row)
    assert rec.messages == row["messages"]
    assert [m.get("weight") for m in rec.messages] == [None, None, 0, None, 1]
    assert rec.text is None and rec.row() == row


def test_chat_weight_on_a_user_turn_or_not_0_1_is_rejected(tmp_path):
    assert rejected(tmp_path, {"messages": [{**U("q"), "weight": 0}, A("a")]}).reason == "bad_weight"
    assert rejected(tmp_path, {"messages": [U("q"), A("a", weight=0.5)]}).reason == "bad_weight"
    assert rejected(tmp_path, {"messages": [U("q"), A("a", weight=0)]}).reason == "no_trainable_turn"


def test_chat_other_message_keys_are_kept(tmp_path):
    rec = record(tmp_path, {"messages": [U("q"), A("a", name="bot-7")]})
    assert rec.messages[1] == {"role": "assistant", "content": "a", "name": "bot-7"}


# ---- ShareGPT ---------------------------------------------------------------------------

def test_sharegpt_roles_mapped_and_top_level_system_first(tmp_path):
    row = {"id": "s1", "system": "You are terse.",
           "conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                             {"from": "Human", "value": "q2"}, {"from": "model", "value": "a2"}]}
    rec = record(tmp_path, row)
    assert rec.messages == [S("You are terse."), U("q1"), A("a1"), U("q2"), A("a2")]
    assert rec.extra == {"id": "s1"}  # "system" is consumed, not carried as an extra field


def test_sharegpt_system_turn_inside_the_conversation(tmp_path):
    row = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
                             {"from": "gpt", "value": "a"}]}
    assert record(tmp_path, row).messages == [S("sys"), U("q"), A("a")]


def test_sharegpt_already_using_role_and_content(tmp_path):
    row = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert record(tmp_path, row).messages == [U("q"), A("a")]


@pytest.mark.parametrize("who", ["narrator", None, 3])
def test_sharegpt_unknown_from_is_unknown_role(tmp_path, who):
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": who, "value": "a"}]}
    rej = rejected(tmp_path, row)
    assert rej.reason == "unknown_role"
    assert "conversations[1]" in rej.detail and repr(who) in rej.detail
    assert rej.raw == row  # the original record is kept for rejects.jsonl


# ---- Alpaca -----------------------------------------------------------------------------

def test_alpaca_with_input(tmp_path):
    rec = record(tmp_path, {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "Be exact."})
    assert rec.messages == [S("Be exact."), U("Translate.\n\nbonjour"), A("hello")]
    assert rec.extra == {}


@pytest.mark.parametrize("inp", [None, "", "   "])
def test_alpaca_without_input(tmp_path, inp):
    row = {"instruction": "Name a colour.", "output": "Blue."}
    if inp is not None:
        row["input"] = inp
    assert record(tmp_path, row).messages == [U("Name a colour."), A("Blue.")]


def test_alpaca_wrong_type(tmp_path):
    rej = rejected(tmp_path, {"instruction": "sum", "input": "1+1", "output": 2})
    assert rej.reason == "wrong_type" and "'output'" in rej.detail


# ---- prompt / completion ----------------------------------------------------------------

def test_prompt_completion_strings(tmp_path):
    rec = record(tmp_path, {"prompt": "2+2?", "completion": "4", "system": "math"})
    assert rec.messages == [S("math"), U("2+2?"), A("4")]


def test_prompt_completion_message_lists(tmp_path):
    row = {"prompt": [S("s"), U("q1"), A("a1"), U("q2")], "completion": [A("a2")]}
    assert record(tmp_path, row).messages == [S("s"), U("q1"), A("a1"), U("q2"), A("a2")]


@pytest.mark.parametrize("prompt, completion", [
    ("[INST] summarise this [/INST]", "ok"),
    ("{name} is a placeholder. Fill it.", "Done."),
    ("Return the list.", "[1, 2, 3]"),
    ("Return JSON.", '{"answer": 4}'),
    ("Return records.", '[{"name": "a"}, {"name": "b"}]'),
    ("[broken json", "{also not json"),
])
def test_prompt_completion_text_that_looks_like_json_stays_text(tmp_path, prompt, completion):
    # Only a JSON list of messages (how CSV/Parquet hold one) is read as messages; a
    # completion may itself be JSON the model must learn to write.
    rec = record(tmp_path, {"prompt": prompt, "completion": completion})
    assert rec.messages == [U(prompt), A(completion)]


def test_prompt_completion_message_lists_as_json_text(tmp_path):
    row = {"prompt": json.dumps([U("q")]), "completion": json.dumps([A("a")])}
    assert record(tmp_path, row).messages == [U("q"), A("a")]


# ---- text -------------------------------------------------------------------------------

def test_text_document(tmp_path):
    rec = record(tmp_path, {"text": "Chapter 1.\r\n\r\n\r\n\r\nIt begins.  ", "url": "u"})
    assert rec.messages == [] and rec.text == "Chapter 1.\n\nIt begins."
    assert rec.row() == {"url": "u", "text": "Chapter 1.\n\nIt begins."}


def test_text_must_be_a_string(tmp_path):
    assert rejected(tmp_path, {"text": ["a", "b"]}).reason == "wrong_type"


# ---- explicit data.format ---------------------------------------------------------------

@pytest.mark.parametrize("fmt, row, reason, field", [
    ("chat", {"conversations": [{"from": "human", "value": "q"}]}, "missing_messages", "'messages'"),
    ("sharegpt", {"messages": [U("q"), A("a")]}, "missing_field", "'conversations'"),
    ("alpaca", {"instruction": "q", "response": "a"}, "missing_field", "'output'"),
    ("alpaca", {"prompt": "q", "completion": "a"}, "missing_field", "'instruction', 'output'"),
    ("prompt_completion", {"prompt": "q", "answer": "a"}, "missing_field", "'completion'"),
    ("text", {"messages": [U("q"), A("a")]}, "missing_field", "'text'"),
])
def test_explicit_format_mismatch_names_the_missing_field(tmp_path, fmt, row, reason, field):
    rej = rejected(tmp_path, row, fmt=fmt)
    assert rej.reason == reason
    assert f"data.format is {fmt}" in rej.detail and f"lacks {field}" in rej.detail


def test_explicit_format_wins_over_detection():
    # Both signatures present: auto picks chat (first), an explicit format picks its own.
    row = {"messages": [U("q"), A("a")], "prompt": "p", "completion": "c"}
    assert to_canonical(row, "auto", {})[0] == "chat"
    fmt, obj = to_canonical(row, "prompt_completion", {})
    assert fmt == "prompt_completion" and obj["messages"] == [U("p"), A("c")]


def test_no_known_fields_in_auto(tmp_path):
    rej = rejected(tmp_path, {"question": "q", "answer": "a"})
    assert rej.reason == "missing_messages"
    assert "keys: answer, question" in rej.detail and "data.columns" in rej.detail


def test_not_an_object():
    with pytest.raises(FormatError) as e:
        to_canonical(["a", "b"], "auto", {})
    assert e.value.reason == "not_an_object"


# ---- column mapping ---------------------------------------------------------------------

def test_top_level_columns(tmp_path):
    rec = record(tmp_path, {"question": "q", "answer": "a", "id": 3},
                 columns={"prompt": "question", "completion": "answer"})
    assert rec.messages == [U("q"), A("a")] and rec.extra == {"id": 3}


def test_alpaca_columns(tmp_path):
    rec = record(tmp_path, {"task": "t", "context": "c", "response": "r"},
                 columns={"instruction": "task", "input": "context", "output": "response"})
    assert rec.messages == [U("t\n\nc"), A("r")]


def test_role_and_content_columns(tmp_path):
    row = {"dialog": [{"speaker": "user", "text": "q"}, {"speaker": "assistant", "text": "a", "weight": 1}]}
    rec = record(tmp_path, row, columns={"messages": "dialog", "role": "speaker", "content": "text"})
    assert rec.messages == [U("q"), A("a", weight=1)]


def test_role_and_content_columns_for_sharegpt(tmp_path):
    row = {"conversations": [{"who": "human", "says": "q"}, {"who": "gpt", "says": "a"}]}
    rec = record(tmp_path, row, columns={"role": "who", "content": "says"})
    assert rec.messages == [U("q"), A("a")]


def test_unmapped_column_still_reported(tmp_path):
    rej = rejected(tmp_path, {"question": "q", "answer": "a"}, columns={"prompt": "question"})
    assert rej.reason == "missing_messages" and "prompt" in rej.detail


# ---- extra fields and mixed formats -----------------------------------------------------

@pytest.mark.parametrize("row", [
    {"messages": [U("q"), A("a")]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"instruction": "q", "output": "a"},
    {"prompt": "q", "completion": "a"},
    {"text": "q a"},
])
def test_extra_fields_carried_through_every_format(tmp_path, row):
    extra = {"id": "x-1", "labels": ["billing", "refund"], "meta": {"source": "crm", "score": 0.5}}
    rec = record(tmp_path, {**extra, **row})
    assert rec.extra == extra
    out = rec.row()
    assert {k: out[k] for k in extra} == extra


def test_mixed_formats_in_one_file_are_counted_per_format(tmp_path):
    rows = [
        {"messages": [U("q1"), A("a1")]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
        {"instruction": "q3", "output": "a3"},
        {"messages": [U("q4"), A("a4")]},
        {"prompt": "q5", "completion": "a5"},
        {"text": "doc 6"},
        {"instruction": "q7", "input": "i7", "output": "a7"},
        {"nothing": "here"},
        {"messages": [U("q9")]},  # chat, but rejected: counted as chat
    ]
    p = write_jsonl(tmp_path / "mixed.jsonl", rows)
    formats: Counter = Counter()
    items = list(iter_records(p, formats=formats))
    assert formats == Counter({"chat": 3, "sharegpt": 1, "alpaca": 2, "prompt_completion": 1, "text": 1, "unreadable": 1})
    assert [type(x).__name__ for x in items] == ["Record"] * 7 + ["Reject"] * 2
    assert [x.line for x in items] == list(range(1, 10))
    assert items[5].text == "doc 6"
    assert items[6].messages == [U("q7\n\ni7"), A("a7")]
