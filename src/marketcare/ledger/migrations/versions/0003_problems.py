"""problems

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 13:41:53.597771
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "problems",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column("area_id", sa.String(length=64), nullable=True),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("found_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("found_by", sa.String(length=100), nullable=False),
        sa.Column("deadline", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reopened", sa.Integer(), nullable=False),
        sa.Column("source_key", sa.String(length=200), nullable=True),
        sa.Column(
            "obligation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column(
            "rectified_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("rectified_by", sa.String(length=100), nullable=True),
        sa.Column("rectify_note", sa.Text(), nullable=True),
        sa.Column(
            "verified_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("verified_by", sa.String(length=100), nullable=True),
        sa.Column(
            "reinspection_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "created_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["market_id"], ["markets.id"], name=op.f("fk_problems_market_id_markets")
        ),
        sa.ForeignKeyConstraint(
            ["obligation_id"],
            ["obligations.id"],
            name=op.f("fk_problems_obligation_id_obligations"),
        ),
        sa.ForeignKeyConstraint(
            ["reinspection_id"],
            ["obligations.id"],
            name=op.f("fk_problems_reinspection_id_obligations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_problems")),
        sa.UniqueConstraint("source_key", name=op.f("uq_problems_source_key")),
    )
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_problems_market_id"), ["market_id"], unique=False)
        batch_op.create_index("ix_problems_state_deadline", ["state", "deadline"], unique=False)

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "problem_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.create_index(batch_op.f("ix_events_problem_id"), ["problem_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_problem_id"))
        batch_op.drop_column("problem_id")

    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_index("ix_problems_state_deadline")
        batch_op.drop_index(batch_op.f("ix_problems_market_id"))

    op.drop_table("problems")
