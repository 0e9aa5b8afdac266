"""``coordinator.datadir``: the start-up wait's backoff, and what the database record keeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.datadir import (
    explain_unavailable,
    recorded_database,
    shown_url,
    while_unreachable,
)
from coordinator.errors import CoordinatorError, ErrorCode, StoreError


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _unavailable() -> StoreError:
    return StoreError(ErrorCode.STORE_UNAVAILABLE, "the database is unavailable: refused")


def test_backoff_doubles_with_jitter_up_to_the_cap_and_stops_at_the_deadline() -> None:
    time = FakeTime()
    attempts = 0

    async def never() -> None:
        nonlocal attempts
        attempts += 1
        raise _unavailable()

    with pytest.raises(StoreError) as caught:
        asyncio.run(
            while_unreachable(
                never, wait=60, clock=time.clock, jitter=lambda: 0.999, sleep=time.sleep
            )
        )
    assert caught.value.code is ErrorCode.STORE_UNAVAILABLE
    assert "--db-wait 60" in str(caught.value)
    assert "refused" in str(caught.value)
    assert sum(time.pauses) == pytest.approx(60)  # never past the deadline
    assert attempts == len(time.pauses) + 1
    delays = [0.5, 1, 2, 4, 8] + [10] * (len(time.pauses) - 5)
    *full, last = time.pauses
    assert full == pytest.approx([d * 0.9995 for d in delays[:-1]])
    assert 0 < last <= delays[-1] * 0.9995


def test_jitter_spreads_the_pauses() -> None:
    time = FakeTime()
    calls = 0

    async def third_time() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _unavailable()
        return "up"

    result = asyncio.run(
        while_unreachable(
            third_time, wait=60, clock=time.clock, jitter=lambda: 0.0, sleep=time.sleep
        )
    )
    assert result == "up"
    assert time.pauses == [0.25, 0.5]


def test_other_errors_and_no_wait_do_not_retry() -> None:
    time = FakeTime()

    async def outdated() -> None:
        raise StoreError(ErrorCode.SCHEMA_OUTDATED, "old schema")

    with pytest.raises(StoreError, match="old schema"):
        asyncio.run(while_unreachable(outdated, wait=60, clock=time.clock, sleep=time.sleep))

    async def down() -> None:
        raise _unavailable()

    with pytest.raises(StoreError, match="gave up after 1 attempt"):
        asyncio.run(while_unreachable(down, wait=0, clock=time.clock, sleep=time.sleep))
    assert time.pauses == []


def test_the_record_url_has_no_password() -> None:
    url = "postgresql+psycopg://fl:secret@db:5433/fl?options=-csearch_path%3Dx&password=also"
    assert shown_url(url) == "postgresql+psycopg://fl@db:5433/fl?options=-csearch_path%3Dx"


def test_a_missing_password_is_explained() -> None:
    failed = StoreError(
        ErrorCode.STORE_UNAVAILABLE, "unavailable: fe_sendauth: no password supplied"
    )
    explained = explain_unavailable(failed, "postgresql+psycopg://fl@db/fl")
    assert "PGPASSWORD" in str(explained)
    assert explain_unavailable(failed, "postgresql+psycopg://fl:pw@db/fl") is failed
    refused = _unavailable()
    assert explain_unavailable(refused, "postgresql+psycopg://fl@db/fl") is refused


def test_a_broken_record_is_a_clear_error(tmp_path: Path) -> None:
    assert recorded_database(tmp_path) is None
    (tmp_path / "database.json").write_text("{not json")
    with pytest.raises(CoordinatorError, match="is not a database record") as caught:
        recorded_database(tmp_path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
