"""The office dashboard's figures: each market's compliance today and this week, what is
still open now, misses, open and overdue problems and the month's rectification rate, by
the same rules as the exports (``figures.tally`` over the domain's rules).

Today's compliance is a figure only once nothing of today is still open: at 19:00 with
nine tasks open, "0.0% 0/1" would say the market failed a day it is still working; the
dashboard shows "9 open now" and the tally so far instead (``today_settled``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import compliance
from marketcare.domain.compliance import Counts
from marketcare.domain.periods import Period
from marketcare.domain.problems import ProblemState, Rate, is_overdue
from marketcare.ledger.db import read
from marketcare.ledger.models import Obligation, ProblemRow
from marketcare.ledger.readmodel import MarketInfo, markets, markets_in
from marketcare.reports.figures import groups, tally, zone_rates
from marketcare.reports.scores import Written, ledger_state, touched


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
    open_now: int
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
    def today_settled(self) -> bool:
        """Nothing of today is still open: today's compliance is a final figure."""
        return self.open_now == 0

    @property
    def rectification_rate(self) -> float | None:
        return Rate(self.rate_verified, self.rate_due).value

    @cached_property
    def attention(self) -> tuple[int, int, int, float]:
        """Where the market comes in a large district's pages (``compliance.attention``);
        worked out once per figures, which are kept between requests."""
        return compliance.attention(
            overdue_problems=self.overdue_problems,
            missed_today=self.missed_today,
            missed_week=self.missed_week,
            compliance_week=self.compliance_week,
        )

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
            "open_now": self.open_now,
            "open_problems": self.open_problems,
            "overdue_problems": self.overdue_problems,
            "rectification_rate_month": self.rectification_rate,
            "rectification_due_month": self.rate_due,
            "rectification_verified_month": self.rate_verified,
        }


@dataclass(frozen=True)
class Overdue:
    """A problem past its deadline (``problems.is_overdue``), as the dashboard lists it."""

    id: int
    market_id: str
    area_id: str | None
    category: str
    description: str
    deadline: datetime
    state: str
    assigned_to: str | None


@dataclass(frozen=True)
class Counted:
    """The dashboard's figures as of ``at``, and up to which moment the clock alone leaves
    them as they are (``compliance.holds_until``; None: until a write)."""

    figures: tuple[MarketFigures, ...]
    at: datetime
    until: datetime | None
    #: each zone's date at ``at``: today, the week and the month follow from it
    days: tuple[tuple[str, date], ...]
    #: the ledger's state they were counted at (``scores.ledger_state``), when known
    state: tuple[Any, ...] | None = None
    #: the problems of these markets past their deadline, by deadline then id: they
    #: change at the same moments as the overdue counts, so they hold as long
    overdue: tuple[Overdue, ...] = ()
    #: what was written between the state of the figures these were counted from and
    #: ``state`` (``scores.touched``), for the ranking's memo to read once, not again
    written: Written | None = None

    def holds(self, now: datetime) -> bool:
        """Whether figures counted again at ``now``, over the same ledger, would be these:
        the clock has not gone back, has not passed ``until``, and every zone is on the
        same date (a DST fold can bring yesterday back for an hour)."""
        return (
            self.at <= now
            and (self.until is None or now <= self.until)
            and self.days == _days(now, (z for z, _ in self.days))
        )


def _days(now: datetime, zones: Iterable[str]) -> tuple[tuple[str, date], ...]:
    return tuple((z, now.astimezone(ZoneInfo(z)).date()) for z in zones)


@dataclass
class Memo:
    """The last figures counted, kept between requests while they hold.

    A city of a thousand markets costs a grouped query over the week's obligations per
    request. The figures change only on a write (``scores.ledger_state``, read in the
    same read transaction as they are) or when the clock crosses a time a rule compares
    it with (``Counted.holds``): between the two, every request gets the same answer
    counted once. After a write, only the markets written to are counted again, when the
    audit chain says exactly which they were (``scores.touched``: one tick, one market);
    otherwise all of them."""

    _kept: tuple[tuple[MarketInfo, ...], Counted] | None = None
    #: whether the kept figures are every active market's
    _every: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, infos: tuple[MarketInfo, ...], now: datetime) -> Counted | None:
        """The figures kept for ``infos`` if they hold at ``now`` (as of their state)."""
        with self._lock:
            kept = self._kept
        if kept is None or (kept[0] is not infos and kept[0] != infos):
            return None
        return kept[1] if kept[1].holds(now) else None

    def every_market(self, state: tuple[Any, ...]) -> tuple[MarketInfo, ...] | None:
        """Every active market, as kept, if the ledger at ``state`` has the schedule
        version they were read at (the markets, their names, zones and sub-districts
        change only with it: ``scores.ledger_state``'s last part)."""
        with self._lock:
            kept, every = self._kept, self._every
        if kept is None or not every or kept[1].state is None or kept[1].state[-1] != state[-1]:
            return None
        return kept[0]

    def keep(self, infos: tuple[MarketInfo, ...], counted: Counted, *, every: bool = False) -> None:
        """Keep ``counted`` (read at a known ledger state) for the next requests;
        ``every``: ``infos`` are every active market."""
        if counted.state is not None:
            with self._lock:
                self._kept, self._every = (infos, counted), every


def figures(
    engine: sa.Engine,
    *,
    now: datetime,
    market_ids: list[str] | None,
    infos: Sequence[MarketInfo] | None = None,
    memo: Memo | None = None,
) -> list[MarketFigures]:
    """Compliance today and this week, misses, overdue problems and this month's
    rectification rate, per market; the same rules as the exports.

    ``market_ids`` None: every active market (see ``counted``); ``infos``: the markets
    of ``market_ids`` when the caller has just read them;
    ``memo``: where the figures are kept between requests while they hold (see ``Memo``).
    """
    return list(counted(engine, now=now, market_ids=market_ids, infos=infos, memo=memo).figures)


def counted(
    engine: sa.Engine,
    *,
    now: datetime,
    market_ids: list[str] | None,
    infos: Sequence[MarketInfo] | None = None,
    memo: Memo | None = None,
) -> Counted:
    """``figures`` with how long they hold and the ledger state they were read at (None
    without a ``memo``): the dashboard's ranking keeps this week's scores as long.

    ``market_ids`` None: every active market (``Counted.figures`` name them), read
    again only when the schedule version is not the kept figures' (the office page)."""
    if market_ids is not None and (infos is None or [m.id for m in infos] != market_ids):
        infos = markets(engine, market_ids)
    with read(engine) as conn:
        if memo is None:
            chosen = tuple(markets_in(conn) if infos is None else infos)
            return count(conn, now=now, infos=chosen)
        state = ledger_state(conn)
        if market_ids is not None:
            chosen = tuple(infos or ())
        else:
            chosen = memo.every_market(state) or tuple(markets_in(conn))
        kept = memo.get(chosen, now)
        if kept is not None and kept.state == state:
            return kept
        changed = None if kept is None or kept.state is None else touched(conn, kept.state, state)
        written = None if kept is None or kept.state is None else (kept.state, state, changed)
        if kept is None or changed is None:
            done = replace(count(conn, now=now, infos=chosen), state=state, written=written)
        else:
            part = count(conn, now=now, infos=[m for m in chosen if m.id in changed.markets])
            fresh = {f.market.id: f for f in part.figures}
            ends = [t for t in (kept.until, part.until) if t is not None]
            done = Counted(
                tuple(fresh.get(f.market.id, f) for f in kept.figures),
                now,
                min(ends, default=None),
                kept.days,
                state,
                _overdue_merged(kept.overdue, part.overdue, changed.markets),
                written,
            )
    memo.keep(chosen, done, every=market_ids is None)
    return done


def count(conn: sa.Connection, *, now: datetime, infos: Sequence[MarketInfo]) -> Counted:
    """Count the figures of ``infos`` as of ``now`` inside a read transaction.

    Per time zone, one grouped query for the week (today is a column of the grouping,
    not a query of its own; each group's earliest miss time comes with it, for
    ``Counted.until``) and one for the month's problems: the page is asked often and by
    a city of a thousand markets, so nothing here is per market. The groups are judged by
    ``figures.tally``, as the workbook's summary is.
    """
    counts: dict[tuple[str, bool], Counts] = {}
    rates: dict[str, Rate] = {}
    misses: list[datetime] = []
    day_ends: list[datetime] = []
    by_zone: dict[str, list[MarketInfo]] = {}
    for m in infos:
        by_zone.setdefault(m.zone, []).append(m)
    for zone, group in by_zone.items():
        day = now.astimezone(ZoneInfo(zone)).date()
        week = Period.of("week", day)
        ids = [m.id for m in group]
        today = sa.case((Obligation.local_date == day.isoformat(), 1), else_=0).label("today")
        stmt = groups(as_of=now, by=(Obligation.market_id, today), moments=True).where(
            Obligation.local_date >= week.start.isoformat(),
            Obligation.local_date < week.end.isoformat(),
            Obligation.market_id.in_(ids),
            sa.not_(Obligation.kind.in_(compliance.NOT_COMPLIANCE_KINDS)),
        )
        rows = conn.execute(stmt).all()  # one fetch; rows unpacked by position, not name
        keyed = (
            ((market, bool(today)), state, past, after_due, n)
            for market, today, state, past, after_due, n, _ in rows
        )
        counts.update(tally(keyed, as_of=now))
        misses += (r[6] for r in rows if not r[3])  # the groups not yet past their miss time
        next_day = datetime.combine(day + timedelta(days=1), time.min, tzinfo=ZoneInfo(zone))
        day_ends.append(next_day.astimezone(UTC))
        rates.update(zone_rates(conn, Period.of("month", day), as_of=now, markets=group))
    problems = conn.execute(
        sa.select(
            ProblemRow.id,
            ProblemRow.market_id,
            ProblemRow.area_id,
            ProblemRow.category,
            ProblemRow.description,
            ProblemRow.deadline,
            ProblemRow.state,
            ProblemRow.assigned_to,
        ).where(
            ProblemRow.state != ProblemState.VERIFIED.value,
            ProblemRow.market_id.in_([m.id for m in infos]),
        )
    ).all()
    open_problems: dict[str, int] = {}
    overdue_problems: dict[str, int] = {}
    overdue: list[Overdue] = []
    for p in problems:
        open_problems[p.market_id] = open_problems.get(p.market_id, 0) + 1
        if is_overdue(p.state, deadline=p.deadline, now=now):
            overdue_problems[p.market_id] = overdue_problems.get(p.market_id, 0) + 1
            overdue.append(Overdue(*p))
    out: list[MarketFigures] = []
    for m in infos:
        today_counts = counts.get((m.id, True), Counts())
        week_counts = today_counts + counts.get((m.id, False), Counts())
        rate = rates.get(m.id, Rate(0, 0))
        out.append(
            MarketFigures(
                market=m,
                today_on_time=today_counts.on_time,
                today_due=today_counts.due,
                week_on_time=week_counts.on_time,
                week_due=week_counts.due,
                missed_today=today_counts.missed,
                missed_week=week_counts.missed,
                open_now=today_counts.pending,
                open_problems=open_problems.get(m.id, 0),
                overdue_problems=overdue_problems.get(m.id, 0),
                rate_verified=rate.verified,
                rate_due=rate.due,
            )
        )
    # no due time: the dashboard shows no obligation's "overdue", only misses and what is open
    until = compliance.holds_until(
        now,
        miss_times=misses,
        deadlines=(p.deadline for p in problems),
        day_ends=day_ends,
    )
    overdue.sort(key=_by_deadline)
    return Counted(tuple(out), now, until, _days(now, by_zone), overdue=tuple(overdue))


def _by_deadline(p: Overdue) -> tuple[datetime, int]:
    return p.deadline, p.id


def _overdue_merged(
    kept: tuple[Overdue, ...], part: tuple[Overdue, ...], markets: frozenset[str]
) -> tuple[Overdue, ...]:
    """The kept list with the markets in ``markets`` counted again (``part``); the kept
    tuple itself when they are as they were (a tick leaves the list as it is, and what
    was rendered from it can be used again)."""
    if tuple(p for p in kept if p.market_id in markets) == part:
        return kept
    merged = [p for p in kept if p.market_id not in markets] + list(part)
    merged.sort(key=_by_deadline)
    return tuple(merged)
