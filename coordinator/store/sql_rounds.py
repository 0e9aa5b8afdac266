"""The round lifecycle in SQL: create, advance, abort, commit, and dropping participants.

Each function runs inside the caller's write transaction and locks the round row first
(``sql_guards.lock_round``), so phase changes of one round are serialized with each other
and with the ``add_*`` writes that check the phase. Transitions go through
``coordinator.transitions.is_valid_transition``, the one table every backend uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from coordinator.domain import (
    OPEN_PHASES,
    ModelVersion,
    Participant,
    ParticipantStatus,
    Round,
    RoundOutcome,
    RoundPhase,
)
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.rows import round_from_row, round_to_row, version_to_row
from coordinator.store.sql_guards import (
    latest_version_number,
    lock_round,
    require_aware,
    require_phase,
    require_sha256,
)
from coordinator.store.sql_retention import forget_round_records
from coordinator.store.tables import (
    ClientRow,
    ParticipantRow,
    PhaseTimingRow,
    RoundRow,
    UnmaskResponseRow,
)
from coordinator.transitions import is_valid_transition

__all__ = [
    "abort_round",
    "advance_phase",
    "commit_round",
    "create_round",
    "drop_participant",
]


def create_round(session: Session, round_: Round, participants: Sequence[Participant]) -> None:
    """See ``Store.create_round``.

    Also refuses (``INVALID_ARGUMENT``) a round that is not open and running, an empty
    cohort, participants of another round, repeated secagg or client ids, and
    (``NOT_FOUND`` / ``REVOKED``) clients that are unknown or revoked.
    """
    _check_new_round(round_, participants)
    if session.get(RoundRow, round_.round_id) is not None:
        raise StoreError(ErrorCode.CONFLICT, f"round {round_.round_id!r} already exists")
    running = session.scalars(
        select(RoundRow.round_id).where(RoundRow.outcome == RoundOutcome.RUNNING)
    ).first()
    if running is not None:
        raise StoreError(
            ErrorCode.CONFLICT, f"round {running!r} is still open; finish it before another"
        )
    latest = latest_version_number(session)
    if latest is None or round_.model_version != latest:
        raise StoreError(
            ErrorCode.CONFLICT,
            f"round {round_.round_id!r} trains from model version {round_.model_version}, "
            f"but the latest version is {latest}",
        )
    taken = session.scalar(select(RoundRow.round_id).where(RoundRow.number == round_.number))
    if taken is not None:
        raise StoreError(
            ErrorCode.CONFLICT, f"round number {round_.number} is taken by round {taken!r}"
        )
    _check_clients(session, [p.client_id for p in participants])

    session.add(round_to_row(round_))
    session.flush()  # the round first: the partial unique index settles a race for "open"
    session.add_all(
        ParticipantRow(
            round_id=p.round_id,
            secagg_id=p.secagg_id,
            client_id=p.client_id,
            status=p.status,
            dropped_in=p.dropped_in,
            drop_reason=p.drop_reason,
            input_complete=False,
        )
        for p in participants
    )
    session.add(
        PhaseTimingRow(round_id=round_.round_id, phase=round_.phase, started_at=round_.started_at)
    )


def _check_new_round(round_: Round, participants: Sequence[Participant]) -> None:
    if not round_.is_open or round_.outcome is not RoundOutcome.RUNNING:
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"a new round must be open and running, not {round_.phase.value}/"
            f"{round_.outcome.value}",
        )
    require_aware("started_at", round_.started_at)
    require_aware("deadline", round_.deadline)
    if not participants:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, "a round needs a cohort")
    others = {p.round_id for p in participants} - {round_.round_id}
    if others:
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"participants of round(s) {sorted(others)} given for round {round_.round_id!r}",
        )
    secagg_ids = [p.secagg_id for p in participants]
    client_ids = [p.client_id for p in participants]
    if len(set(secagg_ids)) != len(secagg_ids) or len(set(client_ids)) != len(client_ids):
        raise StoreError(ErrorCode.INVALID_ARGUMENT, "a cohort repeats a secagg or client id")
    if min(secagg_ids) < 1:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, "secagg ids start at 1")


def _check_clients(session: Session, client_ids: list[int]) -> None:
    rows = session.execute(
        select(ClientRow.client_id, ClientRow.revoked_at).where(ClientRow.client_id.in_(client_ids))
    ).all()
    missing = sorted(set(client_ids) - {row.client_id for row in rows})
    if missing:
        raise StoreError(ErrorCode.NOT_FOUND, f"no enrolled clients {missing}")
    revoked = sorted(row.client_id for row in rows if row.revoked_at is not None)
    if revoked:
        raise StoreError(ErrorCode.REVOKED, f"clients {revoked} are revoked")


def advance_phase(
    session: Session,
    round_id: str,
    *,
    expected: RoundPhase,
    new: RoundPhase,
    now: datetime,
    deadline: datetime,
    dropped: Mapping[int, str],
    statuses: Mapping[int, ParticipantStatus] | None,
) -> Round:
    """See ``Store.advance_phase``. A participant dropped earlier stays dropped (its entry
    in ``statuses`` is ignored); ``statuses`` cannot drop (``INVALID_ARGUMENT``: use
    ``dropped``, which carries the reason)."""
    if new in (RoundPhase.COMMITTED, RoundPhase.ABORTED) or not is_valid_transition(expected, new):
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"advance_phase cannot move a round from {expected.value} to {new.value}",
        )
    statuses = statuses or {}
    if ParticipantStatus.DROPPED in statuses.values() or set(statuses) & set(dropped):
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT, "statuses may not drop; name dropped ids in dropped"
        )
    require_aware("now", now)
    require_aware("deadline", deadline)
    row = lock_round(session, round_id)
    require_phase(row, expected)

    _apply_drops(session, round_id, expected, dropped)
    if statuses:
        targets = _participants(session, round_id, statuses)
        for participant in targets.values():
            if participant.status is not ParticipantStatus.DROPPED:
                participant.status = statuses[participant.secagg_id]
    _close_timing(session, round_id, expected, now)
    session.add(PhaseTimingRow(round_id=round_id, phase=new, started_at=now))
    row.phase = new
    row.deadline = deadline
    session.flush()
    return round_from_row(row)


def abort_round(
    session: Session,
    round_id: str,
    *,
    reason: str,
    now: datetime,
    dropped: Mapping[int, str] | None,
) -> Round:
    """See ``Store.abort_round``. Survivors are the participants not dropped; the round's
    protocol records are deleted (``sql_retention.forget_round_records``)."""
    require_aware("now", now)
    row = lock_round(session, round_id)
    if row.phase is RoundPhase.ABORTED:
        return round_from_row(row)
    if row.phase is RoundPhase.COMMITTED:
        raise StoreError(
            ErrorCode.WRONG_PHASE, f"round {round_id} is committed and cannot be aborted"
        )
    _apply_drops(session, round_id, row.phase, dropped or {})
    alive = _close_timing(session, round_id, row.phase, now)
    row.phase = RoundPhase.ABORTED
    row.outcome = RoundOutcome.ABORTED
    row.finished_at = now
    row.abort_reason = reason
    row.survivors = alive
    forget_round_records(session, round_id)
    session.flush()
    return round_from_row(row)


def commit_round(
    session: Session,
    round_id: str,
    *,
    version: ModelVersion,
    now: datetime,
    dropped: Mapping[int, str] | None,
) -> Round:
    """See ``Store.commit_round``. ``version.round_id`` must name this round
    (``INVALID_ARGUMENT``); the round's protocol records are deleted
    (``sql_retention.forget_round_records``)."""
    require_aware("now", now)
    require_aware("version.created_at", version.created_at)
    for name in ("model_sha256", "global_update_sha256", "second_moment_sha256"):
        require_sha256(f"version.{name}", getattr(version, name))
    if version.round_id != round_id:
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"model version {version.version} names round {version.round_id!r}, not {round_id!r}",
        )
    row = lock_round(session, round_id)
    require_phase(row, RoundPhase.UNMASKING)
    latest = latest_version_number(session)
    if latest is None or version.version != latest + 1 or row.model_version != latest:
        raise StoreError(
            ErrorCode.CONFLICT,
            f"model version {version.version} from round {round_id} (trained from version "
            f"{row.model_version}) does not follow the latest version {latest}",
        )
    session.add(version_to_row(version))
    _apply_drops(session, round_id, RoundPhase.UNMASKING, dropped or {})
    answered = select(UnmaskResponseRow.secagg_id).where(UnmaskResponseRow.round_id == round_id)
    session.execute(
        update(ParticipantRow)
        .where(
            ParticipantRow.round_id == round_id,
            ParticipantRow.secagg_id.in_(answered),
            ParticipantRow.status != ParticipantStatus.DROPPED,
        )
        .values(status=ParticipantStatus.UNMASKED)
        .execution_options(synchronize_session=False)
    )
    _close_timing(session, round_id, RoundPhase.UNMASKING, now)
    row.phase = RoundPhase.COMMITTED
    row.outcome = RoundOutcome.COMMITTED
    row.finished_at = now
    row.survivors = version.num_clients
    forget_round_records(session, round_id)
    session.flush()
    return round_from_row(row)


def drop_participant(session: Session, round_id: str, secagg_id: int, *, reason: str) -> None:
    """See ``Store.drop_participant``. ``WRONG_PHASE`` if the round is finished."""
    row = lock_round(session, round_id)
    if row.phase not in OPEN_PHASES:
        raise StoreError(
            ErrorCode.WRONG_PHASE, f"round {round_id} is {row.phase.value}: nobody can drop"
        )
    _apply_drops(session, round_id, row.phase, {secagg_id: reason})


def _participants(
    session: Session, round_id: str, secagg_ids: Mapping[int, object]
) -> dict[int, ParticipantRow]:
    """The named participants; ``NOT_IN_COHORT`` if any is not in the round."""
    rows = session.scalars(
        select(ParticipantRow).where(
            ParticipantRow.round_id == round_id, ParticipantRow.secagg_id.in_(list(secagg_ids))
        )
    ).all()
    found = {row.secagg_id: row for row in rows}
    missing = sorted(set(secagg_ids) - set(found))
    if missing:
        raise StoreError(
            ErrorCode.NOT_IN_COHORT, f"secagg ids {missing} are not in round {round_id}'s cohort"
        )
    return found


def _apply_drops(
    session: Session, round_id: str, phase: RoundPhase, dropped: Mapping[int, str]
) -> None:
    """Mark participants DROPPED in ``phase``; an earlier drop keeps its phase and reason."""
    if not dropped:
        return
    for secagg_id, participant in _participants(session, round_id, dropped).items():
        if participant.status is not ParticipantStatus.DROPPED:
            participant.status = ParticipantStatus.DROPPED
            participant.dropped_in = phase
            participant.drop_reason = dropped[secagg_id]


def _close_timing(session: Session, round_id: str, phase: RoundPhase, now: datetime) -> int:
    """Close ``phase``'s timing at ``now`` with the participants alive; returns that count."""
    alive = session.scalar(
        select(func.count())
        .select_from(ParticipantRow)
        .where(
            ParticipantRow.round_id == round_id,
            ParticipantRow.status != ParticipantStatus.DROPPED,
        )
    )
    timing = session.get(PhaseTimingRow, (round_id, phase))
    if timing is None:  # a round stored without its first timing: record the phase anyway
        timing = PhaseTimingRow(round_id=round_id, phase=phase, started_at=now)
        session.add(timing)
    timing.closed_at = now
    timing.alive = alive or 0
    return alive or 0
