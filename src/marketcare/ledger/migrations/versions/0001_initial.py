"""initial ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-27 12:48:47.329741
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "schedule_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("loaded_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("default_timezone", sa.String(length=64), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_versions")),
        sa.UniqueConstraint("digest", name=op.f("uq_schedule_versions_digest")),
    )
    op.create_table(
        "ledger_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column(
            "materialised_until", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "last_seen_now", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["schedule_versions.id"],
            name=op.f("fk_ledger_state_version_id_schedule_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_state")),
    )
    op.create_table(
        "markets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sub_district", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["schedule_versions.id"],
            name=op.f("fk_markets_version_id_schedule_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_markets")),
    )
    op.create_table(
        "areas",
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("m2", sa.Double(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["market_id"], ["markets.id"], name=op.f("fk_areas_market_id_markets")
        ),
        sa.PrimaryKeyConstraint("market_id", "id", name=op.f("pk_areas")),
    )
    op.create_table(
        "obligations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("natural_key", sa.String(length=300), nullable=False),
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column("area_id", sa.String(length=64), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.String(length=10), nullable=False),
        sa.Column("occurrence", sa.String(length=16), nullable=False),
        sa.Column("opens_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("due_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("missed_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "state_changed_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "completed_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["market_id"], ["markets.id"], name=op.f("fk_obligations_market_id_markets")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["schedule_versions.id"],
            name=op.f("fk_obligations_version_id_schedule_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_obligations")),
        sa.UniqueConstraint("natural_key", name=op.f("uq_obligations_natural_key")),
    )
    with op.batch_alter_table("obligations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_obligations_market_date", ["market_id", "local_date"], unique=False
        )
        batch_op.create_index("ix_obligations_state_missed", ["state", "missed_at"], unique=False)
        batch_op.create_index("ix_obligations_state_opens", ["state", "opens_at"], unique=False)

    op.create_table(
        "completions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "obligation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("token", sa.String(length=100), nullable=False),
        sa.Column("by", sa.String(length=100), nullable=False),
        sa.Column("at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("readings", sa.JSON(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["obligation_id"],
            ["obligations.id"],
            name=op.f("fk_completions_obligation_id_obligations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
        sa.UniqueConstraint("token", name=op.f("uq_completions_token")),
    )
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_completions_obligation_id"), ["obligation_id"], unique=False
        )

    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column(
            "obligation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["obligation_id"], ["obligations.id"], name=op.f("fk_events_obligation_id_obligations")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_events_obligation_id"), ["obligation_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_obligation_id"))

    op.drop_table("events")
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_completions_obligation_id"))

    op.drop_table("completions")
    with op.batch_alter_table("obligations", schema=None) as batch_op:
        batch_op.drop_index("ix_obligations_state_opens")
        batch_op.drop_index("ix_obligations_state_missed")
        batch_op.drop_index("ix_obligations_market_date")

    op.drop_table("obligations")
    op.drop_table("areas")
    op.drop_table("markets")
    op.drop_table("ledger_state")
    op.drop_table("schedule_versions")
    op.drop_table("audit_head")
