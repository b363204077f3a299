"""What a compliance report says: the numbers and rows of one period, read from the ledger.

The workbook writer (``workbook``) and the email (``delivery``) only format what this
module gathers. Rows are streamed per market so a month of a thousand markets never sits
in memory; the summary is a ``GROUP BY`` in the database turned into ``compliance.Counts``
by ``tally``, in plain Python (a few groups per market and kind: a data-frame library
would cost more than the counting, and its import alone tens of megabytes in the daemon).
Each group is judged by the domain's rules (``compliance.categorise``,
``obligations.is_overdue``): the SQL only says on which side of ``as_of`` each of an
obligation's times lies, so the figures follow the rules and never restate them. The
office dashboard counts with the same ``groups`` and ``tally``.

Re-inspections are the office's work, not the market's: the summary (compliance) leaves
them out and ``reinspections`` counts them for the rectification figures; the market
sheets list them with everything else.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Final, Protocol, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import sqlalchemy.orm

from marketcare.domain import compliance
from marketcare.domain.compliance import Category, Counts
from marketcare.domain.obligations import State, in_range, is_overdue, minutes_late
from marketcare.domain.periods import Period
from marketcare.domain.problems import (
    Rate,
    days_overdue,
    not_rectified_in_time,
    verified_by,
)
from marketcare.domain.schedules import Schedule
from marketcare.domain.vocabulary import REINSPECTION
from marketcare.ledger.models import AreaRow, Completion, MarketRow, Obligation, ProblemRow
from marketcare.ledger.versions import schedule_of_version

#: the counts of a summary row: the categories, then the overdue ones
COUNT_COLUMNS: Final = (*(c.value for c in compliance.CATEGORIES), "overdue")

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class MarketInfo:
    id: str
    name: str
    sub_district: str
    zone: str


@dataclass(frozen=True, slots=True)
class Reading:
    id: str
    label: str
    value: float | None
    unit: str | None
    low: float | None
    high: float | None

    @property
    def ok(self) -> bool:
        return self.value is not None and in_range(self.value, (self.low, self.high))


@dataclass(frozen=True, slots=True)
class Line:
    """One obligation as a report row; times are naive local times of the market."""

    obligation_id: int
    market_id: str
    local_date: date
    area_id: str | None
    area_name: str | None
    area_kind: str | None
    task_id: str
    task_name: str
    kind: str
    opens: datetime
    due: datetime
    completed: datetime | None
    by: str | None
    readings: tuple[Reading, ...]
    state: State
    category: Category
    overdue: bool
    minutes_late: int
    note: str | None
    contractor: str | None
    #: a re-inspection's result: True passed, False failed, None not re-inspected yet
    passed: bool | None = None

    @property
    def counts_for_compliance(self) -> bool:
        return compliance.counts_for_compliance(self.kind)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    contractor: str | None
    readings: tuple[tuple[str, str, str | None], ...]  # id, label, unit


_TASK_INFOS: dict[str, dict[str, TaskInfo]] = {}


def _task_infos(schedule: Schedule) -> dict[str, TaskInfo]:
    cached = _TASK_INFOS.get(schedule.digest)
    if cached is not None:
        return cached
    if len(_TASK_INFOS) > 64:
        _TASK_INFOS.clear()
    _TASK_INFOS[schedule.digest] = infos = {
        t.id: TaskInfo(
            t.name,
            t.contractor,
            tuple((c.id, c.label, c.unit) for c in t.checklist if c.reading is not None),
        )
        for t in schedule.tasks
    }
    return infos


class Report:
    """One period's report over a set of markets, read from one database connection.

    Use it inside a read transaction (``db.read``) so every sheet sees the same snapshot.
    """

    def __init__(
        self,
        conn: sa.Connection,
        period: Period,
        *,
        as_of: datetime,
        markets: Sequence[str] | None = None,
    ) -> None:
        self.conn = conn
        self.period = period
        self.as_of = as_of.astimezone(UTC)
        self.market_filter = list(markets) if markets else None
        stmt = sa.select(MarketRow).order_by(MarketRow.id)
        if self.market_filter:
            stmt = stmt.where(MarketRow.id.in_(self.market_filter))
        rows = conn.execute(stmt).all()
        present = set(self._markets_with_obligations())
        self.markets = [
            MarketInfo(r.id, r.name, r.sub_district, r.timezone)
            for r in rows
            if r.active or r.id in present
        ]
        self._summary: dict[tuple[str, str], Counts] | None = None

    # -- selection ---------------------------------------------------------------------

    def _where(self, stmt: Any) -> Any:
        stmt = stmt.where(
            Obligation.local_date >= self.period.start.isoformat(),
            Obligation.local_date < self.period.end.isoformat(),
        )
        if self.market_filter:
            stmt = stmt.where(Obligation.market_id.in_(self.market_filter))
        return stmt

    def _markets_with_obligations(self) -> list[str]:
        stmt = self._where(sa.select(Obligation.market_id).distinct())
        return list(self.conn.execute(stmt).scalars())

    # -- the summary -------------------------------------------------------------------

    @property
    def summary(self) -> dict[tuple[str, str], Counts]:
        """Counts per (market, kind) of a market's own work, by market then kind; only the
        pairs that had obligations. Re-inspections are left out."""
        if self._summary is None:
            self._summary = self._tally(reinspections=False)
        return self._summary

    def _tally(self, *, reinspections: bool) -> dict[tuple[str, str], Counts]:
        kinds = Obligation.kind.in_(compliance.NOT_COMPLIANCE_KINDS)
        stmt = self._where(
            groups(as_of=self.as_of, by=(Obligation.market_id, Obligation.kind))
        ).where(kinds if reinspections else sa.not_(kinds))
        rows = self.conn.execute(stmt).all()
        keyed = (((str(r.market_id), str(r.kind)), r.state, r.past, r.after_due, r.n) for r in rows)
        counts = tally(keyed, as_of=self.as_of)
        return dict(sorted(counts.items()))

    def market_totals(self) -> dict[str, Counts]:
        """Counts per market (every selected market, in order; zeros where it had nothing)."""
        return self._per_market(self.summary)

    def _per_market(self, table: dict[tuple[str, str], Counts]) -> dict[str, Counts]:
        totals = {m.id: Counts() for m in self.markets}
        for (market, _kind), counts in table.items():
            if market in totals:
                totals[market] += counts
        return totals

    def district_total(self) -> Counts:
        return sum(self.market_totals().values(), Counts())

    def counts(self) -> dict[str, Counts]:
        """Each market's counts (``compliance.Counts``), in the markets' order."""
        return self.market_totals()

    def reinspections(self) -> dict[str, Counts]:
        """Each market's re-inspections of the period by the same categories (the office's
        timeliness; whether they passed is in ``rectification``)."""
        return self._per_market(self._tally(reinspections=True))

    # -- the rectification loop and the contracts -------------------------------------

    def rectification(self) -> dict[str, Rectification]:
        return rectification(self)

    def late_problems(self) -> list[ProblemLine]:
        return late_problems(self)

    def contracts(self) -> list[Any]:
        return contract_rows(self)

    # -- the rows ----------------------------------------------------------------------

    def count(self, market_id: str | None = None) -> int:
        stmt = self._where(sa.select(sa.func.count()).select_from(Obligation))
        if market_id is not None:
            stmt = stmt.where(Obligation.market_id == market_id)
        return int(self.conn.execute(stmt).scalar_one())

    def lines(
        self,
        market_id: str | None = None,
        *,
        kinds: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> Iterator[Line]:
        """Every obligation of the period (of one market), in date and time order, streamed;
        ``categories`` keeps those of these categories (``"overdue"``: the overdue ones)."""
        inner = sa.orm.aliased(Completion)
        latest = (
            sa.select(sa.func.max(inner.id))
            .where(inner.obligation_id == Obligation.id)
            .correlate(Obligation)
            .scalar_subquery()
        )
        stmt = self._where(
            sa.select(
                Obligation,
                AreaRow.name.label("area_name"),
                AreaRow.kind.label("area_kind"),
                MarketRow.timezone.label("zone"),
                Completion.by.label("c_by"),
                Completion.readings.label("c_readings"),
                Completion.items.label("c_items"),
                Completion.note.label("c_note"),
            )
            .join(MarketRow, MarketRow.id == Obligation.market_id)
            .outerjoin(
                AreaRow,
                (AreaRow.market_id == Obligation.market_id) & (AreaRow.id == Obligation.area_id),
            )
            .outerjoin(Completion, Completion.id == latest)
        )
        if market_id is not None:
            stmt = stmt.where(Obligation.market_id == market_id)
        if kinds:
            stmt = stmt.where(Obligation.kind.in_(list(kinds)))
        stmt = stmt.order_by(
            Obligation.market_id,
            Obligation.local_date,
            Obligation.opens_at,
            Obligation.area_id,
            Obligation.task_id,
        )
        wanted = set(categories) if categories else None
        result = self.conn.execution_options(yield_per=2000).execute(stmt)
        for row in result:
            line = self._line(row)
            if wanted is None or line.category in wanted or ("overdue" in wanted and line.overdue):
                yield line

    def _line(self, row: Any) -> Line:
        zone = _zone(row.zone)
        schedule = schedule_of_version(self.conn, row.version_id)
        info = _task_infos(schedule).get(row.task_id) or TaskInfo(row.task_id, None, ())
        readings: tuple[Reading, ...] = ()
        if info.readings:
            task = schedule.task_by_id[row.task_id]
            values = row.c_readings or {}
            items = []
            for cid, label, unit in info.readings:
                item = next(c for c in task.checklist if c.id == cid)
                bounds = item.range_for(row.area_kind) or (None, None)
                v = values.get(cid)
                items.append(
                    Reading(cid, label, None if v is None else float(v), unit, bounds[0], bounds[1])
                )
            readings = tuple(items)
        state = State(row.state)
        note = row.c_note if row.c_note else row.note

        def local(v: datetime | None) -> datetime | None:
            return None if v is None else v.astimezone(zone).replace(tzinfo=None)

        passed = None
        if row.kind == REINSPECTION and row.c_items is not None:
            value = row.c_items.get("passed")
            passed = None if value is None else bool(value)
        return Line(
            obligation_id=row.id,
            market_id=row.market_id,
            local_date=date.fromisoformat(row.local_date),
            area_id=row.area_id,
            area_name=row.area_name,
            area_kind=row.area_kind,
            task_id=row.task_id,
            task_name=info.name,
            kind=row.kind,
            opens=row.opens_at.astimezone(zone).replace(tzinfo=None),
            due=row.due_at.astimezone(zone).replace(tzinfo=None),
            completed=local(row.completed_at),
            by=row.c_by,
            readings=readings,
            state=state,
            category=compliance.categorise(state, missed_at=row.missed_at, as_of=self.as_of),
            overdue=is_overdue(state, due_at=row.due_at, now=self.as_of),
            minutes_late=minutes_late(due_at=row.due_at, completed_at=row.completed_at),
            note=note,
            contractor=info.contractor,
            passed=passed,
        )


def groups(*, as_of: datetime, by: Sequence[Any], moments: bool = False) -> Any:
    """``SELECT *by, state, past, after_due, count(*) … GROUP BY`` over obligations: the
    database says on which side of ``as_of`` each group's times lie, ``tally`` applies the
    rules. The caller adds the period's and the markets' conditions.

    ``moments``: also each group's earliest miss time (``first_miss``): in a group not
    yet past it, when the group's category can next change (``compliance.holds_until``),
    read in the same pass."""
    past = sa.case((Obligation.missed_at <= as_of, 1), else_=0).label("past")
    after_due = sa.case((Obligation.due_at < as_of, 1), else_=0).label("after_due")
    extra = (sa.func.min(Obligation.missed_at).label("first_miss"),) if moments else ()
    return sa.select(
        *by, Obligation.state, past, after_due, sa.func.count().label("n"), *extra
    ).group_by(*by, Obligation.state, past, after_due)


def tally(rows: Iterable[tuple[K, str, Any, Any, int]], *, as_of: datetime) -> dict[K, Counts]:
    """``(key, state, past, after_due, n)`` groups (see ``groups``) as ``Counts`` per key.

    Each group is categorised by ``compliance.categorise`` and judged overdue by
    ``obligations.is_overdue``, seeing its times on the same side of ``as_of`` as the SQL
    did: the rules are applied here, never restated in SQL.
    """
    never, always = datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)
    judged: dict[tuple[str, bool, bool], tuple[str, bool]] = {}
    out: dict[K, dict[str, int]] = {}
    for key, state, past, after_due, n in rows:
        seen = (state, bool(past), bool(after_due))
        verdict = judged.get(seen)
        if verdict is None:
            category = compliance.categorise(
                state, missed_at=always if past else never, as_of=as_of
            )
            late = is_overdue(State(state), due_at=always if after_due else never, now=as_of)
            judged[seen] = verdict = (category.value, late)
        counts = out.get(key)
        if counts is None:
            out[key] = counts = dict.fromkeys(COUNT_COLUMNS, 0)
        counts[verdict[0]] += n
        if verdict[1]:
            counts["overdue"] += n
    return {key: Counts(**c) for key, c in out.items()}


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# ---------------------------------------------------------------- problems and contracts


@dataclass(frozen=True, slots=True)
class ProblemLine:
    """A problem not rectified by its deadline, as a report row (naive local times)."""

    id: int
    market_id: str
    area_id: str | None
    area_name: str | None
    category: str
    description: str
    found_at: datetime
    deadline: datetime
    state: str
    reopened: int
    days_overdue: int


@dataclass(frozen=True, slots=True)
class Rectification:
    """A market's rectification figures of a period: the rate (problems due and verified)
    and the office's re-inspections of the period, of which how many failed (the problem
    was reopened: a failure of the rectification) and how many are overdue."""

    rate: Rate
    reinspected: int = 0
    failed: int = 0
    overdue: int = 0

    def __add__(self, other: Rectification) -> Rectification:
        return Rectification(
            self.rate + other.rate,
            self.reinspected + other.reinspected,
            self.failed + other.failed,
            self.overdue + other.overdue,
        )


def utc_bounds(period: Period, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """A period's bounds in ``zone`` as instants: a rate counts the deadlines between."""
    start = datetime.combine(period.start, datetime.min.time()).replace(tzinfo=zone)
    end = datetime.combine(period.end, datetime.min.time()).replace(tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


class Zoned(Protocol):
    """A market as far as its period's bounds are concerned."""

    @property
    def id(self) -> str: ...

    @property
    def zone(self) -> str: ...


def problem_rates(report: Report) -> dict[str, Rate]:
    """Rectification rate per market (``problems.Rate``), each market's period in its zone."""
    return zone_rates(report.conn, report.period, as_of=report.as_of, markets=report.markets)


def zone_rates(
    conn: sa.Connection, period: Period, *, as_of: datetime, markets: Sequence[Zoned]
) -> dict[str, Rate]:
    """``problem_rates`` for any markets: one query per time zone."""
    from marketcare.ledger.problems import rates

    out: dict[str, Rate] = {}
    zones: dict[str, list[str]] = {}
    for m in markets:
        zones.setdefault(m.zone, []).append(m.id)
    for zone, ids in zones.items():
        start, end = utc_bounds(period, _zone(zone))
        out.update(rates(conn, start=start, end=end, as_of=as_of, markets=ids))
    return out


def rectification(report: Report) -> dict[str, Rectification]:
    """Every market's rectification figures (zeros where it had none), in the markets' order."""
    rates = problem_rates(report)
    done: dict[str, list[int]] = {m.id: [0, 0, 0] for m in report.markets}
    for line in report.lines(kinds=[REINSPECTION]):
        figures = done.setdefault(line.market_id, [0, 0, 0])
        figures[0] += line.passed is not None
        figures[1] += line.passed is False
        figures[2] += line.overdue
    return {m.id: Rectification(rates.get(m.id, Rate(0, 0)), *done[m.id]) for m in report.markets}


def late_problems(report: Report) -> list[ProblemLine]:
    """Problems not rectified by their deadline (``problems.not_rectified_in_time``), by
    market, then deadline. One query per time zone (the period's bounds are the zone's),
    not one per market."""
    found: list[tuple[int, datetime, int, ProblemLine]] = []
    order = {m.id: i for i, m in enumerate(report.markets)}
    zones: dict[str, list[str]] = {}
    for m in report.markets:
        zones.setdefault(m.zone, []).append(m.id)
    for zone_name, ids in zones.items():
        zone = _zone(zone_name)
        start, end = utc_bounds(report.period, zone)
        for chunk in range(0, len(ids), 10_000):  # under SQLite's limit of bound values
            rows = report.conn.execute(
                sa.select(ProblemRow, AreaRow.name.label("area_name"))
                .outerjoin(
                    AreaRow,
                    (AreaRow.market_id == ProblemRow.market_id)
                    & (AreaRow.id == ProblemRow.area_id),
                )
                .where(
                    ProblemRow.market_id.in_(ids[chunk : chunk + 10_000]),
                    ProblemRow.deadline < min(end, report.as_of),
                )
            ).all()
            for r in rows:
                if not not_rectified_in_time(
                    r.state,
                    deadline=r.deadline,
                    verified_at=r.verified_at,
                    start=start,
                    end=end,
                    as_of=report.as_of,
                ):
                    continue
                verified = (
                    r.verified_at if verified_by(r.state, r.verified_at, report.as_of) else None
                )
                line = ProblemLine(
                    id=r.id,
                    market_id=r.market_id,
                    area_id=r.area_id,
                    area_name=r.area_name,
                    category=r.category,
                    description=r.description,
                    found_at=r.found_at.astimezone(zone).replace(tzinfo=None, microsecond=0),
                    deadline=r.deadline.astimezone(zone).replace(tzinfo=None, microsecond=0),
                    state=r.state,
                    reopened=r.reopened,
                    days_overdue=days_overdue(
                        deadline=r.deadline, verified_at=verified, as_of=report.as_of
                    ),
                )
                found.append((order[r.market_id], r.deadline, r.id, line))
    found.sort(key=lambda f: f[:3])
    return [f[3] for f in found]


def contract_rows(report: Report) -> list[Any]:
    """Pest-control visits against the contracts, for a month report (else nothing)."""
    if report.period.kind != "month":
        return []
    from marketcare.ledger.pestcontrol import contract_status
    from marketcare.ledger.versions import active_schedule

    schedule = active_schedule(report.conn)
    if schedule is None:
        return []
    wanted = {m.id for m in report.markets}
    return [
        c for c in contract_status(report.conn, schedule, report.period) if c.market_id in wanted
    ]
