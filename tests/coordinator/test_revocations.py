"""The revoked ids are read once a second and shared, not read per RPC (``coordinator.auth``).

In process, on a real SQLite store that counts its reads and can be told to fail, with the
cache's clock under the test's control. The end-to-end refusal of a revoked client over
mutual TLS, through the ``clients revoke`` command, is in tests/e2e/test_auth.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from coordinator.auth import Revocations
from coordinator.domain import REVOCATION_REFRESH, Client
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.sql import SqlStore

from .roundkit import migrated_template
from .store.factories import at, enroll


class CountingStore(SqlStore):
    """A real store that counts its reads of the revoked ids and can be made to fail them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads = 0
        self.fail = False
        self.hold_first: threading.Event | None = None  # the first read returns once set

    def revoked_client_ids(self) -> frozenset[int]:
        self.reads += 1
        if self.fail:
            raise StoreError(ErrorCode.STORE_UNAVAILABLE, "the database refused the connection")
        ids = super().revoked_client_ids()
        if self.reads == 1 and self.hold_first is not None:
            self.hold_first.wait(30)  # a slow answer, read before the test revokes
        return ids


def _with_one_revoked(store: CountingStore, **options: float) -> tuple[Revocations, Client]:
    """A cache over ``store`` with its clock stopped, and a client revoked in the store."""
    revocations = Revocations(store, clock=lambda: 100.0, **options)
    client = enroll(store, "c")
    store.revoke_client(client.client_id, now=at(10))
    return revocations, client


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    template = migrated_template(tmp_path)
    return CountingStore(f"sqlite:///{template}")


def test_concurrent_calls_share_one_read_and_a_revocation_shows_after_the_refresh(
    store: CountingStore,
) -> None:
    now = [100.0]
    revocations = Revocations(store, clock=lambda: now[0])
    clients = [enroll(store, f"c{i}") for i in range(3)]

    async def scenario() -> list[frozenset[int]]:
        seen = list(await asyncio.gather(*(revocations.current() for _ in range(200))))
        store.revoke_client(clients[1].client_id, now=at(10))
        now[0] += REVOCATION_REFRESH / 2
        seen.append(await revocations.current())  # still the first read
        now[0] += REVOCATION_REFRESH / 2
        seen.append(await revocations.current())  # read again
        return seen

    seen = asyncio.run(scenario())
    assert store.reads == 2
    assert set(seen[:201]) == {frozenset()}
    assert seen[-1] == {clients[1].client_id}


def test_a_failed_read_fails_every_waiting_call_and_the_next_call_reads_again(
    store: CountingStore,
) -> None:
    revocations, client = _with_one_revoked(store)

    async def scenario() -> tuple[list[BaseException | frozenset[int]], frozenset[int]]:
        store.fail = True
        outcomes = await asyncio.gather(
            *(revocations.current() for _ in range(20)), return_exceptions=True
        )
        store.fail = False
        return outcomes, await revocations.current()

    outcomes, after = asyncio.run(scenario())
    assert store.reads == 2
    assert all(
        isinstance(o, StoreError) and o.code is ErrorCode.STORE_UNAVAILABLE for o in outcomes
    )
    assert after == {client.client_id}  # no stale empty set was kept from the failure


def test_a_read_whose_callers_were_cancelled_still_completes_for_the_next(
    store: CountingStore,
) -> None:
    revocations, client = _with_one_revoked(store)

    async def scenario() -> frozenset[int]:
        caller = asyncio.ensure_future(revocations.current())
        await asyncio.sleep(0)
        caller.cancel()  # an RPC whose agent hung up
        with pytest.raises(asyncio.CancelledError):
            await caller
        return await revocations.current()

    assert asyncio.run(scenario()) == {client.client_id}
    assert store.reads == 1


def test_a_call_long_after_a_slow_read_began_does_not_take_its_old_answer(
    store: CountingStore,
) -> None:
    """A revocation written while an older read is still coming back reaches a call made
    a refresh after that read began, and the older answer does not replace the newer."""
    now = [100.0]
    revocations = Revocations(store, clock=lambda: now[0])
    client = enroll(store, "c")
    store.hold_first = threading.Event()

    async def scenario() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
        slow = asyncio.ensure_future(revocations.current())
        while store.reads < 1:
            await asyncio.sleep(0.01)
        store.revoke_client(client.client_id, now=at(10))
        now[0] += REVOCATION_REFRESH + 0.2  # `clients revoke` has returned by now
        later = await revocations.current()
        assert store.hold_first is not None
        store.hold_first.set()
        old = await slow
        now[0] += REVOCATION_REFRESH / 4
        return old, later, await revocations.current()

    old, later, after = asyncio.run(scenario())
    assert old == frozenset()  # the slow read's own callers get what it read
    assert later == {client.client_id}
    assert after == {client.client_id}
    assert store.reads == 2


def test_a_hung_read_refuses_within_the_timeout_and_the_next_call_reads_again(
    store: CountingStore,
) -> None:
    revocations, client = _with_one_revoked(store, timeout=0.3)
    store.hold_first = threading.Event()

    async def scenario() -> tuple[list[BaseException | frozenset[int]], frozenset[int]]:
        hung = await asyncio.gather(
            *(revocations.current() for _ in range(10)), return_exceptions=True
        )
        again = await revocations.current()
        assert store.hold_first is not None
        store.hold_first.set()
        return hung, again

    hung, again = asyncio.run(scenario())
    codes = [o.code if isinstance(o, StoreError) else o for o in hung]
    assert codes == [ErrorCode.STORE_UNAVAILABLE] * 10
    assert again == {client.client_id}
    assert store.reads == 2


def test_after_expire_a_read_begun_before_it_is_not_kept(store: CountingStore) -> None:
    """The driver expires the ids when the store refuses a cohort with a just-revoked client:
    an older read still in flight must not bring back the ids from before the revocation."""
    now = [100.0]
    revocations = Revocations(store, clock=lambda: now[0])
    client = enroll(store, "c")
    store.hold_first = threading.Event()

    async def scenario() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
        old = asyncio.ensure_future(revocations.current())
        while store.reads < 1:
            await asyncio.sleep(0.01)
        store.revoke_client(client.client_id, now=at(10))
        now[0] += 0.1
        revocations.expire()
        assert store.hold_first is not None
        store.hold_first.set()  # the old read ends after the expiry, before any new call
        stale = await old
        fresh = await revocations.current()
        return stale, fresh, await revocations.current()

    stale, fresh, after = asyncio.run(scenario())
    assert stale == frozenset()  # what the old read's own callers get
    assert fresh == after == {client.client_id}
    assert store.reads == 2
