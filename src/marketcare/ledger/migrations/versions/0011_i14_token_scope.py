"""client tokens scoped per person: unique (by, token) instead of token alone

A completion's client token made a resubmit harmless, but it was unique across everyone:
a token one person used could be "already recorded" for another person's tick (or for
another obligation). Tokens are now scoped to who submitted them; a token reused by the
same person for another obligation is refused as a conflict (``ledger/tick.py``).

Revision ID: i14_token_scope
Revises: i11_health_probes
"""

from __future__ import annotations

from alembic import op

revision = "i14_token_scope"
down_revision = "i11_health_probes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_completions_token", type_="unique")
        batch_op.create_unique_constraint("uq_completions_by_token", ["by", "token"])


def downgrade() -> None:
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_completions_by_token", type_="unique")
        batch_op.create_unique_constraint("uq_completions_token", ["token"])
