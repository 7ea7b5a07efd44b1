"""report.html in a real browser: headless Chromium opens reports built from fake run
folders; every image must load and no console error may be logged. Nothing is injected into
the page, so the page checked is the product's own. A page broken on purpose checks the checker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import Browser, Tab
from test_report import fake_run

from tunekit.eval.report import build_report

IMAGES = "Array.from(document.images, i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))"


def open_page(browser: Browser, path: Path) -> dict:
    """Load `path` in a fresh tab; its images' sizes, console errors, the URLs it requested, script count."""
    tab = Tab(browser, path.resolve().as_uri())
    tab.evaluate("new Promise(done => setTimeout(done, 300))", await_promise=True)  # late console messages
    page = {"images": tab.evaluate(IMAGES), "scripts": tab.evaluate("document.scripts.length"),
            "text": tab.evaluate("document.body.innerText")}
    tab.close()
    return {**page, "errors": tab.errors(), "requests": tab.requests()}


@pytest.mark.parametrize("primary", ["fact_accuracy", "token_f1"])
def test_report_opens_in_chromium_with_every_image_and_no_error(browser, tmp_path, primary):
    run = fake_run(tmp_path, primary)
    build_report(run)
    page = open_page(browser, run / "report.html")
    assert page["errors"] == []
    assert len(page["images"]) == 4, page["images"]
    for img in page["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    assert page["scripts"] == 0 and "<script>alert('x')</script>" in page["text"]  # shown as text, never run
    assert all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]  # self-contained


def test_the_checker_sees_broken_images_and_console_errors(browser, tmp_path):
    page_path = tmp_path / "broken.html"
    page_path.write_text('<!doctype html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
                         '<img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==">'
                         '<img alt="missing" src="missing.png"><script>console.error("planted error")</script>'
                         '<script>throw new Error("planted exception")</script></body></html>')
    page = open_page(browser, page_path)
    assert [(i["alt"], i["width"]) for i in page["images"]] == [("corrupt", 0), ("missing", 0)]
    errors = "\n".join(page["errors"])
    assert "planted error" in errors and "planted exception" in errors and "missing.png" in errors, errors
    assert any("missing.png" in u for u in page["requests"])


def test_the_checker_sees_what_the_report_must_not_load(browser, tmp_path):
    """The report's Content-Security-Policy blocks anything from outside the file, and says so in the console."""
    run = fake_run(tmp_path)
    build_report(run)
    page_path = run / "outside.html"
    page_path.write_text((run / "report.html").read_text().replace("</body>", '<img alt="x" src="https://example.com/x.png"></body>'))
    page = open_page(browser, page_path)
    assert any("Content Security Policy" in e and "example.com" in e for e in page["errors"]), page["errors"]
