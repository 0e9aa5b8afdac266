"""Outages of what the service depends on, told once each way instead of once per request.

When the database or the blob storage fails, every agent's next request is refused with
``UNAVAILABLE`` and retried with backoff, so a fleet makes many refusals a second. Logging
each one drowns the log and says nothing new; saying nothing hides the outage. So
:class:`Outages` turns the refusals of one dependency into three kinds of line
(docs/architecture.md, section 6):

- the first refusal: one line at WARNING (the database) or ERROR (the storage: a full or
  read-only disk needs an operator), with the cause;
- while it lasts: one line a minute with the number of requests refused since the last;
- the first success of a request that had been refused: one WARNING line saying it
  recovered, after how long, and how many requests were refused in all.

The metrics follow the same state: ``fedadamw_dependency_failing{dependency}`` is 1 during
an outage, and ``fedadamw_dependency_refusals_total{dependency}`` counts the requests refused
for it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.metrics import Metrics

__all__ = ["REMINDER_SECONDS", "Dependency", "Outages"]

log = logging.getLogger(__name__)

REMINDER_SECONDS = 60.0


class Dependency(enum.StrEnum):
    """What the service needs to make progress; each value is its metric label."""

    DATABASE = "database"
    STORAGE = "storage"


_BY_CODE = {
    ErrorCode.STORE_UNAVAILABLE: Dependency.DATABASE,
    ErrorCode.STORAGE_UNAVAILABLE: Dependency.STORAGE,
}
_LEVEL = {Dependency.DATABASE: logging.WARNING, Dependency.STORAGE: logging.ERROR}


@dataclass
class _Outage:
    since: float
    reminded: float
    methods: set[str] = field(default_factory=set)  # the RPCs it refused
    refused: int = 0
    since_reminder: int = 0


class Outages:
    """The open outage of each dependency, fed by the service's refusals and successes."""

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self._open: dict[Dependency, _Outage] = {}
        for dependency in Dependency:
            metrics.dependency_failing.labels(dependency.value).set(0)
            metrics.dependency_refusals.labels(dependency.value)

    def refused(self, method: str, error: CoordinatorError) -> bool:
        """Count a request refused for ``error``; True if it is an outage's (then the caller
        need not log it on its own)."""
        dependency = _BY_CODE.get(error.code)
        if dependency is None:
            return False
        now = self.clock()
        self.metrics.dependency_refusals.labels(dependency.value).inc()
        outage = self._open.get(dependency)
        level = _LEVEL[dependency]
        if outage is None:
            outage = self._open[dependency] = _Outage(since=now, reminded=now)
            self.metrics.dependency_failing.labels(dependency.value).set(1)
            log.log(
                level,
                "the %s is failing: %s refused: %s; agents are told UNAVAILABLE and retry "
                "with backoff until it recovers",
                dependency.value,
                method,
                error.message,
            )
        outage.methods.add(method)
        outage.refused += 1
        outage.since_reminder += 1
        if now - outage.reminded >= REMINDER_SECONDS:
            log.log(
                level,
                "the %s is still failing after %.0fs: %d requests refused in the last %.0fs "
                "(latest: %s: %s)",
                dependency.value,
                now - outage.since,
                outage.since_reminder,
                now - outage.reminded,
                method,
                error.message,
            )
            outage.reminded = now
            outage.since_reminder = 0
        return True

    def succeeded(self, method: str) -> None:
        """A request of ``method`` succeeded: it ends every outage that had refused it."""
        for dependency, outage in list(self._open.items()):
            if method not in outage.methods:
                continue
            del self._open[dependency]
            self.metrics.dependency_failing.labels(dependency.value).set(0)
            log.warning(
                "the %s recovered after %.1fs (%s succeeded); %d requests were refused",
                dependency.value,
                self.clock() - outage.since,
                method,
                outage.refused,
            )
