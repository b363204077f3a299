"""Each closed period's ranking, kept as its bulletin published it (``standings``).

The movement of a ranking ("↑2 since last week") needs the places of the period before.
Ranking that period again costs as much as ranking this one (its compliance, its
rectification rate, its scores); and the places a reader compares with are the ones last
week's bulletin printed. So a bulletin of a closed period keeps its places here, and the
next period's ranking reads them (``scores.ranking``); where none were kept (no bulletin
was made, or only one from before the period ended) the period before is ranked again,
as it stood at its end.

A new revision of a period's bulletin replaces its standings; places are kept per scope
(a place among six markets says nothing about a place among three).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from marketcare.domain.inspections import Standing
from marketcare.domain.periods import Period
from marketcare.ledger.models import StandingRow

MARKET = "market"
SUB_DISTRICT = "sub_district"


def scope_key(scope: str) -> str:
    """The scope as stored: itself, or the SHA-256 of a long list of markets."""
    if len(scope) <= 200:
        return scope
    return "sha256:" + hashlib.sha256(scope.encode()).hexdigest()


@dataclass(frozen=True)
class Places:
    """The kept places of one period: by market id and by sub-district."""

    as_of: datetime
    markets: dict[str, int]
    sub_districts: dict[str, int]


def keep(
    conn: sa.Connection,
    *,
    period: Period,
    scope: str,
    as_of: datetime,
    markets: Sequence[Standing],
    sub_districts: Sequence[Standing],
) -> None:
    """Replace the period's kept standings of ``scope`` with these (inside ``db.write``)."""
    key = scope_key(scope)
    conn.execute(
        sa.delete(StandingRow).where(
            StandingRow.period_kind == period.kind,
            StandingRow.period_key == period.key,
            StandingRow.scope == key,
        )
    )
    rows = [
        {
            "period_kind": period.kind,
            "period_key": period.key,
            "scope": key,
            "level": level,
            "key": s.key,
            "rank": s.rank,
            "inspections": len(s.figures.scores),
            "inspection_score": s.figures.inspection_score,
            "on_time": s.figures.on_time,
            "due": s.figures.due,
            "verified": s.figures.verified,
            "rectification_due": s.figures.rectification_due,
            "past_deadline": s.figures.past_deadline,
            "as_of": as_of,
        }
        for level, standings in ((MARKET, markets), (SUB_DISTRICT, sub_districts))
        for s in standings
    ]
    if rows:
        conn.execute(sa.insert(StandingRow), rows)


def kept(conn: sa.Connection, *, period: Period, scope: str) -> list[Any]:
    """The period's kept standings of ``scope`` (rows), markets then sub-districts, by
    place."""
    return list(
        conn.execute(
            sa.select(StandingRow)
            .where(
                StandingRow.period_kind == period.kind,
                StandingRow.period_key == period.key,
                StandingRow.scope == scope_key(scope),
            )
            .order_by(StandingRow.level, StandingRow.rank, StandingRow.key)
        ).all()
    )


def places(conn: sa.Connection, *, period: Period, scope: str, as_of: datetime) -> Places | None:
    """The period's kept places of ``scope`` if they were taken by ``as_of``, else None
    (a question about an earlier moment must not read a later bulletin's places)."""
    rows = conn.execute(
        sa.select(StandingRow.level, StandingRow.key, StandingRow.rank, StandingRow.as_of).where(
            StandingRow.period_kind == period.kind,
            StandingRow.period_key == period.key,
            StandingRow.scope == scope_key(scope),
        )
    ).all()
    if not rows or any(r.as_of > as_of for r in rows):
        return None
    return Places(
        as_of=min(r.as_of for r in rows),
        markets={r.key: r.rank for r in rows if r.level == MARKET},
        sub_districts={r.key: r.rank for r in rows if r.level == SUB_DISTRICT},
    )
