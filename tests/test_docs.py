"""The documentation cannot go stale (issue 19): README.md and the guide under docs/.

- every measured figure is rendered from its results file, and names its machine;
- no figure of speed, memory or the demo's verdict is stated without a source;
- no placeholder survives; every file, page and anchor mentioned exists;
- the configuration and command references equal what the code generates;
- troubleshooting lists every error kind, reject reason and API error code;
- `mkdocs build --strict` passes.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import cli_reference  # noqa: E402
import config_reference  # noqa: E402
import docs_capture  # noqa: E402
import docs_figures  # noqa: E402
from docs_text import github_slug, headings, mkdocs_slug, prose, prose_lines, sections  # noqa: E402

PAGES = docs_figures.doc_files()


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# --- figures ---------------------------------------------------------------------------------

def test_every_stated_figure_equals_its_source():
    assert docs_figures.stale() == [], "run `make docs-figures`"


def test_every_figure_names_the_machine_it_was_measured_on():
    """A section (the text between two headings) that states a figure also names, with a
    machine marker, the machine that figure's source was measured on."""
    r = docs_figures.Renderer()
    missing = []
    for page in PAGES:
        for title, body in sections(page.read_text(encoding="utf-8")):
            found = [m["key"] for m in docs_figures.MARKER.finditer(body)]
            named = {r.render(k) for k in found if docs_figures.parse_key(k)[1] == "machine"}
            for key in found:
                source = docs_figures.parse_key(key)[0]
                if r.source(source).machine not in named:
                    missing.append(f"{_rel(page)} § {title or '(top)'}: fig:{key} without "
                                   f"<!-- fig:{source}:machine --> in the section")
    assert missing == []


def test_every_results_file_names_its_machine():
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        assert docs_figures.load_source(path.stem).machine
    for name in docs_figures.EXAMPLES:
        assert docs_figures.load_source(name).machine


def test_a_machine_without_a_name_is_labelled_from_what_was_recorded():
    assert docs_figures.derived_machine({"cpu": "AMD EPYC", "cores": 2, "avx512_bf16": True, "amx": False}) == \
        "2-core AMD EPYC (AVX512-BF16, no AMX)"
    assert docs_figures.derived_machine({"processor": "AMD EPYC", "cores": 2, "cpu_capability": "AVX2"}) == \
        "2-core AMD EPYC (AVX2)"
    assert docs_figures.derived_machine({"cpu": "AMD EPYC"}) is None  # how many cores: not recorded


def _site(tmp_path: Path, stated: str, key: str = "bench:speed.tokens_per_s num:0") -> Path:
    """A repository in miniature: one results file and a README stating one figure from it."""
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench" / "results" / "bench.json").write_text(json.dumps(
        {"machine": {"name": "a test box"}, "speed": {"tokens_per_s": 486.6}, "runs": [{"s": 1.5}, {"s": 2.25}]}))
    (tmp_path / "README.md").write_text(f"On <!-- fig:bench:machine -->a test box<!-- /fig -->: "
                                        f"<!-- fig:{key} -->{stated}<!-- /fig --> tokens/s.\n")
    return tmp_path


def test_a_figure_that_differs_from_its_source_is_reported_and_rerendered(tmp_path):
    root = _site(tmp_path, "490")
    assert [line.split(": ", 1)[1] for line in docs_figures.stale(root)] == [
        "states '490', its source gives '487' (fig:bench:speed.tokens_per_s num:0)"]
    assert docs_figures.render_all(root) == [root / "README.md"]
    assert docs_figures.stale(root) == []
    assert "-->487<!--" in (root / "README.md").read_text()


@pytest.mark.parametrize("key, why", [
    ("bench:speed.tokens_per_ss num:0", "no key 'tokens_per_ss'"),
    ("nosuch:speed num:0", "unknown source 'nosuch'"),
    ("bench:speed.tokens_per_s", "no FORMAT"),
    ("bench:runs[s=9].s num:0", "no item has s=9"),
    ("bench:runs.*.s num:0", "reduce it first"),
])
def test_a_marker_that_cannot_be_rendered_is_reported(tmp_path, key, why):
    [line] = docs_figures.stale(_site(tmp_path, "1", key))
    assert why in line


def test_formats_round_half_up_as_a_reader_does():
    r = docs_figures.render_value
    assert [r(126.5, "num:0"), r(0.965, "x:2"), r(0.536, "pct:1"), r(0.277, "pts:1"), r(-0.0001, "pts:1")] == [
        "127", "0.97x", "53.6%", "+27.7", "+0.0"]
    assert [r(489, "mmss"), r(3412, "num:0"), r([391.4, 445.9, 442.0], "range num:0"), r([1, 3], "median num:1")] == [
        "8 m 09 s", "3,412", "391-446", "2.0"]
    assert r(False, "choice:flags_it/does_not_flag_it") == "does not flag it"


def test_capture_keeps_a_run_s_results_for_the_docs(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "support-demo"
    (run / "eval").mkdir(parents=True)
    (run / ".stages").mkdir()
    (run / "eval" / "scores.json").write_text(json.dumps(
        {"questions": 166, "forgetting": {"kept": 0.8, "questions": [{"id": 1}]}}))
    (run / "train_state.json").write_text(json.dumps(
        {"tokens_per_s": 500.0, "precision_reason": "auto: measured bf16 395 vs fp32 175 GFLOP/s (2.25x)"}))
    (run / ".stages" / "train.json").write_text(json.dumps({"hash": "x", "seconds": 300.2}))
    monkeypatch.setattr(docs_capture, "ROOT", tmp_path)
    assert docs_capture.main([str(run), "--machine", "a test box", "--wall-seconds", "480"]) == 0
    out = tmp_path / "examples" / "support" / "expected"
    timing = json.loads((out / "timing.json").read_text())
    assert (timing["machine"], timing["stages"], timing["bf16_over_fp32_matmul"]) == ("a test box", {"train": 300.2}, 2.25)
    assert json.loads((out / "scores.json").read_text())["forgetting"] == {"kept": 0.8}  # per-question lists left out
    src = docs_figures.load_source("demo", tmp_path)
    assert (src.machine, docs_figures.resolve(src.data, "train_state.tokens_per_s")) == ("a test box", 500.0)


# --- statements without a source ------------------------------------------------------------

# A figure of speed, memory or a score: a spaced unit, a duration, a decimal ratio, a decimal
# percentage. Settings and constants go in code spans (`1.25`), where this does not look.
MEASURED = re.compile(r"\b\d[\d,.]*(?:-\d[\d,.]*)?\s*(?:tokens/s|GFLOP/s|MB|GB|MiB|GiB)\b"
                      r"|\b\d+ m \d{1,2} s\b|\b\d[\d,.]*(?:-\d[\d,.]*)? s\b|\b\d+\.\d+x\b|\b\d+\.\d%")

# Figures README.md states without a results file, by section: history and one-off
# measurements the README shrink (lead, issue 19) removes, or a results file comes to back.
# An entry that no longer occurs fails too, so this list only shrinks.
# Figures the README states without a results file behind them, by section: none. An entry here
# must name a figure the README really states (the test below fails on a stale one).
README_UNSOURCED: dict[str, list[str]] = {}


def _unsourced(page: Path) -> dict[str, list[str]]:
    """{section: [figure text]} for each figure-like statement outside markers and code."""
    out: dict[str, list[str]] = {}
    for title, body in sections(page.read_text(encoding="utf-8")):
        for _, line in prose_lines(body):
            out.setdefault(title, []).extend(MEASURED.findall(prose(line)))
    return {k: v for k, v in out.items() if v}


def test_the_guide_states_no_measured_figure_without_its_source():
    found = {f"{_rel(p)} § {t}": v for p in PAGES if p.parent != ROOT for t, v in _unsourced(p).items()}
    assert found == {}, "render these from a results file (tools/docs_figures.py) or drop them"


def test_the_readme_states_no_new_figure_without_its_source():
    found = _unsourced(ROOT / "README.md")
    new = {t: [v for v in vs if v not in README_UNSOURCED.get(t, [])] for t, vs in found.items()}
    assert {t: v for t, v in new.items() if v} == {}, "render these from a results file (tools/docs_figures.py)"
    gone = {t: [v for v in vs if v not in found.get(t, [])] for t, vs in README_UNSOURCED.items()}
    assert {t: v for t, v in gone.items() if v} == {}, "no longer stated: delete them from README_UNSOURCED"


# --- placeholders ---------------------------------------------------------------------------

# All-capital words a reader may meet in prose: signal names, a vendor, Modelfile instructions.
ACRONYMS = {"README", "NVIDIA", "SIGINT", "SIGKILL", "SIGTERM", "SYSTEM", "TEMPLATE"}
PLACEHOLDER = re.compile(r"\b[A-Z_]{6,}\b|\b(?:TODO|FIXME|TBD|XXX)\b")
LINK_TARGET = re.compile(r"\]\([^)]*\)")


def _code_words() -> set[str]:
    """All-capital identifiers the code itself uses (environment variables, constants): in prose
    they name something real, unlike a placeholder nobody filled in."""
    words: set[str] = set()
    for pattern in ("tunekit/**/*.py", "bench/*.py", "tests/**/*.py", "tools/*.py", "Makefile"):
        for path in ROOT.glob(pattern):
            if path.name != "test_docs.py":
                words |= set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    return words


def test_no_placeholder_survives():
    known = ACRONYMS | _code_words()
    found = [f"{_rel(p)}:{n}: {w}" for p in PAGES for n, line in prose_lines(p.read_text(encoding="utf-8"))
             for w in PLACEHOLDER.findall(LINK_TARGET.sub("]", prose(line))) if w not in known]
    assert found == []


def test_the_placeholder_check_finds_one():
    line = "The plan takes PLAN_NUMBERS; set `TUNEKIT_HOME` or TUNEKIT_HOME; SIGTERM stops it."
    assert [w for w in PLACEHOLDER.findall(prose(line)) if w not in ACRONYMS | _code_words()] == ["PLAN_NUMBERS"]


# --- references -----------------------------------------------------------------------------

# Paths the docs name that a command writes rather than the repository holds.
WRITTEN = {"bench/results/gpu_smoke.json": "bench/gpu_smoke.py writes it on a GPU machine"}
TOP = ("bench", "docs", "examples", "tests", "tools", "tunekit")
REPO_PATH = re.compile(r"(?<![\w./$~-])((?:%s)/[\w./-]*[\w/])" % "|".join(TOP))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_every_repository_path_mentioned_exists():
    dead = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for path in REPO_PATH.findall(docs_figures.MARKER.sub(" ", line)):
                if any(c in path for c in "<*{") or path in WRITTEN:
                    continue
                if not (ROOT / path).exists():
                    dead.append(f"{_rel(page)}:{n}: {path}")
    assert dead == []


def _anchors(page: Path) -> set[str]:
    slug = github_slug if page.parent == ROOT else mkdocs_slug
    return {slug(h) for h in headings(page.read_text(encoding="utf-8"))}


def test_every_link_and_anchor_exists():
    dead = []
    for page in PAGES:
        for n, line in prose_lines(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists():
                    dead.append(f"{_rel(page)}:{n}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    dead.append(f"{_rel(page)}:{n}: {target} (no such section)")
    assert dead == []


def test_the_guide_links_no_page_outside_docs():
    """MkDocs publishes docs/ alone: a link out of it works on GitHub and breaks on the site."""
    docs = ROOT / "docs"
    out = [f"{_rel(p)}: {t}" for p in docs.rglob("*.md") for t in LINK.findall(p.read_text(encoding="utf-8"))
           if not re.match(r"[a-z]+:", t) and t.split("#")[0] and docs not in (p.parent / t.split("#")[0]).resolve().parents]
    assert out == []


# --- generated references and lists the code owns -------------------------------------------

def test_the_config_reference_is_generated_from_the_config_models():
    page = config_reference.OUT.read_text(encoding="utf-8")
    assert page == config_reference.generate(), "run `make docs-figures` (tools/config_reference.py)"


def test_every_config_key_says_what_it_does():
    rows = [r for r in config_reference.generate().splitlines() if r.startswith("| `")]
    assert rows and [r.split(" | ")[0] for r in rows if r.rstrip().endswith("|  |")] == []


def test_the_command_reference_is_generated_from_the_parser():
    page = cli_reference.OUT.read_text(encoding="utf-8")
    assert page == cli_reference.generate(), "run `make docs-figures` (tools/cli_reference.py)"


def test_troubleshooting_lists_every_error_kind_and_reject_reason():
    from tunekit import errors
    from tunekit.data.records import REASONS

    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    kinds = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.TunekitError)
             and c is not errors.TunekitError]
    assert [c.__name__ for c in kinds if f"`{c.kind}` | `{c.__name__}`" not in page] == []
    assert [r for r in REASONS if f"| `{r}` |" not in page] == []


def _serve_codes() -> set[str]:
    """Every `error.code` tunekit serve answers with, read from its source."""
    codes = set()
    for path in (ROOT / "tunekit" / "serve").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r'\bcode="([a-z_-]+)"', text))
        codes |= set(re.findall(r'\b_error\("([a-z_-]+)"', text))
        codes |= {w.replace(" ", "_") + "_not_found" for w in re.findall(r'\bnot_found\("([a-z -]+)"', text)}
        for table in re.findall(r"code_for = \{(.*?)\}", text, re.S):
            codes |= set(re.findall(r':\s*"([a-z_]+)"', table))
        for param in re.findall(r'_error\(f"invalid_\{param\}"', text):
            codes |= {"invalid_training_file", "invalid_validation_file"}
    return codes


def test_the_service_page_lists_every_api_error_code():
    page = (ROOT / "docs" / "guide" / "serve.md").read_text(encoding="utf-8")
    codes = _serve_codes()
    assert "queue_full" in codes
    assert sorted(c for c in codes if f"`{c}`" not in page) == []


def _serve_routes() -> set[str]:
    """`METHOD /v1/path` of every route tunekit serve defines, read from its source."""
    routes = set()
    for path in (ROOT / "tunekit" / "serve").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        routes |= {f"{m.upper()} /v1{p}" for m, p in re.findall(r'@r\.(get|post|delete)\("([^"]+)"', text)}
        routes |= {f"{m.upper()} {p}" for m, p in re.findall(r'@app\.(get|post|delete)\("(/v1/[^"]+)"', text)}
        actions = re.findall(r'for action in \(([^)]*)\)', text)
        for p, methods in re.findall(r'add_api_route\(f"([^"]+)".*?methods=\["([A-Z]+)"', text):
            for action in re.findall(r'"(\w+)"', actions[0] if actions else ""):
                routes.add(f"{methods} /v1{p.replace('{{', '{').replace('}}', '}').replace('{action}', action)}")
    return {re.sub(r"\{[^}]*\}", "{}", r) for r in routes}


def test_the_service_page_lists_every_endpoint():
    page = (ROOT / "docs" / "guide" / "serve.md").read_text(encoding="utf-8")
    listed = {re.sub(r"\{[^}]*\}", "{}", m) for m in re.findall(r"`((?:GET|POST|DELETE) /v1/[^`]*)`", page)}
    routes = _serve_routes()
    assert "POST /v1/fine_tuning/jobs/{}/cancel" in routes
    assert sorted(routes - listed) == []


def test_the_python_api_page_lists_every_public_function():
    tree = ast.parse((ROOT / "tunekit" / "api.py").read_text(encoding="utf-8"))
    public = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    page = (ROOT / "docs" / "guide" / "python-api.md").read_text(encoding="utf-8")
    assert public and [f for f in public if f"`api.{f}(" not in page] == []


# --- the site -------------------------------------------------------------------------------

def test_the_guide_builds_with_mkdocs_strict(tmp_path):
    """Broken links, missing anchors and pages left out of the nav fail the build (mkdocs.yml)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
