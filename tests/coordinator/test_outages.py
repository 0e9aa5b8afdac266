"""How outages are told: once each way, and a partial database outage not once per flap."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.metrics import Metrics
from coordinator.outages import SETTLE_SECONDS, Outages

DOWN = CoordinatorError(ErrorCode.STORE_UNAVAILABLE, "connection refused")
FULL = CoordinatorError(ErrorCode.STORAGE_UNAVAILABLE, "no space left on device")


class Clock:
    """Time that moves when told, and the callbacks due by then."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        self.pending.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [c for at, c in self.pending if at <= self.now]
        self.pending = [(at, c) for at, c in self.pending if at > self.now]
        for callback in due:
            callback()


def _outages() -> tuple[Outages, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    return Outages(metrics, clock=clock, later=clock.later), clock, metrics


def _failing(metrics: Metrics, dependency: str) -> float:
    return metrics.dependency_failing.labels(dependency)._value.get()


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_a_database_outage_ends_once_nothing_is_refused_for_the_settle_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outages, clock, metrics = _outages()
    with caplog.at_level(logging.WARNING, logger="coordinator.outages"):
        assert outages.refused("ShareKeys", DOWN)
        clock.advance(3)
        outages.succeeded("Heartbeat")  # any request: every one reads the database
        assert _failing(metrics, "database") == 1
        clock.advance(SETTLE_SECONDS)
    assert _failing(metrics, "database") == 0
    assert _lines(caplog, "the database is failing") == 1
    assert _lines(caplog, "the database recovered after 3.0s (Heartbeat succeeded") == 1


def test_a_partial_database_outage_is_one_outage_however_it_flaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found with a relay that let one connection through its cut: successes on the
    surviving connection and refusals of new ones alternated, and each alternation logged a
    recovery and a new failure, every 0.5 to 10 s."""
    outages, clock, metrics = _outages()
    with caplog.at_level(logging.WARNING, logger="coordinator.outages"):
        for _ in range(40):
            outages.refused("UploadMaskedInput", DOWN)
            clock.advance(1)
            outages.succeeded("GetUploadStatus")
            clock.advance(SETTLE_SECONDS - 1.5)
        assert _failing(metrics, "database") == 1
        clock.advance(SETTLE_SECONDS)  # the last success, then nothing refused
    assert _lines(caplog, "the database is failing") == 1
    assert _lines(caplog, "the database recovered") == 1
    assert _failing(metrics, "database") == 0


def test_a_storage_outage_ends_at_the_first_success_of_what_it_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outages, clock, metrics = _outages()
    with caplog.at_level(logging.WARNING, logger="coordinator.outages"):
        outages.refused("UploadMaskedInput", FULL)
        outages.succeeded("Heartbeat")  # needs no storage: proves nothing
        assert _failing(metrics, "storage") == 1
        clock.advance(2)
        outages.succeeded("UploadMaskedInput")
    assert _failing(metrics, "storage") == 0
    assert _lines(caplog, "the storage recovered after 2.0s (UploadMaskedInput succeeded)") == 1


def test_other_refusals_are_not_outages() -> None:
    outages, _, metrics = _outages()
    assert not outages.refused("ShareKeys", CoordinatorError(ErrorCode.INVALID_ARGUMENT, "x"))
    assert _failing(metrics, "database") == 0
