"""The waiting room says why no round starts: in its gauges at once, in the log once a minute.

In process, on a real SQLite store, with the room's monotonic clock under the test's control.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from coordinator.domain import Client
from coordinator.metrics import Metrics
from coordinator.status import format_status, status_report
from coordinator.waiting_room import NOT_STARTING_INTERVAL, WaitingRoom

from .roundkit import migrated_template, open_sqlite, small_config


def _client(client_id: int) -> Client:
    return Client(
        client_id=client_id,
        identity_key=bytes(32),
        label=f"c{client_id}",
        certificate_pem=b"",
        certificate_serial=client_id,
        enrolled_at=datetime.now(UTC),
    )


def _gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_a_round_that_does_not_start_says_why_at_a_steady_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "template").mkdir()
    store, _ = open_sqlite(migrated_template(tmp_path / "template"), tmp_path / "db")
    metrics = Metrics()
    now = [1000.0]
    room = WaitingRoom(
        store=store,
        config=small_config(cohort=4, min_clients=3),
        metrics=metrics,
        rng=random.Random(0),
        monotonic=lambda: now[0],
    )

    async def scenario() -> tuple[list[int], list[str], float, float, str | None, Any]:
        selection = asyncio.ensure_future(room.select())
        first = asyncio.ensure_future(room.check_in(_client(1), wait=3600))
        await asyncio.sleep(0.05)
        assert _gauge(metrics, "fedadamw_selection_waiting_clients") == 1
        # A minute and more of one agent waiting, seen through three wake-ups.
        for _ in range(3):
            now[0] += NOT_STARTING_INTERVAL / 2 + 1
            room._changed.set()
            await asyncio.sleep(0.05)
        waited = _gauge(metrics, "fedadamw_selection_waiting_seconds")
        reason = room.not_starting
        report = status_report(store)
        noted = report["not_starting"]
        shown = format_status({**report, "model_version": 0, "global_step": 0})
        assert "no round is starting (as of " in shown
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        others = [asyncio.ensure_future(room.check_in(_client(i), wait=3600)) for i in (2, 3, 4)]
        chosen = await asyncio.wait_for(selection, timeout=5)
        room.cancel()
        for waiter in (first, *others):
            waiter.cancel()
        after = _gauge(metrics, "fedadamw_selection_waiting_seconds")
        return chosen, lines, waited, after, reason, noted

    with caplog.at_level(logging.WARNING, logger="coordinator.waiting_room"):
        chosen, lines, waited, after, reason, noted = asyncio.run(scenario())
    after_start = status_report(store)["not_starting"]
    store.close()
    # 93 s of waiting: one line at 62 s (the first after a minute), none at 31 s or 93 s
    assert len(lines) == 1, lines
    assert lines[0].startswith("no round is starting: 1 agent of task 'digits-cnn' waiting for 62s")
    assert "cohort = 4" in lines[0]
    assert "min_clients = 3" in lines[0]
    assert reason is not None
    # the status command shows it while it lasts, and not once the round has started
    assert noted is not None
    assert noted["reason"] == reason
    assert after_start is None
    assert waited == pytest.approx(3 * (NOT_STARTING_INTERVAL / 2 + 1))
    assert sorted(chosen) == [1, 2, 3, 4]
    assert after == 0
    assert room.not_starting is None
