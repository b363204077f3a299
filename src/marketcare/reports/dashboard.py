"""The office dashboard's figures: each market's compliance today and this week, what is
still open now, misses, open and overdue problems and the month's rectification rate, by
the same rules as the exports (``reports.Report`` over the domain's rules).

Today's compliance is a figure only once nothing of today is still open: at 19:00 with
nine tasks open, "0.0% 0/1" would say the market failed a day it is still working; the
dashboard shows "9 open now" and the tally so far instead (``today_settled``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import compliance
from marketcare.domain.periods import Period
from marketcare.domain.problems import ProblemState, Rate, is_overdue
from marketcare.ledger.db import read
from marketcare.ledger.models import ProblemRow
from marketcare.ledger.readmodel import MarketInfo, markets
from marketcare.reports.figures import Report, problem_rates


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


def figures(engine: sa.Engine, *, now: datetime, market_ids: list[str]) -> list[MarketFigures]:
    """Compliance today and this week, misses, overdue problems and this month's
    rectification rate, per market; the same rules as the exports (``reports.Report``)."""
    infos = markets(engine, market_ids)
    out: list[MarketFigures] = []
    with read(engine) as conn:
        by_zone: dict[str, list[MarketInfo]] = {}
        for m in infos:
            by_zone.setdefault(m.zone, []).append(m)
        figures: dict[str, dict[str, int]] = {m.id: {} for m in infos}
        for zone, group in by_zone.items():
            day = now.astimezone(ZoneInfo(zone)).date()
            ids = [m.id for m in group]
            for name, period in (
                ("today", Period.of("day", day)),
                ("week", Period.of("week", day)),
            ):
                totals = Report(conn, period, as_of=now, markets=ids).market_totals()
                for mid in ids:
                    if mid in totals.index:
                        row: dict[Any, Any] = totals.loc[mid].to_dict()
                        figures[mid][f"{name}_on_time"] = int(row["on_time"])
                        figures[mid][f"{name}_due"] = int(row["due"])
                        figures[mid][f"{name}_missed"] = int(row["missed"])
                        figures[mid][f"{name}_pending"] = int(row["pending"])
            month = Report(conn, Period.of("month", day), as_of=now, markets=ids)
            for mid, rate in problem_rates(month).items():
                figures[mid]["rate_verified"] = rate.verified
                figures[mid]["rate_due"] = rate.due
        problems = conn.execute(
            sa.select(ProblemRow.market_id, ProblemRow.state, ProblemRow.deadline).where(
                ProblemRow.state != ProblemState.VERIFIED.value,
                ProblemRow.market_id.in_([m.id for m in infos]),
            )
        ).all()
    for p in problems:
        f = figures[p.market_id]
        f["open_problems"] = f.get("open_problems", 0) + 1
        if is_overdue(p.state, deadline=p.deadline, now=now):
            f["overdue_problems"] = f.get("overdue_problems", 0) + 1
    for m in infos:
        f = figures[m.id]
        out.append(
            MarketFigures(
                market=m,
                today_on_time=f.get("today_on_time", 0),
                today_due=f.get("today_due", 0),
                week_on_time=f.get("week_on_time", 0),
                week_due=f.get("week_due", 0),
                missed_today=f.get("today_missed", 0),
                missed_week=f.get("week_missed", 0),
                open_now=f.get("today_pending", 0),
                open_problems=f.get("open_problems", 0),
                overdue_problems=f.get("overdue_problems", 0),
                rate_verified=f.get("rate_verified", 0),
                rate_due=f.get("rate_due", 0),
            )
        )
    return out
