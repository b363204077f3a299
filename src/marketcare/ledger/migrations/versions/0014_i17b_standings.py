"""standings: each closed period's ranking as its bulletin published it

Revision ID: i17b_standings
Revises: i16_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "i17b_standings"
down_revision = "i16_audit"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "standings",
        sa.Column("id", BigId, nullable=False),
        sa.Column("period_kind", sa.String(length=8), nullable=False),
        sa.Column("period_key", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("inspections", sa.Integer(), nullable=False),
        sa.Column("inspection_score", sa.Double(), nullable=True),
        sa.Column("on_time", sa.Integer(), nullable=False),
        sa.Column("due", sa.Integer(), nullable=False),
        sa.Column("verified", sa.Integer(), nullable=False),
        sa.Column("rectification_due", sa.Integer(), nullable=False),
        sa.Column("past_deadline", sa.Integer(), nullable=False),
        sa.Column("as_of", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standings")),
        sa.UniqueConstraint(
            "period_kind",
            "period_key",
            "scope",
            "level",
            "key",
            name=op.f("uq_standings_period_kind"),
        ),
    )


def downgrade() -> None:
    op.drop_table("standings")
