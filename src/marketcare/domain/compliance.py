"""The compliance rules the district reports on, in one place (CLI, exports, web, email).

Pure functions over plain values: no database, no files.

* Every obligation of a period falls in exactly one **category**: ``on_time`` (done by its
  due time), ``late``, ``missed``, ``failed`` (a reading out of range, not redone),
  ``excused`` (a declared closure) or ``pending`` (its grace period has not ended and it is
  not done yet: neither compliant nor not; "open" in the figures).
* An obligation **counts as due** when it is on time, late, missed or failed. Excused and
  pending obligations are listed but not counted.
* **Compliance %** = on time ÷ due. A late completion is reported but is not compliant; a
  failed reading is non-compliant until redone.
* **Overdue** is ``obligations.is_overdue``: past due and not done, done late or excused.
* Only a market's own work counts: a **re-inspection** is the office's check of a
  rectification and is reported in the rectification figures, never in compliance.
* A share is a fraction 0..1, or None when the whole is 0 (shown as "—", never 0 % or
  100 %); ``percent`` is how every text (pages, CLI, email) prints one.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from marketcare.domain.obligations import State, is_overdue, state_by_clock
from marketcare.domain.vocabulary import REINSPECTION


class Category(StrEnum):
    """What an obligation counts as in a report; the members are in the reports' order."""

    ON_TIME = "on_time"
    LATE = "late"
    MISSED = "missed"
    FAILED = "failed"
    EXCUSED = "excused"
    PENDING = "pending"


#: categories in the order the reports show them
CATEGORIES: Final = tuple(Category)
#: the categories that count as due
DUE: Final = (Category.ON_TIME, Category.LATE, Category.MISSED, Category.FAILED)
#: obligation kinds that are not a market's own work (see the module docstring)
NOT_COMPLIANCE_KINDS: Final = frozenset({REINSPECTION})

#: the category of each state once the clock has been applied (``state_by_clock``)
_OF_STATE: Final[dict[State, Category]] = {
    State.DONE: Category.ON_TIME,
    State.LATE: Category.LATE,
    State.MISSED: Category.MISSED,
    State.FAILED: Category.FAILED,
    State.EXCUSED: Category.EXCUSED,
    State.OPEN: Category.PENDING,
    State.UPCOMING: Category.PENDING,
}


def categorise(state: State | str, *, missed_at: datetime, as_of: datetime) -> Category:
    """The category of one obligation as of a moment (the sweep may lag: apply the clock).

    Whether it has opened does not change its category (upcoming and open are both
    pending), so the clock is applied with the grace period's end alone.
    """
    clock = state_by_clock(State(state), opens_at=missed_at, missed_at=missed_at, now=as_of)
    return _OF_STATE[clock]


def counts_for_compliance(kind: str) -> bool:
    """Whether obligations of ``kind`` are part of a market's compliance."""
    return kind not in NOT_COMPLIANCE_KINDS


def share(part: int, whole: int) -> float | None:
    """``part ÷ whole``, 0..1; None when the whole is 0 (shown as "—", not 0 % or 100 %)."""
    return None if whole == 0 else part / whole


def percent(value: float | None) -> str:
    """A share as every text prints it: one decimal (``85.2%``), "—" for None."""
    return "—" if value is None else f"{value * 100:.1f}%"


def compliance(on_time: int, due: int) -> float | None:
    """Share done on time, 0..1; None when nothing was due (shown as "—", not 0 % or 100 %)."""
    return share(on_time, due)


def attention(
    *, overdue_problems: int, missed_today: int, missed_week: int, compliance_week: float | None
) -> tuple[int, int, int, float]:
    """Sort key of the order a district office reads many markets in, most urgent first:
    problems past their deadline, then today's misses, this week's misses, then the
    lowest compliance of the week (a week with nothing due last)."""
    return (
        -overdue_problems,
        -missed_today,
        -missed_week,
        2.0 if compliance_week is None else compliance_week,
    )


def holds_until(
    now: datetime,
    *,
    miss_times: Iterable[datetime] = (),
    due_times: Iterable[datetime] = (),
    deadlines: Iterable[datetime] = (),
    day_ends: Iterable[datetime] = (),
) -> datetime | None:
    """The last moment up to which figures counted as of ``now`` read the same with no
    write to the ledger; None: until a write.

    The clock alone moves a figure only where a rule compares it with a time: an
    obligation's category changes *at* its miss time (``categorise``; opening does not
    change it), whether it is overdue *after* its due time (``obligations.is_overdue``),
    whether a problem is past its deadline *after* the deadline (``problems.is_overdue``),
    and which day, week and month are "this" one *at* the start of the next day in the
    market's zone. Times already crossed at ``now`` are left out."""
    before = timedelta(microseconds=1)  # the resolution of a datetime
    at = [t - before for times in (miss_times, day_ends) for t in times if t > now]
    after = [t for times in (due_times, deadlines) for t in times if t >= now]
    return min(at + after, default=None)


@dataclass(frozen=True, slots=True)
class Counts:
    """The figures of some obligations as of one moment: one count per category, and how
    many of them are overdue. Every consumer that shows counts shows these."""

    on_time: int = 0
    late: int = 0
    missed: int = 0
    failed: int = 0
    excused: int = 0
    pending: int = 0
    overdue: int = 0

    @property
    def due(self) -> int:
        return sum(_due_values(self))

    @property
    def compliance(self) -> float | None:
        return compliance(self.on_time, self.due)

    def __add__(self, other: Counts) -> Counts:
        return Counts(*map(operator.add, _values(self), _values(other)))

    def as_dict(self) -> dict[str, int]:
        """Every count by name, ``due`` included (the JSON and the tests read this)."""
        out = dict(zip(_FIELDS, _values(self), strict=True))
        out["due"] = self.due
        return out


# read by the methods above: a dashboard of a thousand markets adds and sums thousands of
# these per request, and ``dataclasses.fields`` on every call was a tenth of its time
_FIELDS: Final = tuple(f.name for f in fields(Counts))
_values: Final = operator.attrgetter(*_FIELDS)
_due_values: Final = operator.attrgetter(*(c.value for c in DUE))


def count(
    obligations: Iterable[tuple[State | str, datetime, datetime]], *, as_of: datetime
) -> Counts:
    """The counts of (state, due_at, missed_at) obligations as of ``as_of``."""
    tally = dict.fromkeys(CATEGORIES, 0)
    overdue = 0
    for state, due_at, missed_at in obligations:
        tally[categorise(state, missed_at=missed_at, as_of=as_of)] += 1
        overdue += is_overdue(State(state), due_at=due_at, now=as_of)
    return Counts(**{c.value: n for c, n in tally.items()}, overdue=overdue)
