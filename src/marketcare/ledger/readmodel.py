"""What the web pages and the JSON API show, computed once for both.

Each function reads the ledger in one snapshot and returns plain data; the rules come
from where they live in ``domain`` (``obligations`` for states, ``compliance`` for
the %, ``problems`` for the rectification rate, ``access`` for who sees what). Rendering as
HTML or JSON is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare import clock
from marketcare.domain.checklists import Checklist, RequiredReading, checklist_of
from marketcare.domain.obligations import (
    COMPLETED,
    ORDER_ON_BOARD,
    TICKABLE,
    State,
    minutes_late,
    redo_by,
    state_by_clock,
)
from marketcare.domain.obligations import (
    is_overdue as obligation_overdue,
)
from marketcare.domain.problems import is_overdue
from marketcare.errors import NotFound
from marketcare.ledger.db import read
from marketcare.ledger.models import AreaRow, Completion, MarketRow, Obligation, ProblemRow
from marketcare.ledger.versions import schedule_of_version

#: an obligation that opens within this time shows under "due soon"
SOON = timedelta(hours=3)


@dataclass(frozen=True)
class MarketInfo:
    id: str
    name: str
    sub_district: str
    zone: str

    def today(self, now: datetime) -> date:
        return now.astimezone(ZoneInfo(self.zone)).date()


def markets(engine: sa.Engine, ids: list[str] | None = None) -> list[MarketInfo]:
    """Active markets (all, or those in ``ids``), ordered by id."""
    with read(engine) as conn:
        return markets_in(conn, ids)


def markets_in(conn: sa.Connection, ids: list[str] | None = None) -> list[MarketInfo]:
    """``markets`` inside a read transaction the caller holds."""
    stmt = (
        sa.select(MarketRow.id, MarketRow.name, MarketRow.sub_district, MarketRow.timezone)
        .where(MarketRow.active.is_(True))
        .order_by(MarketRow.id)
    )
    if ids is not None:
        stmt = stmt.where(MarketRow.id.in_(ids))
    # the columns, not the entity: a city's dashboard reads a thousand on each request
    return [MarketInfo(*r) for r in conn.execute(stmt)]


def market(engine: sa.Engine, market_id: str) -> MarketInfo:
    found = markets(engine, [market_id])
    if not found:
        raise NotFound(f"no market {market_id!r}")
    return found[0]


# ---------------------------------------------------------------- a manager's today


@dataclass(frozen=True)
class TodayBoard:
    """One market's day as a manager works it: act on the top list first."""

    market: MarketInfo
    day: date
    now: datetime
    overdue: list[BoardRow]  # ``obligations.is_overdue``: still to do, and late
    open_now: list[BoardRow]  # open within time, or failed before due (to redo in time)
    due_soon: list[BoardRow]  # opening within SOON
    later: list[BoardRow]  # opening later today
    finished: list[BoardRow]  # done, late or excused

    def as_json(self) -> dict[str, Any]:
        return {
            "market": self.market.id,
            "market_name": self.market.name,
            "date": self.day.isoformat(),
            "now": clock.iso(self.now, ZoneInfo(self.market.zone)),
            "overdue": [r.as_json() for r in self.overdue],
            "open": [r.as_json() for r in self.open_now],
            "due_soon": [r.as_json() for r in self.due_soon],
            "later": [r.as_json() for r in self.later],
            "finished": [r.as_json() for r in self.finished],
        }


def today(engine: sa.Engine, market_id: str, *, now: datetime) -> TodayBoard:
    """The market's board for its local today, plus yesterday's work that can still be
    done (a disinfection after a late closing runs past midnight)."""
    info = market(engine, market_id)
    day = info.today(now)
    yesterday = (day - timedelta(days=1)).isoformat()
    rows = [
        r
        for r in board(engine, day=day - timedelta(days=1), now=now, markets=[market_id], days=2)
        if r.local_date != yesterday or r.state in (State.OPEN, State.FAILED)
    ]
    overdue: list[BoardRow] = []
    open_now: list[BoardRow] = []
    soon: list[BoardRow] = []
    later: list[BoardRow] = []
    finished: list[BoardRow] = []
    for r in rows:
        if r.overdue:
            overdue.append(r)
        elif r.state in (State.OPEN, State.FAILED):  # failed before due: redo it in time
            open_now.append(r)
        elif r.state == State.UPCOMING:
            (soon if r.opens_at - now <= SOON else later).append(r)
        else:
            finished.append(r)
    return TodayBoard(info, day, now, overdue, open_now, soon, later, finished)


# ---------------------------------------------------------------- one obligation


@dataclass(frozen=True)
class ObligationView:
    row: BoardRow
    task_name: str
    area_name: str | None
    checklist: Checklist
    completions: list[dict[str, Any]]

    @property
    def readings(self) -> list[RequiredReading]:
        return list(self.checklist.readings)

    @property
    def tickable(self) -> bool:
        """A tick may be recorded against its state (before it opens it is refused with the
        time it opens: ``obligations.can_tick`` is the whole rule)."""
        return self.row.state in TICKABLE

    @property
    def completed(self) -> bool:
        return self.row.state in COMPLETED

    def as_json(self) -> dict[str, Any]:
        out = self.row.as_json()
        out.update(
            {
                "task_name": self.task_name,
                "area_name": self.area_name,
                "checklist": {
                    "items": [{"id": c.id, "label": c.label} for c in self.checklist.ticks],
                    "readings": [
                        {
                            "id": r.id,
                            "label": r.label,
                            "unit": r.unit,
                            "range": list(r.range) if r.range else None,
                        }
                        for r in self.readings
                    ],
                    "texts": [
                        {"id": t.id, "label": t.label, "required": bool(t.required)}
                        for t in self.checklist.texts
                    ],
                },
                "completions": self.completions,
            }
        )
        return out


def _completion_json(c: Any, zone: ZoneInfo) -> dict[str, Any]:
    return {
        "id": c.id,
        "by": c.by,
        "at": clock.iso(c.at, zone),
        "outcome": c.outcome,
        "readings": c.readings,
        "items": c.items,
        "failures": c.failures,
        "note": c.note,
        "photos": [
            {"name": e.get("name"), "sha256": e.get("sha256")}
            for e in (c.evidence or {}).get("items", [])
        ],
        "phone_at": None if c.phone_at is None else c.phone_at.astimezone(zone).isoformat(),
        "arrived_at": None if c.arrived_at is None else c.arrived_at.astimezone(zone).isoformat(),
        "time_basis": c.time_basis,
    }


def obligation(engine: sa.Engine, obligation_id: int, *, now: datetime) -> ObligationView:
    """One obligation with its checklist (as of the schedule that made it) and its history."""
    with read(engine) as conn:
        found = conn.execute(
            sa.select(Obligation, MarketRow.name.label("market_name"), MarketRow.timezone)
            .join(MarketRow, MarketRow.id == Obligation.market_id)
            .where(Obligation.id == obligation_id)
        ).one_or_none()
        if found is None:
            raise NotFound(f"obligation {obligation_id} does not exist")
        area = None
        if found.area_id is not None:
            area = conn.execute(
                sa.select(AreaRow).where(
                    AreaRow.market_id == found.market_id, AreaRow.id == found.area_id
                )
            ).one_or_none()
        schedule = schedule_of_version(conn, found.version_id)
        comps = conn.execute(
            sa.select(Completion)
            .where(Completion.obligation_id == obligation_id)
            .order_by(Completion.id)
        ).all()
    zone = ZoneInfo(found.timezone)
    row = board_row(
        found,
        market_name=found.market_name,
        zone=found.timezone,
        area_kind=area.kind if area is not None else None,
        now=now,
    )
    task = schedule.task_by_id.get(found.task_id)
    return ObligationView(
        row=row,
        task_name=task.name if task is not None else found.task_id,
        area_name=(area.name or area.id) if area is not None else None,
        checklist=checklist_of(schedule, found.task_id, row.area_kind),
        completions=[_completion_json(c, zone) for c in comps],
    )


def market_of_obligation(engine: sa.Engine, obligation_id: int) -> str | None:
    """The market an obligation belongs to (for the authorisation check), or None."""
    with read(engine) as conn:
        value = conn.execute(
            sa.select(Obligation.market_id).where(Obligation.id == obligation_id)
        ).scalar_one_or_none()
    return None if value is None else str(value)


def market_of_problem(engine: sa.Engine, problem_id: int) -> str | None:
    with read(engine) as conn:
        value = conn.execute(
            sa.select(ProblemRow.market_id).where(ProblemRow.id == problem_id)
        ).scalar_one_or_none()
    return None if value is None else str(value)


# ---------------------------------------------------------------- history


def history(
    engine: sa.Engine,
    market_id: str,
    *,
    now: datetime,
    days: int = 14,
    area: str | None = None,
) -> list[BoardRow]:
    """The market's obligations of the last ``days`` local days, newest day first."""
    last = market(engine, market_id).today(now)
    rows = board(
        engine, day=last - timedelta(days=days - 1), now=now, markets=[market_id], days=days
    )
    if area is not None:
        rows = [r for r in rows if r.area_id == area]
    rows.sort(key=lambda r: (r.due_at, r.area_id or "", r.task_id))
    rows.sort(key=lambda r: r.local_date, reverse=True)  # stable: newest day first
    return rows


def areas(engine: sa.Engine, market_id: str) -> list[dict[str, Any]]:
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(AreaRow)
            .where(AreaRow.market_id == market_id, AreaRow.active.is_(True))
            .order_by(AreaRow.id)
        ).all()
    return [{"id": r.id, "name": r.name or r.id, "kind": r.kind} for r in rows]


def area_names(engine: sa.Engine, market_ids: Iterable[str]) -> dict[tuple[str, str], str]:
    """Each area's name by (market, area), for the markets named: one read for a table
    that lists several markets' records."""
    ids = sorted(set(market_ids))
    if not ids:
        return {}
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(AreaRow.market_id, AreaRow.id, AreaRow.name).where(AreaRow.market_id.in_(ids))
        ).all()
    return {(r.market_id, r.id): r.name or r.id for r in rows}


# ---------------------------------------------------------------- problems


def problem_json(p: Any, zone: ZoneInfo, *, now: datetime) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return clock.iso(v, zone)

    return {
        "id": p.id,
        "market": p.market_id,
        "area": p.area_id,
        "category": p.category,
        "description": p.description,
        "found_at": iso(p.found_at),
        "found_by": p.found_by,
        "deadline": iso(p.deadline),
        "state": p.state,
        "overdue": is_overdue(p.state, deadline=p.deadline, now=now),
        "reopened": p.reopened,
        "assigned_to": p.assigned_to,
        "rectified_at": iso(p.rectified_at),
        "rectified_by": p.rectified_by,
        "rectify_note": p.rectify_note,
        "verified_at": iso(p.verified_at),
        "verified_by": p.verified_by,
        "photos": [
            {"name": e.get("name"), "sha256": e.get("sha256")}
            for e in (p.evidence or {}).get("items", [])
        ],
    }


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
    #: a failed check that can still be redone in time: until when (``redo_by``)
    redo_by: datetime | None = None
    #: the schedule version that made the obligation (its checklist and ranges)
    version_id: int | None = None

    def local(self, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(ZoneInfo(self.zone))

    def as_json(self) -> dict[str, Any]:
        def iso(v: datetime | None) -> str | None:
            return clock.iso(v, ZoneInfo(self.zone))

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
            "redo_by": iso(self.redo_by),
            "schedule_version": self.version_id,
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
        overdue=obligation_overdue(state, due_at=ob.due_at, now=now),
        completed_at=ob.completed_at,
        zone=zone,
        note=ob.note,
        redo_by=redo_by(state, due_at=ob.due_at, now=now),
        version_id=ob.version_id,
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


def checklists(engine: sa.Engine, rows: Sequence[BoardRow]) -> dict[int, Checklist]:
    """The checklist of each row (as of the schedule version that made it), by id, so a
    board can carry each task's form."""
    out: dict[int, Checklist] = {}
    with read(engine) as conn:
        for r in rows:
            if r.version_id is None:
                continue
            schedule = schedule_of_version(conn, r.version_id)
            out[r.id] = checklist_of(schedule, r.task_id, r.area_kind)
    return out


@dataclass(frozen=True)
class DaySummary:
    """One day of a market's history at a glance: how many of each outcome, and who."""

    day: str
    rows: list[BoardRow]
    counts: dict[State, int]
    people: list[str]  # user names (or names) of those who recorded work that day

    @property
    def total(self) -> int:
        return len(self.rows)


def history_days(engine: sa.Engine, rows: Sequence[BoardRow]) -> list[DaySummary]:
    """``history``'s rows grouped by day (newest first) with each day's counts and people."""
    ids = [r.id for r in rows]
    who: dict[int, list[str]] = {}
    with read(engine) as conn:
        for start in range(0, len(ids), 500):
            for oid, by in conn.execute(
                sa.select(Completion.obligation_id, Completion.by)
                .where(Completion.obligation_id.in_(ids[start : start + 500]))
                .order_by(Completion.id)
            ):
                who.setdefault(oid, []).append(by)
    days: dict[str, DaySummary] = {}
    for r in rows:
        summary = days.get(r.local_date)
        if summary is None:
            summary = days[r.local_date] = DaySummary(r.local_date, [], {}, [])
        summary.rows.append(r)
        summary.counts[r.state] = summary.counts.get(r.state, 0) + 1
        for name in who.get(r.id, []):
            if name not in summary.people:
                summary.people.append(name)
    return list(days.values())


def completions_of(engine: sa.Engine, obligation_id: int) -> list[sa.Row[Any]]:
    with read(engine) as conn:
        return list(
            conn.execute(
                sa.select(Completion)
                .where(Completion.obligation_id == obligation_id)
                .order_by(Completion.id)
            ).all()
        )
