"""re-inspections closed before their completions were recorded get one

Until this revision, verifying or reopening a problem closed its re-inspection obligation
without a completion row: the workbook's 完成人 stayed empty and the result was only in
the note and the audit log. Each such re-inspection now gets the completion it would have
had: by the officer of its ``completed`` event, at its completion time, its result
(通过 / 未通过) as the ``passed`` item. Nothing else changes, and no event is written: the
audit chain already holds the move.

Revision ID: i13_reinspection_completions
Revises: i10_phone_time
"""

from __future__ import annotations

from alembic import op

revision = "i13_reinspection_completions"
down_revision = "i10_phone_time"
branch_labels = None
depends_on = None

#: the prefix of the backfilled completions' tokens (not a password: bandit B105 accepted)
TOKEN = "reinspection:backfill:"  # nosec B105


def upgrade() -> None:
    as_json = "CAST({} AS JSON)" if op.get_bind().dialect.name == "postgresql" else "{}"
    empty, passed, failed = (
        as_json.format(f"'{text}'") for text in ("{}", '{"passed": true}', '{"passed": false}')
    )
    is_failed = "o.note = '未通过'"
    # every piece put into the SQL is a constant of this file (bandit B608 accepted)
    op.execute(
        f"""
        INSERT INTO completions
            (obligation_id, token, "by", "at", outcome, readings, items, failures, note)
        SELECT
            o.id,
            '{TOKEN}' || CAST(o.id AS VARCHAR(20)),
            COALESCE(
                (SELECT e.actor FROM events e
                 WHERE e.obligation_id = o.id AND e.action = 'completed'
                 ORDER BY e.seq DESC LIMIT 1),
                'unknown'
            ),
            o.completed_at,
            o.state,
            {empty},
            CASE WHEN {is_failed} THEN {failed} ELSE {passed} END,
            CASE WHEN {is_failed} THEN {failed} ELSE {empty} END,
            o.note
        FROM obligations o
        WHERE o.kind = 'reinspection'
          AND o.state IN ('done', 'late')
          AND o.completed_at IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM completions c WHERE c.obligation_id = o.id)
        """  # nosec B608
    )


def downgrade() -> None:
    # TOKEN is this file's constant (bandit B608 accepted)
    op.execute(f"DELETE FROM completions WHERE token LIKE '{TOKEN}%'")  # nosec B608
