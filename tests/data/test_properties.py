"""Property-based tests (Hypothesis): random bytes, random JSON structures and random
records fed to every reader and to prepare; random `key=value` overrides fed to the config.

Whatever the input, a reader keeps the valid records and rejects the others with a reason
code that the guide lists (docs/troubleshooting.md; tests/test_docs.py checks the list), and
raises nothing but DataError (a file it cannot read at all); prepare does the same. An override is applied or refused with a ConfigError, which the
CLI turns into exit code 2 and a message, never a traceback.

The profile is deterministic (derandomize: the same examples on every run and in CI),
bounded (max_examples) and keeps no example database in the repository.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tunekit.config import Config, load_config
from tunekit.data import nesting
from tunekit.data.inspect import inspect_data
from tunekit.data.prepare import prepare
from tunekit.data.records import REASONS, load_records
from tunekit.errors import ConfigError, DataError

# Hypothesis caches what it learns from the source under .hypothesis/; not in the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "tunekit-hypothesis")
settings.register_profile(
    "tunekit", max_examples=60, deadline=5000, derandomize=True, database=None, print_blob=False,
    # tmp_path is shared by a test's examples: each writes into a folder of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("tunekit")
_folders = itertools.count()


def fresh(tmp_path: Path) -> Path:
    folder = tmp_path / f"ex{next(_folders)}"
    folder.mkdir()
    return folder


def accounted(path: Path, n: int | None = None) -> tuple[list, list]:
    """load_records on `path`: a DataError (a file it cannot read) or every row accounted
    for, each reject with a documented reason and a real line; `n` rows when known."""
    try:
        records, rejects = load_records(path)
    except DataError as e:
        assert str(e)  # a message a person can act on
        event("read: DataError")
        return [], []
    event(f"read: {'records' if records else 'no records'}, {'rejects' if rejects else 'no rejects'}")
    for r in rejects:
        assert r.reason in REASONS and r.detail and r.line >= 1
        json.dumps(r.to_json(), ensure_ascii=False, default=str)
    assert all(r.line >= 1 for r in records)
    if n is not None:
        assert len(records) + len(rejects) == n
    return records, rejects


# --- random bytes, to every reader -------------------------------------------------------------

EXTS = [".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".md", ".parquet", ".arrow", ".bin", ""]
# What the sniffer looks at: magic bytes, a BOM, the first character.
HEADS = [b"", b"PAR1", b"ARROW1\x00\x00", b"\xff\xff\xff\xff", b"\xef\xbb\xbf", b"{", b"[", b'{"messages": [',
         b"\xff\xfe", b"messages,id\n"]


@PROFILE
@given(head=st.sampled_from(HEADS), body=st.binary(max_size=600), ext=st.sampled_from(EXTS))
def test_random_bytes_are_rejects_or_a_data_error(tmp_path, tiny_tokenizer, head, body, ext):
    folder = fresh(tmp_path)
    path = folder / f"data{ext}"
    path.write_bytes(head + body)
    accounted(path)
    try:
        prepare(_cfg(path), folder / "out", tiny_tokenizer)
    except DataError as e:
        assert str(e)


# --- random JSON structures ------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
           | st.text(max_size=20))
KEYS = st.sampled_from(["messages", "role", "content", "conversations", "from", "value", "instruction", "input",
                        "output", "prompt", "completion", "text", "system", "weight", "data", "id"]) | st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=25)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    return 0


def _lines_json(values: list) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


@PROFILE
@given(values=st.lists(VALUES | st.deferred(lambda: RECORDS), min_size=1, max_size=8),
       container=st.sampled_from(["jsonl", "array", "data", "csv"]))
def test_random_json_is_kept_or_rejected_row_by_row(tmp_path, values, container):
    folder = fresh(tmp_path)
    if container == "jsonl":
        # A file of one line is one JSON document, and may be an array or a {"data": [...]} of records.
        path, n = folder / "d.jsonl", len(values) if len(values) > 1 else None
        path.write_text(_lines_json(values))
    elif container == "array":
        path, n = folder / "d.json", len(values)
        path.write_text("[\n" + ",\n".join(json.dumps(v) for v in values) + "\n]")
    elif container == "data":
        path, n = folder / "d.json", None  # a single-object file may be one record or a wrapper
        path.write_text(json.dumps({"data": values}, indent=1))
    else:
        path, n = folder / "d.csv", None  # blank rows are skipped
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["messages", "prompt", "completion", "id"])
        for v in values:
            w.writerow([json.dumps(v), json.dumps(v), v if isinstance(v, str) else json.dumps(v), "x"])
        path.write_text(buf.getvalue())
    accounted(path, n)


@PROFILE
@given(depth=st.integers(0, 3 * nesting.MAX_DEPTH), inner=VALUES, salt=st.text(alphabet='[]{}"\\ ,:x', max_size=12))
def test_too_deep_agrees_with_the_parsed_depth(depth, inner, salt):
    value: object = [salt, inner]
    for i in range(depth):
        value = [value] if i % 2 else {salt: value}
    text = json.dumps(value)
    assert nesting.too_deep(text) == (_depth(value) > nesting.MAX_DEPTH)
    if _depth(value) <= nesting.MAX_DEPTH:
        # The bounded decoder used for files that hold a deep record reads the rest exactly as json does.
        assert nesting._Bounded().decode(text) == json.loads(text)


# --- random records, near and far from valid -----------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["", "  ", "\n\n", "ok", "\x00", "\u200b"])
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "bot", "", None, 3])
WEIGHT = st.sampled_from([None, 0, 1, 2, 0.5, "1", True])


@st.composite
def message(draw, role_key="role", content_key="content"):
    m = {role_key: draw(ROLE), content_key: draw(TEXT | SCALARS)}
    w = draw(WEIGHT)
    if w is not None:
        m["weight"] = w
    return m


@st.composite
def valid_chat(draw):
    msgs = [{"role": "system", "content": draw(TEXT.filter(str.strip)) + "."}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        msgs.append({"role": "user", "content": "q " + draw(TEXT)})
        msgs.append({"role": "assistant", "content": "a " + draw(TEXT)})
    return {"messages": msgs, "valid": True}


RECORDS = st.one_of(
    valid_chat(),
    st.builds(lambda m, extra: {"messages": m, **extra}, st.lists(message(), max_size=5), st.dictionaries(KEYS, SCALARS, max_size=2)),
    st.builds(lambda c, s: {"conversations": c, "system": s}, st.lists(message("from", "value"), max_size=4), TEXT | SCALARS),
    st.builds(lambda i, x, o: {"instruction": i, "input": x, "output": o}, TEXT | SCALARS, TEXT | SCALARS, TEXT | SCALARS),
    st.builds(lambda p, c: {"prompt": p, "completion": c}, TEXT | st.lists(message(), max_size=3), TEXT | SCALARS),
    st.builds(lambda t: {"text": t}, TEXT | SCALARS),
    VALUES,
)


def _cfg(path: Path, **data) -> Config:
    return Config.model_validate({"data": {"train": str(path), "max_reject_fraction": 1.0, "max_length": 160, **data},
                                  "seed": 0})


def _jsonl(path: Path) -> list[dict]:
    # split("\n"), not splitlines(): text may hold U+2028 or U+0085, which JSON Lines leaves as they are.
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x]


@PROFILE
@given(rows=st.lists(RECORDS, min_size=2, max_size=10), over=st.sampled_from(["drop", "truncate_history"]))
def test_prepare_keeps_valid_records_and_says_why_of_the_rest(tmp_path, tiny_tokenizer, rows, over):
    # Each object row carries its line number, an extra field that every kept row (each
    # chunk of a document too) keeps: so every line can be found in the output or the rejects.
    rows = [{**r, "_line": i} if isinstance(r, dict) else r for i, r in enumerate(rows, 1)]
    folder = fresh(tmp_path)
    path = folder / "train.jsonl"
    path.write_text(_lines_json(rows), encoding="utf-8")
    records, _ = accounted(path, len(rows))
    valid = {i for i, r in enumerate(rows, 1) if isinstance(r, dict) and r.get("valid") is True and "messages" in r
             and set(r) == {"messages", "valid", "_line"}}
    assert valid <= {r.line for r in records}  # a valid conversation passes validation whatever its text
    report = inspect_data(path, tiny_tokenizer, max_length=160)  # data inspect reads it the same way
    assert report["records"]["read"] == len(rows) and report["records"]["valid"] == len(records)
    try:
        report = prepare(_cfg(path, over_length=over), folder / "out", tiny_tokenizer)
    except DataError as e:
        assert str(e)
        event(f"prepare: DataError {str(e)[:30]}")
        return
    event("prepare: done")
    kept = {r["_line"] for f in ("train.jsonl", "valid.jsonl") for r in _jsonl(folder / "out" / f)}
    rejected = [r for r in _jsonl(folder / "out" / "rejects.jsonl")]
    assert all(r["reason"] in REASONS for r in rejected)
    rejected_lines = [r["line"] for r in rejected]
    assert report["lines_read"] == len(rows)
    # Every line is kept or rejected with a reason, never both, never neither.
    assert not kept & set(rejected_lines)
    assert sorted([*kept, *rejected_lines]) == list(range(1, len(rows) + 1))
    # A valid conversation leaves only as a duplicate of another or as too long.
    dropped = {r["line"]: r["reason"] for r in rejected}
    assert all(dropped[i] in ("exact_duplicate", "near_duplicate", "over_long") for i in valid - kept)


# --- random Parquet tables -----------------------------------------------------------------------

COLUMN_TYPES = {
    "str": (pa.string(), TEXT),
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "bytes": (pa.binary(), st.binary(max_size=8)),
    "time": (pa.timestamp("s"), st.datetimes()),
    "list": (pa.list_(pa.string()), st.lists(TEXT, max_size=3)),
}
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())]))


PARQUET_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot", "", None]),
                                         "content": TEXT | st.none(), "weight": st.sampled_from([None, 0, 1, 2])})
PARQUET_CHAT = st.builds(lambda q, a, w: [{"role": "user", "content": "q " + q, "weight": None},
                                          {"role": "assistant", "content": "a " + a, "weight": w}],
                         TEXT, TEXT, st.sampled_from([None, 1]))


@PROFILE
@given(msgs=st.lists(PARQUET_CHAT | st.lists(PARQUET_MESSAGE, max_size=4) | st.none(), min_size=1, max_size=6),
       extra=st.sampled_from(sorted(COLUMN_TYPES)), data=st.data())
def test_random_parquet_tables_through_prepare(tmp_path, tiny_tokenizer, msgs, extra, data):
    kind, values = COLUMN_TYPES[extra]
    column = [data.draw(values | st.none()) for _ in msgs]
    table = pa.table({"messages": pa.array(msgs, MESSAGES_TYPE), "extra": pa.array(column, kind)})
    folder = fresh(tmp_path)
    pq.write_table(table, folder / "train.parquet")
    accounted(folder / "train.parquet", len(msgs))
    try:
        prepare(_cfg(folder / "train.parquet"), folder / "out", tiny_tokenizer)
        event("prepare: done")
    except DataError as e:
        assert str(e)
        event(f"prepare: DataError {str(e)[:30]}")


# --- random conversations: the loss mask -------------------------------------------------------

MASK_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", " ", "\n", " x ", "x\n\n", "<|im_end|>", "{{ x }}", "\t"])


@PROFILE
@given(name=st.sampled_from(["tiny", "llama3", "qwen2", "named-gemma", "named-mistral", "named-base", "numbered"]),
       turns=st.lists(st.tuples(MASK_TEXT, MASK_TEXT, st.sampled_from([0, 1, 1, 1])), min_size=1, max_size=12),
       system=st.none() | MASK_TEXT, train_on=st.sampled_from(["all_assistant", "last_assistant", "all"]))
def test_loss_mask_equals_rendering_every_prefix(templates, name, turns, system, train_on):
    """Windows (tunekit/data/template.py) give the ids and labels that rendering every prefix
    whole gives, or refuse the same conversations, whatever the text."""
    from test_template_long import reference

    from tunekit.data.template import tokenize_chat

    tok = templates(name)
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for q, a, w in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a, **({"weight": 0} if not w else {})}]
    try:
        want = reference(tok, msgs, train_on)
    except DataError:
        with pytest.raises(DataError):
            tokenize_chat(tok, msgs, train_on)
        event("both refuse")
        return
    t = tokenize_chat(tok, msgs, train_on)
    assert (t.input_ids, t.labels) == want
    event("same mask")


@pytest.fixture(scope="module")
def templates():
    from test_template_long import BUILDERS

    built: dict = {}
    return lambda name: built.setdefault(name, BUILDERS[name]())


# --- random config overrides ---------------------------------------------------------------------

SECTIONS = ["model", "data", "train", "method", "eval", "export", "name", "seed", "train.lr", "data.train",
            "method.kind", "method.r", "data.mix", "data.columns", "model.chat_template", "train.epochs",
            "data.max_length", "train.batch_size", "export.formats", "data.eval", "train.replay.file"]
RAW_VALUES = st.sampled_from(["", "1", "-1", "1e-4", "true", "null", "[", "]", "{", "{a: 1}", "[1, 2]", "'", '"',
                              "!!python/object:os.system", "&a [*a]", "a: b: c", "- x", "2024-01-01", "0x1F", ".inf",
                              "~", "[" * 3000, "@", "%", "`", "\t", "x" * 5000, "a/" * 2000])
SENSIBLE = st.sampled_from(["train.lr=1e-4", "seed=3", "method.kind=dora", "train.epochs=2", "data.max_length=256",
                            "name=other", "method.r=4", "export.formats=[merged]", "model.dtype=bfloat16"])
OVERRIDE = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SECTIONS) | st.text(max_size=12), RAW_VALUES | st.text(max_size=30)) \
    | st.text(max_size=30) | SENSIBLE


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "train.jsonl").write_text(_lines_json([{"messages": [{"role": "user", "content": "q"},
                                                                   {"role": "assistant", "content": "a"}]}]))
    path = folder / "config.yaml"
    path.write_text("data:\n  train: train.jsonl\n")
    return path


@PROFILE
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=3))
def test_random_overrides_load_or_raise_a_config_error(config_file, overrides):
    try:
        load_config(config_file, overrides)
        event("loaded")
    except ConfigError as e:
        assert str(e)
        event("ConfigError")


class _Loaded(ConfigError):
    """Stands in for the run: the config loaded, so the CLI's own part is done."""


@PROFILE
@given(overrides=st.lists(OVERRIDE.filter(lambda o: "\x00" not in o), min_size=1, max_size=3))
def test_random_overrides_on_the_command_line_exit_2_with_a_message(config_file, overrides, monkeypatch, capsys):
    from tunekit import config as config_module
    from tunekit.cli import main

    real = config_module.load_config

    def load_then_stop(path, over=(), base_dir=None):
        real(path, over, base_dir)
        raise _Loaded("config loaded")

    monkeypatch.setattr(config_module, "load_config", load_then_stop)
    try:
        code = main(["run", str(config_file), *overrides])
    except SystemExit as e:  # argparse, on an override it cannot parse: its usage line and exit 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.strip() and "Traceback" not in err
