"""Ended rounds keep no protocol records.

Revision ID: 20261202_0005
Revises: 20261202_0004
Create Date: 2026-12-02

A round now deletes, in the transaction that ends it, every record its secure aggregation
stored: advertised keys, chunk receipts, consistency signatures and unmask responses, as it
already did its shares (docs/architecture.md, section 5, "Ended rounds"). Only a replay of
the open round reads them, and they were most of what the database grew by per round. This
revision deletes those of the rounds that ended before it. There is nothing to downgrade:
the schema is unchanged, and no ended round needs the rows.
"""

from __future__ import annotations

from alembic import op

revision: str = "20261202_0005"
down_revision: str | None = "20261202_0004"
branch_labels: str | None = None
depends_on: str | None = None

_ENDED = "SELECT round_id FROM rounds WHERE outcome <> 'running'"

# unmask_shares references unmask_responses, so it goes first
_TABLES = (
    "unmask_shares",
    "unmask_responses",
    "consistency_signatures",
    "input_chunks",
    "encrypted_shares",
    "advertised_keys",
)


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"DELETE FROM {table} WHERE round_id IN ({_ENDED})")


def downgrade() -> None:
    """Nothing to undo: the schema did not change, and the deleted rows stay deleted."""
