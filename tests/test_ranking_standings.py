"""A closed period's standings kept by its bulletin: what next period's movement reads.

The places kept must be the places a ranking computes (the same rules, the same data),
and the movement read from them must be the movement a ranking of the period before
would give; a period not yet over keeps nothing, and a question about an earlier moment
does not read places kept later.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.domain.periods import Period
from marketcare.domain.schedules import load_paths
from marketcare.ledger import demo, standings
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger.db import read, write
from marketcare.ledger.models import StandingRow
from marketcare.reports import bulletin, scores

from .conftest import ROOT, utc

WEEK = Period.of("week", date(2026, 11, 23))  # Monday 23 to Sunday 29 November
NEXT = Period.of("week", date(2026, 11, 30))
#: midnight at the end of Sunday 29 November in Shanghai: the week has just closed
CLOSED = utc(2026, 11, 29, 16)


@pytest.fixture
def month_of_demo(engine: sa.Engine, tmp_path: Path) -> sa.Engine:
    """Six markets in several sub-districts with a month of inspections and problems, and
    the daily work of the three days up to Tuesday 1 December."""
    schedule = load_paths([ROOT / "schedules"], default_timezone="Asia/Shanghai")
    demo.fill(
        engine,
        schedule,
        days=3,
        seed=5,
        now=utc(2026, 12, 1, 2),
        horizon=timedelta(days=1),
        evidence_dir=tmp_path / "evidence",
    )
    return engine


def _produce(engine: sa.Engine, period: Period, now: datetime, out: Path) -> None:
    bulletin.produce(engine, period=period, exports_dir=out, now=now)


def test_a_closed_weeks_bulletin_keeps_the_places_a_ranking_computes(
    month_of_demo: sa.Engine, tmp_path: Path
) -> None:
    engine = month_of_demo
    now = utc(2026, 11, 30, 2)  # Monday 10:00: the bulletin of the week that just ended
    _produce(engine, WEEK, now, tmp_path)
    with read(engine) as conn:
        kept = standings.kept(conn, period=WEEK, scope="all")
        again = scores.ranking(conn, WEEK, as_of=now)
    expected = [
        (level, s.key, s.rank, len(s.figures.scores), s.figures.inspection_score)
        + (s.figures.on_time, s.figures.due, s.figures.verified)
        + (s.figures.rectification_due, s.figures.past_deadline)
        for level, ranked in (("market", again.markets), ("sub_district", again.sub_districts))
        for s in ranked
    ]
    stored = [
        (r.level, r.key, r.rank, r.inspections, r.inspection_score)
        + (r.on_time, r.due, r.verified, r.rectification_due, r.past_deadline)
        for r in kept
    ]
    assert sorted(stored, key=str) == sorted(expected, key=str)
    assert len({r.rank for r in kept if r.level == "market"}) > 1  # a real ranking
    assert all(r.as_of == now for r in kept)


def test_the_next_weeks_movement_reads_the_kept_places_and_equals_ranking_last_week_again(
    month_of_demo: sa.Engine, tmp_path: Path
) -> None:
    engine = month_of_demo
    _produce(engine, WEEK, CLOSED, tmp_path)
    during = utc(2026, 12, 1, 2)
    with read(engine) as conn:
        from_kept = scores.ranking(conn, NEXT, as_of=during)
        kept = standings.kept(conn, period=WEEK, scope="all")
    with write(engine) as conn:
        conn.execute(sa.delete(StandingRow))
    with read(engine) as conn:
        recomputed = scores.ranking(conn, NEXT, as_of=during)

    def previous(r: scores.Ranking) -> dict[str, int | None]:
        return {s.key: s.previous_rank for s in [*r.markets, *r.sub_districts]}

    assert previous(from_kept) == previous(recomputed)
    assert previous(from_kept) == {r.key: r.rank for r in kept}
    assert from_kept.as_json() == recomputed.as_json()


def test_a_bulletin_of_a_week_not_yet_over_keeps_no_places(
    month_of_demo: sa.Engine, tmp_path: Path
) -> None:
    engine = month_of_demo
    _produce(engine, NEXT, utc(2026, 12, 1, 2), tmp_path)  # Tuesday of that week
    with read(engine) as conn:
        assert standings.kept(conn, period=NEXT, scope="all") == []


def test_places_kept_later_are_not_read_for_an_earlier_moment(
    month_of_demo: sa.Engine, tmp_path: Path
) -> None:
    engine = month_of_demo
    now = utc(2026, 11, 30, 2)
    _produce(engine, WEEK, now, tmp_path)
    with read(engine) as conn:
        assert standings.places(conn, period=WEEK, scope="all", as_of=now) is not None
        earlier = now - timedelta(hours=1)
        assert standings.places(conn, period=WEEK, scope="all", as_of=earlier) is None
        assert standings.places(conn, period=WEEK, scope="lizhong", as_of=now) is None


def test_a_new_revision_of_a_weeks_bulletin_replaces_its_places(
    month_of_demo: sa.Engine, tmp_path: Path
) -> None:
    engine = month_of_demo
    _produce(engine, WEEK, utc(2026, 11, 30, 2), tmp_path)
    later = utc(2026, 12, 1, 2)
    with write(engine) as conn:  # a late correction: the week's data changes
        conn.execute(sa.text("UPDATE inspections SET score = 100 WHERE local_date < '2026-11-30'"))
    _produce(engine, WEEK, later, tmp_path)
    with read(engine) as conn:
        kept = standings.kept(conn, period=WEEK, scope="all")
        again = scores.ranking(conn, WEEK, as_of=later)
    assert {r.as_of for r in kept} == {later}
    assert {(r.key, r.rank) for r in kept if r.level == "market"} == {
        (s.key, s.rank) for s in again.markets
    }


def _panel(engine: sa.Engine, memo: scores.Memo, now: datetime) -> list[scores.TrendPoint]:
    """The dashboard panel's trend as a request reads it: through the app's memo."""
    with read(engine) as conn:
        state, shared = memo.shared(conn)
        points = scores.trend(
            conn, as_of=now, zone="Asia/Shanghai", weeks=4, shared=shared, per_market=False
        )[""]
    memo.keep(state, shared, as_of=now)
    return points


def _counted_again(engine: sa.Engine, now: datetime) -> list[scores.TrendPoint]:
    with read(engine) as conn:
        return scores.trend(conn, as_of=now, zone="Asia/Shanghai", weeks=4)[""]


def test_closed_weeks_are_kept_between_requests_and_counted_again_once_the_ledger_changes(
    month_of_demo: sa.Engine,
) -> None:
    engine, memo, now = month_of_demo, scores.Memo(), utc(2026, 12, 1, 2)
    first = _panel(engine, memo, now)
    with read(engine) as conn:
        _, kept = memo.shared(conn)
    assert {key[0] for key in kept} == {p.period for p in first[:-1]}  # not the open week
    assert _panel(engine, memo, now) == first == _counted_again(engine, now)

    # a problem due in a closed week: that week's rectification figures change
    found = utc(2026, 11, 24, 2)
    ledger_problems.add(
        engine,
        ledger_problems.NewProblem(
            market_id="fuqiao",
            category="sanitation",
            description="水产区排水沟堵塞",
            found_by="区市场监管",
            found_at=found,
            deadline=found + timedelta(days=1),
        ),
        now=found,
    )
    after = _panel(engine, memo, now)
    assert after == _counted_again(engine, now)
    week = [i for i, p in enumerate(first) if p.period == WEEK][0]
    assert after[week].figures.rectification_due == first[week].figures.rectification_due + 1
