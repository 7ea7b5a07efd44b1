"""Writing the report's sections out: report.html (figures embedded) and report.md (the
same text, figures referred to). Both renderers live here so that the block vocabulary
report.py builds (p, list, table, img, details, example) is interpreted in one place.

report.html is one self-contained file: figures are base64 PNGs, the style is inline, and
its Content-Security-Policy forbids loading anything else, so it opens the same offline, from
an e-mail attachment or from a CI artefact. Every string from the run (answers, questions,
file names, config) is escaped: a model's answer is data, never markup.
"""

from __future__ import annotations

import base64
import html

# default-src 'none': no script, font, frame or fetch; images only from data: URLs.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#1b1b1b}"
    ".verdict{font-size:1.2rem;font-weight:600;border-left:4px solid #2b6cb0;padding:.4rem .8rem;background:#eef4fb}"
    "table{border-collapse:collapse;margin:.8rem 0;font-size:.92rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}.scroll{overflow-x:auto}"
    "figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{font-size:.88rem;color:#555}"
    "pre,.answer{white-space:pre-wrap;word-break:break-word}pre{background:#f6f6f6;padding:.6rem;font-size:.85rem}"
    ".example{border-top:1px solid #ddd;padding:.4rem 0}dt{font-weight:600}dd{margin:0 0 .5rem 1rem}"
)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _block(b: dict) -> str:
    kind = b["kind"]
    if kind == "p":
        return f"<p>{_e(b['text'])}</p>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b["items"]) + "</ul>"
    if kind == "table":
        head = "".join(f"<th>{_e(h)}</th>" for h in b["head"])
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in b["rows"])
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if kind == "img":
        src = "data:image/png;base64," + base64.b64encode(b["png"]).decode()
        return f'<figure><img alt="{_e(b["alt"])}" src="{src}"><figcaption>{_e(b["caption"])}</figcaption></figure>'
    if kind == "details":
        return f"<details><summary>{_e(b['summary'])}</summary><pre>{_e(b['text'])}</pre></details>"
    if kind == "example":
        answers = "".join(f"<dt>{_e(who)}{f' ({_e(mark)})' if mark else ''}</dt><dd class=\"answer\">{_e(text)}</dd>"
                          for who, mark, text in b["answers"])
        return (f'<div class="example"><p><strong>Q:</strong> {_e(b["question"])}</p>'
                f"<p><em>reference:</em> {_e(b['reference'])}</p><dl>{answers}</dl></div>")
    raise AssertionError(f"unknown report block {kind!r}")


def render_html(title: str, lines: list[str], sections: list[tuple[str, list[dict]]]) -> str:
    """The whole report as one HTML page: the headline lines (verdict first), then each section."""
    verdict, bullets = (lines[0] if lines else ""), [x[2:] for x in lines[1:] if x.startswith("- ")]
    body = [f"<h1>{_e(title)}</h1>", f'<p class="verdict">{_e(verdict)}</p>']
    body += ["<ul>" + "".join(f"<li>{_e(x)}</li>" for x in bullets) + "</ul>"] if bullets else []
    for name, blocks in sections:
        body.append(f"<section><h2>{_e(name)}</h2>" + "".join(_block(b) for b in blocks) + "</section>")
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # or the browser asks for /favicon.ico and logs a failure
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_md(title: str, lines: list[str], sections: list[tuple[str, list[dict]]]) -> str:
    """Markdown with the same content as the HTML; figures are named, not drawn."""
    md = [f"# {title}", ""] + lines + [""]
    for name, blocks in sections:
        md += [f"## {name}", ""]
        for b in blocks:
            if b["kind"] == "p":
                md += [b["text"], ""]
            elif b["kind"] == "list":
                md += [f"- {x}" for x in b["items"]] + [""]
            elif b["kind"] == "table":
                md += ["| " + " | ".join(map(_cell, b["head"])) + " |", "|" + "---|" * len(b["head"])]
                md += ["| " + " | ".join(map(_cell, r)) + " |" for r in b["rows"]] + [""]
            elif b["kind"] == "img":
                md += [f"*Figure in report.html: {b['caption']}*", ""]
            elif b["kind"] == "details":
                md += [f"<details><summary>{b['summary']}</summary>", "", "```yaml", b["text"].rstrip("\n"), "```", "",
                       "</details>", ""]
            elif b["kind"] == "example":
                md += [f"**Q:** {b['question']}", "", f"*reference:* {b['reference']}", ""]
                md += [f"- {who}" + (f" ({mark})" if mark else "") + f": {text}" for who, mark, text in b["answers"]] + [""]
    return "\n".join(md).rstrip("\n") + "\n"
