"""Model versions record whether they are pinned and when retention released their blobs;
ended rounds lose their sealed and revealed shares.

Revision ID: 20261202_0003
Revises: 20261201_0002
Create Date: 2026-12-02

The retention policy (docs/architecture.md, section 5) keeps the blobs of the newest
``[retention] keep_versions`` model versions and of the pinned ones. Every existing version
starts unpinned and retained; the first start after the upgrade releases the ones the policy
does not keep. A round now deletes its encrypted and unmask shares in the transaction that
ends it, so this revision deletes those of the rounds that ended before it. Downgrading
drops the two columns; the deleted shares do not come back (no finished round needs them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_0003"
down_revision: str | None = "20261201_0002"
branch_labels: str | None = None
depends_on: str | None = None

_ENDED = "SELECT round_id FROM rounds WHERE outcome <> 'running'"


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(
            sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("blobs_deleted_at", sa.DateTime(timezone=True), nullable=True))
    # Shares first: unmask_shares references unmask_responses, which stay.
    op.execute(f"DELETE FROM unmask_shares WHERE round_id IN ({_ENDED})")
    op.execute(f"DELETE FROM encrypted_shares WHERE round_id IN ({_ENDED})")


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("blobs_deleted_at")
        batch.drop_column("pinned")
