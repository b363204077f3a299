"""The compliance rules the district reports on, in one place (CLI, exports, web).

Pure functions over plain values: no database, no files.

* Every obligation of a period falls in exactly one **category**: ``on_time`` (done by its
  due time), ``late``, ``missed``, ``failed`` (a reading out of range, not redone),
  ``excused`` (a declared closure) or ``pending`` (its grace period has not ended and it is
  not done yet: neither compliant nor not).
* An obligation **counts as due** when it is on time, late, missed or failed. Excused and
  pending obligations are listed but not counted.
* **Compliance %** = on time ÷ due. A late completion is reported but is not compliant; a
  failed reading is non-compliant until redone.
"""

from __future__ import annotations

from datetime import datetime

from marketcare.domain.obligations import PENDING, State

#: categories in the order the reports show them
CATEGORIES = ("on_time", "late", "missed", "failed", "excused", "pending")
#: the categories that count as due
DUE = ("on_time", "late", "missed", "failed")


def categorise(state: State | str, *, missed_at: datetime, as_of: datetime) -> str:
    """The category of one obligation as of a moment (the sweep may lag: apply the clock)."""
    state = State(state)
    if state == State.DONE:
        return "on_time"
    if state == State.LATE:
        return "late"
    if state == State.FAILED:
        return "failed"
    if state == State.EXCUSED:
        return "excused"
    if state == State.MISSED or (state in PENDING and as_of >= missed_at):
        return "missed"
    return "pending"


def compliance(on_time: int, due: int) -> float | None:
    """Share done on time, 0..1; None when nothing was due (shown as "—", not 0 % or 100 %)."""
    return None if due == 0 else on_time / due
