"""health probes: the write each daemon makes to prove it can still write

Revision ID: i11_health_probes
Revises: i17_inspections
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "i11_health_probes"
down_revision = "i17_inspections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "health_probes",
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_health_probes")),
    )


def downgrade() -> None:
    op.drop_table("health_probes")
