"""Headless Chromium driven through the DevTools protocol over `--remote-debugging-pipe` (it reads
commands on fd 3 and writes replies and events on fd 4, each a JSON message ended by a NUL):
the standard library is enough and no port is opened. Used by the report's and the dashboard's
browser tests.

Chromium is installed by `make test` (see the Makefile); without it those tests fail, they do
not skip: a page that no browser has opened is not known to work.
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

TIMEOUT = 60.0  # seconds for any one reply; a cold start on a busy 2-core machine takes a few
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB; Chromium then crashes on big pages
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-sync", "--disable-component-update", "--mute-audio", "--remote-debugging-pipe",
]


def chromium() -> str:
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


def console_errors(events: list[dict]) -> list[str]:
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


class Tab:
    """One page in a fresh tab: evaluate expressions in it, wait for conditions, then its console errors."""

    def __init__(self, browser: Browser, url: str):
        self.browser, self.url = browser, url
        self.target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):  # before navigating: no message is missed
            browser.send(f"{domain}.enable", session=self.session)
        browser.send("Page.navigate", {"url": url}, session=self.session)
        # The load event waits for every image; "complete" at our URL means this page, not about:blank.
        self.wait_until(f"document.readyState === 'complete' && location.href === {json.dumps(url)}", "the page to load")

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": await_promise}, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(expression):
                    return
            except RuntimeError:  # "execution context was destroyed": asked mid-navigation
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s; the page says:\n{self.evaluate('document.body.innerText')}")
            time.sleep(0.05)

    def events(self) -> list[dict]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        return console_errors(self.events())

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"][:100] for e in self.events() if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
