"""Problems (整改事项) and the supervision loop: inspect → assign → rectify → re-inspect.

Pure domain rules, shared by the CLI, the exports and the web app:

* States: ``open`` → ``rectified`` (the market says it is fixed, with a note and evidence)
  → ``verified`` (the office re-inspected and it passed), or back to ``open`` when the
  re-inspection fails (*reopened*: the count is kept and reported; the history is in the
  event log).
* A problem is **overdue** when its deadline has passed and it is not verified.
* **Rectification rate** (整改率) of a period = problems due in the period (deadline within
  it) that were verified by the time of the report ÷ problems due in the period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


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


class TransitionRefused(ValueError):
    """The move is not allowed from the problem's current state."""


def check_transition(current: ProblemState, action: str) -> ProblemState:
    """The state ``action`` leads to from ``current``, or a refusal that says why."""
    for (src, dst), name in TRANSITIONS.items():
        if name == action and src == current:
            return dst
    allowed = [name for (src, _dst), name in TRANSITIONS.items() if src == current]
    hint = f"; from {current.value} it can be: {', '.join(allowed)}" if allowed else ""
    raise TransitionRefused(f"cannot {action} a problem that is {current.value}{hint}")


def is_overdue(state: ProblemState | str, *, deadline: datetime, now: datetime) -> bool:
    return ProblemState(state) != ProblemState.VERIFIED and now > deadline


@dataclass(frozen=True)
class Rate:
    verified: int
    due: int

    @property
    def value(self) -> float | None:
        """Verified ÷ due, 0..1; None when nothing was due (shown as "—")."""
        return None if self.due == 0 else self.verified / self.due


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
        if (
            ProblemState(state) == ProblemState.VERIFIED
            and verified_at is not None
            and verified_at <= as_of
        ):
            verified += 1
    return Rate(verified, due)
