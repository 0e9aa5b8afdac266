"""Retention in SQL: which model versions keep their blobs, pins, and ended rounds' secrets.

The database is the truth about which blobs are needed (docs/architecture.md, section 5):

- ``retire_versions`` marks, in one transaction, every version the policy no longer keeps
  as released (``blobs_deleted_at``); only then may the blob store delete what no retained
  version names (``retained_blobs``). A crash in between leaves unreferenced blobs, which
  the next pass removes; a retained version never names a deleted blob.
- ``set_pinned`` pins or unpins one version. Both lock the version rows they decide on
  (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serializes writers anyway), so a
  pin and a retention pass never cross: a version pinned first is kept, and a version
  released first cannot be pinned.
- ``forget_round_records`` deletes what a round's secure aggregation stored: the messages
  and receipts only a replay of the open round reads, its key material among them. The round
  lifecycle calls it in the transaction that ends the round.
- ``forget_rounds`` bounds the round history: it deletes the ended rounds older than the
  ``keep`` newest, with their participants and phase timings, and the model versions they
  made whose blobs are already released. A version whose blobs are kept stays, with
  ``round_id`` cleared. The newest round and the latest version are always kept, so round
  and version numbers (the highest plus one) never repeat.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from coordinator.domain import ModelVersion, RoundOutcome
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.rows import version_from_row
from coordinator.store.sql_guards import require_aware
from coordinator.store.tables import (
    AdvertisedKeysRow,
    ConsistencySignatureRow,
    InputChunkRow,
    ModelVersionRow,
    ParticipantRow,
    PhaseTimingRow,
    RoundRow,
    ShareRow,
    UnmaskResponseRow,
    UnmaskShareRow,
)

__all__ = [
    "forget_round_records",
    "forget_rounds",
    "not_retained_message",
    "retained_blobs",
    "retire_versions",
    "set_pinned",
]


def retire_versions(session: Session, *, keep: int, now: datetime) -> list[ModelVersion]:
    """Release the blobs of every retained version that is not among the ``keep`` newest,
    not pinned, and not the one an open round trains from; returns those, oldest first.

    ``INVALID_ARGUMENT`` for ``keep < 1``: the latest version is always needed.
    """
    if keep < 1:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"keep must be at least 1, got {keep}")
    require_aware("now", now)
    newest = set(
        session.scalars(
            select(ModelVersionRow.version).order_by(ModelVersionRow.version.desc()).limit(keep)
        )
    )
    training = set(
        session.scalars(
            select(RoundRow.model_version).where(RoundRow.outcome == RoundOutcome.RUNNING)
        )
    )
    rows = session.scalars(
        select(ModelVersionRow)
        .where(ModelVersionRow.blobs_deleted_at.is_(None))
        .order_by(ModelVersionRow.version)
        .with_for_update()
    ).all()
    released = []
    for row in rows:
        if row.pinned or row.version in newest or row.version in training:
            continue
        row.blobs_deleted_at = now
        released.append(row)
    session.flush()
    return [version_from_row(row) for row in released]


def retained_blobs(session: Session) -> frozenset[str]:
    """The sha256 of every blob a retained version names."""
    rows = session.execute(
        select(
            ModelVersionRow.model_sha256,
            ModelVersionRow.global_update_sha256,
            ModelVersionRow.second_moment_sha256,
        ).where(ModelVersionRow.blobs_deleted_at.is_(None))
    ).all()
    return frozenset(sha for row in rows for sha in row)


def set_pinned(session: Session, version: int, *, pinned: bool) -> ModelVersion:
    """Pin or unpin ``version``. ``NOT_FOUND`` if there is none, or (pinning) if the
    retention policy already released its blobs."""
    row = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.version == version).with_for_update()
    ).one_or_none()
    if row is None:
        raise StoreError(ErrorCode.NOT_FOUND, f"no model version {version}")
    if pinned and row.blobs_deleted_at is not None:
        raise StoreError(ErrorCode.NOT_FOUND, not_retained_message(version_from_row(row)))
    row.pinned = pinned
    session.flush()
    return version_from_row(row)


def not_retained_message(version: ModelVersion) -> str:
    """What a user is told about a version whose blobs the retention policy released."""
    deleted = version.blobs_deleted_at
    when = deleted.isoformat(timespec="seconds") if deleted is not None else "?"
    return (
        f"model version {version.version} was not retained: the retention policy deleted its "
        f"blobs at {when} (it keeps the newest [retention] keep_versions versions and the "
        "pinned ones); pin a version with `fedadamw-coordinator version pin N` or export it "
        "while it is kept"
    )


# A round's protocol records, children first: unmask_shares references unmask_responses,
# and each references a participant.
_PROTOCOL_RECORDS = (
    UnmaskShareRow,
    UnmaskResponseRow,
    ConsistencySignatureRow,
    InputChunkRow,
    ShareRow,
    AdvertisedKeysRow,
)


def forget_round_records(session: Session, round_id: str) -> None:
    """Delete the round's protocol records: advertised keys, sealed shares, chunk receipts,
    consistency signatures, unmask responses and the shares they revealed. Only a replay of
    the open round reads them (docs/architecture.md, section 5, "Ended rounds"); what
    ``status`` reads (the round, its participants and phase timings) stays."""
    for table in _PROTOCOL_RECORDS:
        session.execute(delete(table).where(table.round_id == round_id))


def forget_rounds(session: Session, *, keep: int) -> list[str]:
    """Delete every ended round but the ``keep`` newest (by number), with its participants
    and phase timings, and the versions they made whose blobs are released; returns their
    ids, oldest first. A running round is never deleted, and a version whose blobs are kept
    (pinned, or among the newest) stays, with ``round_id`` cleared.

    ``INVALID_ARGUMENT`` for ``keep < 1``: the newest round numbers the next one.
    """
    if keep < 1:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"keep must be at least 1, got {keep}")
    kept_from = (
        select(RoundRow.number).order_by(RoundRow.number.desc()).offset(keep - 1).limit(1)
    ).scalar_subquery()
    doomed = list(
        session.scalars(
            select(RoundRow.round_id)
            .where(RoundRow.number < kept_from, RoundRow.outcome != RoundOutcome.RUNNING)
            .order_by(RoundRow.number)
        )
    )
    # Children first, explicitly, on either backend; a version's round_id has no cascade.
    # Batches keep each IN list well under either backend's parameter limit.
    for start in range(0, len(doomed), 500):
        batch = doomed[start : start + 500]
        made = ModelVersionRow.round_id.in_(batch)
        released = ModelVersionRow.blobs_deleted_at.is_not(None)
        session.execute(delete(ModelVersionRow).where(made, released))
        session.execute(update(ModelVersionRow).where(made).values(round_id=None))
        for table in (*_PROTOCOL_RECORDS, ParticipantRow, PhaseTimingRow, RoundRow):
            session.execute(delete(table).where(table.round_id.in_(batch)))
    return doomed
