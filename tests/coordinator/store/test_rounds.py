"""Store contract: rounds, cohorts, phase changes, abort and commit (every backend)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from coordinator.domain import (
    PHASE_ORDER,
    ParticipantStatus,
    PhaseTiming,
    RoundOutcome,
    RoundPhase,
)
from coordinator.errors import ErrorCode
from coordinator.store.sql import SqlStore
from coordinator.transitions import is_valid_transition

from .factories import (
    advance_to,
    at,
    cohort,
    enroll,
    new_round,
    raises_code,
    start_round,
    unmask,
    version,
)

AK, SK, MI, CC, UM = (
    RoundPhase.ADVERTISE_KEYS,
    RoundPhase.SHARE_KEYS,
    RoundPhase.MASKED_INPUT,
    RoundPhase.CONSISTENCY_CHECK,
    RoundPhase.UNMASKING,
)


# --- creating rounds ------------------------------------------------------------------


def test_create_round_stores_round_cohort_and_first_timing(store: SqlStore) -> None:
    assert store.open_round() is None
    assert store.next_round_number() == 0
    round_, clients = start_round(store, "r0", clients=3)
    assert store.get_round("r0") == round_
    assert store.open_round() == round_
    assert store.next_round_number() == 1
    participants = store.list_participants("r0")
    assert [(p.secagg_id, p.client_id) for p in participants] == [
        (i, c.client_id) for i, c in enumerate(clients, start=1)
    ]
    assert {p.status for p in participants} == {ParticipantStatus.SELECTED}
    assert store.get_participant("r0", clients[1].client_id) == participants[1]
    assert store.list_phase_timings("r0") == [PhaseTiming("r0", AK, started_at=round_.started_at)]


def test_get_round_and_participant_of_unknowns(store: SqlStore) -> None:
    _, clients = start_round(store, "r0", clients=2)
    outsider = enroll(store, "outsider")
    raises_code(ErrorCode.NOT_FOUND, lambda: store.get_round("nope"))
    raises_code(ErrorCode.NOT_IN_COHORT, lambda: store.get_participant("r0", outsider.client_id))
    raises_code(
        ErrorCode.NOT_IN_COHORT, lambda: store.get_participant("nope", clients[0].client_id)
    )
    assert store.list_participants("nope") == []
    assert store.list_phase_timings("nope") == []


def test_only_one_round_is_open_at_a_time(store: SqlStore) -> None:
    start_round(store, "r0")
    clients = [enroll(store, "other")]
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.create_round(new_round("r1", number=1), cohort("r1", clients)),
    )
    assert [r.round_id for r in store.list_rounds()] == ["r0"]


def test_create_round_refuses_a_taken_id_or_number(store: SqlStore) -> None:
    _, clients = start_round(store, "r0")
    store.abort_round("r0", reason="test", now=at(20))
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.create_round(new_round("r0", number=1), cohort("r0", clients)),
    )
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.create_round(new_round("r1", number=0), cohort("r1", clients)),
    )
    store.create_round(new_round("r1", number=1), cohort("r1", clients))
    assert store.open_round() is not None


def test_create_round_refuses_a_stale_or_missing_model_version(store: SqlStore) -> None:
    clients = [enroll(store, "a"), enroll(store, "b")]
    raises_code(  # no version 0 yet
        ErrorCode.CONFLICT, lambda: store.create_round(new_round("r0"), cohort("r0", clients))
    )
    store.add_initial_version(version(0))
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.create_round(new_round("r0", model_version=1), cohort("r0", clients)),
    )
    assert store.open_round() is None
    assert store.list_participants("r0") == []


def test_create_round_refuses_bad_cohorts(store: SqlStore) -> None:
    store.add_initial_version(version(0))
    a, b = enroll(store, "a"), enroll(store, "b")
    store.revoke_client(b.client_id, now=at(2))
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.create_round(new_round("r0"), []))
    raises_code(
        ErrorCode.REVOKED, lambda: store.create_round(new_round("r0"), cohort("r0", [a, b]))
    )
    ghost = dataclasses.replace(a, client_id=4242)
    raises_code(
        ErrorCode.NOT_FOUND, lambda: store.create_round(new_round("r0"), cohort("r0", [a, ghost]))
    )
    twice = cohort("r0", [a]) * 2
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.create_round(new_round("r0"), twice))
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.create_round(new_round("r0"), cohort("elsewhere", [a])),
    )
    finished = dataclasses.replace(new_round("r0"), phase=RoundPhase.ABORTED)
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.create_round(finished, cohort("r0", [a])))
    assert store.open_round() is None


def test_rounds_are_listed_newest_first(store: SqlStore) -> None:
    _, clients = start_round(store, "r0")
    for number in (1, 2, 3):
        store.abort_round(f"r{number - 1}", reason="test", now=at(20))
        store.create_round(new_round(f"r{number}", number=number), cohort(f"r{number}", clients))
    assert [r.number for r in store.list_rounds()] == [3, 2, 1, 0]
    assert [r.round_id for r in store.list_rounds(limit=2)] == ["r3", "r2"]
    assert store.list_rounds(limit=0) == []
    assert store.next_round_number() == 4


# --- advancing ------------------------------------------------------------------------


def test_advance_moves_the_phase_and_records_timings(store: SqlStore) -> None:
    round_, _ = start_round(store, "r0", clients=4)
    moved = store.advance_phase(
        "r0", expected=AK, new=SK, now=at(30), deadline=at(90), dropped={4: "no keys"},
        statuses={1: ParticipantStatus.ADVERTISED},
    )  # fmt: skip
    assert moved.phase is SK
    assert moved.deadline == at(90)
    assert moved.outcome is RoundOutcome.RUNNING
    assert store.get_round("r0") == moved
    store.advance_phase("r0", expected=SK, new=MI, now=at(40), deadline=at(99), dropped={3: "x"})
    assert store.list_phase_timings("r0") == [
        PhaseTiming("r0", AK, started_at=round_.started_at, closed_at=at(30), alive=3),
        PhaseTiming("r0", SK, started_at=at(30), closed_at=at(40), alive=2),
        PhaseTiming("r0", MI, started_at=at(40)),
    ]
    by_id = {p.secagg_id: p for p in store.list_participants("r0")}
    assert by_id[1].status is ParticipantStatus.ADVERTISED
    assert by_id[2].status is ParticipantStatus.SELECTED
    assert (by_id[4].status, by_id[4].dropped_in, by_id[4].drop_reason) == (
        ParticipantStatus.DROPPED, AK, "no keys",
    )  # fmt: skip
    assert (by_id[3].dropped_in, by_id[3].drop_reason) == (SK, "x")


def test_advance_from_the_wrong_phase_changes_nothing(store: SqlStore) -> None:
    start_round(store, "r0")
    before = advance_to(store, "r0", SK)
    error = raises_code(
        ErrorCode.WRONG_PHASE,
        lambda: store.advance_phase(
            "r0", expected=AK, new=SK, now=at(500), deadline=at(560), dropped={1: "late"}
        ),
    )
    assert "share_keys" in str(error)
    assert store.get_round("r0") == before
    assert store.get_participant("r0", store.list_participants("r0")[0].client_id).status is (
        ParticipantStatus.SELECTED
    )


@pytest.mark.parametrize(
    ("expected", "new"),
    [
        (current, new)
        for current, new in itertools.product(PHASE_ORDER, RoundPhase)  # a stable order
        if not is_valid_transition(current, new)
        or new in (RoundPhase.COMMITTED, RoundPhase.ABORTED)
    ][::3],  # a third of the forbidden moves keeps the suite short; all kinds are in it
)
def test_advance_refuses_what_the_table_forbids(
    store: SqlStore, expected: RoundPhase, new: RoundPhase
) -> None:
    start_round(store, "r0")
    before = advance_to(store, "r0", expected)
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.advance_phase(
            "r0", expected=expected, new=new, now=at(500), deadline=at(560), dropped={}
        ),
    )
    assert store.get_round("r0") == before


def test_advance_with_an_unknown_id_changes_nothing(store: SqlStore) -> None:
    start_round(store, "r0", clients=2)
    raises_code(
        ErrorCode.NOT_IN_COHORT,
        lambda: store.advance_phase(
            "r0", expected=AK, new=SK, now=at(30), deadline=at(90), dropped={1: "x", 9: "y"}
        ),
    )
    assert store.get_round("r0").phase is AK
    assert {p.status for p in store.list_participants("r0")} == {ParticipantStatus.SELECTED}
    raises_code(
        ErrorCode.NOT_FOUND,
        lambda: store.advance_phase(
            "nope", expected=AK, new=SK, now=at(30), deadline=at(90), dropped={}
        ),
    )


def test_a_drop_sticks(store: SqlStore) -> None:
    start_round(store, "r0", clients=3)
    store.drop_participant("r0", 2, reason="disconnected")
    store.drop_participant("r0", 2, reason="second reason")  # keeps the first
    store.advance_phase(
        "r0", expected=AK, new=SK, now=at(30), deadline=at(90), dropped={2: "third"},
        statuses={1: ParticipantStatus.ADVERTISED},
    )  # fmt: skip
    store.advance_phase(
        "r0", expected=SK, new=MI, now=at(40), deadline=at(90), dropped={},
        statuses={1: ParticipantStatus.SHARED, 2: ParticipantStatus.SHARED},
    )  # fmt: skip
    first, dropped, _ = store.list_participants("r0")
    assert first.status is ParticipantStatus.SHARED
    assert (dropped.status, dropped.dropped_in, dropped.drop_reason) == (
        ParticipantStatus.DROPPED, AK, "disconnected",
    )  # fmt: skip
    assert [t.alive for t in store.list_phase_timings("r0")] == [2, 2, None]
    store.drop_participant("r0", 3, reason="misbehaved")
    assert store.list_participants("r0")[2].dropped_in is MI
    raises_code(ErrorCode.NOT_IN_COHORT, lambda: store.drop_participant("r0", 9, reason="?"))
    raises_code(ErrorCode.NOT_FOUND, lambda: store.drop_participant("nope", 1, reason="?"))
    store.abort_round("r0", reason="test", now=at(50))
    raises_code(ErrorCode.WRONG_PHASE, lambda: store.drop_participant("r0", 1, reason="late"))


@pytest.mark.parametrize(
    ("dropped", "statuses"),
    [({}, {1: ParticipantStatus.DROPPED}), ({1: "x"}, {1: ParticipantStatus.ADVERTISED})],
)
def test_statuses_cannot_drop(
    store: SqlStore, dropped: dict[int, str], statuses: dict[int, ParticipantStatus]
) -> None:
    start_round(store, "r0", clients=2)
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.advance_phase(
            "r0", expected=AK, new=SK, now=at(30), deadline=at(90), dropped=dropped,
            statuses=statuses,
        ),
    )  # fmt: skip
    assert store.get_round("r0").phase is AK


# --- aborting -------------------------------------------------------------------------


def test_abort_ends_the_round_and_closes_its_phase(store: SqlStore) -> None:
    start_round(store, "r0", clients=3)
    advance_to(store, "r0", MI, now=100)
    aborted = store.abort_round("r0", reason="too few inputs", now=at(200), dropped={1: "gone"})
    assert aborted.phase is RoundPhase.ABORTED
    assert aborted.outcome is RoundOutcome.ABORTED
    assert aborted.abort_reason == "too few inputs"
    assert aborted.finished_at == at(200)
    assert aborted.survivors == 2
    assert store.get_round("r0") == aborted
    assert store.open_round() is None
    last = store.list_phase_timings("r0")[-1]
    assert (last.phase, last.closed_at, last.alive) == (MI, at(200), 2)
    assert store.list_participants("r0")[0].dropped_in is MI


def test_abort_is_idempotent_and_refused_on_a_committed_round(store: SqlStore) -> None:
    start_round(store, "r0")
    first = store.abort_round("r0", reason="first", now=at(20))
    assert store.abort_round("r0", reason="second", now=at(30), dropped={1: "x"}) == first
    assert store.list_participants("r0")[0].status is ParticipantStatus.SELECTED
    raises_code(ErrorCode.NOT_FOUND, lambda: store.abort_round("nope", reason="x", now=at(1)))

    start_round(store, "r1", number=1)
    advance_to(store, "r1", UM)
    store.commit_round("r1", version=version(1, round_id="r1"), now=at(300))
    raises_code(ErrorCode.WRONG_PHASE, lambda: store.abort_round("r1", reason="x", now=at(400)))
    assert store.get_round("r1").outcome is RoundOutcome.COMMITTED


# --- committing -----------------------------------------------------------------------


def _to_unmasking_with_responses(store: SqlStore) -> None:
    """r0 over 4 clients in UNMASKING: 1 and 2 answered, 3 did not, 4 dropped earlier."""
    start_round(store, "r0", clients=4)
    advance_to(store, "r0", CC, now=100)
    store.advance_phase("r0", expected=CC, new=UM, now=at(150), deadline=at(210), dropped={4: "x"})
    for holder in (1, 2):
        store.add_unmask_response(unmask("r0", holder, survivors=[1, 2, 3], dropped=[4]))


def test_commit_stores_the_version_and_ends_the_round(store: SqlStore) -> None:
    _to_unmasking_with_responses(store)
    v1 = version(1, round_id="r0", created=250)
    committed = store.commit_round("r0", version=v1, now=at(250), dropped={3: "no unmask"})
    assert committed.phase is RoundPhase.COMMITTED
    assert committed.outcome is RoundOutcome.COMMITTED
    assert committed.finished_at == at(250)
    assert committed.survivors == v1.num_clients
    assert store.get_round("r0") == committed
    assert store.open_round() is None
    assert store.latest_version() == v1
    assert store.get_version(1) == v1
    assert [v.version for v in store.list_versions()] == [0, 1]
    statuses = [(p.status, p.dropped_in) for p in store.list_participants("r0")]
    assert statuses == [
        (ParticipantStatus.UNMASKED, None),
        (ParticipantStatus.UNMASKED, None),
        (ParticipantStatus.DROPPED, UM),
        (ParticipantStatus.DROPPED, CC),
    ]
    last = store.list_phase_timings("r0")[-1]
    assert (last.phase, last.started_at, last.closed_at, last.alive) == (UM, at(150), at(250), 2)


def test_commit_refuses_a_second_commit_and_a_skipped_version(store: SqlStore) -> None:
    _to_unmasking_with_responses(store)
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.commit_round("r0", version=version(2, round_id="r0"), now=at(250)),
    )
    raises_code(
        ErrorCode.CONFLICT,
        lambda: store.commit_round("r0", version=version(0, round_id="r0"), now=at(250)),
    )
    assert store.get_round("r0").phase is UM
    assert store.latest_version() == version(0)
    store.commit_round("r0", version=version(1, round_id="r0"), now=at(250))
    raises_code(
        ErrorCode.WRONG_PHASE,
        lambda: store.commit_round("r0", version=version(2, round_id="r0"), now=at(260)),
    )
    assert [v.version for v in store.list_versions()] == [0, 1]


def test_commit_outside_unmasking_or_for_another_round_is_refused(store: SqlStore) -> None:
    start_round(store, "r0")
    advance_to(store, "r0", CC)
    raises_code(
        ErrorCode.WRONG_PHASE,
        lambda: store.commit_round("r0", version=version(1, round_id="r0"), now=at(250)),
    )
    advance_to(store, "r0", UM)
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.commit_round("r0", version=version(1, round_id="other"), now=at(250)),
    )
    raises_code(
        ErrorCode.NOT_FOUND,
        lambda: store.commit_round("nope", version=version(1, round_id="nope"), now=at(250)),
    )
    assert store.latest_version() == version(0)


def test_the_next_round_trains_from_the_committed_version(store: SqlStore) -> None:
    _, clients = start_round(store, "r0")
    advance_to(store, "r0", UM)
    store.commit_round("r0", version=version(1, round_id="r0"), now=at(250))
    raises_code(  # version 0 is stale now
        ErrorCode.CONFLICT,
        lambda: store.create_round(new_round("r1", number=1), cohort("r1", clients)),
    )
    store.create_round(new_round("r1", number=1, model_version=1), cohort("r1", clients))
    assert store.open_round() is not None
