"""Progress for long work: a live line on a terminal, a log line now and then otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts ``total`` units of work and reports them on ``stream``.

    On a terminal it redraws one line with a bar, the count, the rate-based time left and a
    caller's note; elsewhere (logs, CI) it writes a plain line at most every ``interval``
    seconds and at the end, so logs stay short.
    """

    def __init__(
        self,
        total: int,
        *,
        label: str,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._start = time.monotonic()
        self._last_line = 0.0
        self._live = self.stream.isatty()

    def advance(self, units: int = 1, *, note: str = "") -> None:
        self.done = min(self.done + units, self.total)
        now = time.monotonic()
        finished = self.done == self.total
        if self._live:
            self._draw(note, end="\n" if finished else "")
        elif finished or now - self._last_line >= self.interval:
            self._last_line = now
            self.stream.write(f"{self.label}: {self._status()} {note}".rstrip() + "\n")
            self.stream.flush()

    def _status(self) -> str:
        elapsed = time.monotonic() - self._start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return f"{self.done}/{self.total} [{elapsed:.0f}s elapsed, ~{left:.0f}s left]"

    def _draw(self, note: str, *, end: str) -> None:
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r\x1b[2K{self.label} [{bar}] {self._status()} {note}".rstrip() + end)
        self.stream.flush()
