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
* ``due: +2h`` is elapsed time after opening; ``due: closing+2h`` is wall-clock time. A
  wall-clock due time at or before the opening time means the next day.
* The grace period is elapsed time after due; ``missed_at = due_at + grace``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple, Protocol, TypeVar
from zoneinfo import ZoneInfo

from marketcare.domain.schedules import Market, Schedule, Task

SLACK = timedelta(days=2)


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


@dataclass(frozen=True, slots=True)
class Planned:
    """One obligation a schedule produces; its natural key makes materialising idempotent."""

    market_id: str
    area_id: str | None
    task_id: str
    kind: str
    occurrence: datetime  # naive local: the rule's instance, part of the natural key
    opens_at: datetime  # UTC
    due_at: datetime  # UTC
    missed_at: datetime  # UTC

    @property
    def natural_key(self) -> str:
        return natural_key(self.market_id, self.area_id, self.task_id, self.occurrence)

    @property
    def local_date(self) -> date:
        return self.occurrence.date()


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


def window_of(task: Task, market: Market, occurrence: datetime, zone: ZoneInfo) -> Window | None:
    """The window of one occurrence in one market; None when the market is closed then."""
    day = occurrence.date()
    if task.skip_closed and market.closed_reason(day) is not None:
        return None
    hours = market.hours_on(day)
    midnight = datetime.combine(day, datetime.min.time())
    if occurrence.time() != datetime.min.time() and task.opens.anchor == "clock":
        opens_local = occurrence  # a timed rule (BYHOUR): the rule's instant is the opening
    else:
        resolved = task.opens.resolve(midnight, hours)
        if resolved is None:
            return None
        opens_local = resolved
    if task.skip_closed and hours is None:
        return None
    opens_at = to_utc(opens_local, zone)
    if task.due.after is not None:
        due_at = opens_at + task.due.after
    else:
        assert task.due.at is not None
        due_local = task.due.at.resolve(midnight, hours)
        if due_local is None:
            return None
        while due_local <= opens_local:
            due_local += timedelta(days=1)
        due_at = to_utc(due_local, zone)
        if due_at <= opens_at:  # only across a DST change; keep the window non-empty
            due_at = opens_at + timedelta(minutes=1)
    return Window(opens_at, due_at, due_at + task.grace)


def targets(schedule: Schedule, task: Task) -> Iterator[tuple[Market, str | None, str | None]]:
    """(market, area id, area kind) pairs a task applies to."""
    for market in schedule.markets_of(task):
        if task.scope == "market":
            yield market, None, None
            continue
        for area in market.areas:
            if task.area_kinds is None or area.kind in task.area_kinds:
                yield market, area.id, area.kind.value


def expand(
    schedule: Schedule,
    start: datetime,
    end: datetime,
    *,
    markets: Sequence[str] | None = None,
) -> list[Planned]:
    """Every obligation whose opening falls in ``[start, end)`` (UTC), in a stable order."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("expand() takes aware datetimes")
    wanted = set(markets) if markets is not None else None
    out: list[Planned] = []
    for task in schedule.tasks:
        rule = task.recurrence.compile()
        per_zone: dict[str, list[datetime]] = {}
        by_market: dict[str, list[tuple[str | None, Market]]] = {}
        for market, area_id, _kind in targets(schedule, task):
            if wanted is not None and market.id not in wanted:
                continue
            by_market.setdefault(market.id, []).append((area_id, market))
        for entries in by_market.values():
            market = entries[0][1]
            zone = schedule.zone(market)
            if zone.key not in per_zone:
                lo = (start.astimezone(zone) - SLACK).replace(tzinfo=None)
                hi = (end.astimezone(zone) + SLACK).replace(tzinfo=None)
                lo = datetime.combine(lo.date(), datetime.min.time())
                per_zone[zone.key] = rule.between(lo, hi, inc=True)
            for occurrence in per_zone[zone.key]:
                w = window_of(task, market, occurrence, zone)
                if w is None or not (start <= w.opens_at < end):
                    continue
                for area_id, _m in entries:
                    out.append(
                        Planned(
                            market_id=market.id,
                            area_id=area_id,
                            task_id=task.id,
                            kind=task.kind.value,
                            occurrence=occurrence,
                            opens_at=w.opens_at,
                            due_at=w.due_at,
                            missed_at=w.missed_at,
                        )
                    )
    out.sort(key=lambda p: (p.opens_at, p.market_id, p.area_id or "", p.task_id))
    return out


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
