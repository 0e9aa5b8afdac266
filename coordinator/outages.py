"""Outages of what the service depends on, told once each way instead of once per request.

When the database or the blob storage fails, every agent's next request is refused with
``UNAVAILABLE`` and retried with backoff, so a fleet makes many refusals a second. Logging
each one drowns the log and says nothing new; saying nothing hides the outage. So
:class:`Outages` turns the refusals of one dependency into three kinds of line
(docs/architecture.md, section 6):

- the first refusal: one line at WARNING (the database) or ERROR (the storage: a full or
  read-only disk needs an operator), with the cause;
- while it lasts: one line a minute with the number of requests refused since the last;
- its recovery: one WARNING line saying it recovered, after how long, and how many
  requests were refused in all.

The storage recovers at the first success of a kind of request it had refused. The
database recovers once a request succeeds and nothing is refused for ``SETTLE_SECONDS``
after it: in a partial outage (some pooled connections live on while new ones are refused,
as when the server is at ``max_connections``), successes and refusals interleave, and a
line each way for each would be the flood this module exists to prevent. Any request
counts as a success for the database, since every authenticated one reads it.

The metrics follow the same state: ``fedadamw_dependency_failing{dependency}`` is 1 during
an outage, and ``fedadamw_dependency_refusals_total{dependency}`` counts the requests refused
for it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.metrics import Metrics

__all__ = ["REMINDER_SECONDS", "SETTLE_SECONDS", "Dependency", "Outages"]

log = logging.getLogger(__name__)

REMINDER_SECONDS = 60.0
SETTLE_SECONDS = 5.0
"""How long the database must refuse nothing after a success for its outage to end."""


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
    healthy_since: float | None = None  # the first success after the latest refusal


class Outages:
    """The open outage of each dependency, fed by the service's refusals and successes."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        """``later(delay, callback)`` runs ``callback`` after ``delay`` seconds (by default
        on the running event loop: the service calls in from its handlers)."""
        self.metrics = metrics
        self.clock = clock
        self.later = later or (
            lambda delay, callback: asyncio.get_running_loop().call_later(delay, callback)
        )
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
        outage.healthy_since = None
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
        """A request of ``method`` succeeded: it ends the storage's outage if that refused
        ``method``, and begins to end the database's (``SETTLE_SECONDS``)."""
        now = self.clock()
        for dependency, outage in list(self._open.items()):
            if dependency is Dependency.DATABASE:
                if outage.healthy_since is None:
                    outage.healthy_since = now
                    self.later(SETTLE_SECONDS, functools.partial(self._settle, outage, method, now))
            elif method in outage.methods:
                self._end(dependency, outage, method, now, "")

    def _settle(self, outage: _Outage, method: str, healthy_since: float) -> None:
        """Ends the database's outage if nothing was refused since the success (at
        ``healthy_since``) that scheduled this check; else a later success schedules
        another."""
        if self._open.get(Dependency.DATABASE) is not outage:
            return
        if outage.healthy_since != healthy_since:
            return  # refused since
        self._end(
            Dependency.DATABASE,
            outage,
            method,
            outage.healthy_since,
            f", and nothing was refused in the {SETTLE_SECONDS:.0f}s after",
        )

    def _end(
        self, dependency: Dependency, outage: _Outage, method: str, at: float, settled: str
    ) -> None:
        del self._open[dependency]
        self.metrics.dependency_failing.labels(dependency.value).set(0)
        log.warning(
            "the %s recovered after %.1fs (%s succeeded%s); %d requests were refused",
            dependency.value,
            at - outage.since,
            method,
            settled,
            outage.refused,
        )
