"""Progress of the agent's long steps: downloads, local training and uploads.

On a terminal it redraws one line per stage; otherwise it logs when a stage starts and
ends, and at most every ``interval`` seconds in between, so service logs stay short.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

__all__ = ["StageProgress"]

log = logging.getLogger("edge_client.progress")


class StageProgress:
    def __init__(self, *, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def step(self, done: int, total: int) -> None:
        """A local training step finished (called from the training thread)."""
        self.update("training", done, total, unit="steps")

    def transfer(self, what: str, done: int, total: int) -> None:
        """Bytes downloaded, or chunks uploaded."""
        self.update(what, done, total, unit="bytes" if what == "download" else "chunks")

    def update(self, stage: str, done: int, total: int, *, unit: str) -> None:
        with self._lock:
            finished = total > 0 and done >= total
            if self.live:
                share = done / total if total else 1.0
                bar = "#" * int(24 * share) + "-" * (24 - int(24 * share))
                end = "\n" if finished else ""
                self.stream.write(f"\r\x1b[2K{stage:9} [{bar}] {done}/{total} {unit}{end}")
                self.stream.flush()
                return
            now = time.monotonic()
            first = stage not in self._last
            if first or finished or now - self._last[stage] >= self.interval:
                self._last[stage] = now
                log.info("%s: %d/%d %s", stage, done, total, unit)
            if finished:
                self._last.pop(stage, None)
