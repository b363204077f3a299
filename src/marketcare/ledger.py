"""The ledger: the only truth about what was due and what was done.

Every function here is one small unit of work in its own transaction(s), callable from
the daemon, the CLI and tests alike. Writes are idempotent (natural keys, client tokens)
and state changes are compare-and-swap updates, so several processes can work on one
database without doubling or losing anything.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import audit
from .db import read, retrying, write
from .errors import MarketcareError, NotFound, TickRefused
from .models import AreaRow, Completion, LedgerState, MarketRow, Obligation, ScheduleVersion
from .obligations import (
    COMPLETED,
    ORDER_ON_BOARD,
    PENDING,
    TICKABLE,
    Planned,
    State,
    completion_outcome,
    expand,
    format_range,
    in_range,
    is_overdue,
    minutes_late,
    state_by_clock,
)
from .schedules import ChecklistItem, Schedule, load_texts

log = logging.getLogger(__name__)

SYSTEM = "system"
INSERT_CHUNK = 500
#: a clock that went back further than this is an alarm, not a reason to mark misses
CLOCK_TOLERANCE = timedelta(minutes=5)


def _insert(conn: sa.Connection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


# ---------------------------------------------------------------- schedule versions


def ensure_version(conn: sa.Connection, schedule: Schedule, *, now: datetime) -> int:
    """Record the schedule's exact texts (once per digest) and refresh markets and areas."""
    known = conn.execute(
        sa.select(ScheduleVersion.id).where(ScheduleVersion.digest == schedule.digest)
    ).scalar_one_or_none()
    if known is not None:
        applied = conn.execute(
            sa.select(LedgerState.version_id).where(LedgerState.id == 1)
        ).scalar_one_or_none()
        if applied == known:
            return int(known)  # markets and areas were written when it was applied
    stmt = _insert(conn, ScheduleVersion).values(
        digest=schedule.digest,
        loaded_at=now,
        default_timezone=schedule.default_timezone,
        sources=dict(schedule.sources),
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]))
    version_id: int = conn.execute(
        sa.select(ScheduleVersion.id).where(ScheduleVersion.digest == schedule.digest)
    ).scalar_one()
    _sync_markets(conn, schedule, version_id)
    return version_id


def _sync_markets(conn: sa.Connection, schedule: Schedule, version_id: int) -> None:
    """Bring the markets and areas tables to the schedule: new rows inserted, changed rows
    updated, vanished ones deactivated (never deleted: obligations refer to them).

    Each kind of change goes to the database as one executemany: a province's first
    load is 20,000 markets and 240,000 areas, which one statement per row makes minutes.
    """
    existing = {r.id: r for r in conn.execute(sa.select(MarketRow)).all()}
    all_areas: dict[str, dict[str, Any]] = {}
    for r in conn.execute(sa.select(AreaRow)).all():
        all_areas.setdefault(r.market_id, {})[r.id] = r
    new_markets: list[dict[str, Any]] = []
    changed_markets: list[dict[str, Any]] = []
    new_areas: list[dict[str, Any]] = []
    changed_areas: list[dict[str, Any]] = []
    gone_areas: list[dict[str, Any]] = []
    seen = set()
    for m in schedule.markets:
        seen.add(m.id)
        values = {
            "name": m.name,
            "sub_district": m.sub_district,
            "timezone": m.timezone or schedule.default_timezone,
            "active": True,
        }
        row = existing.get(m.id)
        if row is None:
            new_markets.append({"id": m.id, "version_id": version_id, **values})
        elif any(getattr(row, k) != v for k, v in values.items()):
            changed_markets.append({"b_id": m.id, "version_id": version_id, **values})
        areas = all_areas.get(m.id, {})
        for a in m.areas:
            avalues = {"name": a.name, "kind": a.kind.value, "m2": a.m2, "active": True}
            arow = areas.pop(a.id, None)
            if arow is None:
                new_areas.append({"market_id": m.id, "id": a.id, **avalues})
            elif any(getattr(arow, k) != v for k, v in avalues.items()):
                changed_areas.append({"b_market": m.id, "b_id": a.id, **avalues})
        gone_areas.extend({"b_market": m.id, "b_id": gone} for gone in areas)
    gone_markets = [{"b_id": gone} for gone in sorted(set(existing) - seen)]
    market_key = MarketRow.id == sa.bindparam("b_id")
    area_key = (AreaRow.market_id == sa.bindparam("b_market")) & (
        AreaRow.id == sa.bindparam("b_id")
    )
    if new_markets:
        conn.execute(sa.insert(MarketRow), new_markets)
    if changed_markets:
        conn.execute(sa.update(MarketRow).where(market_key), changed_markets)
    if gone_markets:
        conn.execute(sa.update(MarketRow).where(market_key).values(active=False), gone_markets)
    if new_areas:
        conn.execute(sa.insert(AreaRow), new_areas)
    if changed_areas:
        conn.execute(sa.update(AreaRow).where(area_key), changed_areas)
    if gone_areas:
        conn.execute(sa.update(AreaRow).where(area_key).values(active=False), gone_areas)


@lru_cache(maxsize=8)
def _parse_version(digest: str, sources: tuple[tuple[str, str], ...], zone: str) -> Schedule:
    return load_texts(dict(sources), default_timezone=zone)


_versions_lock = threading.Lock()
#: engine → version id → parsed schedule (weak: an engine disposed of takes its entries)
_versions: weakref.WeakKeyDictionary[sa.Engine, dict[int, Schedule]] = weakref.WeakKeyDictionary()


def schedule_of_version(conn: sa.Connection, version_id: int) -> Schedule:
    """The schedule exactly as it was when ``version_id`` was loaded.

    A version never changes: its row is inserted once (per digest) and never updated
    or deleted, and obligations only name committed versions. So the parsed schedule
    is kept per engine and version id, and a hit asks the database nothing: reading
    and decoding the version's sources (megabytes for a city) on every tick was half
    of a tick's CPU. The cache is per engine because ids are per database.
    """
    engine = conn.engine
    with _versions_lock:
        known = _versions.get(engine)
        found = known.get(version_id) if known is not None else None
    if found is not None:
        return found
    row = conn.execute(
        sa.select(ScheduleVersion).where(ScheduleVersion.id == version_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"schedule version {version_id} does not exist")
    parsed = _parse_version(row.digest, tuple(sorted(row.sources.items())), row.default_timezone)
    with _versions_lock:
        _versions.setdefault(engine, {})[version_id] = parsed
    return parsed


def active_schedule(conn: sa.Connection) -> Schedule | None:
    """The schedule the ledger was last materialised with, if any."""
    state = _state(conn)
    if state is None or state.version_id is None:
        return None
    return schedule_of_version(conn, state.version_id)


# ---------------------------------------------------------------- materialising


@dataclass
class MaterialiseResult:
    created: int = 0
    updated: int = 0
    withdrawn: int = 0
    excused: int = 0
    until: datetime | None = None
    version_id: int | None = None
    chunks: int = 0


def _state(conn: sa.Connection, *, lock: bool = False) -> sa.Row[Any] | None:
    stmt = sa.select(LedgerState).where(LedgerState.id == 1)
    if lock:
        stmt = stmt.with_for_update()
    return conn.execute(stmt).one_or_none()


def _rows(planned: Iterable[Planned], version_id: int, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "natural_key": p.natural_key,
            "market_id": p.market_id,
            "area_id": p.area_id,
            "task_id": p.task_id,
            "kind": p.kind,
            "local_date": p.occurrence.strftime("%Y-%m-%d"),
            "occurrence": p.occurrence.strftime("%Y-%m-%dT%H:%M"),
            "opens_at": p.opens_at,
            "due_at": p.due_at,
            "missed_at": p.missed_at,
            "state": State.UPCOMING.value,
            "state_changed_at": now,
            "version_id": version_id,
            "created_at": now,
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
)
_PLANNED_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS planned_in ("
    "natural_key text, market_id text, area_id text, task_id text, kind text, "
    "local_date text, occurrence text, opens_at timestamptz, due_at timestamptz, "
    "missed_at timestamptz, state text, state_changed_at timestamptz, version_id bigint, "
    "created_at timestamptz) ON COMMIT DROP"
)
_PLANNED_MERGE = (
    f"INSERT INTO obligations ({', '.join(_PLANNED_COLUMNS)}) "
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
    for i in range(0, len(planned), INSERT_CHUNK):
        rows = _rows(planned[i : i + INSERT_CHUNK], version_id, now)
        stmt = _insert(conn, Obligation).on_conflict_do_nothing(index_elements=["natural_key"])
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

    A fresh ledger starts at ``start`` (default: ``now``). Each chunk is one transaction
    that inserts its obligations and advances the watermark, so a crash at any moment
    leaves a consistent ledger and the next run continues where this one stopped;
    downtime is replayed in full. A schedule different from the last one applied is
    reconciled first (future only: see :func:`_apply_version`). ``should_stop`` is asked
    between chunks so a shutdown need not wait for a long catch-up.
    """
    result = MaterialiseResult()
    target = now + horizon

    def step() -> bool:
        with write(engine) as conn:
            version_id = ensure_version(conn, schedule, now=now)
            result.version_id = version_id
            state = _state(conn, lock=True)
            if state is None:
                first = start or now
                # two schedulers starting at once on PostgreSQL: the second finds the row
                conn.execute(
                    _insert(conn, LedgerState)
                    .values(id=1, version_id=None, materialised_until=first)
                    .on_conflict_do_nothing()
                )
                state = _state(conn, lock=True)
                assert state is not None
            until = state.materialised_until or (start or now)
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
                ],
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
    if until > now:
        planned = expand(schedule, now, until)
        keys = {p.natural_key for p in planned}
        known = set(
            conn.execute(
                sa.select(Obligation.natural_key).where(Obligation.opens_at >= now)
            ).scalars()
        )
        result.created += len(keys - known)
        rows = _rows(planned, version_id, now)
        for i in range(0, len(rows), INSERT_CHUNK):
            ins = _insert(conn, Obligation)
            stmt = ins.on_conflict_do_update(
                index_elements=["natural_key"],
                set_={
                    "opens_at": ins.excluded.opens_at,
                    "due_at": ins.excluded.due_at,
                    "missed_at": ins.excluded.missed_at,
                    "version_id": ins.excluded.version_id,
                },
                where=(Obligation.state == State.UPCOMING.value) & (Obligation.opens_at > now),
            )
            conn.execute(stmt, rows[i : i + INSERT_CHUNK])
        stale = conn.execute(
            sa.select(Obligation.id, Obligation.natural_key).where(
                Obligation.state == State.UPCOMING.value,
                Obligation.opens_at > now,
            )
        ).all()
        gone = [r for r in stale if r.natural_key not in keys]
        for i in range(0, len(gone), INSERT_CHUNK):
            ids = [r.id for r in gone[i : i + INSERT_CHUNK]]
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
            },
        ),
    )
    audit.append(conn, events)


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
                    events.append(
                        audit.NewEvent(
                            at=now,
                            actor=SYSTEM,
                            action="excused",
                            obligation_id=r.id,
                            from_state=r.state,
                            to_state=State.EXCUSED.value,
                            details={"reason": span.reason},
                        )
                    )
    return count


# ---------------------------------------------------------------- the sweep


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
            state = _state(conn, lock=True)
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
            # one query per pending state: each is a range scan of the (state, missed_at)
            # index that stops at the limit. A single `state IN (...)` query makes
            # PostgreSQL misjudge the match count on a large history and scan the table.
            missed: list[Any] = []
            for pending in sorted(s.value for s in PENDING):
                missed += conn.execute(
                    sa.select(Obligation.id, Obligation.state)
                    .where(Obligation.state == pending, Obligation.missed_at <= now)
                    .order_by(Obligation.missed_at, Obligation.id)
                    .limit(batch - len(missed))
                ).all()
                if len(missed) >= batch:
                    break
            result.missed = _flip(conn, missed, State.MISSED, now, events)
            # already past its grace period: it goes straight to missed (next batch), never
            # "opened" and missed in the same moment
            opened = conn.execute(
                sa.select(Obligation.id, Obligation.state)
                .where(
                    Obligation.state == State.UPCOMING.value,
                    Obligation.opens_at <= now,
                    Obligation.missed_at > now,
                )
                .order_by(Obligation.opens_at, Obligation.id)
                .limit(batch)
            ).all()
            result.opened = _flip(conn, opened, State.OPEN, now, events)
            result.more = len(missed) == batch or len(opened) == batch
            audit.append(conn, events)
            if state is not None and (last is None or now > last):
                conn.execute(
                    sa.update(LedgerState).where(LedgerState.id == 1).values(last_seen_now=now)
                )
        return result

    return retrying(step, what="sweep")


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
        for i in range(0, len(ids), INSERT_CHUNK):
            part = ids[i : i + INSERT_CHUNK]
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


# ---------------------------------------------------------------- completions


@dataclass(frozen=True)
class RequiredReading:
    id: str
    label: str
    unit: str | None
    range: tuple[float | None, float | None] | None

    def describe(self) -> str:
        return f"{self.id} ({self.label}, {format_range(self.range, self.unit)})"


@dataclass(frozen=True)
class Checklist:
    ticks: tuple[ChecklistItem, ...]
    readings: tuple[RequiredReading, ...]
    texts: tuple[ChecklistItem, ...] = ()


def checklist_of(schedule: Schedule, task_id: str, area_kind: str | None) -> Checklist:
    """The checklist an obligation of ``task_id`` in an area of ``area_kind`` must satisfy."""
    task = schedule.task_by_id.get(task_id)
    if task is None:
        return Checklist((), ())
    ticks = tuple(c for c in task.checklist if c.tick is not None)
    readings = tuple(
        RequiredReading(c.id, c.label, c.unit, c.range_for(area_kind))
        for c in task.checklist
        if c.reading is not None
    )
    texts = tuple(c for c in task.checklist if c.text is not None)
    return Checklist(ticks, readings, texts)


@dataclass(frozen=True)
class TickResult:
    obligation_id: int
    state: State
    changed: bool
    completion_id: int | None
    message: str
    failures: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TickRequest:
    """One tick as the ledger takes it, from the CLI (``tick``) or the web (``TickWriter``).

    ``allowed_markets`` is the caller's market scope (None: any market). It is checked
    against the obligation inside the transaction that records the tick, so the web needs
    no transaction of its own to authorise; a refusal is the same ``NotFound`` as a
    missing obligation, so another market's ids reveal nothing.
    """

    obligation_id: int
    by: str
    now: datetime
    token: str
    readings: Mapping[str, float] = field(default_factory=dict)
    items: Sequence[str] | None = None
    note: str | None = None
    texts: Mapping[str, str] = field(default_factory=dict)
    evidence: Sequence[Mapping[str, Any]] = ()
    allowed_markets: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        *,
        obligation_id: int,
        by: str,
        now: datetime,
        readings: Mapping[str, float] | None = None,
        items: Sequence[str] | None = None,
        note: str | None = None,
        token: str | None = None,
        texts: Mapping[str, str] | None = None,
        evidence: Sequence[Mapping[str, Any]] = (),
        allowed_markets: frozenset[str] | None = None,
    ) -> TickRequest:
        """A request with the ledger's normalisations: whole seconds, a token, a name."""
        by = by.strip()
        if not by:
            raise TickRefused("--by: say who did the work")
        return cls(
            obligation_id=obligation_id,
            by=by,
            now=now.replace(microsecond=0),  # the record keeps whole seconds, as exports show
            token=token or uuid.uuid4().hex,
            readings=dict(readings or {}),
            items=items,
            note=note,
            texts=dict(texts or {}),
            evidence=tuple(evidence),
            allowed_markets=allowed_markets,
        )


def tick(
    engine: sa.Engine,
    *,
    obligation_id: int,
    by: str,
    now: datetime,
    readings: Mapping[str, float] | None = None,
    items: Sequence[str] | None = None,
    note: str | None = None,
    token: str | None = None,
    texts: Mapping[str, str] | None = None,
    evidence: Sequence[Mapping[str, Any]] = (),
) -> TickResult:
    """Record a completion of one obligation (see ``completion_outcome`` for the rule).

    The same ``token`` submitted twice records once. A completed obligation is reported
    as such and left unchanged; before its window opens a tick is refused with the time
    it opens. Readings are checked against the range of the schedule version that made
    the obligation; out of range means failed (kept, and the obligation can be redone).
    One tick, one transaction: the CLI's way. The web batches through ``TickWriter``;
    both run ``_tick_in``, so the rule is written once.
    """
    request = TickRequest.of(
        obligation_id=obligation_id,
        by=by,
        now=now,
        readings=readings,
        items=items,
        note=note,
        token=token,
        texts=texts,
        evidence=evidence,
    )

    def attempt() -> TickResult:
        with write(engine) as conn:
            result, events = _tick_in(conn, request)
            audit.append(conn, events)
            return result

    for _ in range(5):
        try:
            return retrying(attempt, what="tick")
        except _Raced:
            continue
        except sa.exc.IntegrityError:
            # the same token was inserted by a concurrent submission: report that one
            continue
    raise MarketcareError(f"obligation {obligation_id} kept changing under this tick; try again")


_OBLIGATIONS = cast(sa.Table, Obligation.__table__)
_COMPLETIONS = cast(sa.Table, Completion.__table__)
_AREAS = cast(sa.Table, AreaRow.__table__)


class _TickSql:
    """A tick's statements, built once with bound parameters.

    Building a statement per tick (the ``==`` operators, ``.values()`` through the ORM
    layer, its cache key) cost more CPU than running it; a statement object built once
    keeps its cache key, so executing it only binds the values. The area's kind comes
    with the obligation (a scalar subquery), not in a statement of its own.
    """

    area_kind = (
        sa.select(_AREAS.c.kind)
        .where(
            _AREAS.c.market_id == _OBLIGATIONS.c.market_id, _AREAS.c.id == _OBLIGATIONS.c.area_id
        )
        .scalar_subquery()
        .label("area_kind")
    )
    obligation = (
        sa.select(_OBLIGATIONS, area_kind)
        .where(_OBLIGATIONS.c.id == sa.bindparam("ob_id"))
        .with_for_update(of=_OBLIGATIONS)
    )
    prior = sa.select(_COMPLETIONS.c.id, _COMPLETIONS.c.obligation_id).where(
        _COMPLETIONS.c.token == sa.bindparam("token")
    )
    state_of = sa.select(_OBLIGATIONS.c.state).where(_OBLIGATIONS.c.id == sa.bindparam("ob_id"))
    move = (
        sa.update(_OBLIGATIONS)
        .where(
            _OBLIGATIONS.c.id == sa.bindparam("ob_id"),
            _OBLIGATIONS.c.state == sa.bindparam("from_state"),
        )
        .values(
            state=sa.bindparam("to_state", type_=_OBLIGATIONS.c.state.type),
            state_changed_at=sa.bindparam("changed_at", type_=_OBLIGATIONS.c.state_changed_at.type),
            completed_at=sa.bindparam("done_at", type_=_OBLIGATIONS.c.completed_at.type),
        )
    )
    record = sa.insert(_COMPLETIONS).returning(_COMPLETIONS.c.id)


def _obligation_to_tick(conn: sa.Connection, request: TickRequest) -> Any:
    """The obligation row (locked) with its area's kind, within the caller's scope."""
    found = conn.execute(_TickSql.obligation, {"ob_id": request.obligation_id}).one_or_none()
    scope = request.allowed_markets
    if found is None or (scope is not None and found.market_id not in scope):
        raise NotFound(f"obligation {request.obligation_id} does not exist")
    return found


def _tick_in(conn: sa.Connection, request: TickRequest) -> tuple[TickResult, list[audit.NewEvent]]:
    """The rule of a tick, inside the caller's write transaction.

    Returns the result and the audit events that the caller appends in the same
    transaction, after this tick and in this order: ``tick`` appends them at once, the
    ``TickWriter`` appends a whole batch's events in one go (one head update, not one
    per tick). With a market scope, the obligation is looked up (and refused) before
    the token, as the web authorised before it ticked: a token is never confirmed to
    someone who may not see the record.
    """
    now, token = request.now, request.token
    ob = _obligation_to_tick(conn, request) if request.allowed_markets is not None else None
    prior = conn.execute(_TickSql.prior, {"token": token}).one_or_none()
    if prior is not None:
        prior_state = conn.execute(_TickSql.state_of, {"ob_id": prior.obligation_id}).scalar_one()
        return TickResult(
            prior.obligation_id,
            State(prior_state),
            False,
            prior.id,
            "already recorded (same submission)",
        ), []
    if ob is None:
        ob = _obligation_to_tick(conn, request)
    state = State(ob.state)
    if state in COMPLETED:
        done = conn.execute(
            sa.select(Completion)
            .where(
                Completion.obligation_id == ob.id,
                Completion.outcome.in_([s.value for s in COMPLETED]),
            )
            .order_by(Completion.id)
        ).first()
        who = f" by {done.by} at {done.at.isoformat(timespec='minutes')}" if done else ""
        return TickResult(
            ob.id, state, False, None, f"already {state.value}{who}; nothing changed"
        ), []
    if state == State.EXCUSED:
        raise TickRefused(
            f"obligation {ob.id} is excused ({ob.note or 'no reason given'}); nothing to do"
        )
    if now < ob.opens_at:
        zone = _market_zone(conn, ob.market_id)
        raise TickRefused(
            f"obligation {ob.id} opens at {ob.opens_at.astimezone(zone):%Y-%m-%d %H:%M %Z}; "
            "it cannot be completed before then"
        )
    if state not in TICKABLE and state != State.UPCOMING:
        raise MarketcareError(f"obligation {ob.id} is {state.value}")
    schedule = schedule_of_version(conn, ob.version_id)
    checklist = checklist_of(schedule, ob.task_id, ob.area_kind)
    failures, item_map = _check(checklist, request.readings, request.items, request.texts)
    outcome = completion_outcome(due_at=ob.due_at, at=now, readings_ok=not failures)
    changed = conn.execute(
        _TickSql.move,
        {
            "ob_id": ob.id,
            "from_state": state.value,
            "to_state": outcome.value,
            "changed_at": now,
            "done_at": now if outcome in COMPLETED else None,
        },
    ).rowcount
    if changed != 1:
        raise _Raced()
    evidence = request.evidence
    completion_id = conn.execute(
        _TickSql.record,
        {
            "obligation_id": ob.id,
            "token": token,
            "by": request.by,
            "at": now,
            "outcome": outcome.value,
            "readings": dict(request.readings),
            "items": item_map,
            "failures": failures,
            "note": request.note,
            "evidence": {"items": [dict(e) for e in evidence]} if evidence else None,
        },
    ).scalar_one()
    event = audit.NewEvent(
        at=now,
        actor=request.by,
        action="completed" if outcome != State.FAILED else "failed_check",
        obligation_id=ob.id,
        from_state=state.value,
        to_state=outcome.value,
        details={"completion_id": completion_id, "token": token, "failures": failures},
    )
    if outcome == State.FAILED:
        parts = [
            f"{k}={v['value']:g} outside {format_range(_bounds(v['range']), v.get('unit'))}"
            for k, v in failures.items()
        ]
        msg = f"recorded, but failed: {'; '.join(parts)}; redo it and tick again"
    elif outcome == State.LATE:
        msg = f"recorded as late ({minutes_late(due_at=ob.due_at, completed_at=now)} min after due)"
    else:
        msg = "recorded as done on time"
    return TickResult(ob.id, outcome, True, completion_id, msg, failures), [event]


def _tick_in_savepoint(
    conn: sa.Connection, request: TickRequest
) -> tuple[TickResult, list[audit.NewEvent]] | Exception:
    """One tick of a batch in its own SAVEPOINT: a refusal undoes this tick only.

    A refusal comes back as the exception (for that request's future); an error of the
    database itself (``OperationalError``: locked, connection lost) is raised, because
    then the whole batch's transaction is in doubt and every request must hear of it.
    """
    for _ in range(5):
        savepoint = conn.begin_nested()
        try:
            done = _tick_in(conn, request)
        except (_Raced, sa.exc.IntegrityError):
            # CAS lost or the token inserted by another process: look again from scratch
            savepoint.rollback()
            continue
        except sa.exc.OperationalError:
            raise
        except Exception as exc:  # refused (TickRefused, NotFound, ...) or a bad value
            savepoint.rollback()
            return exc
        savepoint.commit()
        return done
    return MarketcareError(
        f"obligation {request.obligation_id} kept changing under this tick; try again"
    )


@dataclass
class _Pending:
    request: TickRequest
    future: Future[TickResult]


class TickWriter:
    """Group commit for ticks: one thread writes every waiting tick in one transaction.

    Under many concurrent clients, a transaction per tick costs a ``BEGIN``, a
    ``COMMIT`` (an fsync) and a queue in SQLite's busy handler (which sleeps up to
    100 ms between retries) per tick, and a worker thread per waiting request. Here
    requests queue in Python; the thread takes all that wait (up to ``max_batch``) and
    runs each in its own SAVEPOINT of one write transaction, so a refused tick leaves
    the others of its batch alone. Nothing waits for company: a lone tick is written at
    once, batches form only while a transaction is already running.

    A request's future is resolved only after COMMIT; when the transaction fails as a
    whole (locked past the retries, the commit itself failing) every request of the
    batch gets that exception and nothing of the batch is recorded. ``close`` stops
    taking requests and writes what was taken before returning. The batch's audit
    events are appended once, after its ticks and in their order (one chain-head update
    per batch). SAVEPOINTs work on SQLite inside ``BEGIN IMMEDIATE`` (``make_engine``
    issues the ``BEGIN`` itself, so pysqlite's own transaction handling stays out of the
    way) and on PostgreSQL; ``tests/test_tick_batch.py`` runs on both.
    """

    def __init__(self, engine: sa.Engine, *, max_batch: int = 64, start: bool = True) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tick-writer", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start writing (a writer made with ``start=False`` only queues until then)."""
        self._thread.start()

    def submit(self, request: TickRequest) -> Future[TickResult]:
        fut: Future[TickResult] = Future()
        with self._lock:
            if self._closed:
                raise MarketcareError("the server is shutting down; tick again in a moment")
            self._queue.put(_Pending(request, fut))
        return fut

    def tick(self, request: TickRequest) -> TickResult:
        """Submit and wait (for threads; the web awaits the future instead)."""
        return self.submit(request).result()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, write every one already taken, end the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
            if self._thread.ident is None:  # never started: write what it holds all the same
                self._thread.start()
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            try:
                self._write(batch)
            except Exception:  # never leave a caller waiting for ever, nor the thread dead
                log.exception("tick writer: a batch failed unexpectedly")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(MarketcareError("the tick was not recorded"))

    def _write(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return

        def attempt() -> list[TickResult | Exception]:
            outcomes: list[TickResult | Exception] = []
            events: list[audit.NewEvent] = []
            with write(self.engine) as conn:
                for p in live:
                    done = _tick_in_savepoint(conn, p.request)
                    if isinstance(done, Exception):
                        outcomes.append(done)
                    else:
                        outcomes.append(done[0])
                        events.extend(done[1])
                audit.append(conn, events)
            return outcomes

        try:
            outcomes = retrying(attempt, what="tick batch")
        except Exception as exc:
            for p in live:
                p.future.set_exception(exc)
            return
        for p, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Exception):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)


def _bounds(value: Any) -> tuple[float | None, float | None] | None:
    return None if value is None else (value[0], value[1])


class _Raced(Exception):
    pass


def _check(
    checklist: Checklist,
    readings: Mapping[str, float],
    items: Sequence[str] | None,
    texts: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    known_readings = {r.id: r for r in checklist.readings}
    unknown = sorted(set(readings) - set(known_readings))
    if unknown:
        valid = ", ".join(r.describe() for r in checklist.readings) or "none"
        raise TickRefused(f"unknown reading {unknown[0]!r}; this task takes: {valid}")
    missing = [r for r in checklist.readings if r.id not in readings]
    if missing:
        raise TickRefused(
            "missing reading(s): "
            + ", ".join(r.describe() for r in missing)
            + "; give each as --reading KEY=VALUE"
        )
    tick_ids = [c.id for c in checklist.ticks]
    if items is None or not items:
        given = list(tick_ids)
    else:
        given = list(dict.fromkeys(items))
        bad = [i for i in given if i not in tick_ids]
        if bad:
            raise TickRefused(
                f"unknown item {bad[0]!r}; this task's items: {', '.join(tick_ids) or 'none'}"
            )
        left = [i for i in tick_ids if i not in given]
        if left:
            raise TickRefused(
                f"items not ticked: {', '.join(left)}; tick them all (or give no --item to tick all)"
            )
    text_ids = [t.id for t in checklist.texts]
    bad_texts = sorted(set(texts) - set(text_ids))
    if bad_texts:
        raise TickRefused(
            f"unknown text {bad_texts[0]!r}; this task's texts: {', '.join(text_ids) or 'none'}"
        )
    blank = [t for t in checklist.texts if t.required and not str(texts.get(t.id, "")).strip()]
    if blank:
        raise TickRefused(
            "missing text(s): "
            + ", ".join(f"{t.id} ({t.label})" for t in blank)
            + "; give each as --text KEY=VALUE"
        )
    failures: dict[str, Any] = {}
    for r in checklist.readings:
        value = readings[r.id]
        if not in_range(value, r.range):
            failures[r.id] = {
                "value": value,
                "range": list(r.range) if r.range else None,
                "unit": r.unit,
            }
    recorded: dict[str, Any] = dict.fromkeys(given, True)
    recorded.update({k: v.strip() for k, v in texts.items() if v.strip()})
    return failures, recorded


def _market_zone(conn: sa.Connection, market_id: str) -> ZoneInfo:
    name = conn.execute(sa.select(MarketRow.timezone).where(MarketRow.id == market_id)).scalar_one()
    return ZoneInfo(name)


# ---------------------------------------------------------------- the board


@dataclass(frozen=True)
class BoardRow:
    id: int
    market_id: str
    market_name: str
    area_id: str | None
    area_kind: str | None
    task_id: str
    kind: str
    local_date: str
    opens_at: datetime
    due_at: datetime
    missed_at: datetime
    state: State
    overdue: bool
    completed_at: datetime | None
    zone: str
    note: str | None

    def local(self, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(ZoneInfo(self.zone))

    def as_json(self) -> dict[str, Any]:
        def iso(v: datetime | None) -> str | None:
            loc = self.local(v)
            return None if loc is None else loc.isoformat()

        return {
            "id": self.id,
            "market": self.market_id,
            "market_name": self.market_name,
            "area": self.area_id,
            "area_kind": self.area_kind,
            "task": self.task_id,
            "kind": self.kind,
            "date": self.local_date,
            "opens_at": iso(self.opens_at),
            "due_at": iso(self.due_at),
            "missed_at": iso(self.missed_at),
            "state": self.state.value,
            "overdue": self.overdue,
            "completed_at": iso(self.completed_at),
            "minutes_late": minutes_late(due_at=self.due_at, completed_at=self.completed_at),
            "note": self.note,
        }


def board_row(
    ob: Any, *, market_name: str, zone: str, area_kind: str | None, now: datetime
) -> BoardRow:
    """An obligation row as the board shows it: its state as the clock has it ``now``
    (the sweep runs every few seconds, the board must not lag behind it)."""
    state = state_by_clock(State(ob.state), opens_at=ob.opens_at, missed_at=ob.missed_at, now=now)
    return BoardRow(
        id=ob.id,
        market_id=ob.market_id,
        market_name=market_name,
        area_id=ob.area_id,
        area_kind=area_kind,
        task_id=ob.task_id,
        kind=ob.kind,
        local_date=ob.local_date,
        opens_at=ob.opens_at,
        due_at=ob.due_at,
        missed_at=ob.missed_at,
        state=state,
        overdue=is_overdue(state, due_at=ob.due_at, now=now),
        completed_at=ob.completed_at,
        zone=zone,
        note=ob.note,
    )


def board(
    engine: sa.Engine,
    *,
    day: date,
    now: datetime,
    markets: Sequence[str] | None = None,
    days: int = 1,
) -> list[BoardRow]:
    """Every obligation of ``days`` local days from ``day`` with its state as of ``now``,
    overdue first."""
    with read(engine) as conn:
        stmt = (
            sa.select(
                Obligation,
                MarketRow.name.label("market_name"),
                MarketRow.timezone.label("zone"),
                AreaRow.kind.label("area_kind"),
            )
            .join(MarketRow, MarketRow.id == Obligation.market_id)
            .outerjoin(
                AreaRow,
                (AreaRow.market_id == Obligation.market_id) & (AreaRow.id == Obligation.area_id),
            )
            .where(
                Obligation.local_date >= day.isoformat(),
                Obligation.local_date < (day + timedelta(days=days)).isoformat(),
            )
        )
        if markets:
            stmt = stmt.where(Obligation.market_id.in_(list(markets)))
        rows = conn.execute(stmt).all()
    out = [
        board_row(ob, market_name=ob.market_name, zone=ob.zone, area_kind=ob.area_kind, now=now)
        for ob in rows
    ]
    out.sort(
        key=lambda r: (
            not r.overdue,
            ORDER_ON_BOARD[r.state],
            r.due_at,
            r.market_id,
            r.area_id or "",
            r.task_id,
        )
    )
    return out


def completions_of(engine: sa.Engine, obligation_id: int) -> list[sa.Row[Any]]:
    with read(engine) as conn:
        return list(
            conn.execute(
                sa.select(Completion)
                .where(Completion.obligation_id == obligation_id)
                .order_by(Completion.id)
            ).all()
        )


def now_utc() -> datetime:
    return datetime.now(UTC)
