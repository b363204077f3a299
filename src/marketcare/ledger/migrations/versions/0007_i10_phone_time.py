"""completions keep the phone's time and the arrival

Revision ID: i10_phone_time
Revises: 0006
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "i10_phone_time"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = marketcare.ledger.models.UTCDateTime(timezone=True)
    with op.batch_alter_table("completions") as batch:
        batch.add_column(sa.Column("phone_at", when, nullable=True))
        batch.add_column(sa.Column("phone_sent_at", when, nullable=True))
        batch.add_column(sa.Column("arrived_at", when, nullable=True))
        batch.add_column(
            sa.Column("time_basis", sa.String(length=24), nullable=False, server_default="arrival")
        )
    # every completion so far was recorded as it arrived
    op.execute("UPDATE completions SET arrived_at = at WHERE arrived_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("completions") as batch:
        batch.drop_column("time_basis")
        batch.drop_column("arrived_at")
        batch.drop_column("phone_sent_at")
        batch.drop_column("phone_at")
