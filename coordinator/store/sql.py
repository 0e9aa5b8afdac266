"""``SqlStore``: the ``Store`` over SQLAlchemy, on SQLite (the default) or PostgreSQL.

    store = SqlStore(default_sqlite_url(data_dir))   # or postgresql+psycopg://...
    store.check_schema()                             # SCHEMA_OUTDATED names the upgrade
    ...
    store.close()

Every method is one transaction (``coordinator.store.session.Database``): writes are
``BEGIN IMMEDIATE`` on SQLite and lock the rows they check on PostgreSQL
(``SELECT ... FOR UPDATE``), so several coordinator processes can share the database.
Rows become domain objects inside the transaction; nothing ORM-bound is returned.

Enrollment is in ``sql_enrollment``, the round lifecycle in ``sql_rounds``, the
secure-aggregation records in ``sql_records``, retention (released blobs, pins, ended rounds'
shares) in ``sql_retention``; this module holds model versions and the
audit log, and wires the rest. Contract details beyond ``Store``'s docstrings are stated per method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import func, select

from coordinator.domain import (
    AddResult,
    AdvertisedKeysRecord,
    AuditEvent,
    Client,
    ConsistencySignatureRecord,
    EnrollmentToken,
    InputChunkRecord,
    ModelVersion,
    Participant,
    ParticipantStatus,
    PhaseTiming,
    Round,
    RoundOutcome,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
    phase_rank,
)
from coordinator.errors import ErrorCode, StoreError
from coordinator.store import sql_enrollment, sql_records, sql_retention, sql_rounds
from coordinator.store.base import IssueCertificate, Store
from coordinator.store.rows import (
    audit_from_row,
    client_from_row,
    participant_from_row,
    phase_timing_from_row,
    round_from_row,
    version_from_row,
    version_to_row,
)
from coordinator.store.schema import require_head
from coordinator.store.session import Database, default_sqlite_url
from coordinator.store.sql_guards import insert_once, require_aware, require_sha256
from coordinator.store.tables import (
    AuditRow,
    ClientRow,
    ModelVersionRow,
    NoteRow,
    ParticipantRow,
    PhaseTimingRow,
    RoundRow,
)

__all__ = ["SqlStore", "default_sqlite_url"]


class SqlStore(Store):
    """The store on the database at ``url`` (``sqlite:///FILE`` or
    ``postgresql+psycopg://USER@HOST:PORT/DB``). Connects lazily; thread-safe.

    Raises ``INVALID_ARGUMENT`` for an unsupported URL. Any method raises
    ``STORE_UNAVAILABLE`` when the database cannot be reached, and ``SCHEMA_OUTDATED``
    when a table it needs is missing.
    """

    def __init__(self, url: str) -> None:
        self._db = Database(url)

    @classmethod
    def open(cls, url: str) -> SqlStore:
        """``SqlStore(url)``, after checking the schema is at the code's revision."""
        store = cls(url)
        try:
            store.check_schema()
        except BaseException:
            store.close()
            raise
        return store

    def __repr__(self) -> str:
        return f"SqlStore({self._db.description})"

    def batch(self) -> AbstractContextManager[None]:
        return self._db.batch()

    # --- schema -------------------------------------------------------------------------

    def check_schema(self) -> None:
        require_head(self._db)

    def close(self) -> None:
        self._db.dispose()

    # --- enrollment ---------------------------------------------------------------------

    def create_token(self, token: EnrollmentToken) -> None:
        """``INVALID_ARGUMENT`` for a hash that is not sha256 hex or a token already used."""
        with self._db.transaction(write=True) as session:
            sql_enrollment.create_token(session, token)

    def enroll(
        self,
        *,
        token_hash: str,
        identity_key: bytes,
        label: str,
        now: datetime,
        issue_certificate: IssueCertificate,
    ) -> Client:
        """A token is expired from its ``expires_at`` on. Whatever ``issue_certificate``
        raises propagates unchanged, after the rollback."""
        with self._db.transaction(write=True) as session:
            return sql_enrollment.enroll(
                session,
                token_hash=token_hash,
                identity_key=identity_key,
                label=label,
                now=now,
                issue_certificate=issue_certificate,
            )

    def get_client(self, client_id: int) -> Client:
        with self._db.transaction(write=False) as session:
            return client_from_row(sql_enrollment.client_row(session, client_id))

    def list_clients(self) -> list[Client]:
        with self._db.transaction(write=False) as session:
            rows = session.scalars(select(ClientRow).order_by(ClientRow.client_id)).all()
            return [client_from_row(row) for row in rows]

    def revoke_client(self, client_id: int, *, now: datetime) -> Client:
        with self._db.transaction(write=True) as session:
            return sql_enrollment.revoke_client(session, client_id, now=now)

    def revoked_client_ids(self) -> frozenset[int]:
        """A scan of two columns that builds no ORM objects."""
        with self._db.transaction(write=False) as session:
            return frozenset(
                session.scalars(
                    select(ClientRow.client_id).where(ClientRow.revoked_at.is_not(None))
                )
            )

    def count_enrolled(self) -> int:
        with self._db.transaction(write=False) as session:
            count = session.scalar(
                select(func.count()).select_from(ClientRow).where(ClientRow.revoked_at.is_(None))
            )
            return int(count or 0)

    # --- rounds -------------------------------------------------------------------------

    def create_round(self, round_: Round, participants: Sequence[Participant]) -> None:
        """Also refuses an empty or inconsistent cohort (``INVALID_ARGUMENT``) and unknown
        (``NOT_FOUND``) or revoked (``REVOKED``) clients; see ``sql_rounds.create_round``."""
        with self._db.transaction(write=True) as session:
            sql_rounds.create_round(session, round_, participants)

    def get_round(self, round_id: str) -> Round:
        with self._db.transaction(write=False) as session:
            row = session.get(RoundRow, round_id)
            if row is None:
                raise StoreError(ErrorCode.NOT_FOUND, f"no round {round_id!r}")
            return round_from_row(row)

    def open_round(self) -> Round | None:
        with self._db.transaction(write=False) as session:
            row = session.scalars(
                select(RoundRow).where(RoundRow.outcome == RoundOutcome.RUNNING)
            ).first()
            return None if row is None else round_from_row(row)

    def list_rounds(self, *, limit: int | None = None) -> list[Round]:
        if limit is not None and limit < 0:
            raise StoreError(ErrorCode.INVALID_ARGUMENT, f"limit {limit} < 0")
        with self._db.transaction(write=False) as session:
            rows = session.scalars(
                select(RoundRow).order_by(RoundRow.number.desc()).limit(limit)
            ).all()
            return [round_from_row(row) for row in rows]

    def next_round_number(self) -> int:
        with self._db.transaction(write=False) as session:
            rows = session.scalars(select(RoundRow.number).order_by(RoundRow.number.desc()))
            highest = rows.first()
            return 0 if highest is None else highest + 1

    def list_participants(self, round_id: str) -> list[Participant]:
        """Empty for an unknown round."""
        with self._db.transaction(write=False) as session:
            rows = session.scalars(
                select(ParticipantRow)
                .where(ParticipantRow.round_id == round_id)
                .order_by(ParticipantRow.secagg_id)
            ).all()
            return [participant_from_row(row) for row in rows]

    def get_participant(self, round_id: str, client_id: int) -> Participant:
        with self._db.transaction(write=False) as session:
            row = session.scalars(
                select(ParticipantRow).where(
                    ParticipantRow.round_id == round_id, ParticipantRow.client_id == client_id
                )
            ).one_or_none()
            if row is None:
                raise StoreError(
                    ErrorCode.NOT_IN_COHORT,
                    f"client {client_id} was not selected into round {round_id!r}",
                )
            return participant_from_row(row)

    def list_phase_timings(self, round_id: str) -> list[PhaseTiming]:
        """Empty for an unknown round. Phases only move forward, so the order they started
        in is the order of ``RoundPhase``."""
        with self._db.transaction(write=False) as session:
            rows = session.scalars(
                select(PhaseTimingRow).where(PhaseTimingRow.round_id == round_id)
            ).all()
            timings = [phase_timing_from_row(row) for row in rows]
        return sorted(timings, key=lambda timing: phase_rank(timing.phase))

    def advance_phase(
        self,
        round_id: str,
        *,
        expected: RoundPhase,
        new: RoundPhase,
        now: datetime,
        deadline: datetime,
        dropped: Mapping[int, str],
        statuses: Mapping[int, ParticipantStatus] | None = None,
    ) -> Round:
        """Also ``NOT_FOUND`` (no round) and ``NOT_IN_COHORT`` (an unknown secagg id in
        ``dropped`` or ``statuses``); see ``sql_rounds.advance_phase``."""
        with self._db.transaction(write=True) as session:
            return sql_rounds.advance_phase(
                session,
                round_id,
                expected=expected,
                new=new,
                now=now,
                deadline=deadline,
                dropped=dropped,
                statuses=statuses,
            )

    def abort_round(
        self,
        round_id: str,
        *,
        reason: str,
        now: datetime,
        dropped: Mapping[int, str] | None = None,
    ) -> Round:
        """Sets ``survivors`` to the participants not dropped. ``NOT_FOUND``."""
        with self._db.transaction(write=True) as session:
            return sql_rounds.abort_round(
                session, round_id, reason=reason, now=now, dropped=dropped
            )

    def commit_round(
        self,
        round_id: str,
        *,
        version: ModelVersion,
        now: datetime,
        dropped: Mapping[int, str] | None = None,
    ) -> Round:
        """``WRONG_PHASE`` is checked before ``CONFLICT``; ``INVALID_ARGUMENT`` unless
        ``version.round_id`` is this round. ``NOT_FOUND``."""
        with self._db.transaction(write=True) as session:
            return sql_rounds.commit_round(
                session, round_id, version=version, now=now, dropped=dropped
            )

    # --- secure-aggregation records -----------------------------------------------------
    # Every add_* raises NOT_FOUND (no round), WRONG_PHASE (the round is not in the record's
    # phase) and NOT_IN_COHORT (the participant is not in the cohort, or was dropped).

    def add_advertised_keys(self, record: AdvertisedKeysRecord) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.add_advertised_keys(session, record)

    def list_advertised_keys(self, round_id: str) -> list[AdvertisedKeysRecord]:
        with self._db.transaction(write=False) as session:
            return sql_records.list_advertised_keys(session, round_id)

    def add_shares(self, round_id: str, sender: int, shares: Sequence[ShareRecord]) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.add_shares(session, round_id, sender, shares)

    def list_shares(self, round_id: str) -> list[ShareRecord]:
        with self._db.transaction(write=False) as session:
            return sql_records.list_shares(session, round_id)

    def add_input_chunk(self, record: InputChunkRecord) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.add_input_chunk(session, record)

    def list_input_chunks(
        self, round_id: str, secagg_id: int | None = None
    ) -> list[InputChunkRecord]:
        with self._db.transaction(write=False) as session:
            return sql_records.list_input_chunks(session, round_id, secagg_id)

    def mark_input_complete(self, round_id: str, secagg_id: int) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.mark_input_complete(session, round_id, secagg_id)

    def add_consistency_signature(self, record: ConsistencySignatureRecord) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.add_consistency_signature(session, record)

    def list_consistency_signatures(self, round_id: str) -> list[ConsistencySignatureRecord]:
        with self._db.transaction(write=False) as session:
            return sql_records.list_consistency_signatures(session, round_id)

    def add_unmask_response(self, record: UnmaskRecord) -> AddResult:
        with self._db.transaction(write=True) as session:
            return sql_records.add_unmask_response(session, record)

    def list_unmask_responses(self, round_id: str) -> list[UnmaskRecord]:
        with self._db.transaction(write=False) as session:
            return sql_records.list_unmask_responses(session, round_id)

    def drop_participant(self, round_id: str, secagg_id: int, *, reason: str) -> None:
        """``NOT_FOUND`` (no round); ``WRONG_PHASE`` once the round is finished."""
        with self._db.transaction(write=True) as session:
            sql_rounds.drop_participant(session, round_id, secagg_id, reason=reason)

    # --- model versions -----------------------------------------------------------------

    def add_initial_version(self, version: ModelVersion) -> AddResult:
        """ "The same version 0" means the same content: digests, step, layout and client
        count; ``created_at`` and a recorded evaluation do not count, so a restart that
        rebuilds version 0 gets DUPLICATE. ``INVALID_ARGUMENT`` unless it is version 0 of
        no round."""
        if version.version != 0 or version.round_id is not None:
            raise StoreError(
                ErrorCode.INVALID_ARGUMENT,
                f"the initial version is version 0 of no round, not {version.version} "
                f"of round {version.round_id!r}",
            )
        require_aware("created_at", version.created_at)
        for name in ("model_sha256", "global_update_sha256", "second_moment_sha256"):
            require_sha256(name, getattr(version, name))
        with self._db.transaction(write=True) as session:
            return insert_once(
                session,
                [version_to_row(version)],
                stored=lambda: session.get(ModelVersionRow, 0),
                same=lambda row: _same_content(version_from_row(row), version),
                what="version 0",
            )

    def latest_version(self) -> ModelVersion | None:
        with self._db.transaction(write=False) as session:
            row = session.scalars(
                select(ModelVersionRow).order_by(ModelVersionRow.version.desc()).limit(1)
            ).first()
            return None if row is None else version_from_row(row)

    def get_version(self, version: int) -> ModelVersion:
        with self._db.transaction(write=False) as session:
            return version_from_row(_version(session.get(ModelVersionRow, version), version))

    def list_versions(self) -> list[ModelVersion]:
        with self._db.transaction(write=False) as session:
            rows = session.scalars(select(ModelVersionRow).order_by(ModelVersionRow.version))
            return [version_from_row(row) for row in rows.all()]

    def record_evaluation(self, version: int, *, loss: float, accuracy: float | None) -> None:
        """A later evaluation replaces an earlier one."""
        with self._db.transaction(write=True) as session:
            row = _version(session.get(ModelVersionRow, version), version)
            row.test_loss = float(loss)
            row.test_accuracy = None if accuracy is None else float(accuracy)

    # --- retention ----------------------------------------------------------------------

    def pin_version(self, version: int, *, pinned: bool) -> ModelVersion:
        with self._db.transaction(write=True) as session:
            return sql_retention.set_pinned(session, version, pinned=pinned)

    def retire_versions(self, *, keep: int, now: datetime) -> list[ModelVersion]:
        with self._db.transaction(write=True) as session:
            return sql_retention.retire_versions(session, keep=keep, now=now)

    def retained_blobs(self) -> frozenset[str]:
        with self._db.transaction(write=False) as session:
            return sql_retention.retained_blobs(session)

    def forget_rounds(self, *, keep: int) -> list[str]:
        with self._db.transaction(write=True) as session:
            return sql_retention.forget_rounds(session, keep=keep)

    # --- audit --------------------------------------------------------------------------

    def audit(self, event: AuditEvent) -> None:
        """The store assigns ``event_id`` (the given one is ignored)."""
        require_aware("event.at", event.at)
        with self._db.transaction(write=True) as session:
            session.add(
                AuditRow(at=event.at, actor=event.actor, action=event.action, detail=event.detail)
            )

    def list_audit(self, *, limit: int = 100) -> list[AuditEvent]:
        """Newest first by event time; events at the same time, the later appended first."""
        if limit < 0:
            raise StoreError(ErrorCode.INVALID_ARGUMENT, f"limit {limit} < 0")
        with self._db.transaction(write=False) as session:
            rows = session.scalars(
                select(AuditRow).order_by(AuditRow.at.desc(), AuditRow.event_id.desc()).limit(limit)
            ).all()
            return [audit_from_row(row) for row in rows]

    def set_note(self, key: str, text: str | None, *, now: datetime) -> None:
        require_aware("now", now)
        with self._db.transaction(write=True) as session:
            row = session.get(NoteRow, key)
            if text is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(NoteRow(key=key, text=text, updated_at=now))
            else:
                row.text, row.updated_at = text, now

    def get_note(self, key: str) -> tuple[str, datetime] | None:
        with self._db.transaction(write=False) as session:
            row = session.get(NoteRow, key)
            return None if row is None else (row.text, row.updated_at)


def _version(row: ModelVersionRow | None, version: int) -> ModelVersionRow:
    if row is None:
        raise StoreError(ErrorCode.NOT_FOUND, f"no model version {version}")
    return row


def _same_content(stored: ModelVersion, given: ModelVersion) -> bool:
    return (
        stored.model_sha256,
        stored.global_update_sha256,
        stored.second_moment_sha256,
        stored.global_step,
        stored.layout_fingerprint,
        stored.num_clients,
    ) == (
        given.model_sha256,
        given.global_update_sha256,
        given.second_moment_sha256,
        given.global_step,
        given.layout_fingerprint,
        given.num_clients,
    )
