"""Render every measured figure in README.md and docs/*.md from the results files.

A figure in the docs is a marker around the text it renders to:

    <!-- fig:demo:scores.metrics.fact_accuracy.tuned pct:1 -->53.6%<!-- /fig -->
          │   │    │                                  │
          │   │    │                                  └ format (see FORMATS; no `|`, which
          │   │    │                                    would split a table row)
          │   │    └ path into the source's JSON (dots; a list index; [key=value] keeps the
          │   │      matching list items; `machine` is the source's machine label)
          │   └ source (see SOURCES; every bench/results/<stem>.json is the source <stem>)
          └ a figure

`make docs-figures` rewrites the text between the markers from the sources, so a new
measurement updates every page that states it; tests/test_docs.py fails when a stated
figure differs from what its source renders to, and when a section states a figure
without naming the machine it was measured on (a `machine` marker of that machine).
Markers render in place: GitHub and MkDocs show only the text between them.

    python tools/docs_figures.py                 # render README.md and docs/**/*.md in place
    python tools/docs_figures.py --check         # exit 1 naming each stale figure
    python tools/docs_figures.py capture RUN [--example support] [--wall-seconds S] [--setup-seconds S]
        # replace examples/<example>/expected/ with excerpts of a finished run folder
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from decimal import ROUND_HALF_UP, Decimal
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- fig:(?P<key>[^>]+?) -->(?P<text>.*?)<!-- /fig -->", re.S)

# Results that are not under bench/results/: a finished example run, excerpted by `capture`.
# Each is a folder whose JSON files load as one dict {file stem: content}.
EXAMPLES = {"demo": "examples/support/expected", "tickets": "examples/tickets/expected"}


def doc_files(root: Path = ROOT) -> list[Path]:
    """The pages whose figures are rendered: README.md and every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


@dataclass
class Source:
    name: str
    path: Path
    data: dict

    @property
    def machine(self) -> str:
        """The machine label every figure of this source is stated with ("2-core AMD EPYC (...)")."""
        m = self.data.get("machine")
        if isinstance(m, dict):
            m = m.get("name") or derived_machine(m)
        if not isinstance(m, str) or not m:
            raise FigureError(f"{self.path.relative_to(ROOT)} names no machine: add \"machine\": {{\"name\": "
                              "\"2-core AMD EPYC (AVX512-BF16, no AMX)\", ...}} (a string, or a \"name\" inside its machine object)")
        return m


def derived_machine(m: dict) -> str | None:
    """A label from what a bench script recorded (cpu, cores, ISA flags) when it wrote no name:
    {"cpu": "AMD EPYC", "cores": 2, "avx512_bf16": true, "amx": false} -> "2-core AMD EPYC
    (AVX512-BF16, no AMX)"."""
    cpu = m.get("cpu") or m.get("cpu_model") or m.get("processor")
    cores = m.get("cores") or m.get("cpus")
    if not cpu or not cores:
        return None
    flags = ["AVX512-BF16"] if m.get("avx512_bf16") else [m.get("cpu_capability") or m.get("isa")]
    if "amx" in m:
        flags.append("AMX" if m["amx"] else "no AMX")
    flags = [f for f in flags if f]
    return f"{cores}-core {cpu}" + (f" ({', '.join(flags)})" if flags else "")


class FigureError(Exception):
    """A marker that cannot be rendered: unknown source, path or format."""


def load_source(name: str, root: Path = ROOT) -> Source:
    if name in EXAMPLES:
        folder = root / EXAMPLES[name]
        if not folder.is_dir():
            raise FigureError(f"source {name!r}: {EXAMPLES[name]}/ is missing (python tools/docs_figures.py capture RUN)")
        data = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}
        # The machine of an example run is its timing record's (capture writes it there).
        data["machine"] = data.get("timing", {}).get("machine")
        return Source(name, folder / "timing.json", data)
    path = root / "bench" / "results" / f"{name}.json"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not path.is_file():
        raise FigureError(f"unknown source {name!r}: neither {', '.join(EXAMPLES)} nor bench/results/{name}.json")
    return Source(name, path, json.loads(path.read_text(encoding="utf-8")))


def resolve(data, path: str):
    """The value at `path`: dots between keys, list indices, `[key=value]` filters on lists
    (the matching items, a list), `*` every item; a list maps the rest of the path over itself."""
    if not path:
        return data
    head, _, rest = _split(path)
    filt = re.fullmatch(r"(?P<key>[^\[]*)\[(?P<k>[^=\]]+)=(?P<v>[^\]]*)\]", head)
    if filt:
        items = resolve(data, filt["key"]) if filt["key"] else data
        if not isinstance(items, list):
            raise FigureError(f"{head}: not a list")
        items = [x for x in items if isinstance(x, dict) and _same(x.get(filt["k"]), filt["v"])]
        if not items:
            raise FigureError(f"{head}: no item has {filt['k']}={filt['v']}")
        return [resolve(x, rest) for x in items]
    if head == "*":
        if not isinstance(data, list):
            raise FigureError("*: not a list")
        return [resolve(x, rest) for x in data]
    if isinstance(data, list):
        if not head.lstrip("-").isdigit():
            raise FigureError(f"{head}: a list needs an index, * or [key=value]")
        try:
            return resolve(data[int(head)], rest)
        except IndexError:
            raise FigureError(f"{head}: the list has {len(data)} items") from None
    if not isinstance(data, dict) or head not in data:
        keys = ", ".join(list(data)[:20]) if isinstance(data, dict) else type(data).__name__
        raise FigureError(f"no key {head!r} (there: {keys})")
    return resolve(data[head], rest)


def _split(path: str) -> tuple[str, str, str]:
    """The first segment of a path; dots inside [...] (a filter value like 0.2) do not split."""
    depth = 0
    for i, ch in enumerate(path):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "." and depth == 0:
            return path[:i], ".", path[i + 1:]
    return path, "", ""


def _same(value, text: str) -> bool:
    if isinstance(value, bool) or value is None:
        return str(value).lower() == text.lower()
    if isinstance(value, (int, float)):
        try:
            return float(value) == float(text)
        except ValueError:
            return False
    return str(value) == text


def _num(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FigureError(f"{v!r} is not a number")
    return float(v)


# name -> (what it does, function(value, argument) -> text). A number and the symbol attached
# to it (%, x) are one figure; a spaced unit ("tokens/s", "MB", "s") stays outside the marker.
FORMATS = {
    "pct": ("a share as a percentage: 0.536 -> 53.6% (pct:1)", lambda v, n: _fixed(_num(v) * 100, n) + "%"),
    "hund": ("a share times 100, no sign: 0.44 -> 44 (hund:0)", lambda v, n: _fixed(_num(v) * 100, n)),
    "pts": ("a difference of shares in points, signed: 0.277 -> +27.7 (pts:1)",
            lambda v, n: _signed(_fixed(_num(v) * 100, n))),
    "num": ("a number with thousands separators: 3412 -> 3,412 (num:0)", lambda v, n: _fixed(_num(v), n, ",")),
    "x": ("a ratio: 2.505 -> 2.51x (x:2)", lambda v, n: _fixed(_num(v), n) + "x"),
    "mmss": ("seconds as minutes and seconds: 489 -> 8 m 09 s",
             lambda v, n: "{} m {:02d} s".format(*divmod(int(_fixed(_num(v), "0")), 60))),
    "str": ("the value as it is", lambda v, n: str(v)),
    "yesno": ("true -> yes, false -> no", lambda v, n: "yes" if v else "no"),
    "choice": ("words for true/false, _ for spaces: choice:flags_it/does_not_flag_it",
               lambda v, n: _choice(v, n)),
}


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def _fixed(v: float, places: str, sep: str = "") -> str:
    """`v` rounded half up at its shortest decimal spelling (126.5 -> 127, 0.965 -> 0.97), as a
    reader rounds: float formatting rounds 126.5 to even and 0.965 (0.96499...) down."""
    q = Decimal(repr(v)).quantize(Decimal(1).scaleb(-int(places or 0)), rounding=ROUND_HALF_UP)
    if q == 0:
        q = abs(q)  # no "-0.0"
    return f"{q:{sep}f}"


def _choice(v, arg: str) -> str:
    if not isinstance(v, bool) or arg.count("/") != 1:
        raise FigureError(f"choice:{arg} needs a true/false value and two words split by /")
    return arg.split("/")[0 if v else 1].replace("_", " ")


# Operations that turn a list (a [key=value] filter, *) into one value before the format.
REDUCERS = {"min": min, "max": max, "median": statistics.median, "count": len, "sum": sum}


def render_value(value, spec: str) -> str:
    """`spec` is one format, optionally after a reducer (`median x:2`) or `range` (`range num:0`:
    min-max, each end formatted)."""
    words = spec.split()
    if not words:
        raise FigureError("no format after the path")
    if words[0] == "range":
        if not isinstance(value, list) or not value:
            raise FigureError("range needs a list of values")
        lo, hi = (render_value(v, " ".join(words[1:])) for v in (min(value), max(value)))
        return lo if lo == hi else f"{lo}-{hi}"
    if words[0] in REDUCERS:
        if not isinstance(value, list) or not value:
            raise FigureError(f"{words[0]} needs a list of values")
        return render_value(REDUCERS[words[0]](value), " ".join(words[1:]))
    if len(words) != 1:
        raise FigureError(f"format {spec!r}: one of {', '.join(FORMATS)}, after min/max/median/count/sum/range")
    name, _, arg = words[0].partition(":")
    if name not in FORMATS:
        raise FigureError(f"unknown format {name!r}: one of {', '.join(FORMATS)}")
    if isinstance(value, list) and len(value) == 1:  # a [key=value] filter that matched one item
        value = value[0]
    if isinstance(value, list):
        raise FigureError(f"{name} of a list of {len(value)}: reduce it first (min, max, median, range ...)")
    return FORMATS[name][1](value, arg)


@dataclass
class Figure:
    file: Path
    line: int
    key: str
    stated: str
    source: str
    path: str

    @property
    def is_machine(self) -> bool:
        return self.path == "machine"


def parse_key(key: str) -> tuple[str, str, str]:
    """`source:path format` -> (source, path, format); a machine marker has no format."""
    source, sep, rest = key.partition(":")
    path, _, spec = rest.strip().partition(" ")
    if not sep or not path:
        raise FigureError(f"marker fig:{key}: expected fig:SOURCE:PATH FORMAT")
    if path != "machine" and not spec.strip():
        raise FigureError(f"marker fig:{key}: no FORMAT after the path")
    return source, path, spec


class Renderer:
    """Renders markers, loading each source once."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self.sources: dict[str, Source] = {}

    def source(self, name: str) -> Source:
        if name not in self.sources:
            self.sources[name] = load_source(name, self.root)
        return self.sources[name]

    def render(self, key: str) -> str:
        name, path, spec = parse_key(key)
        src = self.source(name)
        if path == "machine":
            return src.machine
        try:
            return render_value(resolve(src.data, path), spec)
        except FigureError as e:
            raise FigureError(f"fig:{key}: {e} (in {src.path.relative_to(self.root)})") from None

    def render_text(self, text: str) -> str:
        return MARKER.sub(lambda m: f"<!-- fig:{m['key']} -->{self.render(m['key'])}<!-- /fig -->", text)


def figures(path: Path) -> list[Figure]:
    """Every marker in one file, with its line number."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in MARKER.finditer(text):
        try:
            source, fpath, _ = parse_key(m["key"])
        except FigureError:  # reported by `stale`, which renders every marker
            source = fpath = ""
        out.append(Figure(path, text.count("\n", 0, m.start()) + 1, m["key"], m["text"], source, fpath))
    return out


def stale(root: Path = ROOT) -> list[str]:
    """One line per figure whose stated text differs from what its source renders to."""
    r, out = Renderer(root), []
    for path in doc_files(root):
        for f in figures(path):
            try:
                want = r.render(f.key)
            except FigureError as e:
                out.append(f"{path.relative_to(root)}:{f.line}: {e}")
                continue
            if want != f.stated:
                out.append(f"{path.relative_to(root)}:{f.line}: states {f.stated!r}, its source gives {want!r} (fig:{f.key})")
    return out


def render_all(root: Path = ROOT) -> list[Path]:
    """Rewrite every page's figures from their sources; returns the pages that changed."""
    r, changed = Renderer(root), []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        new = r.render_text(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if argv[:1] == ["capture"]:
        from docs_capture import main as capture

        return capture(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report stale figures and change nothing")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        print("\n".join(bad) or "every figure matches its source", file=sys.stderr if bad else sys.stdout)
        return 1 if bad else 0
    try:
        changed = render_all()
    except FigureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in changed:
        print(f"rendered {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
