"""Scores and ranking of a period (红黑榜): what the bulletin, the dashboard and the API show.

Every figure comes from the one rule that defines it: inspection scores as the ledger
recorded them (``domain/inspections.score``), daily-work compliance as the exports count
it (``figures.Report``, ``domain/compliance``), the rectification rate by
``domain/problems.rectification_rate`` and "past deadline" by ``problems.is_overdue``.
The ranking and the movement are ``domain/inspections.rank``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain.inspections import Figures, Standing, combine, rank
from marketcare.domain.periods import Period
from marketcare.ledger import inspections as inspection_ledger
from marketcare.reports.figures import MarketInfo, Report, problem_rates


@dataclass(frozen=True)
class Ranking:
    """The ranking of one period, with the previous period's places for the movement."""

    period: Period
    as_of: datetime
    markets: list[Standing]
    sub_districts: list[Standing]
    info: dict[str, MarketInfo]

    def market_json(self, s: Standing) -> dict[str, Any]:
        m = self.info[s.key]
        return {
            "market": m.id,
            "name": m.name,
            "sub_district": m.sub_district,
            "inspections": len(s.figures.scores),
            **_standing_json(s),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period.key,
            "kind": self.period.kind,
            "as_of": self.as_of.isoformat(),
            "markets": [self.market_json(s) for s in self.markets],
            "sub_districts": [
                {
                    "sub_district": s.key,
                    "markets_inspected": len(s.figures.scores),
                    **_standing_json(s),
                }
                for s in self.sub_districts
            ],
        }


def _standing_json(s: Standing) -> dict[str, Any]:
    f = s.figures
    return {
        "rank": s.rank,
        "previous_rank": s.previous_rank,
        "movement": s.movement,
        "inspection_score": f.inspection_score,
        "compliance": None if f.compliance is None else round(f.compliance, 4),
        "on_time": f.on_time,
        "due": f.due,
        "rectification_rate": None if f.rectification is None else round(f.rectification, 4),
        "rectified": f.verified,
        "rectification_due": f.rectification_due,
        "past_deadline": f.past_deadline,
    }


def _end_utc(period: Period, zone: str) -> datetime:
    local = datetime.combine(period.end, datetime.min.time()).replace(tzinfo=ZoneInfo(zone))
    return local.astimezone(UTC)


T = TypeVar("T")

#: what ranks a period: its markets (``Report.markets``) and each one's figures
Counted = tuple[list[MarketInfo], dict[str, Figures]]
#: the figures of periods already counted, by (period, as_of, markets): the dashboard's
#: ranking and trend both need this week and the one before (see also ``Memo``)
SharedKey = tuple[Period, datetime, tuple[str, ...] | None]
Shared = dict[SharedKey, Counted]


def _figures(
    conn: sa.Connection,
    period: Period,
    as_of: datetime,
    markets: Sequence[str] | None,
    shared: Shared | None,
    totals: Totals | None = None,
) -> Counted:
    """The markets and figures of ``period`` as of ``as_of``, counted once per ``shared``
    (a dict the caller keeps for one read transaction, or a ``Memo``'s; None: not kept)."""
    key = (period, as_of, None if markets is None else tuple(markets))
    if shared is not None and key in shared:
        return shared[key]
    report = Report(conn, period, as_of=as_of, markets=markets)
    done = report.markets, figures_of(report, totals)
    if shared is not None:
        shared[key] = done
    return done


def ledger_state(conn: sa.Connection) -> tuple[Any, ...]:
    """What every write that can change a figure moves: the audit log's position (each
    tick, sweep, materialisation, problem move and inspection appends to it, chained or
    pending) and the
    applied schedule version (the markets, their names, zones and sub-districts)."""
    from marketcare.ledger import audit
    from marketcare.ledger.models import LedgerState

    version = conn.execute(
        sa.select(LedgerState.version_id).where(LedgerState.id == 1)
    ).scalar_one_or_none()
    return (*audit.position(conn), version)


#: a problem as a period's figures read it: (state, deadline, verified_at)
Held = tuple[str, datetime, datetime | None]


@dataclass(frozen=True)
class ProblemChange:
    """A problem written between two states of the ledger, as it was and as it is."""

    market: str
    #: None: raised since
    before: Held | None
    after: Held


@dataclass(frozen=True)
class Touched:
    """What the events between two states of the ledger wrote to."""

    #: the markets of the obligations and problems written
    markets: frozenset[str]
    #: the earliest local date of an obligation written (ISO), None if none was
    first_day: str | None
    #: the problems written, each as it was and as it is
    problems: tuple[ProblemChange, ...] = ()


#: beyond this many events since the kept state, counting everything again is cheaper
TOUCHED_LIMIT = 500

#: ``touched(conn, before, now)`` read already: (before, now, what it said)
Written = tuple[tuple[Any, ...], tuple[Any, ...], Touched | None]


def touched(conn: sa.Connection, before: tuple[Any, ...], now: tuple[Any, ...]) -> Touched | None:
    """What was written between ``before`` and ``now`` (both ``ledger_state``), read from
    the audit chain in between, if every event there names its obligation or problem.

    None (count everything again) when that cannot be known exactly: another schedule
    version, a chain that does not continue ``before``'s (a restored backup), an event
    that names neither (a materialisation, an inspection, an account change), a problem
    whose state before cannot be read from the chain, or more than ``TOUCHED_LIMIT``
    events."""
    from marketcare.ledger.models import Event, Obligation, ProblemRow, UnchainedEvent

    (seq0, hash0, pending0, version0) = before
    (seq1, hash1, pending1, version1) = now
    if version0 != version1 or seq1 < seq0 or pending1 < pending0:
        return None
    if seq1 - seq0 + pending1 - pending0 > TOUCHED_LIMIT:
        return None
    if seq1 == seq0 and pending1 == pending0:
        return Touched(frozenset(), None) if hash0 == hash1 else None
    kept = conn.execute(sa.select(Event.hash).where(Event.seq == seq0)).scalar_one_or_none()
    if kept != hash0:
        return None

    def written_in(table: Any, where: Any, order: Any) -> list[Any]:
        return list(
            conn.execute(
                sa.select(
                    table.action,
                    table.from_state,
                    table.details,
                    table.obligation_id,
                    table.problem_id,
                    Obligation.market_id,
                    Obligation.local_date,
                    ProblemRow.market_id,
                    ProblemRow.state,
                    ProblemRow.deadline,
                    ProblemRow.verified_at,
                )
                .outerjoin(Obligation, Obligation.id == table.obligation_id)
                .outerjoin(ProblemRow, ProblemRow.id == table.problem_id)
                .where(where)
                .order_by(order)
            ).all()
        )

    # the events linked since, then those committed since and not linked yet (PostgreSQL's
    # ticks: ``audit.position``); an event pending before and linked since is read again,
    # which only counts its market once more
    rows = written_in(Event, (Event.seq > seq0) & (Event.seq <= seq1), Event.seq)
    if pending1 > pending0:
        rows += written_in(
            UnchainedEvent,
            (UnchainedEvent.id > pending0) & (UnchainedEvent.id <= pending1),
            UnchainedEvent.id,
        )
    markets: set[str] = set()
    days: list[str] = []
    written: dict[int, _Written] = {}
    for action, from_state, details, obligation, problem, market, day, *row in rows:
        if obligation is None and problem is None:
            return None
        if obligation is not None:
            if market is None:
                return None
            markets.add(market)
            days.append(day)
        if problem is not None:
            if row[0] is None:
                return None
            markets.add(row[0])
            seen = written.setdefault(problem, _Written(row[0], (row[1], row[2], row[3])))
            if not seen.note(action, from_state, details):
                return None
    changes = _problem_changes(conn, written, seq0)
    if changes is None:
        return None
    return Touched(frozenset(markets), min(days, default=None), changes)


@dataclass
class _Written:
    """One problem's events between two states of the ledger, in order."""

    market: str
    after: Held
    raised: bool = False
    #: the state it had before the first of them (None: not known yet)
    state: str | None = None
    #: whether one of them may have moved its deadline
    moved: bool = False

    def note(self, action: str, from_state: str | None, details: Any) -> bool:
        """Read one event; False when what the problem was before cannot be told."""
        from marketcare.domain.problems import ProblemState
        from marketcare.ledger.problems import CHANGES, RAISED

        if action == RAISED:
            if self.state is not None:
                return False
            self.raised = True
        elif action in CHANGES and not self.raised:
            if self.state is None:
                # a verified problem does not move: a move from it is not understood here
                if from_state is None or from_state == ProblemState.VERIFIED.value:
                    return False
                self.state = from_state
            self.moved = self.moved or (details or {}).get("deadline") is not None
        elif not self.raised and self.state is None:
            return False  # another event naming the problem before any of its own
        return True


def _problem_changes(
    conn: sa.Connection, written: dict[int, _Written], seq0: int
) -> tuple[ProblemChange, ...] | None:
    """Each problem written as it was at ``seq0`` and as it is; its deadline then, where
    a write since moved it, from the last event before that set one. None: not known."""
    from marketcare.ledger.models import Event
    from marketcare.ledger.problems import SETS_DEADLINE

    moved = [pid for pid, w in written.items() if w.moved]
    deadlines: dict[int, datetime] = {}
    if moved:
        for pid, details in conn.execute(
            sa.select(Event.problem_id, Event.details)
            .where(
                Event.problem_id.in_(moved),
                Event.seq <= seq0,
                Event.action.in_(SETS_DEADLINE),
            )
            .order_by(Event.seq)
        ).all():
            if (details or {}).get("deadline") is not None:
                deadlines[pid] = datetime.fromisoformat(details["deadline"])
    out = []
    for pid, w in written.items():
        if w.raised:
            out.append(ProblemChange(w.market, None, w.after))
            continue
        deadline = deadlines.get(pid) if w.moved else w.after[1]
        if w.state is None or deadline is None or deadline.tzinfo is None:
            return None
        out.append(ProblemChange(w.market, (w.state, deadline, None), w.after))
    return tuple(out)


def _unchanged(key: SharedKey, counted: Counted, change: ProblemChange) -> bool:
    """Whether ``change`` leaves the figures ``counted`` under ``key`` as they are: the
    problem adds the same to them before and after, by the rules that count them
    (``problems.rectification_rate`` over the period's bounds in the market's zone as of
    the figures' moment, ``problems.past_deadline_at`` at their cutoff; see
    ``figures_of``)."""
    from marketcare.domain.problems import past_deadline_at, rectification_rate
    from marketcare.reports.figures import utc_bounds

    period, as_of, chosen = key
    infos, _ = counted
    zone = next((m.zone for m in infos if m.id == change.market), None)
    if zone is None or (chosen is not None and change.market not in chosen):
        return True  # not a market of these figures
    start, end = utc_bounds(period, ZoneInfo(zone))
    cutoff = min(as_of, _end_utc(period, infos[0].zone))

    def adds(problem: Held | None) -> tuple[Any, bool]:
        if problem is None:
            return rectification_rate([], start=start, end=end, as_of=as_of), False
        state, deadline, verified_at = problem
        return (
            rectification_rate([problem], start=start, end=end, as_of=as_of),
            past_deadline_at(state, deadline=deadline, verified_at=verified_at, moment=cutoff),
        )

    return adds(change.before) == adds(change.after)


@dataclass
class Memo:
    """Periods' figures kept between requests, for one state of the ledger.

    The dashboard's trend needs eight weeks and its ranking the week before: counting
    them again on every request was most of the page's time. A closed period's figures
    are counted as of its end, so they change only when the ledger does (a late
    completion, a problem verified, an inspection recorded): they are kept under
    ``ledger_state`` read in the same transaction. The first request that sees another
    state keeps those that end before every obligation written since (``touched``: a
    tick of today's work) and to which no problem written adds anything else than before
    (``_unchanged``), and drops the rest, or all of them when what was written cannot be
    read exactly. The open period (counted as of now) is kept only with the dashboard's
    figures, while they hold (``keep_open``); after a write, only the markets written to
    are counted again (``open_period``).
    """

    size: int = 64
    _state: tuple[Any, ...] | None = None
    _kept: Shared = field(default_factory=dict)
    #: the open period's figures, with what says whether they still hold at a moment, the
    #: markets written to since they were counted and those of them whose problems were
    _open: dict[tuple[Period, tuple[str, ...] | None], Opened] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def shared(
        self, conn: sa.Connection, *, known: Written | None = None
    ) -> tuple[tuple[Any, ...], Shared]:
        """The ledger's state as ``conn`` sees it and a ``Shared`` for one read
        transaction, holding what is kept for that state. ``known``: what was written
        between two states, read already (the dashboard's figures read it a moment ago):
        used if they are the kept state and this one."""
        state = ledger_state(conn)
        with self._lock:
            before, kept, opened = self._state, dict(self._kept), dict(self._open)
        if state == before:
            return state, kept
        if before is None:
            changed = None
        elif known is not None and known[0] == before and known[1] == state:
            changed = known[2]
        else:
            changed = touched(conn, before, state)
        if changed is None:
            kept, opened = {}, {}
        else:
            day = changed.first_day
            kept = {
                k: v
                for k, v in kept.items()
                if (day is None or k[0].end.isoformat() <= day)
                and all(_unchanged(k, v, c) for c in changed.problems)
            }
            problems = frozenset(c.market for c in changed.problems)
            opened = {
                k: (h, c, m | changed.markets, p | problems) for k, (h, c, m, p) in opened.items()
            }
        with self._lock:
            if self._state == before:
                self._state, self._kept, self._open = state, kept, opened
            return state, dict(kept)

    def open_period(
        self,
        conn: sa.Connection,
        state: tuple[Any, ...],
        shared: Shared,
        period: Period,
        *,
        as_of: datetime,
        markets: Sequence[str] | None = None,
        totals: Totals | None = None,
    ) -> None:
        """Put the open ``period``'s figures kept by ``keep_open`` into ``shared`` as
        counted ``as_of``, if the ledger is in that state or the markets written to
        since can be counted again (``totals``: see ``figures_of``), and they still hold
        then. The ranking of the others is kept; ``rank`` orders them all again.

        A market of the ranking written to by its obligations only (ticks, misses) takes
        its compliance from ``totals`` and keeps the rest: its inspections and problems
        are as they were, and so is its place among the markets with obligations (an
        obligation is added or withdrawn only by a write whose event names none, which
        counts everything again, or with a problem's event). The others are counted
        again, in a few queries for all of them."""
        chosen = None if markets is None else tuple(markets)
        with self._lock:
            kept = self._open.get((period, chosen))
            if state != self._state or kept is None or not kept[0](as_of):
                return
        holds, (infos, figures), written, by_problems = kept
        if chosen is not None:
            written = written & set(chosen)
        compliance_only = {
            k for k in written - by_problems if k in figures and totals is not None and k in totals
        }
        wanted = sorted(written - compliance_only)
        if wanted:
            report = Report(conn, period, as_of=as_of, markets=wanted)
            if {m.id for m in report.markets} != set(wanted) & figures.keys():
                return  # a market came or went: its place in the order is the database's
            fresh = figures_of(report, totals, zone=infos[0].zone if infos else None)
            figures = {k: fresh.get(k, f) for k, f in figures.items()}
        if compliance_only and totals is not None:
            figures = {
                k: replace(f, on_time=totals[k][0], due=totals[k][1]) if k in compliance_only else f
                for k, f in figures.items()
            }
        shared[(period, as_of, chosen)] = infos, figures

    def keep_open(
        self,
        state: tuple[Any, ...],
        shared: Shared,
        period: Period,
        *,
        as_of: datetime,
        holds: Holds,
        markets: Sequence[str] | None = None,
    ) -> None:
        """Keep the open ``period``'s figures counted in ``shared`` as of ``as_of`` while
        ``holds`` says a count at a later moment would give the same (the dashboard's
        ``Counted.holds``: its week's times, problem deadlines and dates are these
        figures' too), if the ledger is still in that state."""
        chosen = None if markets is None else tuple(markets)
        counted = shared.get((period, as_of, chosen))
        with self._lock:
            if state == self._state and counted is not None:
                self._open[(period, chosen)] = holds, counted, frozenset(), frozenset()

    def keep(self, state: tuple[Any, ...], shared: Shared, *, as_of: datetime) -> None:
        """Keep the closed periods counted in ``shared`` (read at ``state``) for the
        next requests, if the ledger is still in that state."""
        with self._lock:
            if state != self._state:
                return
            for key, counted in shared.items():
                if key[1] < as_of and len(self._kept) < self.size:
                    self._kept[key] = counted  # counted as of its end, not as of now


#: whether figures counted earlier still hold at a moment
Holds = Callable[[datetime], bool]
#: an open period's kept figures: whether they hold, the figures, the markets written to
#: since, and those of them whose problems were written to
Opened = tuple[Holds, Counted, frozenset[str], frozenset[str]]

#: each market's (on time, due) of a period as of a moment, counted already by the same
#: rule (the dashboard's week: ``reports.dashboard.figures``)
Totals = Mapping[str, tuple[int, int]]


def figures_of(
    report: Report, totals: Totals | None = None, *, zone: str | None = None
) -> dict[str, Figures]:
    """Each market's figures for the report's period, as of the report's moment.

    ``totals``: the compliance counts of this period and moment when the caller has
    them (the dashboard counted this week a moment ago); used only if they cover every
    market of the report, else counted here. ``zone``: whose end of the period "past
    deadline" is counted at (the first market's: of the whole selection, when the report
    counts some of its markets again)."""
    conn = report.conn
    ids = [m.id for m in report.markets]
    if not ids:
        return {}
    if totals is None or any(i not in totals for i in ids):
        totals = {m: (c.on_time, c.due) for m, c in report.market_totals().items()}
    rates = problem_rates(report)
    cutoff = min(report.as_of, _end_utc(report.period, zone or report.markets[0].zone))
    late = inspection_ledger.past_deadline(conn, as_of=cutoff, markets=report.market_filter)
    marks = inspection_ledger.scores(
        conn, start=report.period.start, end=report.period.end, markets=report.market_filter
    )
    out: dict[str, Figures] = {}
    for market_id in ids:
        rate = rates.get(market_id)
        out[market_id] = Figures(
            key=market_id,
            scores=tuple(marks.get(market_id, ())),
            on_time=totals[market_id][0] if market_id in totals else 0,
            due=totals[market_id][1] if market_id in totals else 0,
            verified=0 if rate is None else rate.verified,
            rectification_due=0 if rate is None else rate.due,
            past_deadline=late.get(market_id, 0),
        )
    return out


def by_sub_district(markets: Sequence[MarketInfo], figures: dict[str, Figures]) -> list[Figures]:
    groups: dict[str, list[Figures]] = {}
    for m in markets:
        groups.setdefault(m.sub_district, []).append(figures[m.id])
    return [combine(name, parts) for name, parts in groups.items()]


def ranking(
    conn: sa.Connection,
    period: Period,
    *,
    as_of: datetime,
    markets: Sequence[str] | None = None,
    report: Report | None = None,
    shared: Shared | None = None,
    totals: Totals | None = None,
    markets_up_to: int | None = None,
) -> Ranking:
    """Rank markets and sub-districts for ``period``. The movement is against the places
    the period before's bulletin kept (``ledger/standings``) or, where none were kept by
    ``as_of``, against the period before ranked again as it stood at its end. ``shared``:
    see ``Shared``; ``totals``: see ``figures_of``; ``markets_up_to``: rank the
    markets only if there are at most that many, else leave ``markets`` empty (a city's
    dashboard shows the sub-districts' bars: ordering a thousand markets it does not
    show was a fifth of its page)."""
    from marketcare.ledger import standings
    from marketcare.reports.delivery import scope_of

    if report is None:
        chosen, current = _figures(conn, period, as_of, markets, shared, totals)
    else:
        chosen, current = report.markets, figures_of(report, totals)
    before_period = period.previous()
    kept = standings.places(conn, period=before_period, scope=scope_of(markets), as_of=as_of)
    infos = {m.id: m for m in chosen}
    sub_districts = by_sub_district(chosen, current)
    rank_markets = markets_up_to is None or len(current) <= markets_up_to
    if kept is not None:
        return Ranking(
            period=period,
            as_of=as_of,
            markets=rank(list(current.values()), places_before=kept.markets)
            if rank_markets
            else [],
            sub_districts=rank(sub_districts, places_before=kept.sub_districts),
            info=infos,
        )
    zone = chosen[0].zone if chosen else "UTC"
    before_as_of = min(as_of, _end_utc(before_period, zone))
    before_markets, before = _figures(conn, before_period, before_as_of, markets, shared)
    keep = shared is not None
    return Ranking(
        period=period,
        as_of=as_of,
        markets=rank(list(current.values()), places_before=_places(before, keep=keep))
        if rank_markets
        else [],
        sub_districts=rank(
            sub_districts,
            _derived(
                "sub-districts",
                before,
                lambda _: by_sub_district(before_markets, before),
                keep=keep,
            )
            if before
            else [],
        ),
        info=infos,
    )


#: what was worked out from counted figures kept between requests (``Memo``), by what
#: and the identity of the figures (kept with it, so the identity cannot be reused): a
#: city's thousand markets are not ranked or added up again for each request
_DERIVED: dict[tuple[str, int], tuple[dict[str, Figures], Any]] = {}


def _derived(
    what: str, figures: dict[str, Figures], work: Callable[[list[Figures]], T], *, keep: bool
) -> T:
    """``work`` over ``figures``, once per counted figures when ``keep`` (they are a
    ``Shared``'s)."""
    hit = _DERIVED.get((what, id(figures)))
    if hit is not None and hit[0] is figures:
        return cast(T, hit[1])
    done = work(list(figures.values()))
    if keep:
        if len(_DERIVED) >= 16:
            _DERIVED.clear()
        _DERIVED[(what, id(figures))] = figures, done
    return done


def _places(figures: dict[str, Figures], *, keep: bool) -> dict[str, int]:
    """Each market's place among ``figures`` (``rank``)."""
    return _derived("places", figures, lambda f: {s.key: s.rank for s in rank(f)}, keep=keep)


def closed(period: Period, *, as_of: datetime, markets: Sequence[MarketInfo]) -> bool:
    """Whether ``period`` had ended by ``as_of`` (in the markets' zone): only a closed
    period's places are kept for the next one's movement."""
    zone = markets[0].zone if markets else "UTC"
    return as_of >= _end_utc(period, zone)


@dataclass(frozen=True)
class TrendPoint:
    period: Period
    figures: Figures


def trend(
    conn: sa.Connection,
    *,
    as_of: datetime,
    zone: str,
    weeks: int = 8,
    markets: Sequence[str] | None = None,
    shared: Shared | None = None,
    per_market: bool = True,
) -> dict[str, list[TrendPoint]]:
    """The last ``weeks`` weeks (this one included) per market and for the whole
    selection (key ``""``): the points of the charts. ``shared``: see ``Shared``;
    ``per_market=False``: the whole selection's points only (the dashboard's chart)."""
    today = as_of.astimezone(ZoneInfo(zone)).date()
    last = Period.of("week", today)
    periods = [Period.of("week", last.start - timedelta(days=7 * i)) for i in range(weeks)][::-1]
    out: dict[str, list[TrendPoint]] = {}
    for p in periods:
        _, figs = _figures(conn, p, min(as_of, _end_utc(p, zone)), markets, shared)
        for market_id, f in figs.items() if per_market else ():
            out.setdefault(market_id, []).append(TrendPoint(p, f))
        whole = _derived("whole", figs, partial(combine, ""), keep=shared is not None)
        out.setdefault("", []).append(TrendPoint(p, whole))
    return out
