"""Progress for long work: a live bar (rate, ETA) in a terminal, plain periodic lines elsewhere.

CI logs and pipes get a line every few seconds instead of a bar redrawn in place.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


class Bar:
    """`with Bar("train", total) as bar: bar.update(n, info="loss 1.2")`."""

    def __init__(self, label: str, total: int, every_s: float = 10.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.done = 0
        self.info = ""
        self._live = sys.stderr.isatty()
        self._last = 0.0
        self._t0 = time.time()

    def __enter__(self) -> "Bar":
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, info="")
        return self

    def update(self, n: int = 1, info: str | None = None) -> None:
        """Advance by `n`; `info` replaces the text beside the bar (None keeps the last)."""
        self.done += n
        self.info = self.info if info is None else info
        if self._live:
            self._progress.update(self._task, advance=n, info=self.info)
            return
        now = time.time()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            elapsed = now - self._t0
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            console.print(f"{self.label}: {self.done}/{self.total} [{elapsed:.0f}s, eta {eta:.0f}s] {self.info}")

    def __exit__(self, *exc) -> None:
        if self._live:
            self._progress.stop()
