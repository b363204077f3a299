"""inspections, scores and the weekly bulletin

Inspection rounds as records (their sheets, their items), problems linked back to the
item that raised them, and reports that are bulletins or PDFs.

Revision ID: i17_inspections
Revises: i13_reinspection_completions
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import marketcare.ledger.models

revision = "i17_inspections"
down_revision = "i13_reinspection_completions"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = marketcare.ledger.models.UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "inspection_templates",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("first_used_at", When, nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_inspection_templates")),
    )
    op.create_table(
        "inspections",
        sa.Column("id", BigId, nullable=False),
        sa.Column("token", sa.String(length=100), nullable=False),
        sa.Column("market_id", sa.String(length=64), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("template_digest", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=True),
        sa.Column("by", sa.String(length=100), nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("local_date", sa.String(length=10), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(
            ["market_id"], ["markets.id"], name=op.f("fk_inspections_market_id_markets")
        ),
        sa.ForeignKeyConstraint(
            ["template_digest"],
            ["inspection_templates.digest"],
            name=op.f("fk_inspections_template_digest_inspection_templates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspections")),
        sa.UniqueConstraint("token", name=op.f("uq_inspections_token")),
    )
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.create_index("ix_inspections_market_date", ["market_id", "local_date"])
    op.create_table(
        "inspection_results",
        sa.Column("id", BigId, nullable=False),
        sa.Column("inspection_id", BigId, nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("section", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("points", sa.Double(), nullable=False),
        sa.Column("critical", sa.String(length=8), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("rechecked_problem_id", BigId, nullable=True),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_inspection_results_inspection_id_inspections"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspection_results")),
        sa.UniqueConstraint(
            "inspection_id", "item_id", name=op.f("uq_inspection_results_inspection_id")
        ),
    )
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inspection_result_id", BigId, nullable=True))
        batch_op.create_index(
            batch_op.f("ix_problems_inspection_result_id"), ["inspection_result_id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_problems_inspection_result_id_inspection_results"),
            "inspection_results",
            ["inspection_result_id"],
            ["id"],
        )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="compliance", nullable=False)
        )
        batch_op.add_column(
            sa.Column("format", sa.String(length=8), server_default="xlsx", nullable=False)
        )
        batch_op.drop_constraint("uq_reports_period_kind", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_reports_kind"),
            ["kind", "format", "period_kind", "period_key", "scope", "language", "revision"],
        )


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_reports_kind"), type_="unique")
        batch_op.create_unique_constraint(
            "uq_reports_period_kind",
            ["period_kind", "period_key", "scope", "language", "revision"],
        )
        batch_op.drop_column("format")
        batch_op.drop_column("kind")
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_problems_inspection_result_id_inspection_results"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_problems_inspection_result_id"))
        batch_op.drop_column("inspection_result_id")
    op.drop_table("inspection_results")
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index("ix_inspections_market_date")
    op.drop_table("inspections")
    op.drop_table("inspection_templates")
