"""notifications

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:06:42.068124
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_watermark",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "checked_until", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_watermark")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column(
            "subject_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("step", sa.String(length=80), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column(
            "trigger_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("digest_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("bundle", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint(
            "subject_kind",
            "subject_id",
            "step",
            "person_id",
            name=op.f("uq_notifications_subject_kind"),
        ),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_bundle"), ["bundle"], unique=False)
        batch_op.create_index("ix_notifications_state_digest", ["state", "digest_at"], unique=False)

    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("bundle", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=1000), nullable=False),
        sa.Column("webhook_format", sa.String(length=16), nullable=True),
        sa.Column("quiet_hours", sa.String(length=16), nullable=True),
        sa.Column("stable_id", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "lease_until", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("sent_at", marketcare.ledger.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_outbox")),
        sa.UniqueConstraint("bundle", "channel", name=op.f("uq_notify_outbox_bundle")),
        sa.UniqueConstraint("stable_id", name=op.f("uq_notify_outbox_stable_id")),
    )
    with op.batch_alter_table("notify_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_outbox_state_next", ["state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("notify_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_outbox_state_next")

    op.drop_table("notify_outbox")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_state_digest")
        batch_op.drop_index(batch_op.f("ix_notifications_bundle"))

    op.drop_table("notifications")
    op.drop_table("notification_watermark")
