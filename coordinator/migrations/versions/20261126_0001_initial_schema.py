"""The initial schema: enrollment, rounds and their secure-aggregation records, model
versions and the audit log.

Revision ID: 20261126_0001
Revises:
Create Date: 2026-11-26

Self-contained on purpose: it spells out the types (``DateTime(timezone=True)`` for
``UtcDateTime``, ``VARCHAR(32)`` for the enums stored as values) instead of importing
``coordinator.store.tables``, which later revisions will change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "20261126_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_RUNNING = sa.text("outcome = 'running'")


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _enum(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(length=32), nullable=nullable)


def _sha256(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.String(length=64), nullable=False)


def _key(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), autoincrement=False, nullable=False)


def _round_id() -> sa.Column[object]:
    return sa.Column("round_id", sa.String(length=64), nullable=False)


def _participant_fk(table: str, column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["round_id", column],
        ["participants.round_id", "participants.secagg_id"],
        name=f"fk_{table}_round_id_{column}_participants",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("event_id", sa.Integer(), autoincrement=True, nullable=False),
        _time("at"),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_audit_log"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_at_event_id", "audit_log", ["at", "event_id"])

    op.create_table(
        "clients",
        sa.Column("client_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("identity_key", sa.LargeBinary(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("certificate_pem", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_serial", sa.String(length=64), nullable=False),
        _time("enrolled_at"),
        _time("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("client_id", name="pk_clients"),
        sa.UniqueConstraint("identity_key", name="uq_clients_identity_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_clients_certificate_serial", "clients", ["certificate_serial"])

    op.create_table(
        "enrollment_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        _time("used_at", nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.client_id"], name="fk_enrollment_tokens_client_id_clients"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_enrollment_tokens"),
        sa.UniqueConstraint("client_id", name="uq_enrollment_tokens_client_id"),
    )

    op.create_table(
        "rounds",
        _round_id(),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        _enum("phase"),
        _enum("outcome"),
        sa.Column("config", sa.Text(), nullable=False),
        _time("started_at"),
        _time("deadline"),
        _time("finished_at", nullable=True),
        sa.Column("abort_reason", sa.Text(), nullable=True),
        sa.Column("survivors", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("round_id", name="pk_rounds"),
        sa.UniqueConstraint("number", name="uq_rounds_number"),
    )
    op.create_index(
        "uq_rounds_one_running",
        "rounds",
        ["outcome"],
        unique=True,
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )

    op.create_table(
        "phase_timings",
        _round_id(),
        _enum("phase"),
        _time("started_at"),
        _time("closed_at", nullable=True),
        sa.Column("alive", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.round_id"],
            name="fk_phase_timings_round_id_rounds",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("round_id", "phase", name="pk_phase_timings"),
    )

    op.create_table(
        "participants",
        _round_id(),
        _key("secagg_id"),
        sa.Column("client_id", sa.Integer(), nullable=False),
        _enum("status"),
        _enum("dropped_in", nullable=True),
        sa.Column("drop_reason", sa.Text(), nullable=True),
        sa.Column("input_complete", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.client_id"], name="fk_participants_client_id_clients"
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.round_id"],
            name="fk_participants_round_id_rounds",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("round_id", "secagg_id", name="pk_participants"),
        sa.UniqueConstraint("round_id", "client_id", name="uq_participants_round_id_client_id"),
    )
    op.create_index("ix_participants_client_id", "participants", ["client_id"])

    op.create_table(
        "advertised_keys",
        _round_id(),
        _key("secagg_id"),
        sa.Column("encryption_key", sa.LargeBinary(), nullable=False),
        sa.Column("masking_key", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        _participant_fk("advertised_keys", "secagg_id"),
        sa.PrimaryKeyConstraint("round_id", "secagg_id", name="pk_advertised_keys"),
    )

    op.create_table(
        "encrypted_shares",
        _round_id(),
        _key("sender"),
        _key("recipient"),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        _participant_fk("encrypted_shares", "sender"),
        _participant_fk("encrypted_shares", "recipient"),
        sa.PrimaryKeyConstraint("round_id", "sender", "recipient", name="pk_encrypted_shares"),
    )
    op.create_index(
        "ix_encrypted_shares_round_id_recipient", "encrypted_shares", ["round_id", "recipient"]
    )

    op.create_table(
        "input_chunks",
        _round_id(),
        _key("secagg_id"),
        _key("chunk_index"),
        _sha256("sha256"),
        sa.CheckConstraint("chunk_index >= 0", name="ck_input_chunks_chunk_index_non_negative"),
        _participant_fk("input_chunks", "secagg_id"),
        sa.PrimaryKeyConstraint("round_id", "secagg_id", "chunk_index", name="pk_input_chunks"),
    )

    op.create_table(
        "consistency_signatures",
        _round_id(),
        _key("secagg_id"),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        _participant_fk("consistency_signatures", "secagg_id"),
        sa.PrimaryKeyConstraint("round_id", "secagg_id", name="pk_consistency_signatures"),
    )

    op.create_table(
        "unmask_responses",
        _round_id(),
        _key("secagg_id"),
        _participant_fk("unmask_responses", "secagg_id"),
        sa.PrimaryKeyConstraint("round_id", "secagg_id", name="pk_unmask_responses"),
    )

    op.create_table(
        "unmask_shares",
        _round_id(),
        _key("holder"),
        _key("owner"),
        sa.Column("kind", sa.String(length=1), nullable=False),
        sa.Column("share", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind IN ('b', 's')", name="ck_unmask_shares_kind_b_or_s"),
        sa.ForeignKeyConstraint(
            ["round_id", "holder"],
            ["unmask_responses.round_id", "unmask_responses.secagg_id"],
            name="fk_unmask_shares_round_id_holder_unmask_responses",
            ondelete="CASCADE",
        ),
        _participant_fk("unmask_shares", "owner"),
        sa.PrimaryKeyConstraint("round_id", "holder", "owner", name="pk_unmask_shares"),
    )
    op.create_index("ix_unmask_shares_round_id_owner", "unmask_shares", ["round_id", "owner"])

    op.create_table(
        "model_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        _time("created_at"),
        _sha256("model_sha256"),
        _sha256("global_update_sha256"),
        _sha256("second_moment_sha256"),
        sa.Column("global_step", sa.BigInteger(), nullable=False),
        sa.Column("layout_fingerprint", sa.Text(), nullable=False),
        sa.Column("round_id", sa.String(length=64), nullable=True),
        sa.Column("num_clients", sa.Integer(), nullable=False),
        sa.Column("test_loss", sa.Float(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"], ["rounds.round_id"], name="fk_model_versions_round_id_rounds"
        ),
        sa.PrimaryKeyConstraint("version", name="pk_model_versions"),
        sa.UniqueConstraint("round_id", name="uq_model_versions_round_id"),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "model_versions",
        "unmask_shares",
        "unmask_responses",
        "consistency_signatures",
        "input_chunks",
        "encrypted_shares",
        "advertised_keys",
        "participants",
        "phase_timings",
        "rounds",
        "enrollment_tokens",
        "clients",
        "audit_log",
    ):
        op.drop_table(table)
