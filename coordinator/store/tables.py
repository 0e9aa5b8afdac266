"""The SQL schema of the coordinator's store, as SQLAlchemy ORM tables.

This module declares what the Alembic migrations in ``coordinator/migrations`` must
produce; a test compares the migrated database against ``metadata`` and fails on any
difference. Change both together, in a new dated migration.

Conventions:

- Times are ``UtcDateTime``: timezone-aware UTC in and out, on every backend.
- Enums are stored as their string values (``VARCHAR``, no native database enum), so a new
  member needs no migration.
- Bytes are ``LargeBinary``; sha256 digests are 64 lowercase hex characters.
- Round-scoped records hang off ``participants`` by ``(round_id, secagg_id)`` and are
  deleted with their round (``ON DELETE CASCADE``), so old rounds can be pruned.
- Every constraint and index has a name from ``NAMING_CONVENTION``, so migrations can
  address it on every backend.

Rows never leave the store: ``coordinator.store.rows`` turns them into domain objects inside
the session.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from coordinator.domain import ParticipantStatus, RoundOutcome, RoundPhase

__all__ = [
    "NAMING_CONVENTION",
    "AdvertisedKeysRow",
    "AuditRow",
    "Base",
    "ClientRow",
    "ConsistencySignatureRow",
    "InputChunkRow",
    "ModelVersionRow",
    "NoteRow",
    "ParticipantRow",
    "PhaseTimingRow",
    "RoundRow",
    "ShareRow",
    "TokenRow",
    "UnmaskResponseRow",
    "UnmaskShareRow",
    "UtcDateTime",
    "metadata",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_SHA256 = 64
_ENUM_LENGTH = 32


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on every backend.

    PostgreSQL stores ``TIMESTAMP WITH TIME ZONE``; SQLite, which has no time zones,
    stores the UTC wall time. A naive ``datetime`` is refused with ``ValueError`` (the
    session turns it into ``INVALID_ARGUMENT``): its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum(cls: type[enum.Enum]) -> Enum:
    """A column type that stores ``cls``'s members as their string values."""
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=_ENUM_LENGTH,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime}  # noqa: RUF012


# --- enrollment -----------------------------------------------------------------------


class ClientRow(Base):
    """An enrolled agent. ``certificate_serial`` is decimal text: X.509 serials reach 159 bits."""

    __tablename__ = "clients"
    __table_args__ = (
        UniqueConstraint("identity_key"),
        Index(None, "certificate_serial"),
        {"sqlite_autoincrement": True},
    )

    client_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity_key: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[str] = mapped_column(Text)
    certificate_pem: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_serial: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class TokenRow(Base):
    """A single-use enrollment token, by the sha256 (hex) of its secret."""

    __tablename__ = "enrollment_tokens"
    __table_args__ = (UniqueConstraint("client_id"),)

    token_hash: Mapped[str] = mapped_column(String(_SHA256), primary_key=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.client_id"))


# --- rounds ---------------------------------------------------------------------------


class RoundRow(Base):
    """A round. The partial unique index admits at most one running round."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("number"),
        Index(
            "uq_rounds_one_running",
            "outcome",
            unique=True,
            sqlite_where=text("outcome = 'running'"),
            postgresql_where=text("outcome = 'running'"),
        ),
    )

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[int] = mapped_column(Integer)
    phase: Mapped[RoundPhase] = mapped_column(_enum(RoundPhase))
    outcome: Mapped[RoundOutcome] = mapped_column(_enum(RoundOutcome))
    config: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    deadline: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    abort_reason: Mapped[str | None] = mapped_column(Text)
    survivors: Mapped[int | None] = mapped_column(Integer)


class PhaseTimingRow(Base):
    """When a round's phase opened and closed, and how many participants were alive."""

    __tablename__ = "phase_timings"

    round_id: Mapped[str] = mapped_column(
        ForeignKey("rounds.round_id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[RoundPhase] = mapped_column(_enum(RoundPhase), primary_key=True)
    started_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    alive: Mapped[int | None] = mapped_column(Integer)


class ParticipantRow(Base):
    """A client in a round's cohort. ``input_complete`` survives a later drop: the input is
    in the sum either way."""

    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("round_id", "client_id"),
        Index(None, "client_id"),
    )

    round_id: Mapped[str] = mapped_column(
        ForeignKey("rounds.round_id", ondelete="CASCADE"), primary_key=True
    )
    secagg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.client_id"))
    status: Mapped[ParticipantStatus] = mapped_column(_enum(ParticipantStatus))
    dropped_in: Mapped[RoundPhase | None] = mapped_column(_enum(RoundPhase))
    drop_reason: Mapped[str | None] = mapped_column(Text)
    input_complete: Mapped[bool] = mapped_column(Boolean)


def _participant_fk(column: str) -> ForeignKeyConstraint:
    """``(round_id, column)`` references a participant; deleted with the round."""
    return ForeignKeyConstraint(
        ["round_id", column],
        ["participants.round_id", "participants.secagg_id"],
        ondelete="CASCADE",
    )


# --- secure-aggregation records -------------------------------------------------------


class AdvertisedKeysRow(Base):
    __tablename__ = "advertised_keys"
    __table_args__ = (_participant_fk("secagg_id"),)

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secagg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    encryption_key: Mapped[bytes] = mapped_column(LargeBinary)
    masking_key: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    # NULL only in rows written before revision 20261201_0002; such a round cannot resume.
    self_mask_commitment: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ShareRow(Base):
    """One sealed share, routed sender → recipient; the index serves a recipient's fetch."""

    __tablename__ = "encrypted_shares"
    __table_args__ = (
        _participant_fk("sender"),
        _participant_fk("recipient"),
        Index(None, "round_id", "recipient"),
    )

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sender: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    recipient: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class InputChunkRow(Base):
    """The receipt of one durable chunk of a masked input (the bytes live in the spool)."""

    __tablename__ = "input_chunks"
    __table_args__ = (
        _participant_fk("secagg_id"),
        CheckConstraint("chunk_index >= 0", name="chunk_index_non_negative"),
    )

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secagg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(_SHA256))


class ConsistencySignatureRow(Base):
    __tablename__ = "consistency_signatures"
    __table_args__ = (_participant_fk("secagg_id"),)

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secagg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class UnmaskResponseRow(Base):
    """That a participant answered the unmask request (its shares are in ``unmask_shares``)."""

    __tablename__ = "unmask_responses"
    __table_args__ = (_participant_fk("secagg_id"),)

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secagg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class UnmaskShareRow(Base):
    """One revealed share: ``holder`` reveals its share of ``owner``'s self-mask seed
    (kind ``b``) or masking key (kind ``s``); never both for one owner (primary key)."""

    __tablename__ = "unmask_shares"
    __table_args__ = (
        ForeignKeyConstraint(
            ["round_id", "holder"],
            ["unmask_responses.round_id", "unmask_responses.secagg_id"],
            ondelete="CASCADE",
        ),
        _participant_fk("owner"),
        CheckConstraint("kind IN ('b', 's')", name="kind_b_or_s"),
        Index(None, "round_id", "owner"),
    )

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(1))
    share: Mapped[bytes] = mapped_column(LargeBinary)


# --- model versions and audit ---------------------------------------------------------


class ModelVersionRow(Base):
    """A model version and its optimizer state, by blob digest; one per committed round.

    ``pinned`` keeps its blobs whatever the retention policy says; ``blobs_deleted_at`` is
    set once the policy released them (the row stays, as history)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("round_id"),)

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime]
    model_sha256: Mapped[str] = mapped_column(String(_SHA256))
    global_update_sha256: Mapped[str] = mapped_column(String(_SHA256))
    second_moment_sha256: Mapped[str] = mapped_column(String(_SHA256))
    global_step: Mapped[int] = mapped_column(BigInteger)
    layout_fingerprint: Mapped[str] = mapped_column(Text)
    round_id: Mapped[str | None] = mapped_column(ForeignKey("rounds.round_id"))
    num_clients: Mapped[int] = mapped_column(Integer)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    blobs_deleted_at: Mapped[datetime | None]


class AuditRow(Base):
    """The append-only audit log; listed newest first by ``(at, event_id)``."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at", "event_id"), {"sqlite_autoincrement": True})

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)


class NoteRow(Base):
    """A short note the service keeps for the admin commands, by key (``not_starting``: why
    no round starts). Rewritten in place, so the table holds one row per key."""

    __tablename__ = "service_notes"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]
