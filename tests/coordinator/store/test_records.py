"""Store contract: the secure-aggregation records and their idempotency (every backend).

Every kind of record is checked the same way (``RecordKind``): stored in its phase, the
same record again, a different record under the same key, the wrong phase, an id outside
the cohort, a dropped participant, an unknown round. Then each kind's own rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest

from coordinator.domain import AddResult, ParticipantStatus, RoundPhase
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.sql import SqlStore

from .factories import (
    advance_to,
    at,
    chunk,
    keys,
    raises_code,
    shares,
    signature,
    start_round,
    unmask,
)

AddFn = Callable[[SqlStore, str, int, str], AddResult]
ListFn = Callable[[SqlStore, str], list[object]]


@dataclass(frozen=True)
class RecordKind:
    """How to add (a variant of) one participant's record, and how to list them all."""

    name: str
    phase: RoundPhase
    add: AddFn
    listed: ListFn
    status: ParticipantStatus
    conflicts: bool = True  # whether a different record under the same key exists


def _add_complete(store: SqlStore, round_id: str, secagg_id: int, _variant: str) -> AddResult:
    return store.mark_input_complete(round_id, secagg_id)


def _completed(store: SqlStore, round_id: str) -> list[object]:
    return [p.secagg_id for p in store.list_participants(round_id) if p.status is (
        ParticipantStatus.UPLOADED
    )]  # fmt: skip


KINDS = [
    RecordKind(
        "advertised_keys",
        RoundPhase.ADVERTISE_KEYS,
        lambda s, r, i, v: s.add_advertised_keys(keys(r, i, variant=v)),
        lambda s, r: list(s.list_advertised_keys(r)),
        ParticipantStatus.ADVERTISED,
    ),
    RecordKind(
        "shares",
        RoundPhase.SHARE_KEYS,
        lambda s, r, i, v: s.add_shares(r, i, shares(r, i, [1, 2, 3], variant=v)),
        lambda s, r: list(s.list_shares(r)),
        ParticipantStatus.SHARED,
    ),
    RecordKind(
        "input_chunk",
        RoundPhase.MASKED_INPUT,
        lambda s, r, i, v: s.add_input_chunk(chunk(r, i, 0, variant=v)),
        lambda s, r: list(s.list_input_chunks(r)),
        ParticipantStatus.SELECTED,  # a chunk alone does not make an upload
    ),
    RecordKind(
        "input_complete",
        RoundPhase.MASKED_INPUT,
        _add_complete,
        _completed,
        ParticipantStatus.UPLOADED,
        conflicts=False,
    ),
    RecordKind(
        "consistency_signature",
        RoundPhase.CONSISTENCY_CHECK,
        lambda s, r, i, v: s.add_consistency_signature(signature(r, i, variant=v)),
        lambda s, r: list(s.list_consistency_signatures(r)),
        ParticipantStatus.SIGNED,
    ),
    RecordKind(
        "unmask_response",
        RoundPhase.UNMASKING,
        lambda s, r, i, v: s.add_unmask_response(
            unmask(r, i, survivors=[1, 2], dropped=[3], variant=v)
        ),
        lambda s, r: list(s.list_unmask_responses(r)),
        ParticipantStatus.UNMASKED,
    ),
]  # fmt: skip


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> RecordKind:
    return request.param  # type: ignore[no-any-return]


def _in_phase(store: SqlStore, phase: RoundPhase) -> None:
    start_round(store, "r0", clients=3)
    advance_to(store, "r0", phase)


def _status(store: SqlStore, secagg_id: int) -> ParticipantStatus:
    return store.list_participants("r0")[secagg_id - 1].status


def test_added_then_duplicate_then_conflict(store: SqlStore, kind: RecordKind) -> None:
    _in_phase(store, kind.phase)
    assert kind.add(store, "r0", 1, "") is AddResult.ADDED
    listed = kind.listed(store, "r0")
    assert listed
    assert _status(store, 1) is kind.status
    assert _status(store, 2) is ParticipantStatus.SELECTED
    assert kind.add(store, "r0", 1, "") is AddResult.DUPLICATE
    if kind.conflicts:
        raises_code(ErrorCode.CONFLICT, lambda: kind.add(store, "r0", 1, "-other"))
    assert kind.listed(store, "r0") == listed
    assert kind.add(store, "r0", 2, "") is AddResult.ADDED


def test_refused_in_another_phase_and_never_stored_after_close(
    store: SqlStore, kind: RecordKind
) -> None:
    start_round(store, "r0", clients=3)
    order = list(RoundPhase)
    if kind.phase is not RoundPhase.ADVERTISE_KEYS:  # too early
        advance_to(store, "r0", order[order.index(kind.phase) - 1])
        raises_code(ErrorCode.WRONG_PHASE, lambda: kind.add(store, "r0", 1, ""))
    advance_to(store, "r0", kind.phase)
    kind.add(store, "r0", 1, "")
    stored = kind.listed(store, "r0")
    if kind.phase is RoundPhase.UNMASKING:  # its phase closes by the round ending
        store.abort_round("r0", reason="closed", now=at(900))
        stored = []  # ending the round deletes its protocol records
    else:
        advance_to(store, "r0", order[order.index(kind.phase) + 1])
    error = raises_code(ErrorCode.WRONG_PHASE, lambda: kind.add(store, "r0", 2, ""))
    assert "r0" in str(error)
    raises_code(ErrorCode.WRONG_PHASE, lambda: kind.add(store, "r0", 1, ""))  # even a retry
    assert kind.listed(store, "r0") == stored
    assert _status(store, 2) is ParticipantStatus.SELECTED


def test_refused_outside_the_cohort(store: SqlStore, kind: RecordKind) -> None:
    _in_phase(store, kind.phase)
    raises_code(ErrorCode.NOT_IN_COHORT, lambda: kind.add(store, "r0", 9, ""))
    raises_code(ErrorCode.NOT_FOUND, lambda: kind.add(store, "nope", 1, ""))
    assert kind.listed(store, "r0") == []


def test_refused_once_dropped(store: SqlStore, kind: RecordKind) -> None:
    _in_phase(store, kind.phase)
    kind.add(store, "r0", 1, "")
    before = kind.listed(store, "r0")
    store.drop_participant("r0", 2, reason="left")
    error = raises_code(ErrorCode.NOT_IN_COHORT, lambda: kind.add(store, "r0", 2, ""))
    assert "dropped" in str(error)
    assert kind.listed(store, "r0") == before
    assert _status(store, 2) is ParticipantStatus.DROPPED
    store.drop_participant("r0", 1, reason="left")  # a retry after the drop is refused too
    raises_code(ErrorCode.NOT_IN_COHORT, lambda: kind.add(store, "r0", 1, ""))


# --- each kind's own rules --------------------------------------------------------------


def test_advertised_keys_are_listed_by_secagg_id(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.ADVERTISE_KEYS)
    for secagg_id in (3, 1, 2):
        store.add_advertised_keys(keys("r0", secagg_id))
    assert store.list_advertised_keys("r0") == [keys("r0", i) for i in (1, 2, 3)]
    assert store.list_advertised_keys("other") == []


def test_shares_are_one_set_per_sender(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.SHARE_KEYS)
    assert store.add_shares("r0", 2, shares("r0", 2, [3, 1])) is AddResult.ADDED
    assert store.add_shares("r0", 2, shares("r0", 2, [1, 3])) is AddResult.DUPLICATE  # any order
    for other_set in ([1], [1, 3, 2], [2]):  # a subset, a superset, a disjoint set
        raises_code(
            ErrorCode.CONFLICT, partial(store.add_shares, "r0", 2, shares("r0", 2, other_set))
        )
    store.add_shares("r0", 1, shares("r0", 1, [2, 3]))
    assert [(s.sender, s.recipient) for s in store.list_shares("r0")] == [
        (1, 2), (1, 3), (2, 1), (2, 3),
    ]  # fmt: skip
    assert store.list_shares("r0")[2] == shares("r0", 2, [1])[0]


def test_shares_are_checked_before_storing(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.SHARE_KEYS)
    bad = {
        "empty": [],
        "a recipient outside the cohort": shares("r0", 1, [2, 9]),
        "a recipient twice": shares("r0", 1, [2, 2]),
        "another sender's share": shares("r0", 3, [2]),
        "another round's share": shares("r1", 1, [2]),
    }
    for name, records in bad.items():
        with pytest.raises(StoreError) as caught:
            store.add_shares("r0", 1, records)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT, name
    assert store.list_shares("r0") == []
    assert _status(store, 1) is ParticipantStatus.SELECTED


def test_input_chunks_are_receipts_by_index(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.MASKED_INPUT)
    for secagg_id, index in ((2, 1), (1, 1), (2, 0), (1, 0)):
        assert store.add_input_chunk(chunk("r0", secagg_id, index)) is AddResult.ADDED
    assert [(c.secagg_id, c.chunk_index) for c in store.list_input_chunks("r0")] == [
        (1, 0), (1, 1), (2, 0), (2, 1),
    ]  # fmt: skip
    assert store.list_input_chunks("r0", 2) == [chunk("r0", 2, 0), chunk("r0", 2, 1)]
    raises_code(ErrorCode.CONFLICT, lambda: store.add_input_chunk(chunk("r0", 1, 1, variant="x")))
    bad_digest = chunk("r0", 1, 5).__class__("r0", 1, 5, "ABC")
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.add_input_chunk(bad_digest))
    negative = chunk("r0", 1, 5).__class__("r0", 1, -1, chunk("r0", 1, 5).sha256)
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.add_input_chunk(negative))


def test_a_complete_input_takes_no_new_chunk(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.MASKED_INPUT)
    store.add_input_chunk(chunk("r0", 1, 0))
    assert not store.get_participant(
        "r0", store.list_participants("r0")[0].client_id
    ).input_complete
    assert store.mark_input_complete("r0", 1) is AddResult.ADDED
    assert store.mark_input_complete("r0", 1) is AddResult.DUPLICATE
    assert [p.input_complete for p in store.list_participants("r0")][:2] == [True, False]
    assert store.add_input_chunk(chunk("r0", 1, 0)) is AddResult.DUPLICATE
    raises_code(ErrorCode.CONFLICT, lambda: store.add_input_chunk(chunk("r0", 1, 1)))
    raises_code(ErrorCode.CONFLICT, lambda: store.add_input_chunk(chunk("r0", 1, 0, variant="x")))
    assert store.list_input_chunks("r0", 1) == [chunk("r0", 1, 0)]


def test_consistency_signatures_are_listed_by_secagg_id(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.CONSISTENCY_CHECK)
    for secagg_id in (2, 1):
        store.add_consistency_signature(signature("r0", secagg_id))
    assert store.list_consistency_signatures("r0") == [signature("r0", 1), signature("r0", 2)]


def test_unmask_responses_keep_their_shares_by_owner(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.UNMASKING)
    response = unmask("r0", 2, survivors=[1, 2], dropped=[3])
    reordered = response.__class__(
        "r0", 2, tuple(reversed(response.self_mask_shares)), response.key_shares
    )
    assert store.add_unmask_response(reordered) is AddResult.ADDED
    assert store.add_unmask_response(response) is AddResult.DUPLICATE
    store.add_unmask_response(unmask("r0", 1, survivors=[1, 2, 3]))
    assert store.list_unmask_responses("r0") == [
        unmask("r0", 1, survivors=[1, 2, 3]),
        response,
    ]
    fewer = unmask("r0", 2, survivors=[1], dropped=[3])
    raises_code(ErrorCode.CONFLICT, lambda: store.add_unmask_response(fewer))


def test_unmask_responses_are_checked_before_storing(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.UNMASKING)
    both_kinds = unmask("r0", 1, survivors=[2, 3], dropped=[3])
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.add_unmask_response(both_kinds))
    stranger = unmask("r0", 1, survivors=[2, 9])
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.add_unmask_response(stranger))
    assert store.list_unmask_responses("r0") == []
    assert _status(store, 1) is ParticipantStatus.SELECTED


def test_a_batch_commits_its_writes_together_and_undoes_a_refused_one_alone(
    store: SqlStore, second_store: SqlStore
) -> None:
    """``Store.batch`` (group commit): nothing is visible to another connection before the
    block ends, a refused write is undone alone, and the rest commit."""
    _in_phase(store, RoundPhase.ADVERTISE_KEYS)
    with store.batch():
        store.add_advertised_keys(keys("r0", 1))
        raises_code(ErrorCode.NOT_IN_COHORT, partial(store.add_advertised_keys, keys("r0", 99)))
        store.add_advertised_keys(keys("r0", 2))
        assert store.list_advertised_keys("r0") == [keys("r0", 1), keys("r0", 2)]  # its own
        assert second_store.list_advertised_keys("r0") == []  # not committed yet
    assert second_store.list_advertised_keys("r0") == [keys("r0", 1), keys("r0", 2)]
    assert _status(second_store, 1) is ParticipantStatus.ADVERTISED


def test_a_batch_that_raises_stores_none_of_its_writes(store: SqlStore) -> None:
    _in_phase(store, RoundPhase.ADVERTISE_KEYS)

    def failing_batch() -> None:
        with store.batch():
            store.add_advertised_keys(keys("r0", 1))
            raise RuntimeError("the batch fails before its commit")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert store.list_advertised_keys("r0") == []
    assert store.add_advertised_keys(keys("r0", 1)) is AddResult.ADDED  # and nothing is stuck
