"""The service keeps short notes for the admin commands: why no round starts.

Revision ID: 20261202_0004
Revises: 20261202_0003
Create Date: 2026-12-02

While the next round waits for enough agents, the leader writes why under the key
``not_starting`` once a minute, and forgets it when the round starts, so that
``fedadamw-coordinator status`` can say so (docs/architecture.md, section 7).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_0004"
down_revision: str | None = "20261202_0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "service_notes",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_service_notes"),
    )


def downgrade() -> None:
    op.drop_table("service_notes")
