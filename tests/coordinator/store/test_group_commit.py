"""Group commit (``coordinator.group_commit``) over a real store, on every backend.

Phase messages submitted at once are written in fewer transactions than messages, each
sender's future settles only once its record is committed (another connection sees it),
a record the store refuses fails alone, and a transaction that fails fails every record
in it and tells the round's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from coordinator.domain import RoundPhase
from coordinator.errors import ErrorCode, StoreError
from coordinator.group_commit import GroupCommit
from coordinator.replay import AgentRecord, write_records
from coordinator.store.sql import SqlStore

from .factories import advance_to, keys, start_round

COHORT = 40


def _round(store: SqlStore) -> None:
    start_round(store, "r0", clients=COHORT)
    advance_to(store, "r0", RoundPhase.ADVERTISE_KEYS)


def test_messages_at_once_share_transactions_and_settle_once_committed(
    store: SqlStore, second_store: SqlStore
) -> None:
    _round(store)
    batches: list[int] = []
    settled: list[BaseException | None] = []
    seen_when_settled: list[bool] = []

    def write(records: Sequence[AgentRecord]) -> list[StoreError | None]:
        batches.append(len(records))
        return write_records(records, store)

    async def scenario() -> None:
        queue: GroupCommit[AgentRecord] = GroupCommit(write, on_settled=settled.extend)
        futures = [queue.submit(keys("r0", i)) for i in range(1, COHORT + 1)]
        for i, future in enumerate(futures, start=1):
            await asyncio.shield(future)
            stored = {k.secagg_id for k in second_store.list_advertised_keys("r0")}
            seen_when_settled.append(i in stored)
        await queue.drained()

    asyncio.run(scenario())
    assert sum(batches) == COHORT
    assert len(batches) < COHORT  # the first alone, then what queued while it was written
    assert all(seen_when_settled)
    assert settled == [None] * COHORT


def test_a_refused_record_fails_alone(store: SqlStore) -> None:
    _round(store)
    settled: list[BaseException | None] = []

    async def scenario() -> list[BaseException | None]:
        queue: GroupCommit[AgentRecord] = GroupCommit(
            lambda records: write_records(records, store), on_settled=settled.extend
        )
        futures = [queue.submit(keys("r0", i)) for i in (1, COHORT + 5, 2)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    first, outsider, second = asyncio.run(scenario())
    assert first is None
    assert second is None
    assert isinstance(outsider, StoreError)
    assert outsider.code is ErrorCode.NOT_IN_COHORT
    assert [k.secagg_id for k in store.list_advertised_keys("r0")] == [1, 2]
    assert sum(isinstance(o, StoreError) for o in settled) == 1


def test_a_record_whose_write_fails_unexpectedly_fails_alone(store: SqlStore) -> None:
    """A record no store write exists for (``write_record`` raises TypeError): its sender
    gets the error, the state hears of it, and the records around it are stored."""
    _round(store)
    settled: list[BaseException | None] = []

    async def scenario() -> list[BaseException | None]:
        queue: GroupCommit[object] = GroupCommit(
            lambda records: write_records(records, store),  # type: ignore[arg-type]
            on_settled=settled.extend,
        )
        futures = [queue.submit(r) for r in (keys("r0", 1), object(), keys("r0", 2))]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    first, unknown, second = asyncio.run(scenario())
    assert first is None
    assert second is None
    assert isinstance(unknown, TypeError)
    assert [k.secagg_id for k in store.list_advertised_keys("r0")] == [1, 2]
    assert [type(o) for o in settled] == [type(None), TypeError, type(None)]


def test_a_failed_transaction_fails_every_record_in_it_and_says_so(
    store: SqlStore, pg_unreachable_url: str
) -> None:
    """The database is gone (a port nothing listens on): every sender gets the store's
    error, the round's state is told of each, and the queue drains."""
    _round(store)
    gone = SqlStore(pg_unreachable_url)
    settled: list[BaseException | None] = []

    async def scenario() -> list[BaseException | None]:
        queue: GroupCommit[AgentRecord] = GroupCommit(
            lambda records: write_records(records, gone), on_settled=settled.extend
        )
        futures = [queue.submit(keys("r0", i)) for i in (1, 2, 3)]
        outcomes = list(await asyncio.gather(*futures, return_exceptions=True))
        await asyncio.wait_for(queue.drained(), timeout=5)
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
    finally:
        gone.close()
    assert all(
        isinstance(o, StoreError) and o.code is ErrorCode.STORE_UNAVAILABLE for o in outcomes
    ), outcomes
    assert len(settled) == 3
    assert all(isinstance(o, StoreError) for o in settled)
    assert store.list_advertised_keys("r0") == []


@pytest.fixture
def pg_unreachable_url() -> str:
    from tests.e2e.harness import free_port

    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
