"""unchained_events: a tick batch's events, committed before the chainer links them

On PostgreSQL a batch of ticks no longer takes the audit chain's head lock from its
append to its ``COMMIT``: it inserts its events here, and the chainer (``audit.chain``)
moves them into ``events``, hashed, in its own short transaction. ``events`` itself is
unchanged: every chained event stays exactly as it was, append-only, under the same
triggers and grants. The application role needs ``DELETE`` on this table (the chainer
removes what it linked), which the grants file's ``ON ALL TABLES`` gives it.

Revision ID: i18i_unchained_events
Revises: i18g_completion_tokens
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i18i_unchained_events"
down_revision = "i18g_completion_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "unchained_events",
        sa.Column("id", big, primary_key=True, autoincrement=True),
        sa.Column(
            "written_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("obligation_id", big, nullable=True),
        sa.Column("problem_id", big, nullable=True),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    pending = op.get_bind().execute(sa.text("SELECT count(*) FROM unchained_events")).scalar()
    if pending:
        # dropping them would lose history: the chainer must link them first
        raise RuntimeError(
            f"{pending} events are not chained yet: run `marketcare audit verify` "
            "(it chains them) and downgrade again"
        )
    op.drop_table("unchained_events")
