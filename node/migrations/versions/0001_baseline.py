"""The baseline: series, instances, reports, deliveries, audit events, console users.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from node.migrations.baseline import baseline_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind())
