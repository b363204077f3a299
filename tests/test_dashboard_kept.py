"""The office dashboard's figures kept between requests: they are the figures counted
again, for as long as the ledger is unchanged and the clock has not crossed a time a rule
compares it with."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa
import time_machine

from marketcare.domain.compliance import holds_until
from marketcare.domain.periods import Period
from marketcare.domain.schedules import load_texts
from marketcare.ledger import problems
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.materialise import materialise
from marketcare.ledger.models import AuditHead, UnchainedEvent
from marketcare.reports import dashboard, scores
from marketcare.web.app import WebServer, create_app
from tests.support.web import SCHEDULE, Site, sign_in

ALL = ["lizhong", "xinhua"]
AT = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


def at(minutes: float) -> datetime:
    return AT + timedelta(minutes=minutes)


def test_figures_hold_until_just_before_a_miss_time_and_up_to_a_deadline() -> None:
    assert holds_until(AT, miss_times=[at(30), at(90)]) == at(30) - TICK
    assert holds_until(AT, deadlines=[at(20)], miss_times=[at(30)]) == at(20)
    assert holds_until(AT, due_times=[at(10)], day_ends=[at(5)]) == at(5) - TICK


def test_times_already_crossed_do_not_shorten_how_long_figures_hold() -> None:
    assert holds_until(AT, miss_times=[AT, at(-5)], deadlines=[at(-1)]) is None
    assert holds_until(AT, deadlines=[AT]) == AT  # overdue only after its deadline


def count_now(site: Site, memo: dashboard.Memo) -> dashboard.Counted:
    """The dashboard's figures as of the machine's clock (moved by time-machine)."""
    return dashboard.counted(site.engine, now=datetime.now(UTC), market_ids=ALL, memo=memo)


def counted_again(site: Site, now: datetime) -> dashboard.Counted:
    return dashboard.counted(site.engine, now=now, market_ids=ALL)


def test_kept_figures_are_counted_again_once_the_clock_passes_the_next_miss_time(
    site: Site,
) -> None:
    memo = dashboard.Memo()
    start = site.clock.now()
    with time_machine.travel(start, tick=False):
        first = count_now(site, memo)
    assert first.until is not None and first.until > start
    assert any(f.open_now for f in first.figures), "the evening's work is still open"

    with time_machine.travel(first.until, tick=False):
        assert count_now(site, memo) is first  # the same moment as far as any rule goes
        assert counted_again(site, first.until).figures == first.figures

    after = first.until + TICK
    with time_machine.travel(after, tick=False):
        later = count_now(site, memo)
    assert later is not first
    assert later.figures == counted_again(site, after).figures
    assert later.figures != first.figures  # some of the evening's work is missed now
    assert sum(f.missed_today for f in later.figures) > sum(f.missed_today for f in first.figures)


def test_kept_figures_are_not_used_for_an_earlier_moment(site: Site) -> None:
    memo = dashboard.Memo()
    first = dashboard.counted(site.engine, now=site.clock.now(), market_ids=ALL, memo=memo)
    earlier = site.clock.now() - timedelta(hours=1)
    again = dashboard.counted(site.engine, now=earlier, market_ids=ALL, memo=memo)
    assert again is not first
    assert again.figures == counted_again(site, earlier).figures


def figure(office: httpx.Client, market: str, name: str) -> object:
    answer = office.get("/api/v1/dashboard")
    assert answer.status_code == 200
    return next(m[name] for m in answer.json() if m["market"] == market)


def test_a_tick_is_seen_on_the_next_request_to_the_dashboard(
    site: Site, office: httpx.Client
) -> None:
    before = figure(office, "lizhong", "on_time_today")
    assert figure(office, "lizhong", "on_time_today") == before  # kept: nothing changed
    tick_lizhong(site)
    assert figure(office, "lizhong", "on_time_today") == before + 1  # type: ignore[operator]
    page = office.get("/office").text
    kept = dashboard.counted(site.engine, now=site.clock.now(), market_ids=ALL)
    lizhong = next(f for f in kept.figures if f.market.id == "lizhong")
    assert f"{lizhong.today_on_time}/{lizhong.today_due}" in page


def test_the_api_follows_the_clock_across_a_miss_time(site: Site, office: httpx.Client) -> None:
    before = office.get("/api/v1/dashboard").json()
    first = counted_again(site, site.clock.now())
    assert first.until is not None
    site.clock.at = first.until + TICK
    after = office.get("/api/v1/dashboard").json()
    assert after == [f.as_json() for f in counted_again(site, site.clock.now()).figures]
    assert after != before


def tick_lizhong(site: Site) -> None:
    ledger_tick.tick(
        site.engine,
        obligation_id=site.obligation("lizhong", "disinfect", "aquatic"),
        by="mgr_a",
        now=site.clock.now(),
        readings={"chlorine": 1000},
        items=["washed"],
    )


def by_market(counted: dashboard.Counted) -> dict[str, dashboard.MarketFigures]:
    return {f.market.id: f for f in counted.figures}


def test_after_a_tick_only_the_market_ticked_is_counted_again(site: Site) -> None:
    memo, now = dashboard.Memo(), site.clock.now()
    first = by_market(dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo))
    tick_lizhong(site)
    second = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert second.figures == counted_again(site, now).figures
    assert by_market(second)["xinhua"] is first["xinhua"]  # kept, not counted again
    assert by_market(second)["lizhong"].today_on_time == first["lizhong"].today_on_time + 1


def test_a_tick_not_linked_to_the_chain_yet_counts_its_market_again_and_only_it(
    site: Site,
) -> None:
    """On PostgreSQL a tick through the web's writer is committed before it is linked to
    the audit chain (here: while another chainer holds the head); its market is counted
    again all the same. On SQLite the same tick is linked at once."""
    memo, now = dashboard.Memo(), site.clock.now()
    first = by_market(dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo))
    request = ledger_tick.TickRequest.of(
        obligation_id=site.obligation("lizhong", "disinfect", "aquatic"),
        by="mgr_a",
        now=now,
        readings={"chlorine": 1000},
        items=["washed"],
    )
    with site.engine.connect() as holder:
        if site.engine.dialect.name == "postgresql":  # another chainer, in mid-round
            holder.begin()
            holder.execute(sa.select(AuditHead).where(AuditHead.id == 1).with_for_update())
        writer = ledger_tick.TickWriter(site.engine)
        try:
            assert writer.tick(request).changed
        finally:
            writer.close()
        if site.engine.dialect.name == "postgresql":
            pending = sa.select(sa.func.count()).select_from(UnchainedEvent)
            assert holder.execute(pending).scalar_one() == 1
    second = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert second.figures == counted_again(site, now).figures
    assert by_market(second)["xinhua"] is first["xinhua"]  # kept, not counted again
    assert by_market(second)["lizhong"].today_on_time == first["lizhong"].today_on_time + 1


def test_a_write_the_chain_does_not_tie_to_a_market_counts_every_market_again(
    site: Site,
) -> None:
    from marketcare.domain.access import Role
    from marketcare.ledger import accounts

    memo, now = dashboard.Memo(), site.clock.now()
    first = by_market(dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo))
    accounts.add_user(
        site.engine,
        accounts.NewUser("li", "李明", Role.OFFICE, "correct horse battery", ()),
        now=now,
    )
    second = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert second.figures == counted_again(site, now).figures
    assert all(f is not first[f.market.id] for f in second.figures)


def test_closed_weeks_of_the_ranking_are_kept_across_a_tick_of_todays_work(site: Site) -> None:
    memo, now = scores.Memo(), site.clock.now()
    with read(site.engine) as conn:
        state, shared = memo.shared(conn)
        scores.trend(conn, as_of=now, zone="Asia/Shanghai", weeks=3, shared=shared)
    memo.keep(state, shared, as_of=now)
    with read(site.engine) as conn:
        _, before = memo.shared(conn)
    assert len(before) == 2  # the two closed weeks
    tick_lizhong(site)
    with read(site.engine) as conn:
        _, after = memo.shared(conn)
        assert after == before
        assert [scores._figures(conn, p, a, m, after)[1] for p, a, m in after] == [
            scores._figures(conn, p, a, m, None)[1] for p, a, m in after
        ]


# ---------------------------------------------------------------- the ranking panel's figures

ZONE = ZoneInfo("Asia/Shanghai")
WEEKS = 3  # this week and two closed ones


class Panel:
    """The office page's ranking panel as a request counts it: the dashboard's figures
    through its memo, then this week's ranking and the trend through the scores' memo
    (the steps of ``web.pages_inspections.ranking_panel``)."""

    def __init__(self, site: Site) -> None:
        self.site, self.figures, self.scores = site, dashboard.Memo(), scores.Memo()

    def request(self, now: datetime) -> tuple[scores.Ranking, list[scores.TrendPoint]]:
        counted = dashboard.counted(self.site.engine, now=now, market_ids=ALL, memo=self.figures)
        totals = {f.market.id: (f.week_on_time, f.week_due) for f in counted.figures}
        week = this_week(now)
        with read(self.site.engine) as conn:
            state, shared = self.scores.shared(conn, known=counted.written)
            if counted.state == state and counted.holds(now):
                self.scores.open_period(conn, state, shared, week, as_of=now, totals=totals)
            ranked = scores.ranking(conn, week, as_of=now, shared=shared, totals=totals)
            points = scores.trend(conn, as_of=now, zone=ZONE.key, weeks=WEEKS, shared=shared)
        self.scores.keep(state, shared, as_of=now)
        self.scores.keep_open(state, shared, week, as_of=now, holds=counted.holds)
        return ranked, points[""]

    def closed_weeks(self) -> scores.Shared:
        """The closed weeks the memo keeps for the ledger as it is now."""
        with read(self.site.engine) as conn:
            return self.scores.shared(conn)[1]


def this_week(now: datetime) -> Period:
    return Period.of("week", now.astimezone(ZONE).date())


def fresh(site: Site, now: datetime) -> tuple[scores.Ranking, list[scores.TrendPoint]]:
    """The same ranking and trend counted again from nothing."""
    with read(site.engine) as conn:
        ranked = scores.ranking(conn, this_week(now), as_of=now)
        return ranked, scores.trend(conn, as_of=now, zone=ZONE.key, weeks=WEEKS)[""]


def rows(ranked: scores.Ranking) -> dict[str, object]:
    return {s.key: s.figures for s in ranked.markets}


def week_end(weeks_back: int, now: datetime) -> datetime:
    """The end of the week ``weeks_back`` before this one, as an instant."""
    end = this_week(now).start - timedelta(days=7 * (weeks_back - 1))
    return datetime.combine(end, datetime.min.time(), tzinfo=ZONE).astimezone(UTC)


def raise_problem(site: Site, *, found: datetime, deadline: datetime) -> int:
    pid, _ = problems.add(
        site.engine,
        problems.NewProblem(
            market_id="lizhong",
            category="sanitation",
            description="水产区排水沟堵塞",
            found_by="区市场监管",
            found_at=found,
            deadline=deadline,
        ),
        now=max(found, site.clock.now()),
    )
    return pid


def test_after_a_tick_the_rankings_other_rows_are_kept_and_it_equals_a_fresh_count(
    site: Site,
) -> None:
    panel, now = Panel(site), site.clock.now()
    first, _ = panel.request(now)
    tick_lizhong(site)
    second, points = panel.request(now)
    assert (second.markets, points) == (fresh(site, now)[0].markets, fresh(site, now)[1])
    assert second.sub_districts == fresh(site, now)[0].sub_districts
    assert rows(second)["xinhua"] is rows(first)["xinhua"]  # kept, not counted again
    assert rows(second)["lizhong"] != rows(first)["lizhong"]


def test_a_tick_and_a_problem_in_one_market_between_two_requests_equal_a_fresh_count(
    site: Site,
) -> None:
    """A market ticked only takes its compliance from the dashboard's week and keeps its
    other figures; one whose problems were written to as well is counted again."""
    panel, now = Panel(site), site.clock.now()
    first, _ = panel.request(now)
    tick_lizhong(site)
    second, _ = panel.request(now)
    assert rows(second)["lizhong"] != rows(first)["lizhong"]
    assert rows(second) == rows(fresh(site, now)[0])
    tick_lizhong_veg(site)
    raise_problem(site, found=now - timedelta(days=2), deadline=now - timedelta(days=1))
    third, points = panel.request(now)
    again = fresh(site, now)
    assert (third.markets, third.sub_districts, points) == (
        again[0].markets,
        again[0].sub_districts,
        again[1],
    )
    assert rows(third)["xinhua"] is rows(first)["xinhua"]


def tick_lizhong_veg(site: Site) -> None:
    ledger_tick.tick(
        site.engine,
        obligation_id=site.obligation("lizhong", "disinfect", "veg"),
        by="mgr_a",
        now=site.clock.now(),
        readings={"chlorine": 500},
        items=["washed"],
    )


def test_a_problem_due_after_the_closed_weeks_keeps_them_and_counts_its_market_again(
    site: Site,
) -> None:
    panel, now = Panel(site), site.clock.now()
    first, _ = panel.request(now)
    before = panel.closed_weeks()
    assert len(before) == WEEKS - 1
    raise_problem(site, found=now, deadline=now + timedelta(days=1))
    second, points = panel.request(now)
    after = panel.closed_weeks()
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert (second.markets, points) == (fresh(site, now)[0].markets, fresh(site, now)[1])
    assert rows(second)["xinhua"] is rows(first)["xinhua"]


def same(after: scores.Shared, before: scores.Shared) -> set[Period]:
    """The weeks whose kept figures are the very objects kept before (not counted again)."""
    return {k[0] for k, v in after.items() if before.get(k) is v}


def test_a_problem_due_at_a_closed_weeks_end_keeps_it_and_one_due_just_before_counts_it_again(
    site: Site,
) -> None:
    """The rate counts deadlines in [start, end) and "past deadline" is counted at the
    end: a deadline at the end itself is the next week's; one a microsecond earlier is
    that week's, and past it."""
    end = week_end(1, site.clock.now())  # last week's end, this week's start
    last_week, panel = this_week(end - TICK), Panel(site)
    with time_machine.travel(end + TICK, tick=False):  # the week has just closed
        moment = datetime.now(UTC)
        _, first = panel.request(moment)
        before = panel.closed_weeks()
        assert last_week in {k[0] for k in before}

        raise_problem(site, found=end - timedelta(days=2), deadline=end)
        assert panel.request(moment) == fresh(site, moment)  # this week counts it
        assert same(panel.closed_weeks(), before) == {k[0] for k in before}

        raise_problem(site, found=end - timedelta(days=2), deadline=end - TICK)
        ranked, points = panel.request(moment)
        assert (ranked, points) == fresh(site, moment)
        assert same(panel.closed_weeks(), before) == {k[0] for k in before} - {last_week}
    assert points[-2].period == last_week
    assert points[-2].figures.rectification_due == first[-2].figures.rectification_due + 1
    assert points[-2].figures.past_deadline == first[-2].figures.past_deadline + 1


def test_a_deadline_moved_keeps_the_closed_weeks_to_which_the_problem_adds_the_same(
    site: Site,
) -> None:
    now = site.clock.now()
    found = week_end(2, now) - timedelta(days=5)  # in the week before last
    pid = raise_problem(site, found=found, deadline=now + timedelta(days=7))
    panel = Panel(site)
    panel.request(now)
    weeks = {k[0] for k in panel.closed_weeks()}
    assert len(weeks) == WEEKS - 1

    def assign(deadline: datetime | None) -> set[Period]:
        """Move the deadline (None: name someone else only); the weeks kept across it."""
        before = panel.closed_weeks()
        problems.assign(
            site.engine, problem_id=pid, by="区市场监管", to="王秀兰", now=now, deadline=deadline
        )
        assert panel.request(now) == fresh(site, now)
        return same(panel.closed_weeks(), before)

    # due in the week before last now, and past its deadline at the end of both
    assert assign(found + timedelta(days=1)) == set()
    assert assign(None) == weeks
    # still due in that week and past it at both ends: both weeks read the same
    assert assign(found + timedelta(days=2)) == weeks
    assert assign(now + timedelta(days=1)) == set()


# ---------------------------------------------------------------- the page's overdue list


def overdue_ids(counted: dashboard.Counted) -> list[int]:
    return [p.id for p in counted.overdue]


def test_the_overdue_list_is_kept_across_a_tick_and_counted_again_after_a_problem_write(
    site: Site,
) -> None:
    memo, now = dashboard.Memo(), site.clock.now()
    late = raise_problem(site, found=now - timedelta(days=3), deadline=now - timedelta(days=1))
    first = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert late in overdue_ids(first)

    tick_lizhong(site)
    second = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert second is not first
    assert second.overdue is first.overdue  # kept: the tick changed no problem
    assert second.overdue == counted_again(site, now).overdue

    problems.assign(site.engine, problem_id=late, by="office", to="市场管理员 王", now=now)
    third = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert third.overdue == counted_again(site, now).overdue
    assert [p.assigned_to for p in third.overdue if p.id == late] == ["市场管理员 王"]

    later = raise_problem(site, found=now - timedelta(days=2), deadline=now - timedelta(hours=2))
    fourth = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert fourth.overdue == counted_again(site, now).overdue
    assert overdue_ids(fourth) == [late, later]  # by deadline


def test_a_problem_joins_the_kept_overdue_list_once_the_clock_passes_its_deadline(
    site: Site,
) -> None:
    memo, now = dashboard.Memo(), site.clock.now()
    soon = raise_problem(site, found=now, deadline=now + timedelta(hours=1))
    first = dashboard.counted(site.engine, now=now, market_ids=ALL, memo=memo)
    assert soon not in overdue_ids(first)
    assert first.until is not None and first.until <= now + timedelta(hours=1)
    after = now + timedelta(hours=1) + TICK
    later = dashboard.counted(site.engine, now=after, market_ids=ALL, memo=memo)
    assert soon in overdue_ids(later)
    assert later.overdue == counted_again(site, after).overdue


# ---------------------------------------------------------------- the page, kept and afresh


def forget_everything_kept(app: Any) -> None:
    """The app's memos and rendered fragments dropped: the next page is counted and
    rendered from nothing."""
    app.state.dashboard_memo = dashboard.Memo()
    app.state.scores_memo = None
    app.state.fragments = None
    scores._DERIVED.clear()


def unmasked(page: str) -> str:
    """``page`` with the masked CSRF token it carries (in the header and every form) blanked."""
    token = re.search(r'name="csrf-token" content="([^"]+)"', page)
    return page.replace(token.group(1), "") if token else page


def test_the_office_page_after_writes_is_byte_for_byte_the_page_counted_afresh(
    site: Site,
) -> None:
    app = create_app(site.settings, site.engine, clock=site.clock.now)
    server = WebServer(app, "127.0.0.1", 0)  # an app of its own, whose memos the test drops
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as office:
            sign_in(office, "office")

            def kept_then_afresh() -> str:
                kept = office.get("/office")
                forget_everything_kept(app)
                afresh = office.get("/office")
                assert kept.status_code == afresh.status_code == 200
                # the same bytes but the CSRF token, which each page carries masked afresh
                assert unmasked(kept.text) == unmasked(afresh.text)
                return kept.text

            kept_then_afresh()
            now = site.clock.now()
            late = raise_problem(
                site, found=now - timedelta(days=3), deadline=now - timedelta(hours=5)
            )
            assert f'data-problem="{late}"' in kept_then_afresh()
            tick_lizhong(site)
            kept_then_afresh()
            problems.assign(site.engine, problem_id=late, by="office", to="市场管理员 王", now=now)
            assert "市场管理员 王" in kept_then_afresh()
            soon = raise_problem(site, found=now, deadline=now + timedelta(minutes=30))
            assert f'data-problem="{soon}"' not in kept_then_afresh()
            site.clock.advance(minutes=31)  # past its deadline, and past some miss times
            assert f'data-problem="{soon}"' in kept_then_afresh()
            office.get("/office")  # counted and rendered for the next ones to use
            ledger_tick.tick(
                site.engine,
                obligation_id=site.obligation("xinhua", "disinfect", "meat"),
                by="mgr_b",
                now=site.clock.now(),
                readings={"chlorine": 1000},
                items=["washed"],
            )
            kept_then_afresh()
            renamed = load_texts(
                {"schedules/site.yaml": SCHEDULE.replace("鲤中农贸市场", "鲤中市场")},
                default_timezone="Asia/Shanghai",
            )  # another schedule version: the markets are read again
            materialise(site.engine, renamed, now=site.clock.now(), horizon=timedelta(days=2))
            page = kept_then_afresh()
            assert "鲤中市场" in page and "鲤中农贸市场" not in page
    finally:
        server.stop()
