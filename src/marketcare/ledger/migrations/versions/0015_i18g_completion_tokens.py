"""completions: an index on the token alone, for a batch's earlier submissions

A batch of ticks looks up its tokens' earlier submissions, and then its new rows' ids,
with ``token IN (...)`` (the senders are matched in Python). The unique index on
``(by, token)`` cannot serve that (``token`` is its second column), so both reads
scanned every completion ever recorded, twice per batch: a cost that grew with the
ledger's history.

Revision ID: i18g_completion_tokens
Revises: i17b_standings
"""

from __future__ import annotations

from alembic import op

revision = "i18g_completion_tokens"
down_revision = "i17b_standings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_completions_token"), "completions", ["token"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_completions_token"), table_name="completions")
