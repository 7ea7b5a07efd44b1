"""report.html in a real browser: headless Chromium opens reports built from fake run
folders; every image must load and no console error may be logged.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (it reads
commands on fd 3 and writes replies and events on fd 4, each a JSON message ended by a NUL):
the standard library is enough, no port is opened, and nothing is injected into the page,
so the page checked is the product's own. A page broken on purpose checks the checker.

Chromium is installed by `make test` (see the Makefile); without it these tests fail, they
do not skip: a report that no browser has opened is not known to work.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_report import fake_run

from tunekit.eval.report import build_report

TIMEOUT = 60.0  # seconds for any one reply; a cold start on a busy 2-core machine takes a few
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB; Chromium then crashes on big pages
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-sync", "--disable-component-update", "--mute-audio", "--remote-debugging-pipe",
]


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium not found: the report's browser test needs it. `make test` installs it on Debian as root "
                "(apt-get install chromium); elsewhere install Chromium, or point CHROMIUM at its binary.")


_SHIM = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
         "os.execv(sys.argv[3], sys.argv[3:])")


class Browser:
    """Just enough of the DevTools protocol: numbered commands, and the events seen meanwhile."""

    def __init__(self, exe: str, profile: Path, log: Path):
        to_chrome, from_chrome = os.pipe(), os.pipe()
        # Chromium wants the pipe on fds 3 and 4 exactly; a small Python shim puts it there and
        # execs Chromium (dash's redirections take single-digit fds only, and preexec_fn is not
        # safe with threads). Copies above 9 first, so one dup2 cannot overwrite the other's source.
        ours = [fcntl.fcntl(to_chrome[0], fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome[1], fcntl.F_DUPFD, 10)]
        for fd in (to_chrome[0], from_chrome[1]):
            os.close(fd)
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SHIM, *map(str, ours), exe, f"--user-data-dir={profile}", *FLAGS, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=ours)
        for fd in ours:
            os.close(fd)
        self._out, self._in = to_chrome[1], from_chrome[0]
        self._buf, self._id = b"", 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {TIMEOUT:.0f} s; its log:\n{self.log_text()}")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()}); its log:\n{self.log_text()}")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._out, self._in):
            os.close(fd)
        self._log.close()


IMAGES = "Array.from(document.images, i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))"


def open_page(browser: Browser, path: Path) -> dict:
    """Load `path` in a fresh tab; its images' sizes, console errors, the URLs it requested, script count."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):  # before navigating: no message is missed
        browser.send(f"{domain}.enable", session=session)
    url = path.resolve().as_uri()
    browser.send("Page.navigate", {"url": url}, session=session)

    def evaluate(expression: str, await_promise: bool = False):
        result = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
                              session=session)
        return result["result"].get("value")

    deadline = time.monotonic() + TIMEOUT
    # The load event waits for every image; "complete" at our URL means this page, not about:blank.
    while True:
        try:
            if evaluate("document.readyState + ' ' + location.href") == f"complete {url}":
                break
        except RuntimeError:  # "execution context was destroyed": asked mid-navigation
            pass
        assert time.monotonic() < deadline, "the page did not finish loading"
        time.sleep(0.05)
    evaluate("new Promise(done => setTimeout(done, 300))", await_promise=True)  # late console messages
    page = {"images": evaluate(IMAGES), "scripts": evaluate("document.scripts.length"), "text": evaluate("document.body.innerText")}
    browser.send("Target.closeTarget", {"targetId": target})
    mine = [e for e in browser.events if e.get("sessionId") == session]
    page["errors"] = _errors(mine)
    page["requests"] = [e["params"]["request"]["url"][:100] for e in mine if e.get("method") == "Network.requestWillBeSent"]
    return page


def _errors(events: list[dict]) -> list[str]:
    """Console errors: console.error/assert calls, uncaught exceptions, and the browser's own
    error entries (a failed load, a blocked resource, a Content-Security-Policy violation)."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(_chromium(), tmp / "profile", tmp / "chromium.log")
    yield b
    b.close()


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
