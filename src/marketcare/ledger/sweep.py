"""The sweep: obligations move on by the clock (upcoming → open → missed), each move a
compare-and-swap, and a clock that went backwards is an alarm, not a reason to mark misses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from marketcare.domain.obligations import CLOCK_MOVES, State
from marketcare.ledger import audit
from marketcare.ledger.audit import SYSTEM
from marketcare.ledger.db import CHUNK, retrying, write
from marketcare.ledger.models import (
    LedgerState,
    Obligation,
)
from marketcare.ledger.versions import ledger_state

log = logging.getLogger(__name__)


#: a clock that went back further than this is an alarm, not a reason to mark misses
CLOCK_TOLERANCE = timedelta(minutes=5)


@dataclass
class SweepResult:
    opened: int = 0
    missed: int = 0
    more: bool = False
    clock_went_back: bool = False


def sweep(engine: sa.Engine, *, now: datetime, batch: int = 2000) -> SweepResult:
    """Move obligations on by the clock: upcoming → open, and open → missed after grace.

    One batch per call; ``more`` says whether another call has work. A clock earlier than
    the last one seen (beyond a small tolerance) raises an alarm in the log and marks
    nothing missed until the clock has caught up again.
    """

    def step() -> SweepResult:
        result = SweepResult()
        with write(engine) as conn:
            state = ledger_state(conn, lock=True)
            last = state.last_seen_now if state else None
            if last is not None and now < last - CLOCK_TOLERANCE:
                log.error(
                    "clock went backwards: now %s is before %s, seen earlier; not marking anything missed",
                    now.isoformat(),
                    last.isoformat(),
                )
                result.clock_went_back = True
                return result
            events: list[audit.NewEvent] = []
            moved: list[list[Any]] = []
            for i, move in enumerate(CLOCK_MOVES):
                rows = _due_for(conn, i, now=now, limit=batch)
                moved.append(rows)
                n = _flip(conn, rows, move.target, now, events)
                if move.target == State.MISSED:
                    result.missed += n
                else:
                    result.opened += n
            result.more = any(len(rows) == batch for rows in moved)
            audit.append(conn, events)
            if state is not None and (last is None or now > last):
                conn.execute(
                    sa.update(LedgerState).where(LedgerState.id == 1).values(last_seen_now=now)
                )
        return result

    return retrying(step, what="sweep")


def clock_conditions(index: int, now: datetime) -> list[tuple[str, list[Any]]]:
    """The SQL conditions of the ``index``-th of ``obligations.CLOCK_MOVES``, one list per
    source state: in that state, the move's time reached, and no earlier move's time
    reached (an earlier move takes precedence, as in ``state_by_clock``).

    One query per source state: each is a range scan of a (state, time) index that stops
    at the limit; a single ``state IN (...)`` makes PostgreSQL misjudge the match count on
    a large history and scan the table.
    """
    move = CLOCK_MOVES[index]
    out = []
    for source in sorted(move.sources):
        conditions = [Obligation.state == source.value, getattr(Obligation, move.edge) <= now]
        for earlier in CLOCK_MOVES[:index]:
            if source in earlier.sources:
                conditions.append(getattr(Obligation, earlier.edge) > now)
        out.append((move.edge, conditions))
    return out


def _due_for(conn: sa.Connection, index: int, *, now: datetime, limit: int) -> list[Any]:
    """Up to ``limit`` obligations the ``index``-th clock move applies to, oldest first."""
    rows: list[Any] = []
    for edge, conditions in clock_conditions(index, now):
        column = getattr(Obligation, edge)
        rows += conn.execute(
            sa.select(Obligation.id, Obligation.state)
            .where(*conditions)
            .order_by(column, Obligation.id)
            .limit(limit - len(rows))
        ).all()
        if len(rows) >= limit:
            break
    return rows


def _flip(
    conn: sa.Connection,
    rows: Sequence[Any],
    to: State,
    now: datetime,
    events: list[audit.NewEvent],
) -> int:
    by_state: dict[str, list[int]] = {}
    for r in rows:
        by_state.setdefault(r.state, []).append(r.id)
    n = 0
    for from_state, ids in by_state.items():
        for i in range(0, len(ids), CHUNK):
            part = ids[i : i + CHUNK]
            changed = (
                conn.execute(
                    sa.update(Obligation)
                    # `state || ''` keeps SQLite on primary-key lookups instead of walking
                    # the (state, time) index over every row in that state
                    .where(Obligation.id.in_(part), (Obligation.state + "") == from_state)
                    .values(state=to.value, state_changed_at=now)
                    .returning(Obligation.id)
                )
                .scalars()
                .all()
            )
            n += len(changed)
            events.extend(
                audit.NewEvent(
                    at=now,
                    actor=SYSTEM,
                    action="missed" if to == State.MISSED else "opened",
                    obligation_id=oid,
                    from_state=from_state,
                    to_state=to.value,
                )
                for oid in sorted(changed)
            )
    return n


def sweep_all(engine: sa.Engine, *, now: datetime) -> SweepResult:
    total = SweepResult()
    while True:
        r = sweep(engine, now=now)
        total.opened += r.opened
        total.missed += r.missed
        total.clock_went_back = r.clock_went_back
        if not r.more:
            return total
