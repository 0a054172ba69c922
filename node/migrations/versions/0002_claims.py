"""Claims and leases: a series' stable time on its row, and who holds a series or a delivery.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _lease_columns(table: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("stable_at", sa.Float, nullable=True))
    op.execute("UPDATE series SET stable_at = last_received_at")  # due as soon as their route's time passed
    op.create_index("ix_series_stable_at", "series", ["stable_at"])
    _lease_columns("series")
    _lease_columns("deliveries")


def downgrade() -> None:
    for table in ("series", "deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("epoch")
            batch.drop_column("lease_expires_at")
            batch.drop_column("lease_owner")
    op.drop_index("ix_series_stable_at", "series")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("stable_at")
