"""Advertised keys carry the client's signed commitment to its self-mask secret.

Revision ID: 20261201_0002
Revises: 20261126_0001
Create Date: 2026-12-01

The column is nullable: rows advertised before this revision have no commitment, and a
round left open across the upgrade cannot resume (it aborts and the next one starts).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_0002"
down_revision: str | None = "20261126_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("advertised_keys") as batch:
        batch.add_column(sa.Column("self_mask_commitment", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("advertised_keys") as batch:
        batch.drop_column("self_mask_commitment")
