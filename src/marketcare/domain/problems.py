"""Problems (整改事项) and the supervision loop: inspect → assign → rectify → re-inspect.

Pure domain rules, shared by the CLI, the exports and the web app:

* States: ``open`` → ``rectified`` (the market says it is fixed, with a note and evidence)
  → ``verified`` (the office re-inspected and it passed), or back to ``open`` when the
  re-inspection fails (*reopened*: the count is kept and reported; the history is in the
  event log).
* A problem is **overdue** when its deadline has passed and it is not verified.
* **Rectification rate** (整改率) of a period = problems due in the period (deadline within
  it) that were verified by the time of the report ÷ problems due in the period.
* A new problem's fields have one set of limits (``LIMITS``) and its times one sanity rule
  (``check_times``), applied before anything reaches either database, so SQLite (which
  does not enforce a column's length) and PostgreSQL accept and refuse the same input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from marketcare.domain import inputs
from marketcare.domain.compliance import share
from marketcare.domain.obligations import State


class ProblemState(StrEnum):
    OPEN = "open"
    RECTIFIED = "rectified"
    VERIFIED = "verified"


class Category(StrEnum):
    SANITATION = "sanitation"
    REPAIR = "repair"
    PEST = "pest"
    ORDER = "order"


#: who may move a problem from one state to another, and what the move is called
TRANSITIONS: dict[tuple[ProblemState, ProblemState], str] = {
    (ProblemState.OPEN, ProblemState.RECTIFIED): "rectify",
    (ProblemState.RECTIFIED, ProblemState.VERIFIED): "verify",
    (ProblemState.RECTIFIED, ProblemState.OPEN): "reopen",
}


def moves_from(state: ProblemState | str) -> frozenset[str]:
    """The moves allowed from ``state`` (what the pages offer and the ledger accepts)."""
    return frozenset(name for (src, _dst), name in TRANSITIONS.items() if src == state)


def can_assign(state: ProblemState | str) -> bool:
    """Whether the office may (re)assign a problem: not once it is verified (closed)."""
    return ProblemState(state) != ProblemState.VERIFIED


class TransitionRefused(ValueError):
    """The move is not allowed from the problem's current state."""


def check_transition(current: ProblemState, action: str) -> ProblemState:
    """The state ``action`` leads to from ``current``, or a refusal that says why."""
    for (src, dst), name in TRANSITIONS.items():
        if name == action and src == current:
            return dst
    allowed = sorted(moves_from(current))
    hint = f"; from {current.value} it can be: {', '.join(allowed)}" if allowed else ""
    raise TransitionRefused(f"cannot {action} a problem that is {current.value}{hint}")


def is_overdue(state: ProblemState | str, *, deadline: datetime, now: datetime) -> bool:
    """Past its deadline and not verified: the one definition for lists, pages and figures."""
    return ProblemState(state) != ProblemState.VERIFIED and now > deadline


def verified_by(state: ProblemState | str, verified_at: datetime | None, moment: datetime) -> bool:
    """Whether a problem had been verified (closed) at ``moment``."""
    return (
        ProblemState(state) == ProblemState.VERIFIED
        and verified_at is not None
        and verified_at <= moment
    )


def past_deadline_at(
    state: ProblemState | str, *, deadline: datetime, verified_at: datetime | None, moment: datetime
) -> bool:
    """Whether a problem was past its deadline at ``moment``, with the state it had then
    (verified only if verified by ``moment``): what a period's "past deadline" counts."""
    then = ProblemState.VERIFIED if verified_by(state, verified_at, moment) else ProblemState.OPEN
    return is_overdue(then, deadline=deadline, now=moment)


def not_rectified_in_time(
    state: ProblemState | str,
    *,
    deadline: datetime,
    verified_at: datetime | None,
    start: datetime,
    end: datetime,
    as_of: datetime,
) -> bool:
    """Whether a problem is on the period's list of problems not rectified by their
    deadline (the second half of the weekly double report): its deadline passed before the
    period's end and ``as_of``, and it was not verified by then: verified late (a deadline
    within the period), or not verified at all (older deadlines too, until it is)."""
    if deadline >= min(end, as_of):
        return False
    if not verified_by(state, verified_at, as_of):
        return True
    assert verified_at is not None
    return start <= deadline < end and verified_at > deadline


def days_overdue(*, deadline: datetime, verified_at: datetime | None, as_of: datetime) -> int:
    """Whole days from the deadline to the verification (or to ``as_of`` while open)."""
    until = verified_at if verified_at is not None else as_of
    return max(int((until - deadline).total_seconds() // 86400), 0)


def found_when(state: State, *, missed_at: datetime, changed_at: datetime) -> datetime:
    """When a problem raised for a missed or failed obligation was found: when the grace
    period ended (a miss) or when the failing reading was recorded, never when the daemon
    got round to raising it. So catch-up after downtime cannot put a month of misses into
    this week's rectification rate: each lands in the week it happened."""
    return missed_at if state == State.MISSED else changed_at


def reinspection_task_id(problem_id: int, round_: int) -> str:
    """The task id of a problem's ``round_``-th re-inspection (an obligation's ``task_id``)."""
    return f"reinspect-p{problem_id}-r{round_}"


_REINSPECTION_TASK = re.compile(r"reinspect-p(\d+)-r(\d+)")


def reinspection_of(task_id: str) -> tuple[int, int] | None:
    """(problem id, round) of a re-inspection's task id, None for any other task."""
    m = _REINSPECTION_TASK.fullmatch(task_id)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class Rate:
    verified: int
    due: int

    @property
    def value(self) -> float | None:
        """Verified ÷ due, 0..1; None when nothing was due (shown as "—")."""
        return share(self.verified, self.due)

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.verified + other.verified, self.due + other.due)


def rectification_rate(
    problems: list[tuple[ProblemState | str, datetime, datetime | None]],
    *,
    start: datetime,
    end: datetime,
    as_of: datetime,
) -> Rate:
    """Rate over (state, deadline, verified_at) of problems: those with a deadline in
    ``[start, end)`` count as due; those verified by ``as_of`` count as verified."""
    due = verified = 0
    for state, deadline, verified_at in problems:
        if not (start <= deadline < end):
            continue
        due += 1
        if verified_by(state, verified_at, as_of):
            verified += 1
    return Rate(verified, due)


# ---------------------------------------------------------------- what a new problem may say

#: the longest text each field of a problem may hold, in characters: the columns are
#: sized from these (``ledger.models``) and every way in (CLI, API, pages, spreadsheets)
#: is checked against them by ``field_errors``
LIMITS: Final[dict[str, int]] = {
    "market": inputs.KEY_MAX,
    "area": inputs.KEY_MAX,
    "description": inputs.DESCRIPTION_MAX,
    "found_by": inputs.PERSON_MAX,
    "by": inputs.PERSON_MAX,
    "assigned_to": inputs.ASSIGNEE_MAX,
}
#: a deadline further than this after the problem was found is a typing error (2126)
LONGEST_DEADLINE: Final = timedelta(days=366)
#: a problem found longer ago than this is a typing error too (1926)
OLDEST_FINDING: Final = timedelta(days=366 * 2)
#: a found time this far ahead of the clock is tolerated (clocks of phones and PCs differ)
CLOCK_SKEW: Final = timedelta(minutes=5)


def text_errors(values: dict[str, str | None]) -> list[tuple[str, str]]:
    """(field, message) for each text longer than its limit in ``LIMITS``."""
    out = []
    for name, value in values.items():
        limit = LIMITS.get(name)
        if value is not None and limit is not None and len(value) > limit:
            out.append((name, f"at most {limit} characters (this one has {len(value)})"))
    return out


def deadline_errors(
    deadline: datetime, *, found_at: datetime, now: datetime
) -> list[tuple[str, str]]:
    """(field, message) for a deadline (new, or moved on reopening) that cannot be right."""
    if deadline <= found_at:
        return [("deadline", "the deadline must be after the time it was found")]
    if deadline > max(found_at, now) + LONGEST_DEADLINE:
        return [("deadline", f"is more than {LONGEST_DEADLINE.days} days away; check the year")]
    return []


def time_errors(*, found_at: datetime, deadline: datetime, now: datetime) -> list[tuple[str, str]]:
    """(field, message) for a found time or a deadline that cannot be right."""
    out = []
    if found_at > now + CLOCK_SKEW:
        out.append(("found_at", "is in the future; record a problem once it was found"))
    elif found_at < now - OLDEST_FINDING:
        out.append(("found_at", f"is more than {OLDEST_FINDING.days} days ago; check the year"))
    return out + deadline_errors(deadline, found_at=found_at, now=now)
