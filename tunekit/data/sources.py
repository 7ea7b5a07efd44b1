"""Where records come from: files and folders of every common container, read as a stream.

Every container yields `Raw(source, line, value)`. `value` is the parsed record (a dict
for JSON, CSV, Parquet and Arrow rows; {"text": ...} for a .txt/.md document) or a
`Problem` for something that could not be parsed. A bad record never raises: only a file
that cannot be read at all (missing, empty, binary, of unknown type, damaged inside)
raises DataError, naming the file and what to do. JSON nested deeper than nesting.MAX_DEPTH
is a `too_deep` Problem, found before it is parsed (the parser itself would overflow).

The container is found from the content where the content is unambiguous (a JSON object
or array, Parquet or Arrow magic bytes), else from the extension. So a `.csv` that holds
JSON Lines is read as JSON Lines, and a note says so.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunekit.data.formats import LONE_SURROGATE, detect, lone_surrogate
from tunekit.data.nesting import Unreadable, decoder_for, loads, skip_value
from tunekit.errors import DataError

TEXT_EXTS = {".txt", ".md", ".markdown", ".rst"}
DATA_EXTS = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow"}
RAW_KEEP = 2000
"""Characters of an unparseable line kept in rejects.jsonl (a 50 MB line is not copied)."""
_ESCAPED = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, kept as markers by the surrogateescape error handler."""


@dataclass
class Problem:
    reason: str
    detail: str
    raw: str


@dataclass
class Raw:
    source: str
    line: int
    """1-based line where the record starts (row number for Parquet/Arrow)."""
    value: object


def iter_raw(path: str | Path, notes: list[str]) -> Iterator[Raw]:
    """Every record under `path` (a file or a folder), in a stable order.

    `notes` collects what the user should know about how the files were read.
    """
    path = Path(path)
    try:
        kind = "folder" if path.is_dir() else "file" if path.is_file() else None
    except (OSError, ValueError):  # a name longer than the file system takes, or holding a NUL
        kind = None
    if kind == "folder":
        yield from _iter_folder(path, notes)
    elif kind == "file":
        yield from _iter_file(path, sniff(path), notes)
    else:
        shown = str(path) if len(str(path)) <= 200 else str(path)[:200] + "..."
        raise DataError(f"data path {shown} not found; set data.train to a data file or a folder of them")


def sniff(path: Path) -> str:
    """Container kind of a file: jsonl, json, csv, tsv, parquet, arrow or text."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    ext = path.suffix.lower()
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head[:4] == b"\xff\xff\xff\xff":
        return "arrow"
    body = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not body:
        raise DataError(f"{path} is empty (no records); point data.train at a file with data")
    if body[:1] == b"{":
        return "json" if ext == ".json" else "jsonl"
    if body[:1] == b"[":
        return "json"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path} is UTF-16 text; re-save it as UTF-8 (in Excel: 'CSV UTF-8') and point data.train at that")
    if _binary(head):
        raise DataError(
            f"{path} is a binary file, not text data (compressed? unpack it first); expected JSONL, JSON, CSV, Parquet or text"
        )
    if ext in (".csv", ".tsv"):
        return ext[1:]
    if ext in TEXT_EXTS:
        return "text"
    preview = body[:40].decode("utf-8", errors="replace")
    if ext in (".jsonl", ".ndjson", ".json") and _json_line(body):
        return "jsonl"  # JSON Lines whose first line is null, a number or a string: a reject, not the file
    if ext in (".jsonl", ".ndjson", ".json"):
        raise DataError(
            f"{path} has extension {ext} but does not start with a JSON object or array "
            f"(it starts with {preview!r}). If it is CSV, rename it to .csv; if it is a document, to .txt"
        )
    if ext in (".parquet", ".arrow"):
        raise DataError(f"{path} has extension {ext} but is not a {ext[1:]} file (no magic bytes); was it truncated?")
    raise DataError(
        f"{path}: cannot tell its format from the extension {ext or '(none)'!r} or the content "
        f"(starts with {preview!r}); use .jsonl, .json, .csv, .tsv, .parquet, .txt or .md"
    )


def _json_line(body: bytes) -> bool:
    """Whether the first line of `body` is a whole JSON value with another line after it."""
    first, newline, rest = body.partition(b"\n")
    if not newline or not rest.strip():
        return False
    try:
        loads(first.decode("utf-8"))
    except Unreadable:
        return True  # a record of its own that json cannot read: a reject
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _binary(head: bytes) -> bool:
    """More NUL bytes than a stray one in a cell, or bytes that are not UTF-8 at all."""
    if b"\x00" not in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return True
    return head.count(0) > max(4, len(head) // 100)  # a stray NUL in a cell is cleaned later


def _iter_file(path: Path, kind: str, notes: list[str]) -> Iterator[Raw]:
    ext = path.suffix.lower()
    expected = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".arrow": "arrow"}
    if ext in expected and expected[ext] != kind and not (kind == "json" and ext in (".jsonl", ".ndjson")):
        notes.append(f"{path.name}: extension {ext} but the content is {kind}; read as {kind}")
    reader = {"jsonl": _jsonl, "json": _json, "csv": _csv, "tsv": _csv, "parquet": _parquet, "arrow": _arrow, "text": _text}
    yield from reader[kind](path)


def _iter_folder(root: Path, notes: list[str]) -> Iterator[Raw]:
    if (root / "dataset_dict.json").is_file():
        splits = _manifest(root / "dataset_dict.json").get("splits", [])
        if "train" not in splits:
            raise DataError(f"{root} is a saved DatasetDict with splits {splits} and no 'train'; point data.train at one split's folder")
        notes.append(f"{root.name}: saved DatasetDict; reading its 'train' split")
        root = root / "train"
    if (root / "state.json").is_file():
        yield from _saved_dataset(root, notes)
        return
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    used = [p for p in files if p.suffix.lower() in TEXT_EXTS | DATA_EXTS]
    skipped = len(files) - len(used)
    if skipped:
        notes.append(f"{root}: skipped {skipped} file(s) of other types")
    if not used:
        raise DataError(f"folder {root} holds no .jsonl/.json/.csv/.parquet/.txt/.md files")
    for p in used:
        try:
            kind = sniff(p)
        except DataError as e:
            notes.append(f"skipped {e}")
            continue
        yield from _iter_file(p, kind, notes)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        return None


def _jsonl(path: Path) -> Iterator[Raw]:
    src = str(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = _decode(raw)
            if text is None:
                # Replacing bad bytes would change the record silently; reject it instead.
                shown = raw[:RAW_KEEP].decode("utf-8", errors="replace").rstrip("\r\n")
                yield Raw(src, n, Problem("bad_encoding", "line is not valid UTF-8; re-save the file as UTF-8", shown))
                continue
            if not text.strip():
                continue
            try:
                value = loads(text.rstrip("\r\n"))  # a line cut inside a string ends there, not at a control character
            except Unreadable as e:
                yield Raw(src, n, Problem(e.reason, f"line {e.detail}", text[:RAW_KEEP].rstrip("\r\n")))
                continue
            except json.JSONDecodeError as e:
                detail = f"line is not valid JSON ({e.msg} at column {e.colno}); is it truncated or two records on one line?"
                yield Raw(src, n, Problem("malformed_json", detail, text[:RAW_KEEP].rstrip("\r\n")))
                continue
            if lone_surrogate(value, text):
                yield Raw(src, n, Problem("bad_encoding", f"line {LONE_SURROGATE}", text[:RAW_KEEP].rstrip("\r\n")))
            else:
                yield Raw(src, n, value)


def _json(path: Path) -> Iterator[Raw]:
    """A JSON array (or one object, or {"data": [...]}), salvaging every item before a break."""
    src = str(path)
    # surrogateescape: a bad byte rejects the record that holds it, not the whole file.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    dec = decoder_for(text)
    pos = _skip_ws(text, 0)
    if text[pos] == "{":
        try:
            obj, end = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, Unreadable) as e:
            # {"data": [... cut short, or holding a record json cannot read: every record
            # before the break. Else JSON Lines, or one record it cannot read.
            inner = None if _looks_like_lines(text) else _member_array(text, pos, dec)
            if inner is None and isinstance(e, Unreadable):
                yield Raw(src, 1, Problem(e.reason, f"record {e.detail}", _shown(text[pos : pos + RAW_KEEP])))
                return
            yield from _jsonl(path) if inner is None else _array(src, text, inner, dec)
            return
        if _skip_ws(text, end) < len(text):
            yield from _jsonl(path)
            return
        keys = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        # {"data": [...], "version": ...}, but not one record whose list holds its messages
        if len(keys) == 1 and len(obj) <= 3 and detect(obj) is None and not {"role", "from"} & obj[keys[0]][0].keys():
            yield from _array(src, text, _member_array(text, pos, dec, keys[0]), dec)
        else:
            yield _checked(src, 1, obj, text, pos, end)
        return
    if _line_alone(text, pos):  # JSON Lines whose first record is an array: not one array of records
        yield from _jsonl(path)
        return
    yield from _array(src, text, pos, dec)


def _array(src: str, text: str, pos: int, dec: json.JSONDecoder) -> Iterator[Raw]:
    """Items of the JSON array that opens at `pos`, each with the line it starts on."""
    # Decode item by item so a truncated array still yields every complete record.
    pos, line, counted = pos + 1, 1, 0
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            detail = f"JSON array breaks here ({e.msg}); the file may be truncated. Records before this line were read"
            yield Raw(src, line, Problem("malformed_json", detail, _shown(text[pos : pos + RAW_KEEP])))
            return
        except Unreadable as e:
            yield Raw(src, line, Problem(e.reason, f"record {e.detail}", _shown(text[pos : pos + RAW_KEEP])))
            end = skip_value(text, pos)
            if end is None:  # it never closes: nothing after it can be read as records
                return
        else:
            yield _checked(src, line, item, text, pos, end)
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            yield Raw(src, line, Problem("malformed_json", "JSON array is missing a ',' or the closing ']'", _shown(text[pos : pos + RAW_KEEP])))
            return


def _checked(src: str, line: int, item: object, text: str, start: int, end: int) -> Raw:
    """The item, or a bad_encoding problem when its text held bytes that are not UTF-8."""
    if _ESCAPED.search(text, start, end) is None:
        if not lone_surrogate(item, text, start, end):
            return Raw(src, line, item)
        return Raw(src, line, Problem("bad_encoding", f"record {LONE_SURROGATE}", _shown(text[start : start + RAW_KEEP])))
    return Raw(src, line, Problem("bad_encoding", "record is not valid UTF-8; re-save the file as UTF-8", _shown(text[start : start + RAW_KEEP])))


def _shown(text: str) -> str:
    """Text for rejects.jsonl: bytes that were not UTF-8 shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _looks_like_lines(text: str) -> bool:
    """JSON Lines: the first or second non-blank line is a JSON value on its own."""
    for line in [x for x in text.split("\n", 8) if x.strip()][:2]:
        try:
            loads(line)
            return True
        except Unreadable:  # a record json cannot read, on a line of its own
            return True
        except ValueError:
            continue
    return False


def _line_alone(text: str, pos: int) -> bool:
    """Whether the line at `pos` is a JSON value on its own with more text after it (JSON
    Lines), so that reading the file as one array would drop every line after the first."""
    nl = text.find("\n", pos)
    if nl < 0 or _skip_ws(text, nl) == len(text):
        return False
    try:
        loads(text[pos:nl])
    except Unreadable:
        return True  # a record of its own that json cannot read (a reject), not an opening bracket
    except ValueError:
        return False
    return True


def _member_array(text: str, pos: int, dec: json.JSONDecoder, key: str | None = None) -> int | None:
    """Where the array value of member `key` of the object at `pos` opens; with no key,
    the array member where the text stops parsing (a file cut short, a record too deep), if any."""
    pos = _skip_ws(text, pos + 1)
    try:
        while text[pos : pos + 1] == '"':
            name, pos = dec.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                return None
            start = pos = _skip_ws(text, pos + 1)
            if name == key and text[pos : pos + 1] == "[":
                return pos
            try:
                _, pos = dec.raw_decode(text, pos)
            except (json.JSONDecodeError, Unreadable):
                return start if key is None and text[start : start + 1] == "[" else None
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
    except json.JSONDecodeError:
        pass
    return None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv(path: Path) -> Iterator[Raw]:
    src = str(path)
    csv.field_size_limit(sys.maxsize)  # one long answer must not abort the file
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # surrogateescape: a bad byte becomes a marker we can reject per row instead of an
    # exception that would end the whole file.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty (no header row)")
        header = [h.strip() for h in header]
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield Raw(src, start, Problem("malformed_csv", f"CSV row cannot be parsed: {e}", ""))
                continue
            if not any(cell.strip() for cell in row):
                continue
            joined = "\x1f".join(row)
            if any("\udc80" <= ch <= "\udcff" for ch in joined):
                shown = joined.encode("utf-8", "surrogateescape")[:RAW_KEEP].decode("utf-8", "replace")
                yield Raw(src, start, Problem("bad_encoding", "row is not valid UTF-8; re-save the file as UTF-8", shown))
            elif len(row) != len(header):
                detail = f"row has {len(row)} fields but the header has {len(header)}; a quote or separator is off"
                yield Raw(src, start, Problem("malformed_csv", detail, delimiter.join(row)[:RAW_KEEP]))
            else:
                yield Raw(src, start, dict(zip(header, row)))


def _table_rows(src: str, batches) -> Iterator[Raw]:
    n, batches = 0, iter(batches)
    while True:
        try:
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except Exception as e:  # pyarrow raises OSError, ArrowInvalid ... for a damaged page
            raise DataError(f"{src} is damaged: rows from {n + 1} on cannot be read ({e}). "
                            "Export it again, or convert the readable part to JSONL and point data.train at that") from None
        if batch is None:
            return
        for row in rows:
            n += 1
            yield Raw(src, n, row)


def _parquet(path: Path) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path} is not a readable Parquet file: {e}") from None
    yield from _table_rows(str(path), pf.iter_batches(batch_size=1024))


def _arrow_batches(path: Path):
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except Exception:
        try:
            f = pa.ipc.open_file(pa.memory_map(str(path)))
        except Exception as e:
            raise DataError(f"{path} is not a readable Arrow file: {e}") from None
        return (f.get_batch(i) for i in range(f.num_record_batches))
    return reader


def _arrow(path: Path) -> Iterator[Raw]:
    yield from _table_rows(str(path), _arrow_batches(path))


def _saved_dataset(root: Path, notes: list[str]) -> Iterator[Raw]:
    """A folder written by `datasets.Dataset.save_to_disk`: state.json lists its Arrow files."""
    state = _manifest(root / "state.json")
    files = [root / f["filename"] for f in state.get("_data_files", []) if isinstance(f, dict) and "filename" in f]
    if not files:
        raise DataError(f"{root}/state.json lists no data files; is the dataset folder complete?")
    notes.append(f"{root.name}: dataset saved with save_to_disk ({len(files)} Arrow file(s))")
    for p in files:
        if not p.is_file():
            raise DataError(f"{p} is listed in {root}/state.json but missing")
        yield from _arrow(p)


def _manifest(path: Path) -> dict:
    """A `datasets` folder's JSON description (dataset_dict.json, state.json)."""
    try:
        value = loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and Unreadable are ValueErrors
        raise DataError(f"{path} cannot be read ({e}); it describes a saved dataset: save it again, "
                        "or move it away and point data.train at the data files") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a JSON object; it describes a saved dataset: save it again, "
                        "or move it away and point data.train at the data files")
    return value


def _text(path: Path) -> Iterator[Raw]:
    text = _decode(path.read_bytes())
    if text is None:
        yield Raw(str(path), 1, Problem("bad_encoding", "document is not valid UTF-8; re-save it as UTF-8", ""))
    elif text.strip():
        yield Raw(str(path), 1, {"text": text})
