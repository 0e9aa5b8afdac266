"""The checks every SQL store write makes before it writes, inside its transaction.

- ``lock_round`` reads a round with ``SELECT ... FOR UPDATE`` (PostgreSQL; SQLite's
  ``BEGIN IMMEDIATE`` already serializes writers), so a phase cannot change between a
  write's check and its commit, and concurrent writes to one round queue up.
- ``writable_participant`` is the check of every ``add_*``: the round is in the record's
  phase, and the participant is in the cohort and not dropped.
- ``insert_once`` inserts a record under a savepoint and, when a unique key says it is
  already there, compares: ``DUPLICATE`` for the same record, ``CONFLICT`` for another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import exc, func, insert, select
from sqlalchemy.orm import Session

from coordinator.domain import AddResult, ParticipantStatus, RoundPhase
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.tables import Base, ModelVersionRow, ParticipantRow, RoundRow

__all__ = [
    "insert_once",
    "latest_version_number",
    "lock_round",
    "require_aware",
    "require_phase",
    "require_sha256",
    "writable_participant",
]

_T = TypeVar("_T")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def require_aware(name: str, value: datetime) -> datetime:
    """``value`` if it is timezone-aware; ``INVALID_ARGUMENT`` if naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT, f"{name} must be timezone-aware (UTC), got {value!r}"
        )
    return value


def require_sha256(name: str, value: str) -> str:
    """``value`` if it is a sha256 digest as 64 lowercase hex characters."""
    if not _SHA256_HEX.fullmatch(value):
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT, f"{name} is not 64 lowercase hex characters: {value!r}"
        )
    return value


def lock_round(session: Session, round_id: str) -> RoundRow:
    """The round's row, locked until the transaction ends. ``NOT_FOUND``."""
    row = session.scalars(
        select(RoundRow).where(RoundRow.round_id == round_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise StoreError(ErrorCode.NOT_FOUND, f"no round {round_id!r}")
    return row


def require_phase(row: RoundRow, phase: RoundPhase) -> None:
    """``WRONG_PHASE`` unless the (locked) round is in ``phase``."""
    if row.phase is not phase:
        raise StoreError(
            ErrorCode.WRONG_PHASE,
            f"round {row.round_id} is in phase {row.phase.value}, not {phase.value}",
        )


def writable_participant(
    session: Session, round_id: str, secagg_id: int, phase: RoundPhase
) -> ParticipantRow:
    """Lock the round, check it is in ``phase``, and return the live participant.

    Raises ``NOT_FOUND`` (no round), ``WRONG_PHASE``, or ``NOT_IN_COHORT`` (not selected,
    or dropped: a dropped participant is out of the round for good).
    """
    require_phase(lock_round(session, round_id), phase)
    participant = session.get(ParticipantRow, (round_id, secagg_id))
    if participant is None:
        raise StoreError(
            ErrorCode.NOT_IN_COHORT, f"secagg id {secagg_id} is not in round {round_id}'s cohort"
        )
    if participant.status is ParticipantStatus.DROPPED:
        dropped_in = participant.dropped_in.value if participant.dropped_in else "?"
        raise StoreError(
            ErrorCode.NOT_IN_COHORT,
            f"secagg id {secagg_id} was dropped from round {round_id} in {dropped_in}: "
            f"{participant.drop_reason or 'no reason given'}",
        )
    return participant


def insert_once(
    session: Session,
    rows: Iterable[Base],
    *,
    bulk: Sequence[tuple[type[Base], Sequence[Mapping[str, Any]]]] = (),
    stored: Callable[[], _T | None],
    same: Callable[[_T], bool],
    what: str,
) -> AddResult:
    """Insert ``rows`` (one record) under a savepoint; on a unique violation, compare.

    ``bulk`` holds more rows of the same record as column values, table by table: each
    table's go in one multi-row INSERT, without an ORM object each (a participant's k
    sealed shares, or the shares it reveals: at k = 82 the objects and their flush were
    most of the coordinator's CPU in those phases). ``rows`` are flushed first.

    ``stored()`` reads the record already stored under the key (None if there is none);
    ``same`` says whether it equals the one being added. Returns ``ADDED`` or
    ``DUPLICATE``; raises ``CONFLICT`` when the stored record differs. An integrity error
    with nothing stored under the key (a foreign key) propagates.
    """
    try:
        with session.begin_nested():
            session.add_all(rows)
            session.flush()
            for table, values in bulk:
                if values:
                    session.execute(insert(table), list(values))
    except exc.IntegrityError:
        existing = stored()
        if existing is None:
            raise
        if same(existing):
            return AddResult.DUPLICATE
        raise StoreError(ErrorCode.CONFLICT, f"a different {what} is already stored") from None
    return AddResult.ADDED


def latest_version_number(session: Session) -> int | None:
    """The highest model version stored, or None."""
    return session.scalar(select(func.max(ModelVersionRow.version)))
