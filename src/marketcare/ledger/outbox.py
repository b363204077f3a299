"""The mechanics every durable outbox shares (report emails, notifications).

A message row moves ``pending → sending → sent | failed`` (or back to ``pending`` after a
temporary failure). It is claimed under a lease, so a sender that dies mid-send leaves the
lease to expire and the message is sent again (at least once, with the same stable id);
temporary failures wait 1, 2, 4 … minutes (at most an hour) across restarts; permanent
failures keep their reason until someone re-queues the message.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from marketcare.errors import Conflict, NotFound
from marketcare.ledger.db import retrying, write

#: the states of a message, in the order of its life
STATES = ("pending", "sending", "sent", "failed")

BACKOFF_FIRST = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=1)
LEASE = timedelta(minutes=5)


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt (1 → 1 min, 2 → 2 min, …, ≤ 1 h)."""
    wait: timedelta = BACKOFF_FIRST * (2 ** max(min(attempts, 20) - 1, 0))
    return min(wait, BACKOFF_MAX)


def select_due(conn: sa.Connection, model: Any, now: datetime) -> Any | None:
    """The next message to send: due and pending, or sending under an expired lease."""
    stmt = (
        sa.select(model)
        .where(
            sa.or_(
                (model.state == "pending") & (model.next_attempt_at <= now),
                (model.state == "sending") & (model.lease_until <= now),
            )
        )
        .order_by(model.next_attempt_at, model.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return conn.execute(stmt).one_or_none()


def take(conn: sa.Connection, model: Any, row: Any, now: datetime) -> bool:
    """Claim ``row`` under a lease (compare-and-swap on its state); False if another got it."""
    claimed = conn.execute(
        sa.update(model)
        .where(model.id == row.id, model.state == row.state)
        .values(state="sending", lease_until=now + LEASE, attempts=model.attempts + 1)
    ).rowcount
    return bool(claimed == 1)


def outcome_values(
    *, error: Exception | None, permanent: bool, attempts: int, at: datetime
) -> dict[str, Any]:
    """The columns to record after an attempt (``attempts`` counts this one)."""
    if error is None:
        return {"state": "sent", "sent_at": at, "lease_until": None, "last_error": None}
    if permanent:
        return {"state": "failed", "lease_until": None, "last_error": str(error)}
    return {
        "state": "pending",
        "lease_until": None,
        "last_error": str(error),
        "next_attempt_at": at + backoff(attempts),
    }


def settle(
    engine: sa.Engine, model: Any, row_id: int, values: dict[str, Any], *, what: str
) -> None:
    """Record an attempt's outcome, only if the message is still ours (state sending)."""

    def step() -> None:
        with write(engine) as conn:
            conn.execute(
                sa.update(model)
                .where(model.id == row_id, model.state == "sending")
                .values(**values)
            )

    retrying(step, what=what)


def requeue(engine: sa.Engine, model: Any, row_id: int, *, now: datetime, what: str) -> None:
    """Queue a message again (after a permanent failure was fixed); same stable id."""

    def step() -> None:
        with write(engine) as conn:
            row = conn.execute(sa.select(model).where(model.id == row_id)).one_or_none()
            if row is None:
                raise NotFound(f"{what} {row_id} does not exist")
            if row.state == "sending":
                raise Conflict(f"{what} {row_id} is being sent right now")
            conn.execute(
                sa.update(model)
                .where(model.id == row_id)
                .values(state="pending", next_attempt_at=now, lease_until=None)
            )

    retrying(step, what=f"re-queue {what}")
