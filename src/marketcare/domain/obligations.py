"""Obligations: what a schedule demands, when, and the rules of their life cycle.

Pure domain code: it takes a schedule, a time range and ``now`` as arguments and does
no I/O, so the daemon, the CLI, the exports and the web app share one set of rules.

Time policy (documented in docs/schedules.md and tested):

* Occurrences come from the task's RFC 5545 rule evaluated on *local* dates/times of the
  market. Opening and due times are computed as local wall-clock times, then converted to
  UTC with the market's zone.
* A local time that does not exist (the spring gap) is shifted forward by the length of
  the gap (01:30 in a 01:00→02:00 gap becomes 02:30). A local time that happens twice
  (the autumn repeat) means its first occurrence. Both follow from ``zoneinfo`` with
  ``fold=0``.
* ``due: +2h`` is elapsed time after opening. A ``due`` relative to the same moment as
  ``opens`` (``closing`` … ``closing+2h``) keeps its written length in elapsed time across
  a DST change; any other wall-clock ``due`` is read on that day's clock, and one at or
  before the opening time means the next day.
* The grace period is elapsed time after due; ``missed_at = due_at + grace``.
"""

from __future__ import annotations

import gc
import math
import time as _time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import NamedTuple, Protocol, TypeVar
from zoneinfo import ZoneInfo

from marketcare.domain.schedules import Area, Market, Schedule, Task
from marketcare.domain.timespec import Hours
from marketcare.errors import ScheduleError

SLACK = timedelta(days=2)
#: the most obligations one expansion may make before it is refused as a mistake
MAX_PLANNED = 20_000_000
_MIDNIGHT = time(0)


class State(StrEnum):
    UPCOMING = "upcoming"
    OPEN = "open"
    DONE = "done"
    LATE = "late"
    MISSED = "missed"
    FAILED = "failed"
    EXCUSED = "excused"


#: states a completion may be recorded against, once the window has opened (see
#: ``can_tick``): a late completion after a miss is kept, a failed reading can be redone,
#: and an upcoming one whose opening time has passed is open (the sweep may lag)
TICKABLE = frozenset({State.UPCOMING, State.OPEN, State.MISSED, State.FAILED})
#: a completed obligation: a second tick changes nothing
COMPLETED = frozenset({State.DONE, State.LATE})
#: finished one way or another: never overdue, nothing left to do
SETTLED = COMPLETED | {State.EXCUSED}


class ClockMove(NamedTuple):
    """One move the clock alone makes: ``sources`` become ``target`` once ``now`` reaches
    the obligation's time ``edge`` (``"opens_at"`` or ``"missed_at"``)."""

    sources: frozenset[State]
    target: State
    edge: str


#: what the clock does, in the order the moves are tried. ``state_by_clock`` reads this
#: table and the sweep builds its SQL from it, so the board (which applies the clock as it
#: reads) and the ledger (which the sweep moves) follow one rule.
CLOCK_MOVES: tuple[ClockMove, ...] = (
    ClockMove(frozenset({State.UPCOMING, State.OPEN}), State.MISSED, "missed_at"),
    ClockMove(frozenset({State.UPCOMING}), State.OPEN, "opens_at"),
)
#: states the sweep may still move on by the clock alone
PENDING: frozenset[State] = frozenset(s for move in CLOCK_MOVES for s in move.sources)


class Planned(NamedTuple):
    """One obligation a schedule produces; its natural key makes materialising idempotent.

    A named tuple rather than a dataclass: an expansion makes hundreds of thousands of
    them, and a tuple is built several times faster than a frozen dataclass.
    """

    market_id: str
    area_id: str | None
    task_id: str
    kind: str
    occurrence: datetime  # naive local: the rule's instance, part of the natural key
    opens_at: datetime  # UTC
    due_at: datetime  # UTC
    missed_at: datetime  # UTC
    #: made already excused, with this reason (the area rests that day)
    excused: str | None = None
    #: the trading day, when it is not the occurrence's date (a round after midnight)
    day: date | None = None

    @property
    def natural_key(self) -> str:
        return natural_key(self.market_id, self.area_id, self.task_id, self.occurrence)

    @property
    def local_date(self) -> date:
        """The trading day the obligation belongs to (what boards and reports group by)."""
        return self.day or self.occurrence.date()


def natural_key(market_id: str, area_id: str | None, task_id: str, occurrence: datetime) -> str:
    """Market, area, task and scheduled local time: unique per obligation."""
    return f"{market_id}|{area_id or '-'}|{task_id}|{occurrence:%Y-%m-%dT%H:%M}"


def to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """Convert a naive local wall time to UTC by the gap/repeat policy of this module."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Window:
    opens_at: datetime
    due_at: datetime
    missed_at: datetime


class ExpansionTooLarge(ScheduleError):
    """An expansion went over its budget (time or obligations): refused, located at the
    task that was being expanded, rather than left to run for ever."""


def window_for(
    task: Task, hours: Hours | None, occurrence: datetime, zone: ZoneInfo, *, at_occurrence: bool
) -> Window | None:
    """The window of one occurrence given the market's hours that day (None: closed).

    ``at_occurrence``: the obligation opens at the occurrence itself (a rule that gives
    times of day, or a round of ``every_hours``) instead of at ``task.opens``.

    A ``due`` relative to the same moment as ``opens`` (``closing`` … ``closing+2h``)
    keeps its written length in elapsed time, so a daylight-saving change between the
    two neither shortens nor stretches the window; any other wall-clock ``due`` is read
    on the clock of that day.
    """
    midnight = datetime.combine(occurrence.date(), _MIDNIGHT)
    if at_occurrence:
        opens_local = occurrence
    else:
        resolved = task.opens.resolve(midnight, hours)
        if resolved is None:
            return None
        opens_local = resolved
    if task.skip_closed and hours is None:
        return None
    opens_at = to_utc(opens_local, zone)
    due = task.due
    if due.after is not None:
        due_at = opens_at + due.after
    else:
        at = due.at
        assert at is not None
        if at.anchor != "clock" and at.anchor == task.opens.anchor and not at_occurrence:
            span = at.minutes - task.opens.minutes
            while span <= 0:
                span += 1440
            due_at = opens_at + timedelta(minutes=span)
        else:
            due_local = at.resolve(midnight, hours)
            if due_local is None:
                return None
            while due_local <= opens_local:
                due_local += timedelta(days=1)
            due_at = to_utc(due_local, zone)
            if due_at <= opens_at:  # only across a DST change; keep the window non-empty
                due_at = opens_at + timedelta(minutes=1)
    return Window(opens_at, due_at, due_at + task.grace)


def rounds_of(
    task: Task, hours: Hours | None, day: date, zone: ZoneInfo
) -> list[tuple[datetime, Window]]:
    """The rounds of an ``every_hours`` task on one day: from ``opens``, every N hours,
    while the market is open (a round starts at or after opening and before closing).

    Rounds are counted on the wall clock; a round that the spring gap moves onto the
    next one is not made twice.
    """
    every = task.recurrence.every_hours
    if hours is None or every is None or task.due.after is None:
        return []
    midnight = datetime.combine(day, _MIDNIGHT)
    first = task.opens.resolve(midnight, hours)
    assert first is not None
    opening = midnight + timedelta(minutes=hours.opens)
    closing = midnight + timedelta(minutes=hours.closes)
    step = timedelta(hours=every)
    out: list[tuple[datetime, Window]] = []
    previous: datetime | None = None
    at = first
    while at < closing:
        if at >= opening:
            opens_at = to_utc(at, zone)
            if previous is None or opens_at > previous:
                due_at = opens_at + task.due.after
                out.append((at, Window(opens_at, due_at, due_at + task.grace)))
                previous = opens_at
        at += step
    return out


def targets(schedule: Schedule, task: Task) -> Iterator[tuple[Market, str | None, str | None]]:
    """(market, area id, area kind) pairs a task applies to."""
    for market in schedule.markets_of(task):
        if task.scope == "market":
            yield market, None, None
            continue
        for area in market.areas:
            if task.area_kinds is None or area.kind in task.area_kinds:
                yield market, area.id, area.kind.value


def _areas_of(task: Task, market: Market) -> list[Area | None]:
    if task.scope == "market":
        return [None]
    return [a for a in market.areas if task.area_kinds is None or a.kind in task.area_kinds]


@dataclass
class _Budget:
    """What one expansion may spend before it is refused (see ExpansionTooLarge)."""

    deadline: float | None  # on ``time.thread_time``
    left: int = MAX_PLANNED
    #: what to do about too many obligations, said with the refusal
    advice: str = "check its recurrence and markets"
    limit: int = field(init=False)

    def __post_init__(self) -> None:
        self.limit = self.left

    def check(self, schedule: Schedule, task: Task, seconds: float | None) -> None:
        if self.left < 0:
            raise ExpansionTooLarge(
                [
                    schedule.error_at(
                        task.id,
                        f"task {task.id!r}: the schedule makes more than {self.limit:,} "
                        f"obligations in one go; {self.advice}",
                    )
                ]
            )
        if self.deadline is not None and _time.thread_time() > self.deadline:
            raise ExpansionTooLarge(
                [
                    schedule.error_at(
                        task.id,
                        f"task {task.id!r}: expanding the schedule took longer than "
                        f"{seconds:g} s; check this task's recurrence",
                    )
                ]
            )


Signature = tuple[tuple[int, int] | None, ...]


def _expand_into(
    out: list[Planned],
    schedule: Schedule,
    span_of: Callable[[ZoneInfo], tuple[datetime, datetime]],
    keep: Callable[[date, datetime], bool],
    markets: Sequence[str] | None,
    budget: _Budget,
    seconds: float | None,
) -> None:
    """Append every planned obligation whose (trading day, opens_at) ``keep`` accepts;
    occurrences are looked for in the local span ``span_of(zone)``.

    A window depends on the market only through its zone and its hours on the day, so the
    windows of a task are computed once per zone and *hours signature* (the market's hours
    on each day of the span) and shared by every market with the same signature: a city's
    thousand markets have a handful of distinct weeks.
    """
    wanted = set(markets) if markets is not None else None
    spans: dict[str, tuple[datetime, datetime, list[date]]] = {}
    # market id → (zone, span, hours signature, hours by day, closed days)
    places: dict[str, _Place] = {}
    area_lists: dict[tuple[str, str, frozenset[str] | None], list[Area | None]] = {}

    def place(market: Market) -> _Place:
        found = places.get(market.id)
        if found is None:
            zone = schedule.zone(market)
            span = spans.get(zone.key)
            if span is None:
                lo, hi = span_of(zone)
                days = [
                    lo.date() + timedelta(days=i) for i in range((hi.date() - lo.date()).days + 1)
                ]
                span = spans[zone.key] = (lo, hi, days)
            hours = {d: market.hours_on(d) for d in span[2]}
            sig = tuple(None if h is None else (h.opens, h.closes) for h in hours.values())
            closed = frozenset(d for d in span[2] if market.closed_reason(d) is not None)
            found = places[market.id] = _Place(zone, span[0], span[1], sig, hours, closed)
        return found

    for task in schedule.tasks:
        recurrence = task.recurrence
        timed = recurrence.timed and task.opens.anchor == "clock"
        kind = task.kind.value
        task_id = task.id
        skip_closed = task.skip_closed
        skip_rest = skip_closed and not recurrence.rest_days
        kinds = None if task.area_kinds is None else frozenset(k.value for k in task.area_kinds)
        # (zone, signature) → the kept (occurrence, day, window, other day) of this task
        made_for: dict[tuple[str, Signature], list[_Made]] = {}
        occurrences_of: dict[str, list[datetime]] = {}
        for n, market in enumerate(schedule.markets_of(task)):
            if n & 255 == 0:
                budget.check(schedule, task, seconds)
            if wanted is not None and market.id not in wanted:
                continue
            akey = (market.id, task.scope, kinds)
            areas = area_lists.get(akey)
            if areas is None:
                areas = area_lists[akey] = _areas_of(task, market)
            if not areas:
                continue
            at_place = place(market)
            zone = at_place.zone
            if recurrence.rest_days:
                _rest_day_plans(
                    out, task, market, areas, zone, at_place.lo, at_place.hi, at_place.hours, keep
                )
                continue
            key = (zone.key, at_place.signature)
            made = made_for.get(key)
            if made is None:
                occurrences = occurrences_of.get(zone.key)
                if occurrences is None:
                    occurrences = occurrences_of[zone.key] = recurrence.occurrences(
                        at_place.lo, at_place.hi
                    )
                made = made_for[key] = [
                    (at, day, w.opens_at, w.due_at, w.missed_at, day if at.date() != day else None)
                    for at, day, w in _windows(task, occurrences, at_place.hours, zone, timed, keep)
                ]
            if not made:
                continue
            market_id = market.id
            closed = at_place.closed if skip_closed else frozenset()
            for at, day, opens_at, due_at, missed_at, other_day in made:
                if day in closed:
                    continue  # closed for a holiday (its hours are None as well)
                for area in areas:
                    if area is None:
                        out.append(
                            Planned(
                                market_id,
                                None,
                                task_id,
                                kind,
                                at,
                                opens_at,
                                due_at,
                                missed_at,
                                None,
                                other_day,
                            )
                        )
                    else:
                        out.append(
                            Planned(
                                market_id,
                                area.id,
                                task_id,
                                kind,
                                at,
                                opens_at,
                                due_at,
                                missed_at,
                                area.rest_reason(day) if skip_rest and area.rest else None,
                                other_day,
                            )
                        )
                budget.left -= len(areas)


_Made = tuple[datetime, date, datetime, datetime, datetime, date | None]


@dataclass(frozen=True, slots=True)
class _Place:
    """What an expansion needs of a market, computed once per expansion."""

    zone: ZoneInfo
    lo: datetime
    hi: datetime
    signature: Signature
    hours: dict[date, Hours | None]
    closed: frozenset[date]


def _windows(
    task: Task,
    occurrences: list[datetime],
    hours_of: dict[date, Hours | None],
    zone: ZoneInfo,
    timed: bool,
    keep: Callable[[date, datetime], bool],
) -> list[tuple[datetime, date, Window]]:
    """The kept windows of a task's occurrences for one zone and one week of hours."""
    made: list[tuple[datetime, date, Window]] = []
    hourly = task.recurrence.every_hours is not None
    for occurrence in occurrences:
        day = occurrence.date()
        hours = hours_of.get(day)
        if hourly:
            for at, w in rounds_of(task, hours, day, zone):
                if keep(day, w.opens_at):
                    made.append((at, day, w))
            continue
        window = window_for(task, hours, occurrence, zone, at_occurrence=timed)
        if window is not None and keep(day, window.opens_at):
            made.append((occurrence, day, window))
    return made


def _rest_day_plans(
    out: list[Planned],
    task: Task,
    market: Market,
    areas: list[Area | None],
    zone: ZoneInfo,
    lo: datetime,
    hi: datetime,
    hours_of: dict[date, Hours | None],
    keep: Callable[[date, datetime], bool],
) -> None:
    """A ``recurrence: rest_days`` task: one obligation per area on each of its rest days."""
    recurrence = task.recurrence
    for area in areas:
        if area is None or area.rest is None:
            continue
        for occurrence in area.rest.occurrences(lo, hi):
            day = occurrence.date()
            if recurrence.season is not None and not recurrence.season.contains(day):
                continue
            if day in recurrence.exclusions[0]:
                continue
            if task.skip_closed and market.closed_reason(day) is not None:
                continue
            w = window_for(task, hours_of.get(day), occurrence, zone, at_occurrence=False)
            if w is None or not keep(day, w.opens_at):
                continue
            out.append(
                Planned(
                    market.id,
                    area.id,
                    task.id,
                    task.kind.value,
                    occurrence,
                    w.opens_at,
                    w.due_at,
                    w.missed_at,
                )
            )


@contextmanager
def _bulk() -> Iterator[None]:
    """Pause the cyclic garbage collector while an expansion builds its tuples.

    A province's day is 600,000 obligations: the allocations trigger collections that
    each walk the whole loaded schedule (millions of objects), nearly half the time of
    the expansion. The tuples made here hold no cycles, so nothing is left uncollected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _order(p: Planned) -> tuple[datetime, str, str, str]:
    return (p[5], p[0], p[1] or "", p[2])


def expand(
    schedule: Schedule,
    start: datetime,
    end: datetime,
    *,
    markets: Sequence[str] | None = None,
    seconds: float | None = None,
) -> list[Planned]:
    """Every obligation whose opening falls in ``[start, end)`` (UTC), in a stable order.

    ``seconds`` bounds the processor time the expansion may take (this thread's: a
    loaded machine or the daemon's other threads do not make an edit too large): past
    it, ExpansionTooLarge names the task being expanded (a hang is never an answer).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("expand() takes aware datetimes")

    def span_of(zone: ZoneInfo) -> tuple[datetime, datetime]:
        lo = (start.astimezone(zone) - SLACK).replace(tzinfo=None)
        hi = (end.astimezone(zone) + SLACK).replace(tzinfo=None)
        return datetime.combine(lo.date(), _MIDNIGHT), hi

    def keep(_day: date, opens_at: datetime) -> bool:
        return start <= opens_at < end

    return _expanded(schedule, span_of, keep, markets, seconds)


def _expanded(
    schedule: Schedule,
    span_of: Callable[[ZoneInfo], tuple[datetime, datetime]],
    keep: Callable[[date, datetime], bool],
    markets: Sequence[str] | None,
    seconds: float | None,
    budget: _Budget | None = None,
) -> list[Planned]:
    """What ``expand`` and ``expand_days`` share: the expansion under its time budget,
    in the order the ledger stores."""
    out: list[Planned] = []
    budget = budget or _Budget(None)
    if seconds is not None:
        budget.deadline = _time.thread_time() + seconds
    with _bulk():
        _expand_into(out, schedule, span_of, keep, markets, budget, seconds)
        out.sort(key=_order)
    return out


def expand_days(
    schedule: Schedule,
    first: date,
    days: int,
    *,
    markets: Sequence[str] | None = None,
    seconds: float | None = None,
    most: int = MAX_PLANNED,
    advice: str | None = None,
) -> list[Planned]:
    """Every obligation of the trading days ``first`` … ``first + days - 1``: the day an
    obligation belongs to is its occurrence's local date, so a night market's session
    after midnight and a 24-hour market's day up to its boundary count for the day they
    opened. Past ``most`` obligations, ExpansionTooLarge says ``advice``."""
    lo = datetime.combine(first, _MIDNIGHT)
    hi = lo + timedelta(days=days)
    last = hi - timedelta(microseconds=1)
    end = first + timedelta(days=days)

    def span_of(_zone: ZoneInfo) -> tuple[datetime, datetime]:
        return lo, last

    def keep(day: date, _opens_at: datetime) -> bool:
        return first <= day < end

    budget = _Budget(None, most) if advice is None else _Budget(None, most, advice)
    return _expanded(schedule, span_of, keep, markets, seconds, budget)


# ---------------------------------------------------------------- the state machine


def state_by_clock(
    state: State, *, opens_at: datetime, missed_at: datetime, now: datetime
) -> State:
    """Where the clock alone moves an obligation: upcoming → open → missed (``CLOCK_MOVES``)."""
    times = {"opens_at": opens_at, "missed_at": missed_at}
    for move in CLOCK_MOVES:
        if state in move.sources and now >= times[move.edge]:
            return move.target
    return state


def can_tick(state: State, *, opens_at: datetime, now: datetime) -> bool:
    """Whether a completion may be recorded now: the window has opened and the obligation
    is neither completed nor excused. The one rule the tick, the pages and the API use."""
    return state in TICKABLE and now >= opens_at


def completion_outcome(*, due_at: datetime, at: datetime, readings_ok: bool) -> State:
    """The state a completion at ``at`` leads to.

    The rule for which occurrence a completion counts for is the simplest one that keeps
    every record: a completion names its obligation explicitly (the id), never "the next
    one". Before the window opens it is refused; up to ``due_at`` it is on time (done);
    after ``due_at`` it is late, also after the grace period when the obligation was
    already marked missed (the late completion is kept, not refused). A reading out of
    its range makes it failed whatever the time, and the obligation can be redone.
    """
    if not readings_ok:
        return State.FAILED
    return State.DONE if at <= due_at else State.LATE


def minutes_late(*, due_at: datetime, completed_at: datetime | None) -> int:
    """Minutes after due, a minute begun counting as one: done 31 s late is 1 minute late,
    so a late completion never shows 0 (nor a blank) beside "done late"."""
    if completed_at is None or completed_at <= due_at:
        return 0
    return math.ceil((completed_at - due_at).total_seconds() / 60)


def in_range(value: float, bounds: tuple[float | None, float | None] | None) -> bool:
    if bounds is None:
        return True
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def format_range(bounds: tuple[float | None, float | None] | None, unit: str | None) -> str:
    if bounds is None:
        return "any value"
    lo, hi = bounds
    u = f" {unit}" if unit else ""

    def num(x: float) -> str:
        return f"{x:g}"

    if lo is not None and hi is not None:
        return f"{num(lo)}–{num(hi)}{u}"
    if lo is not None:
        return f"≥ {num(lo)}{u}"
    assert hi is not None
    return f"≤ {num(hi)}{u}"


ORDER_ON_BOARD = {
    State.MISSED: 0,
    State.FAILED: 1,
    State.OPEN: 2,
    State.UPCOMING: 3,
    State.LATE: 4,
    State.DONE: 5,
    State.EXCUSED: 6,
}


def is_overdue(state: State, *, due_at: datetime, now: datetime) -> bool:
    """Past its due time and not done, done late or excused.

    The one definition of overdue for the board, the API, ``status``, the workbook and the
    email: open past due, missed, and failed past due. A reading that failed *before* the
    due time is not overdue: it can still be redone in time (see ``redo_by``). The state
    may lag the clock (an unswept upcoming or open obligation): only the due time decides.
    """
    state = State(state)
    return state == State.MISSED or (state not in SETTLED and now > due_at)


def redo_by(state: State, *, due_at: datetime, now: datetime) -> datetime | None:
    """The time a failed reading must be redone by while it still can be in time, else None."""
    if State(state) == State.FAILED and now <= due_at:
        return due_at
    return None


class NextCandidate(Protocol):
    """What ``next_to_do`` needs to know of an obligation (a board row has it)."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def due_at(self) -> datetime: ...


C = TypeVar("C", bound=NextCandidate)


def next_to_do(after: NextCandidate, candidates: Sequence[C]) -> C | None:
    """The task to offer after ``after`` was submitted: still to do now, the same task
    first, then the same kind, earliest due first; None when nothing of that kind is left.

    Offering the next one of the same kind follows the manager's round (one area after
    another, the same chemicals in hand) and spares a trip back to the board.
    """
    # a board row's state has the clock applied: an upcoming one has not opened yet
    todo = [
        c
        for c in candidates
        if c.id != after.id and c.kind == after.kind and c.state in TICKABLE - {State.UPCOMING}
    ]
    if not todo:
        return None
    return min(todo, key=lambda c: (c.task_id != after.task_id, c.due_at, c.id))
