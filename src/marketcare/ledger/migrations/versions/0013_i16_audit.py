"""the audit record holds against an insider: anchors, timestamps, append-only tables

Revision ID: i16_audit
Revises: i15_security
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models
from marketcare.ledger.audit import GENESIS, NewEvent, event_hash

revision = "i16_audit"
down_revision = "i15_security"
branch_labels = None
depends_on = None

#: the tables whose rows are history: never updated, never deleted
APPEND_ONLY = ("events", "completions", "audit_timestamps")
REFUSAL = "is append-only: history is never rewritten (docs/design.md, The audit log)"


def upgrade() -> None:
    when = marketcare.ledger.models.UTCDateTime(timezone=True)
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("anchor_seq", big, nullable=True))
        batch.add_column(sa.Column("anchor_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("damage", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("damage_found_at", when, nullable=True))
    op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    op.create_table(
        "audit_timestamps",
        sa.Column("id", big, autoincrement=True, nullable=False),
        sa.Column("seq", big, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("tsa", sa.String(length=500), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("gen_time", when, nullable=False),
        sa.Column("token", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_timestamps")),
    )
    op.create_index(op.f("ix_audit_timestamps_seq"), "audit_timestamps", ["seq"])
    _baseline(op.get_bind())
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION marketcare_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION marketcare_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION marketcare_append_only()"
            )
        return
    for table in APPEND_ONLY:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} {REFUSAL}'); END"
            )


def _baseline(conn: sa.Connection) -> None:
    """Mark where complete events begin, with the counts the replay starts from.

    Events before it lack readings, times and texts; ``audit verify`` compares those rows
    on what their events do hold. A ledger with no events yet needs no baseline (and a
    database being filled by ``migrate-sqlite-to-postgres`` must stay empty).
    """
    head = conn.execute(sa.text("SELECT seq, hash FROM audit_head WHERE id = 1")).one_or_none()
    if head is None:
        return
    seq, prev = int(head.seq) + 1, str(head.hash or GENESIS)
    event = NewEvent(
        at=datetime.now(UTC),
        actor="system",
        action="audit_baseline",
        details={
            "obligations": conn.execute(sa.text("SELECT count(*) FROM obligations")).scalar_one(),
            "reports_up_to": conn.execute(
                sa.text("SELECT coalesce(max(id), 0) FROM reports")
            ).scalar_one(),
            # re-inspections closed before i13 got their completion by a migration, no event
            "completions_up_to": conn.execute(
                sa.text("SELECT coalesce(max(id), 0) FROM completions")
            ).scalar_one(),
            "format": 2,
        },
    )
    digest = event_hash(prev, seq, event)
    conn.execute(
        sa.text(
            "INSERT INTO events (seq, at, actor, action, details, prev_hash, hash) "
            "VALUES (:seq, :at, :actor, :action, :details, :prev, :hash)"
        ).bindparams(
            sa.bindparam("at", type_=marketcare.ledger.models.UTCDateTime()),
            sa.bindparam("details", type_=sa.JSON()),
        ),
        {
            "seq": seq,
            "at": event.at,
            "actor": event.actor,
            "action": event.action,
            "details": event.details,
            "prev": prev,
            "hash": digest,
        },
    )
    conn.execute(
        sa.text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
        {"seq": seq, "hash": digest},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS marketcare_append_only()")
    else:
        for table in APPEND_ONLY:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
    op.drop_index(op.f("ix_audit_timestamps_seq"), table_name="audit_timestamps")
    op.drop_table("audit_timestamps")
    op.drop_table("installation")
    with op.batch_alter_table("reports") as batch:
        batch.drop_column("damage_found_at")
        batch.drop_column("damage")
        batch.drop_column("anchor_hash")
        batch.drop_column("anchor_seq")
