"""JSON text the parser itself cannot take: nested too deep, or numbers too long.

`json.loads` recurses once per level: a line nested a few thousand arrays deep raises
RecursionError from inside the parser, and a shallower value that parsed can still fail
later in whatever walks it again (`json.dumps` writing the row back, from a deeper stack).
No record needs many levels (a chat record is 3 deep; tool calls and metadata add a few),
so text nested more than MAX_DEPTH levels is refused before it is parsed: the readers
turn TooDeep into a `too_deep` reject naming the line. Parquet and Arrow need no check
here: pyarrow refuses schemas nested deeper than this itself (Arrow at 64 levels).

An integer of more than 4,300 digits (sys.get_int_max_str_digits()) makes json raise a
plain ValueError, not a JSONDecodeError: the decoders here raise NumberTooLong for it, a
`malformed_json` reject.

The depth is counted on the text with its strings taken out (brackets inside a string are
text), by str and bytes methods and numpy, so checking a line costs a few scans at C
speed, and next to nothing for a line with fewer brackets than the limit.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re

import numpy as np

MAX_DEPTH = 64
"""Levels of arrays and objects a record may nest (Arrow's own limit)."""
TOO_DEEP = (f"is nested more than {MAX_DEPTH} levels deep (arrays or objects inside each other); "
            "no record needs that many: is it generated or corrupted?")

_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]+|[\]}]+', re.S)
_CHUNK = 1 << 23
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[{]}")))


class Unreadable(ValueError):
    """Valid-looking JSON that is not read: `reason` is the reject code, `detail` says why."""

    reason, detail = "malformed_json", ""

    def __init__(self):
        super().__init__(f"JSON {self.detail}")


class TooDeep(Unreadable):
    reason, detail = "too_deep", TOO_DEEP


class NumberTooLong(Unreadable):
    detail = ("holds a number of thousands of digits, more than Python reads "
              "(sys.get_int_max_str_digits()); is it corrupted?")


def too_deep(text: str) -> bool:
    """Whether `text` nests arrays and objects more than MAX_DEPTH levels deep."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # the common case: too few brackets to reach the limit
    # Strings out: escaped backslashes, then escaped quotes; what is left between quotes is
    # a string (an unterminated one runs to the end). bytes methods, not a regex: 5x faster.
    raw = text.encode("utf-8", "surrogatepass")
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = b"".join(raw.split(b'"')[::2]).translate(_STEP, _NOT_BRACKET)  # +1 per opening, -1 per closing
    level = 0
    for i in range(0, len(steps), _CHUNK):  # a 50 MB line of brackets stays a few MB of int32s at a time
        levels = np.cumsum(np.frombuffer(steps, np.int8, min(_CHUNK, len(steps) - i), i), dtype=np.int32) + level
        if levels.max() > MAX_DEPTH:
            return True
        level = int(levels[-1])
    return False


def loads(text: str) -> object:
    """json.loads, raising TooDeep instead of parsing text nested deeper than MAX_DEPTH,
    and NumberTooLong for a number Python does not read."""
    if too_deep(text):
        raise TooDeep()
    return _PLAIN.decode(text)


class _Decoder(json.JSONDecoder):
    def raw_decode(self, s: str, idx: int = 0):
        try:
            return super().raw_decode(s, idx)
        except (json.JSONDecodeError, Unreadable):
            raise
        except ValueError:  # int() refused a literal past sys.get_int_max_str_digits()
            raise NumberTooLong() from None


_PLAIN = _Decoder()


def decoder_for(text: str) -> json.JSONDecoder:
    """A decoder for items of `text`: the standard one when nothing in it nests past the
    limit, else one that raises TooDeep at the level past it (pure Python, so slower, but
    linear: only a file that holds a too-deep record pays for it)."""
    return _PLAIN if not too_deep(text) else _Bounded()


class _Bounded(_Decoder):
    """json's own pure-Python scanner, counting levels as it enters arrays and objects."""

    def __init__(self):
        super().__init__()
        level = 0

        def bounded(parse):
            def enter(s_and_end, *rest):
                nonlocal level
                level += 1
                try:
                    if level > MAX_DEPTH:
                        raise TooDeep
                    return parse(s_and_end, *rest)
                finally:
                    level -= 1
            return enter

        self.parse_object = bounded(json.decoder.JSONObject)
        self.parse_array = bounded(json.decoder.JSONArray)
        self.scan_once = json.scanner.py_make_scanner(self)


_SCALAR = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[-+0-9.eE]+|true|false|null', re.S)


def skip_value(text: str, pos: int) -> int | None:
    """Where the value at `pos` ends, without parsing it; None if it never closes."""
    if text[pos : pos + 1] not in ("[", "{"):
        m = _SCALAR.match(text, pos)
        return m.end() if m else None
    level = 0
    for m in _TOKEN.finditer(text, pos):
        c = text[m.start()]
        if c == '"':
            continue
        if c in "[{":
            level += m.end() - m.start()
        else:
            level -= m.end() - m.start()
            if level <= 0:
                return m.end() + level  # a run of closers may also close what holds the value
    return None
