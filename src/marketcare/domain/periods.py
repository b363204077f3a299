"""Report periods: a local day, an ISO week or a calendar month, with stable names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

PeriodKind = Literal["day", "week", "month"]
KINDS: tuple[PeriodKind, ...] = ("day", "week", "month")


@dataclass(frozen=True, order=True)
class Period:
    """Local dates ``start`` (inclusive) to ``end`` (exclusive) of one report period."""

    kind: PeriodKind
    start: date
    end: date

    @classmethod
    def of(cls, kind: PeriodKind, day: date) -> Period:
        """The period of ``kind`` that contains ``day`` (weeks start on Monday, ISO 8601)."""
        if kind == "day":
            return cls(kind, day, day + timedelta(days=1))
        if kind == "week":
            monday = day - timedelta(days=day.weekday())
            return cls(kind, monday, monday + timedelta(days=7))
        if kind == "month":
            first = day.replace(day=1)
            nxt = (first + timedelta(days=32)).replace(day=1)
            return cls(kind, first, nxt)
        raise ValueError(f"unknown period {kind!r}: use day, week or month")

    def previous(self) -> Period:
        return Period.of(self.kind, self.start - timedelta(days=1))

    def next(self) -> Period:
        return Period.of(self.kind, self.end)

    @property
    def key(self) -> str:
        """``2026-11-27``, ``2026-W48`` or ``2026-11``: used in file names and records."""
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{self.start:%Y-%m}"

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    def closed(self, today: date) -> bool:
        """True once every day of the period is in the past."""
        return self.end <= today


def from_key(kind: PeriodKind, key: str) -> Period:
    """The period a stable key names (the inverse of ``Period.key``)."""
    try:
        if kind == "day":
            return Period.of("day", date.fromisoformat(key))
        if kind == "week":
            year, week = key.split("-W")
            return Period.of("week", date.fromisocalendar(int(year), int(week), 1))
        if kind == "month":
            return Period.of("month", date.fromisoformat(f"{key}-01"))
    except ValueError:
        pass
    raise ValueError(f"{key!r} is not a {kind} period key")
