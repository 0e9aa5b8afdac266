"""Store contract under concurrency: two replicas (two ``SqlStore``s on one database, each
call in its own thread) racing the same writes, on every backend.

The races start together at a barrier. The lock tests are deterministic: one transaction
holds a round's lock while a second write is started, which must wait for it and then see
what it committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

from coordinator.domain import AddResult, RoundPhase
from coordinator.errors import ErrorCode, StoreError
from coordinator.store import sql_records, sql_rounds
from coordinator.store.session import Database
from coordinator.store.sql import SqlStore

from .factories import (
    advance_to,
    at,
    chunk,
    cohort,
    digest,
    enroll,
    issue_certificate,
    keys,
    new_round,
    shares,
    start_round,
    token,
    version,
)

Outcome = object  # what a call returned, or the code of the StoreError it raised
BLOCKED_S = 0.3  # long enough for a write that does not wait to have finished


def race(*calls: Callable[[], object]) -> list[Outcome]:
    """Run ``calls`` at once, each in its own thread; their outcomes in call order."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Outcome] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            outcomes[index] = call()
        except StoreError as error:
            outcomes[index] = error.code

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


class Background:
    """One call in a thread, started now; ``result()`` waits for it."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._outcome: Outcome = None
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self._outcome = call()
        except StoreError as error:
            self._outcome = error.code

    @property
    def waiting(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> Outcome:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        return self._outcome


def _sorted(outcomes: list[Outcome]) -> list[str]:
    return sorted(str(outcome) for outcome in outcomes)


def test_racing_the_same_record_stores_it_once(store: SqlStore, second_store: SqlStore) -> None:
    start_round(store, "r0", clients=3)
    for secagg_id in (1, 2):
        outcomes = race(
            partial(store.add_advertised_keys, keys("r0", secagg_id)),
            partial(second_store.add_advertised_keys, keys("r0", secagg_id)),
        )
        assert _sorted(outcomes) == _sorted([AddResult.ADDED, AddResult.DUPLICATE])
    outcomes = race(
        lambda: store.add_advertised_keys(keys("r0", 3)),
        lambda: second_store.add_advertised_keys(keys("r0", 3, variant="-forged")),
    )
    assert _sorted(outcomes) == _sorted([AddResult.ADDED, ErrorCode.CONFLICT])
    assert [k.secagg_id for k in store.list_advertised_keys("r0")] == [1, 2, 3]


def test_racing_share_sets_store_one(store: SqlStore, second_store: SqlStore) -> None:
    start_round(store, "r0", clients=3)
    advance_to(store, "r0", RoundPhase.SHARE_KEYS)
    outcomes = race(
        lambda: store.add_shares("r0", 1, shares("r0", 1, [2, 3])),
        lambda: second_store.add_shares("r0", 1, shares("r0", 1, [2, 3])),
    )
    assert _sorted(outcomes) == _sorted([AddResult.ADDED, AddResult.DUPLICATE])
    outcomes = race(
        lambda: store.add_shares("r0", 2, shares("r0", 2, [1])),
        lambda: second_store.add_shares("r0", 2, shares("r0", 2, [3])),
    )
    assert _sorted(outcomes) == _sorted([AddResult.ADDED, ErrorCode.CONFLICT])
    assert len(store.list_shares("r0")) == 3


def test_an_add_waits_for_a_phase_change_and_is_refused(store: SqlStore, backend_url: str) -> None:
    start_round(store, "r0", clients=2)
    advance_to(store, "r0", RoundPhase.MASKED_INPUT, now=100)
    other = Database(backend_url)
    try:
        with other.transaction(write=True) as session:
            sql_rounds.advance_phase(
                session, "r0", expected=RoundPhase.MASKED_INPUT,
                new=RoundPhase.CONSISTENCY_CHECK, now=at(200), deadline=at(260), dropped={},
                statuses=None,
            )  # fmt: skip
            adding = Background(lambda: store.add_input_chunk(chunk("r0", 1, 0)))
            time.sleep(BLOCKED_S)
            assert adding.waiting  # the add waits for the round's lock...
        assert adding.result() is ErrorCode.WRONG_PHASE  # ...then sees the phase closed
    finally:
        other.dispose()
    assert store.list_input_chunks("r0") == []
    assert store.list_phase_timings("r0")[-2].alive == 2


def test_a_phase_change_waits_for_an_add_that_then_lands_before_the_close(
    store: SqlStore, backend_url: str
) -> None:
    start_round(store, "r0", clients=2)
    advance_to(store, "r0", RoundPhase.MASKED_INPUT, now=100)
    other = Database(backend_url)
    try:
        with other.transaction(write=True) as session:
            assert sql_records.add_input_chunk(session, chunk("r0", 1, 0)) is AddResult.ADDED
            closing = Background(
                lambda: store.advance_phase(
                    "r0", expected=RoundPhase.MASKED_INPUT, new=RoundPhase.CONSISTENCY_CHECK,
                    now=at(200), deadline=at(260), dropped={2: "no input"},
                )
            )  # fmt: skip
            time.sleep(BLOCKED_S)
            assert closing.waiting
        closed = closing.result()
    finally:
        other.dispose()
    assert getattr(closed, "phase", None) is RoundPhase.CONSISTENCY_CHECK
    assert store.list_input_chunks("r0") == [chunk("r0", 1, 0)]


def test_adds_racing_a_close_land_before_it_or_are_refused(
    store: SqlStore, second_store: SqlStore
) -> None:
    """Free-running: adders stream chunks while a replica closes the phase midway."""
    adders = 2
    start_round(store, "r0", clients=adders)
    advance_to(store, "r0", RoundPhase.MASKED_INPUT, now=100)
    started = threading.Event()
    results: dict[int, list[tuple[int, Outcome]]] = {i: [] for i in range(1, adders + 1)}

    def add_chunks(secagg_id: int) -> None:
        for index in range(40):
            try:
                outcome: Outcome = store.add_input_chunk(chunk("r0", secagg_id, index))
            except StoreError as error:
                outcome = error.code
            results[secagg_id].append((index, outcome))
            if index == 3:
                started.set()
            if outcome is ErrorCode.WRONG_PHASE:
                return

    def close() -> object:
        started.wait(timeout=30)
        return second_store.advance_phase(
            "r0", expected=RoundPhase.MASKED_INPUT, new=RoundPhase.CONSISTENCY_CHECK,
            now=at(200), deadline=at(260), dropped={},
        )  # fmt: skip

    outcomes = race(*(partial(add_chunks, i) for i in results), close)
    assert getattr(outcomes[-1], "phase", None) is RoundPhase.CONSISTENCY_CHECK
    stored = {(c.secagg_id, c.chunk_index) for c in store.list_input_chunks("r0")}
    for secagg_id, log in results.items():
        added = [index for index, outcome in log if outcome is AddResult.ADDED]
        refused = [index for index, outcome in log if outcome is not AddResult.ADDED]
        assert added == list(range(len(added)))  # acknowledged in order, none after a refusal
        assert all(outcome is ErrorCode.WRONG_PHASE for _, outcome in log[len(added) :])
        assert {(secagg_id, i) for i in added} <= stored
        assert not {(secagg_id, i) for i in refused} & stored
    assert len(stored) == sum(
        1 for log in results.values() for _, outcome in log if outcome is AddResult.ADDED
    )


def test_two_replicas_opening_a_round_open_one(store: SqlStore, second_store: SqlStore) -> None:
    store.add_initial_version(version(0))
    clients = [enroll(store, "a"), enroll(store, "b")]
    outcomes = race(
        lambda: store.create_round(new_round("r-a", number=0), cohort("r-a", clients)),
        lambda: second_store.create_round(new_round("r-b", number=1), cohort("r-b", clients)),
    )
    assert _sorted(outcomes) == _sorted([None, ErrorCode.CONFLICT])
    assert len(store.list_rounds()) == 1


def test_two_replicas_committing_a_round_commit_once(
    store: SqlStore, second_store: SqlStore
) -> None:
    start_round(store, "r0", clients=2)
    advance_to(store, "r0", RoundPhase.UNMASKING)
    v1 = version(1, round_id="r0")
    outcomes = race(
        lambda: store.commit_round("r0", version=v1, now=at(300)),
        lambda: second_store.commit_round("r0", version=v1, now=at(301)),
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ErrorCode", "Round"]
    assert ErrorCode.WRONG_PHASE in outcomes
    assert store.list_versions() == [version(0), v1]


def test_two_devices_racing_one_token_enroll_one(store: SqlStore, second_store: SqlStore) -> None:
    store.create_token(token("t"))

    def enroll_with(target: SqlStore, key: bytes) -> object:
        return target.enroll(
            token_hash=digest("t"), identity_key=key, label="x", now=at(5),
            issue_certificate=issue_certificate,
        )  # fmt: skip

    outcomes = race(
        lambda: enroll_with(store, b"A" * 32), lambda: enroll_with(second_store, b"B" * 32)
    )
    assert ErrorCode.TOKEN_USED in outcomes
    assert len(store.list_clients()) == 1
