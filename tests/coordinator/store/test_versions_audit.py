"""Store contract: model versions, evaluations and the audit log (every backend)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta, timezone

from coordinator.domain import AddResult, AuditEvent, RoundPhase
from coordinator.errors import ErrorCode
from coordinator.store.sql import SqlStore

from .factories import advance_to, at, digest, raises_code, start_round, version


def test_initial_version_is_stored_once(store: SqlStore) -> None:
    assert store.latest_version() is None
    assert store.list_versions() == []
    v0 = version(0)
    assert store.add_initial_version(v0) is AddResult.ADDED
    assert store.latest_version() == v0
    assert store.get_version(0) == v0
    # A restart rebuilds the same version 0 at another time: the same content.
    rebuilt = dataclasses.replace(v0, created_at=at(999))
    assert store.add_initial_version(rebuilt) is AddResult.DUPLICATE
    other = dataclasses.replace(v0, model_sha256=digest("another model"))
    raises_code(ErrorCode.CONFLICT, lambda: store.add_initial_version(other))
    assert store.list_versions() == [v0]


def test_initial_version_must_be_version_zero_of_no_round(store: SqlStore) -> None:
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.add_initial_version(version(1)))
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.add_initial_version(dataclasses.replace(version(0), round_id="r0")),
    )
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.add_initial_version(dataclasses.replace(version(0), model_sha256="xyz")),
    )
    assert store.latest_version() is None


def test_versions_are_listed_oldest_first(store: SqlStore) -> None:
    for number in range(3):
        start_round(store, f"r{number}", clients=2, number=number)
        advance_to(store, f"r{number}", RoundPhase.UNMASKING)
        store.commit_round(
            f"r{number}", version=version(number + 1, round_id=f"r{number}"), now=at(500)
        )
    assert [v.version for v in store.list_versions()] == [0, 1, 2, 3]
    assert store.latest_version() == version(3, round_id="r2")
    assert store.get_version(2).round_id == "r1"
    raises_code(ErrorCode.NOT_FOUND, lambda: store.get_version(4))


def test_evaluation_is_attached_to_a_version(store: SqlStore) -> None:
    store.add_initial_version(version(0))
    store.record_evaluation(0, loss=0.75, accuracy=None)
    assert (store.get_version(0).test_loss, store.get_version(0).test_accuracy) == (0.75, None)
    store.record_evaluation(0, loss=0.5, accuracy=0.875)
    evaluated = store.latest_version()
    assert evaluated is not None
    assert (evaluated.test_loss, evaluated.test_accuracy) == (0.5, 0.875)
    assert store.add_initial_version(version(0)) is AddResult.DUPLICATE  # still the same
    raises_code(ErrorCode.NOT_FOUND, lambda: store.record_evaluation(7, loss=1.0, accuracy=0.1))


def test_audit_lists_newest_first(store: SqlStore) -> None:
    events = [
        AuditEvent(at=at(10), actor="operator", action="token.create", detail="ttl 1h"),
        AuditEvent(at=at(30), actor="coordinator", action="round.commit", detail="r0"),
        AuditEvent(at=at(20), actor="client 1", action="enroll"),
        AuditEvent(at=at(30), actor="coordinator", action="round.start", detail="r1"),
    ]
    for event in events:
        store.audit(event)
    listed = store.list_audit()
    # By time; of two at the same time, the one appended later first.
    assert listed == [events[3], events[1], events[2], events[0]]
    ids = [event.event_id for event in listed]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == 4
    assert ids[0] > ids[1]  # type: ignore[operator]
    assert store.list_audit(limit=2) == [events[3], events[1]]
    assert store.list_audit(limit=0) == []


def test_audit_times_come_back_in_utc(store: SqlStore) -> None:
    west = timezone(timedelta(hours=-7))
    store.audit(AuditEvent(at=at(10).astimezone(west), actor="operator", action="restart"))
    (event,) = store.list_audit()
    assert event.at == at(10)
    assert event.at.utcoffset() == timedelta(0)
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.audit(AuditEvent(at=at(1).replace(tzinfo=None), actor="x", action="y")),
    )
