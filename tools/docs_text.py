"""Reading Markdown as prose: the text a reader sees, without code, markers or comments.

Shared by the docs checks (tests/test_docs.py): a placeholder or an unsourced figure inside a
code block is an example, not a statement, and a rendered figure is checked against its source.
"""

from __future__ import annotations

import re
import sys

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
MARKER = re.compile(r"<!-- fig:[^>]+? -->.*?<!-- /fig -->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, the line without fenced code), for lines outside fences."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def prose(line: str) -> str:
    """A line as a reader's statements: rendered figures, HTML comments and code spans removed."""
    line = MARKER.sub(" ", line)
    line = COMMENT.sub(" ", line)
    return CODE_SPAN.sub(" ", line)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each part of a page between headings (the first heading is ""), code
    blocks included in the body but never taken for headings."""
    out, title, body, fenced = [], "", [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            out.append((title, "\n".join(body)))
            title, body = m.group(2), []
        else:
            body.append(line)
    out.append((title, "\n".join(body)))
    return out


def headings(text: str) -> list[str]:
    return [t for t, _ in sections(text) if t]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a README heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def write_or_check(out, text: str, argv: list[str], script: str) -> int:
    """The generated pages' command line: write `text` to `out`, or with --check exit 1 when the
    committed page differs from it (stale)."""
    root = out.parents[2]
    if "--check" in argv:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print(f"{out.relative_to(root)} is stale: run `python tools/{script}`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out.relative_to(root)}")
    return 0
