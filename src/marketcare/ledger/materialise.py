"""Materialising: expanding schedules into obligations from the stored watermark.

Each chunk is one transaction that inserts its obligations and advances the watermark,
so a crash at any moment leaves a consistent ledger and downtime is replayed in full.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

import sqlalchemy as sa

from marketcare.domain.obligations import (
    Planned,
    State,
    expand,
)
from marketcare.domain.schedules import Schedule
from marketcare.ledger import audit
from marketcare.ledger.audit import SYSTEM
from marketcare.ledger.db import CHUNK, dialect_insert, retrying, write
from marketcare.ledger.models import (
    LedgerState,
    Obligation,
)
from marketcare.ledger.versions import ensure_version, ledger_state

log = logging.getLogger(__name__)


@dataclass
class MaterialiseResult:
    created: int = 0
    updated: int = 0
    withdrawn: int = 0
    excused: int = 0
    until: datetime | None = None
    version_id: int | None = None
    chunks: int = 0


def _rows(planned: Iterable[Planned], version_id: int, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "natural_key": p.natural_key,
            "market_id": p.market_id,
            "area_id": p.area_id,
            "task_id": p.task_id,
            "kind": p.kind,
            "local_date": p.local_date.isoformat(),
            "occurrence": p.occurrence.strftime("%Y-%m-%dT%H:%M"),
            "opens_at": p.opens_at,
            "due_at": p.due_at,
            "missed_at": p.missed_at,
            "state": State.EXCUSED.value if p.excused else State.UPCOMING.value,
            "state_changed_at": now,
            "version_id": version_id,
            "created_at": now,
            "note": p.excused,
        }
        for p in planned
    ]


#: the columns a planned obligation fills, in the order the PostgreSQL COPY sends them
_PLANNED_COLUMNS = (
    "natural_key",
    "market_id",
    "area_id",
    "task_id",
    "kind",
    "local_date",
    "occurrence",
    "opens_at",
    "due_at",
    "missed_at",
    "state",
    "state_changed_at",
    "version_id",
    "created_at",
    "note",
)
_PLANNED_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS planned_in ("
    "natural_key text, market_id text, area_id text, task_id text, kind text, "
    "local_date text, occurrence text, opens_at timestamptz, due_at timestamptz, "
    "missed_at timestamptz, state text, state_changed_at timestamptz, version_id bigint, "
    "created_at timestamptz, note text) ON COMMIT DROP"
)
# the column names are this module's own constant, never input (bandit B608 accepted)
_PLANNED_MERGE = (
    f"INSERT INTO obligations ({', '.join(_PLANNED_COLUMNS)}) "  # nosec B608
    f"SELECT {', '.join(_PLANNED_COLUMNS)} FROM planned_in "
    "ON CONFLICT (natural_key) DO NOTHING"
)


def insert_planned(
    conn: sa.Connection, planned: Sequence[Planned], *, version_id: int, now: datetime
) -> int:
    """Insert obligations, skipping those already there; returns how many were new.

    On PostgreSQL (psycopg) the rows go by COPY into a temporary table and from there in
    one ``INSERT … SELECT … ON CONFLICT DO NOTHING``: a province's day (≈280,000 rows)
    takes about 1.4× a bare COPY instead of 9× with multi-row INSERTs, whose thousands of
    parameters psycopg re-parses for every statement (docs/benchmarks.md, "Province
    scale"). Elsewhere, multi-row ``INSERT … ON CONFLICT DO NOTHING`` in chunks.
    """
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        return _insert_planned_copy(conn, planned, version_id=version_id, now=now)
    created = 0
    for i in range(0, len(planned), CHUNK):
        rows = _rows(planned[i : i + CHUNK], version_id, now)
        stmt = dialect_insert(conn, Obligation).on_conflict_do_nothing(
            index_elements=["natural_key"]
        )
        result = conn.execute(stmt.returning(Obligation.id), rows)
        created += len(result.all())
    return created


def _insert_planned_copy(
    conn: sa.Connection, planned: Sequence[Planned], *, version_id: int, now: datetime
) -> int:
    if not planned:
        return 0
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(_PLANNED_TEMP)
        cur.execute("TRUNCATE planned_in")
        with cur.copy(f"COPY planned_in ({', '.join(_PLANNED_COLUMNS)}) FROM STDIN") as copy:
            for row in _rows(planned, version_id, now):
                copy.write_row(tuple(row[c] for c in _PLANNED_COLUMNS))
        cur.execute(_PLANNED_MERGE)
        return int(cur.rowcount)


def materialise(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    now: datetime,
    horizon: timedelta,
    start: datetime | None = None,
    chunk: timedelta = timedelta(days=1),
    on_chunk: Callable[[datetime, datetime], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MaterialiseResult:
    """Bring the ledger up to ``now + horizon`` for ``schedule``, from the stored watermark.

    A fresh ledger starts at ``start``; by default at the start of today (local midnight
    of the market whose day began first), so that a market's board shows today's work
    from the first ``init`` on: obligations still open or ahead are created, those whose
    window closed before the ledger existed are not (nobody could have ticked them, and
    they must not count as missed). Each chunk is one transaction
    that inserts its obligations and advances the watermark, so a crash at any moment
    leaves a consistent ledger and the next run continues where this one stopped;
    downtime is replayed in full. A schedule different from the last one applied is
    reconciled first (future only: see :func:`_apply_version`). ``should_stop`` is asked
    between chunks so a shutdown need not wait for a long catch-up.
    """
    result = MaterialiseResult()
    target = now + horizon
    fresh = False

    def step() -> bool:
        nonlocal fresh
        with write(engine) as conn:
            version_id = ensure_version(conn, schedule, now=now)
            result.version_id = version_id
            state = ledger_state(conn, lock=True)
            if state is None:
                fresh = start is None
                first = start or start_of_today(schedule, now)
                # two schedulers starting at once on PostgreSQL: the second finds the row
                conn.execute(
                    dialect_insert(conn, LedgerState)
                    .values(id=1, version_id=None, materialised_until=first)
                    .on_conflict_do_nothing()
                )
                state = ledger_state(conn, lock=True)
                assert state is not None
            until = state.materialised_until or (start or start_of_today(schedule, now))
            if state.version_id != version_id:
                _apply_version(
                    conn,
                    schedule,
                    version_id,
                    state.version_id,
                    now=now,
                    until=until,
                    result=result,
                )
                conn.execute(
                    sa.update(LedgerState).where(LedgerState.id == 1).values(version_id=version_id)
                )
            result.until = until
            if until >= target:
                return False
            hi = min(until + chunk, target)
            planned = expand(schedule, until, hi)
            if fresh and until < now:  # a new ledger takes today's work still to be done
                planned = [p for p in planned if p.opens_at >= now or p.missed_at > now]
            created = insert_planned(conn, planned, version_id=version_id, now=now)
            conn.execute(
                sa.update(LedgerState).where(LedgerState.id == 1).values(materialised_until=hi)
            )
            audit.append(
                conn,
                [
                    audit.NewEvent(
                        at=now,
                        actor=SYSTEM,
                        action="materialised",
                        details={
                            "from": until.isoformat(),
                            "to": hi.isoformat(),
                            "created": created,
                            "planned": len(planned),
                            "version_id": version_id,
                        },
                    )
                ]
                + _born_excused(conn, planned, now=now),
            )
            result.created += created
            result.chunks += 1
            result.until = hi
            lo = until
        if on_chunk is not None:
            on_chunk(lo, hi)
        return True

    while retrying(step, what="materialise"):
        if should_stop is not None and should_stop():
            break  # every finished chunk is committed; the next run continues from it
    return result


def start_of_today(schedule: Schedule, now: datetime) -> datetime:
    """Where a new ledger starts: the local midnight of the market whose day began first."""
    zones: set[tzinfo] = {schedule.zone(m) for m in schedule.markets} or {UTC}
    return min(
        datetime.combine(now.astimezone(zone).date(), time()).replace(tzinfo=zone).astimezone(UTC)
        for zone in zones
    )


def _apply_version(
    conn: sa.Connection,
    schedule: Schedule,
    version_id: int,
    old_version_id: int | None,
    *,
    now: datetime,
    until: datetime,
    result: MaterialiseResult,
) -> None:
    """Make the ledger follow a changed schedule, for the future only.

    Obligations that have not opened yet (and so have no completion) take the new
    windows or are withdrawn if the new schedule no longer has them; anything already
    open or past, and every completion, stays as it was. A day newly declared closed
    excuses that day's unfinished obligations, with the closure's reason.
    """
    events: list[audit.NewEvent] = []
    before = _count_obligations(conn)
    gone: list[Any] = []
    if until > now:
        planned = expand(schedule, now, until)
        keys = {p.natural_key for p in planned}
        known = {
            r.natural_key: r
            for r in conn.execute(
                sa.select(Obligation.id, Obligation.natural_key, Obligation.state).where(
                    Obligation.opens_at >= now
                )
            )
        }
        result.created += len(keys - set(known))
        rows = _rows(planned, version_id, now)
        for i in range(0, len(rows), CHUNK):
            ins = dialect_insert(conn, Obligation)
            stmt = ins.on_conflict_do_update(
                index_elements=["natural_key"],
                set_={
                    "opens_at": ins.excluded.opens_at,
                    "due_at": ins.excluded.due_at,
                    "missed_at": ins.excluded.missed_at,
                    "version_id": ins.excluded.version_id,
                    "state": ins.excluded.state,
                    # a move (a rest day added or lifted) is dated; new windows are not
                    "state_changed_at": sa.case(
                        (Obligation.state != ins.excluded.state, ins.excluded.state_changed_at),
                        else_=Obligation.state_changed_at,
                    ),
                    "note": ins.excluded.note,
                },
                # not opened yet: nothing was done, so the new schedule decides; an
                # excused one is excused by the schedule (a rest day, a closure), which
                # the new schedule may lift
                where=(
                    (Obligation.state == State.UPCOMING.value)
                    | (Obligation.state == State.EXCUSED.value)
                )
                & (Obligation.opens_at > now),
            )
            conn.execute(stmt, rows[i : i + CHUNK])
        events.extend(_rest_day_moves(planned, known, version_id, now=now, result=result))
        events.extend(
            _born_excused(conn, [p for p in planned if p.natural_key not in known], now=now)
        )
        stale = conn.execute(
            sa.select(Obligation.id, Obligation.natural_key).where(
                Obligation.state == State.UPCOMING.value,
                Obligation.opens_at > now,
            )
        ).all()
        gone = [r for r in stale if r.natural_key not in keys]
        for i in range(0, len(gone), CHUNK):
            ids = [r.id for r in gone[i : i + CHUNK]]
            conn.execute(
                sa.delete(Obligation).where(
                    Obligation.id.in_(ids), (Obligation.state + "") == State.UPCOMING.value
                )
            )
        result.withdrawn += len(gone)
        if gone:
            events.append(
                audit.NewEvent(
                    at=now,
                    actor=SYSTEM,
                    action="withdrawn",
                    details={
                        "version_id": version_id,
                        "natural_keys": sorted(r.natural_key for r in gone),
                    },
                )
            )
    result.excused += _excuse_closed_days(conn, schedule, now=now, events=events)
    events.insert(
        0,
        audit.NewEvent(
            at=now,
            actor=SYSTEM,
            action="schedule_applied",
            details={
                "version_id": version_id,
                "previous_version_id": old_version_id,
                "digest": schedule.digest,
                # exactly how many obligations it made: `audit verify` counts every row
                "created": _count_obligations(conn) - before + len(gone),
            },
        ),
    )
    audit.append(conn, events)


def _moved(
    obligation_id: int, from_state: str, to: State, now: datetime, **details: Any
) -> audit.NewEvent:
    """The event of an obligation the schedule moved: excused (a rest day, a closed day)
    or reinstated (one lifted). One shape, which ``domain/replay.py`` replays."""
    return audit.NewEvent(
        at=now,
        actor=SYSTEM,
        action="excused" if to is State.EXCUSED else "reinstated",
        obligation_id=obligation_id,
        from_state=from_state,
        to_state=to.value,
        details=details,
    )


def _rest_day_moves(
    planned: Sequence[Planned],
    known: dict[str, Any],
    version_id: int,
    *,
    now: datetime,
    result: MaterialiseResult,
) -> list[audit.NewEvent]:
    """The audit events of future obligations a changed schedule excused (a new rest day)
    or reinstated (a rest day or a closure lifted), matching the upsert before them."""
    events: list[audit.NewEvent] = []
    for p in planned:
        row = known.get(p.natural_key)
        if row is None or p.opens_at <= now:
            continue
        if p.excused and row.state == State.UPCOMING.value:
            result.excused += 1
            events.append(
                _moved(
                    row.id, row.state, State.EXCUSED, now, reason=p.excused, version_id=version_id
                )
            )
        elif not p.excused and row.state == State.EXCUSED.value:
            events.append(_moved(row.id, row.state, State.UPCOMING, now, version_id=version_id))
    return events


def _born_excused(
    conn: sa.Connection, planned: Sequence[Planned], *, now: datetime
) -> list[audit.NewEvent]:
    """An event for each new obligation the schedule makes excused from the start (an
    area's rest day, a closed day), so that ``audit verify`` tells it from an obligation
    excused by an edit of the table. ``planned`` holds only obligations just inserted."""
    reasons = {p.natural_key: p.excused for p in planned if p.excused}
    keys = sorted(reasons)
    found: list[Any] = []
    for i in range(0, len(keys), CHUNK):
        found.extend(
            conn.execute(
                sa.select(Obligation.id, Obligation.natural_key).where(
                    Obligation.natural_key.in_(keys[i : i + CHUNK]),
                    Obligation.state == State.EXCUSED.value,
                )
            )
        )
    return [
        _moved(
            r.id,
            State.UPCOMING.value,
            State.EXCUSED,
            now,
            reason=reasons[r.natural_key],
            planned=True,
        )
        for r in sorted(found, key=lambda r: r.id)
    ]


def _count_obligations(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(Obligation)).scalar_one())


def _excuse_closed_days(
    conn: sa.Connection, schedule: Schedule, *, now: datetime, events: list[audit.NewEvent]
) -> int:
    skip_tasks = [t.id for t in schedule.tasks if t.skip_closed]
    if not skip_tasks:
        return 0
    count = 0
    unfinished = [State.UPCOMING.value, State.OPEN.value, State.MISSED.value]
    for market in schedule.markets:
        for span in market.closed:
            rows = conn.execute(
                sa.select(Obligation.id, Obligation.state).where(
                    Obligation.market_id == market.id,
                    Obligation.local_date.between(span.date.isoformat(), span.last.isoformat()),
                    Obligation.task_id.in_(skip_tasks),
                    Obligation.state.in_(unfinished),
                )
            ).all()
            for r in rows:
                changed = conn.execute(
                    sa.update(Obligation)
                    .where(Obligation.id == r.id, Obligation.state == r.state)
                    .values(state=State.EXCUSED.value, state_changed_at=now, note=span.reason)
                ).rowcount
                if changed:
                    count += 1
                    events.append(_moved(r.id, r.state, State.EXCUSED, now, reason=span.reason))
    return count
