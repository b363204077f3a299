"""What the web pages and the JSON API show, computed once for both.

Each function reads the ledger in one snapshot and returns plain data; the rules come
from where they live (``obligations`` for states, ``compliance`` for the %,
``problems`` for the rectification rate, ``access`` for who sees what). Rendering as
HTML or JSON is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from . import compliance, ledger
from .db import read
from .errors import NotFound
from .ledger import BoardRow, Checklist, board_row, checklist_of, schedule_of_version
from .models import AreaRow, Completion, MarketRow, Obligation, ProblemRow
from .obligations import COMPLETED, TICKABLE, State, format_range
from .periods import Period
from .problems import ProblemState, is_overdue
from .reports import Report, problem_rates

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
        stmt = sa.select(MarketRow).where(MarketRow.active.is_(True)).order_by(MarketRow.id)
        if ids is not None:
            stmt = stmt.where(MarketRow.id.in_(ids))
        return [MarketInfo(r.id, r.name, r.sub_district, r.timezone) for r in conn.execute(stmt)]


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
    overdue: list[BoardRow]  # past due, missed or failed: still to do, and late
    open_now: list[BoardRow]  # open and within time
    due_soon: list[BoardRow]  # opening within SOON
    later: list[BoardRow]  # opening later today
    finished: list[BoardRow]  # done, late or excused

    def as_json(self) -> dict[str, Any]:
        return {
            "market": self.market.id,
            "market_name": self.market.name,
            "date": self.day.isoformat(),
            "now": self.now.astimezone(ZoneInfo(self.market.zone)).isoformat(),
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
        for r in ledger.board(
            engine, day=day - timedelta(days=1), now=now, markets=[market_id], days=2
        )
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
        elif r.state == State.OPEN:
            open_now.append(r)
        elif r.state == State.UPCOMING:
            (soon if r.opens_at - now <= SOON else later).append(r)
        else:
            finished.append(r)
    return TodayBoard(info, day, now, overdue, open_now, soon, later, finished)


# ---------------------------------------------------------------- one obligation


@dataclass(frozen=True)
class ReadingField:
    id: str
    label: str
    unit: str | None
    range: tuple[float | None, float | None] | None

    @property
    def range_text(self) -> str:
        return format_range(self.range, self.unit)


@dataclass(frozen=True)
class ObligationView:
    row: BoardRow
    task_name: str
    area_name: str | None
    checklist: Checklist
    completions: list[dict[str, Any]]

    @property
    def readings(self) -> list[ReadingField]:
        return [ReadingField(r.id, r.label, r.unit, r.range) for r in self.checklist.readings]

    @property
    def tickable(self) -> bool:
        return self.row.state in TICKABLE or self.row.state == State.UPCOMING

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
        "at": c.at.astimezone(zone).isoformat(),
        "outcome": c.outcome,
        "readings": c.readings,
        "items": c.items,
        "failures": c.failures,
        "note": c.note,
        "photos": [
            {"name": e.get("name"), "sha256": e.get("sha256")}
            for e in (c.evidence or {}).get("items", [])
        ],
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
    rows = ledger.board(
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


# ---------------------------------------------------------------- problems


def problem_json(p: Any, zone: ZoneInfo, *, now: datetime) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return None if v is None else v.astimezone(zone).isoformat()

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


# ---------------------------------------------------------------- the office dashboard


@dataclass(frozen=True)
class MarketFigures:
    """One market's column on the office dashboard."""

    market: MarketInfo
    today_on_time: int
    today_due: int
    week_on_time: int
    week_due: int
    missed_today: int
    missed_week: int
    open_problems: int
    overdue_problems: int
    rate_verified: int
    rate_due: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compliance_today(self) -> float | None:
        return compliance.compliance(self.today_on_time, self.today_due)

    @property
    def compliance_week(self) -> float | None:
        return compliance.compliance(self.week_on_time, self.week_due)

    @property
    def rectification_rate(self) -> float | None:
        return None if self.rate_due == 0 else self.rate_verified / self.rate_due

    def as_json(self) -> dict[str, Any]:
        return {
            "market": self.market.id,
            "market_name": self.market.name,
            "compliance_today": self.compliance_today,
            "compliance_week": self.compliance_week,
            "due_today": self.today_due,
            "on_time_today": self.today_on_time,
            "due_week": self.week_due,
            "on_time_week": self.week_on_time,
            "missed_today": self.missed_today,
            "missed_week": self.missed_week,
            "open_problems": self.open_problems,
            "overdue_problems": self.overdue_problems,
            "rectification_rate_month": self.rectification_rate,
            "rectification_due_month": self.rate_due,
            "rectification_verified_month": self.rate_verified,
        }


def dashboard(engine: sa.Engine, *, now: datetime, market_ids: list[str]) -> list[MarketFigures]:
    """Compliance today and this week, misses, overdue problems and this month's
    rectification rate, per market; the same rules as the exports (``reports.Report``)."""
    infos = markets(engine, market_ids)
    out: list[MarketFigures] = []
    with read(engine) as conn:
        by_zone: dict[str, list[MarketInfo]] = {}
        for m in infos:
            by_zone.setdefault(m.zone, []).append(m)
        figures: dict[str, dict[str, int]] = {m.id: {} for m in infos}
        for zone, group in by_zone.items():
            day = now.astimezone(ZoneInfo(zone)).date()
            ids = [m.id for m in group]
            for name, period in (
                ("today", Period.of("day", day)),
                ("week", Period.of("week", day)),
            ):
                totals = Report(conn, period, as_of=now, markets=ids).market_totals()
                for mid in ids:
                    if mid in totals.index:
                        row: dict[Any, Any] = totals.loc[mid].to_dict()
                        figures[mid][f"{name}_on_time"] = int(row["on_time"])
                        figures[mid][f"{name}_due"] = int(row["due"])
                        figures[mid][f"{name}_missed"] = int(row["missed"])
            month = Report(conn, Period.of("month", day), as_of=now, markets=ids)
            for mid, rate in problem_rates(month).items():
                figures[mid]["rate_verified"] = rate.verified
                figures[mid]["rate_due"] = rate.due
        problems = conn.execute(
            sa.select(ProblemRow.market_id, ProblemRow.state, ProblemRow.deadline).where(
                ProblemRow.state != ProblemState.VERIFIED.value,
                ProblemRow.market_id.in_([m.id for m in infos]),
            )
        ).all()
    for p in problems:
        f = figures[p.market_id]
        f["open_problems"] = f.get("open_problems", 0) + 1
        if is_overdue(p.state, deadline=p.deadline, now=now):
            f["overdue_problems"] = f.get("overdue_problems", 0) + 1
    for m in infos:
        f = figures[m.id]
        out.append(
            MarketFigures(
                market=m,
                today_on_time=f.get("today_on_time", 0),
                today_due=f.get("today_due", 0),
                week_on_time=f.get("week_on_time", 0),
                week_due=f.get("week_due", 0),
                missed_today=f.get("today_missed", 0),
                missed_week=f.get("week_missed", 0),
                open_problems=f.get("open_problems", 0),
                overdue_problems=f.get("overdue_problems", 0),
                rate_verified=f.get("rate_verified", 0),
                rate_due=f.get("rate_due", 0),
            )
        )
    return out
