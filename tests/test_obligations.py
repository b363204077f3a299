"""What a schedule demands and when: expansion, the time policy and the state machine.

Pure domain tests: every function takes its times as arguments, so nothing is frozen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from marketcare.domain.obligations import (
    Planned,
    State,
    completion_outcome,
    expand,
    format_range,
    in_range,
    is_overdue,
    minutes_late,
    next_to_do,
    redo_by,
    state_by_clock,
    to_utc,
)
from marketcare.domain.schedules import Schedule, load_paths, load_texts

#: nothing here touches a database: it runs once, on the SQLite run (see conftest.py)
pytestmark = pytest.mark.no_database

SAMPLE = Path(__file__).resolve().parents[1] / "schedules"
SHANGHAI = ZoneInfo("Asia/Shanghai")
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def sample() -> Schedule:
    return load_paths([SAMPLE], default_timezone="Asia/Shanghai")


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0, zone: ZoneInfo = SHANGHAI) -> datetime:
    """An aware datetime from a local wall time (fold=0), for readable expectations."""
    return datetime(y, m, d, hh, mm, tzinfo=zone)


def utc(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


def local_day(day: date, zone: ZoneInfo = SHANGHAI) -> tuple[datetime, datetime]:
    """The UTC range of one local day, as expand() takes it."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def make_market(
    market_id: str = "m",
    *,
    hours: str = '{ daily: "05:30-18:30" }',
    timezone: str = "Asia/Shanghai",
    extra: str = "",
) -> str:
    return f"""\
  - id: {market_id}
    name: 测试农贸市场
    sub_district: 鲤中
    timezone: {timezone}
    hours: {hours}
    areas:
      - {{ id: fish, kind: aquatic, m2: 300 }}
      - {{ id: veg, kind: vegetables, m2: 700 }}
{extra}"""


def make_task(
    task_id: str = "t",
    *,
    kind: str = "disinfection",
    scope: str = "market",
    recurrence: str = "daily",
    opens: str = "closing",
    due: str = "closing+2h",
    extra: str = "",
) -> str:
    return f"""\
  - id: {task_id}
    kind: {kind}
    name: 测试任务
    scope: {scope}
    recurrence: {recurrence}
    opens: {opens}
    due: {due}
{extra}"""


def make_schedule(markets: list[str], tasks: list[str]) -> Schedule:
    text = "markets:\n" + "".join(markets) + "tasks:\n" + "".join(tasks)
    return load_texts({"t.yaml": text}, default_timezone="Asia/Shanghai")


def of_task(planned: list[Planned], task_id: str) -> list[Planned]:
    return [p for p in planned if p.task_id == task_id]


# ---------------------------------------------------------------- the sample, day by day


def test_daily_disinfection_makes_one_obligation_per_area_per_open_day(sample: Schedule) -> None:
    areas = sum(len(m.areas) for m in sample.markets)
    start, _ = local_day(date(2026, 5, 11))
    _, end = local_day(date(2026, 5, 17))
    week = expand(sample, start, end)
    disinfection = of_task(week, "daily-disinfection")
    assert len(disinfection) == 7 * areas
    per_day = Counter(p.local_date for p in disinfection)
    assert set(per_day.values()) == {areas}
    assert Counter((p.market_id, p.area_id) for p in disinfection) == {
        (m.id, a.id): 7 for m in sample.markets for a in m.areas
    }


def test_garbage_is_cleared_once_per_market_per_day(sample: Schedule) -> None:
    day = expand(sample, *local_day(date(2026, 5, 12)))
    waste = of_task(day, "waste-clearance")
    assert sorted(p.market_id for p in waste) == sorted(m.id for m in sample.markets)
    assert all(p.area_id is None for p in waste)


def test_disinfection_opens_at_closing_and_is_due_two_hours_later(sample: Schedule) -> None:
    # Tuesday: 鲤中 closes 18:30, so due 20:30, missed after one hour of grace
    day = of_task(
        expand(sample, *local_day(date(2026, 5, 12)), markets=["lizhong"]), "daily-disinfection"
    )
    assert {p.opens_at for p in day} == {local(2026, 5, 12, 18, 30)}
    assert {p.due_at for p in day} == {local(2026, 5, 12, 20, 30)}
    assert {p.missed_at for p in day} == {local(2026, 5, 12, 21, 30)}
    assert {p.opens_at for p in day} == {utc(2026, 5, 12, 10, 30)}


def test_hours_differing_by_weekday_move_opening_and_closing(sample: Schedule) -> None:
    def first(day: date, task_id: str, market_id: str) -> Planned:
        (p,) = of_task(expand(sample, *local_day(day), markets=[market_id]), task_id)
        return p

    # 鲤中 closes 18:30 on weekdays and 19:00 at weekends
    assert first(date(2026, 5, 15), "waste-clearance", "lizhong").opens_at == local(
        2026, 5, 15, 18, 30
    )
    assert first(date(2026, 5, 16), "waste-clearance", "lizhong").opens_at == local(2026, 5, 16, 19)
    assert first(date(2026, 5, 16), "waste-clearance", "lizhong").due_at == local(2026, 5, 16, 20)
    # 开元 opens 05:30 Monday to Saturday and 06:00 on Sundays
    assert first(date(2026, 5, 16), "civility-duty", "kaiyuan").opens_at == local(
        2026, 5, 16, 5, 30
    )
    assert first(date(2026, 5, 17), "civility-duty", "kaiyuan").opens_at == local(2026, 5, 17, 6)
    assert first(date(2026, 5, 17), "civility-duty", "kaiyuan").due_at == local(2026, 5, 17, 18)


def test_special_hours_on_new_years_eve_and_chuxi_move_the_closing(sample: Schedule) -> None:
    nye = of_task(
        expand(sample, *local_day(date(2026, 12, 31)), markets=["lizhong"]), "waste-clearance"
    )
    assert [p.opens_at for p in nye] == [local(2026, 12, 31, 20)]
    chuxi = of_task(
        expand(sample, *local_day(date(2027, 2, 5)), markets=["lizhong"]), "waste-clearance"
    )
    assert [p.opens_at for p in chuxi] == [local(2027, 2, 5, 14)]


def test_the_spring_festival_closure_produces_nothing(sample: Schedule) -> None:
    for day in (date(2027, 2, 6), date(2027, 2, 7), date(2027, 2, 8)):
        assert expand(sample, *local_day(day)) == []


def test_a_market_reopening_early_after_the_festival_is_the_only_one_with_obligations(
    sample: Schedule,
) -> None:
    day = expand(sample, *local_day(date(2027, 2, 9)))
    assert day and {p.market_id for p in day} == {"haibin"}
    # 临江 is closed one day longer than the others
    assert {p.market_id for p in expand(sample, *local_day(date(2027, 2, 10)))} == {
        "lizhong",
        "haibin",
        "kaiyuan",
        "fuqiao",
        "jiangnan",
    }


def test_the_xun_clean_up_falls_on_the_1st_11th_and_21st_only(sample: Schedule) -> None:
    start, _ = local_day(date(2026, 3, 1))
    _, end = local_day(date(2026, 4, 30))
    xun = of_task(expand(sample, start, end), "xun-clean-up")
    assert {p.local_date.day for p in xun} == {1, 11, 21}
    assert Counter(p.market_id for p in xun) == {m.id: 6 for m in sample.markets}
    # opens 30 minutes after closing; due four hours (elapsed) after that
    (lizhong_11th,) = [
        p for p in xun if p.market_id == "lizhong" and p.local_date == date(2026, 3, 11)
    ]
    assert lizhong_11th.opens_at == local(2026, 3, 11, 19)
    assert lizhong_11th.due_at == local(2026, 3, 11, 23)


def test_pest_control_comes_every_second_week_from_its_anchor(sample: Schedule) -> None:
    start, _ = local_day(date(2026, 1, 1))
    _, end = local_day(date(2026, 3, 1))
    pest = of_task(expand(sample, start, end, markets=["fuqiao"]), "pest-control")
    assert [p.local_date for p in pest] == [
        date(2026, 1, 6),
        date(2026, 1, 20),
        date(2026, 2, 3),
        date(2026, 2, 17),
    ]
    first = pest[0]
    assert first.opens_at == local(2026, 1, 6, 8) == utc(2026, 1, 6, 0)
    assert first.due_at == local(2026, 1, 9, 8)
    assert first.missed_at == local(2026, 1, 10, 8)


def test_the_weekly_deep_cleaning_leaves_out_the_aisles(sample: Schedule) -> None:
    sunday = of_task(expand(sample, *local_day(date(2026, 5, 17))), "weekly-deep-cleaning")
    kinds = {a.id: a.kind for m in sample.markets for a in m.areas}
    assert sunday and all(kinds[p.area_id or ""] != "aisles" for p in sunday)
    assert of_task(expand(sample, *local_day(date(2026, 5, 16))), "weekly-deep-cleaning") == []


def test_natural_keys_are_unique_over_a_month_of_the_sample(sample: Schedule) -> None:
    start, _ = local_day(date(2026, 12, 1))
    _, end = local_day(date(2026, 12, 31))
    month = expand(sample, start, end)
    keys = [p.natural_key for p in month]
    assert len(keys) == len(set(keys)) > 1000


def test_expanding_in_pieces_gives_the_same_obligations_as_at_once(sample: Schedule) -> None:
    start, end = utc(2026, 5, 1), utc(2026, 5, 15)
    middle = utc(2026, 5, 7, 10, 30)  # the instant 鲤中 closes on a weekday
    pieces = expand(sample, start, middle) + expand(sample, middle, end)
    assert sorted(p.natural_key for p in pieces) == sorted(
        p.natural_key for p in expand(sample, start, end)
    )


def test_expand_takes_aware_datetimes_only(sample: Schedule) -> None:
    with pytest.raises(ValueError, match="aware"):
        expand(sample, datetime(2026, 5, 1), datetime(2026, 5, 2))


# ---------------------------------------------------------------- closed days and windows


def test_a_closed_weekday_produces_nothing() -> None:
    schedule = make_schedule(
        [make_market(hours='{ mon: closed, tue-sun: "05:30-18:30" }')],
        [make_task("a"), make_task("b", opens='"08:00"', due="+3h")],
    )
    assert expand(schedule, *local_day(date(2026, 5, 11))) == []  # a Monday
    assert len(expand(schedule, *local_day(date(2026, 5, 12)))) == 2


def test_skip_closed_false_keeps_a_clock_time_task_on_a_closed_day() -> None:
    schedule = make_schedule(
        [
            make_market(
                extra="    closed: [{ date: 2027-02-06, until: 2027-02-09, reason: 春节休市 }]\n"
            )
        ],
        [
            make_task("relative", extra="    skip_closed: false\n"),
            make_task(
                "pest",
                kind="pest_control",
                opens='"08:00"',
                due="+3d",
                extra="    skip_closed: false\n    contractor: 泉州市某某有害生物防治有限公司\n",
            ),
        ],
    )
    closed_day = expand(schedule, *local_day(date(2027, 2, 7)))
    assert [p.task_id for p in closed_day] == ["pest"]


def test_a_market_closed_until_further_notice_produces_nothing() -> None:
    schedule = make_schedule(
        [
            make_market(
                extra="    closed: [{ date: 2026-01-01, until: 9999-12-31, reason: 停业 }]\n"
            )
        ],
        [make_task(opens='"08:00"', due="+1h")],
    )
    assert expand(schedule, utc(2026, 5, 1), utc(2026, 6, 1)) == []


def test_area_scope_makes_one_obligation_per_area_and_area_kinds_filters_them() -> None:
    schedule = make_schedule(
        [make_market()],
        [
            make_task("all-areas", scope="area"),
            make_task("fish-only", scope="area", extra="    area_kinds: [aquatic]\n"),
        ],
    )
    day = expand(schedule, *local_day(date(2026, 5, 12)))
    assert sorted(p.area_id for p in of_task(day, "all-areas")) == ["fish", "veg"]
    assert [p.area_id for p in of_task(day, "fish-only")] == ["fish"]


def test_a_wall_clock_due_before_the_opening_means_the_next_day() -> None:
    schedule = make_schedule([make_market()], [make_task(opens='"20:00"', due='"06:00"')])
    (p,) = expand(schedule, *local_day(date(2026, 5, 12)))
    assert p.opens_at == local(2026, 5, 12, 20)
    assert p.due_at == local(2026, 5, 13, 6)


def test_a_night_market_closing_after_midnight_is_cleaned_the_next_morning() -> None:
    schedule = make_schedule(
        [make_market(hours='{ daily: "18:00-02:00" }')], [make_task(due="closing+1h")]
    )
    (p,) = expand(schedule, *local_day(date(2026, 5, 13)))
    assert p.local_date == date(2026, 5, 12)  # the session that opened on the 12th
    assert p.opens_at == local(2026, 5, 13, 2)
    assert p.due_at == local(2026, 5, 13, 3)


def test_grace_gives_missed_at_as_elapsed_time_after_due() -> None:
    schedule = make_schedule([make_market()], [make_task(extra="    grace: 1h30m\n")])
    (p,) = expand(schedule, *local_day(date(2026, 5, 12)))
    assert p.due_at == local(2026, 5, 12, 20, 30)
    assert p.missed_at - p.due_at == timedelta(hours=1, minutes=30)


def test_without_grace_an_obligation_is_missed_at_its_due_time() -> None:
    (p,) = expand(make_schedule([make_market()], [make_task()]), *local_day(date(2026, 5, 12)))
    assert p.missed_at == p.due_at


# ---------------------------------------------------------------- daylight saving


def london_night_clean(due: str = "+2h") -> Schedule:
    return make_schedule(
        [make_market("borough", timezone="Europe/London", hours='{ daily: "07:00-17:00" }')],
        [make_task(opens='"01:30"', due=due, extra="    grace: 30m\n")],
    )


def test_a_time_in_the_spring_gap_is_shifted_forward_by_the_gap() -> None:
    # 2026-03-29: London clocks jump from 01:00 GMT to 02:00 BST; 01:30 does not exist
    (p,) = expand(london_night_clean(), *local_day(date(2026, 3, 29), LONDON))
    assert p.opens_at == utc(2026, 3, 29, 1, 30)
    assert p.opens_at.astimezone(LONDON).strftime("%H:%M %Z") == "02:30 BST"
    assert p.due_at == utc(2026, 3, 29, 3, 30)
    assert p.missed_at == utc(2026, 3, 29, 4)


def test_a_time_repeated_in_autumn_means_its_first_occurrence() -> None:
    # 2026-10-25: London clocks fall back from 02:00 BST to 01:00 GMT; 01:30 happens twice
    (p,) = expand(london_night_clean(), *local_day(date(2026, 10, 25), LONDON))
    assert p.opens_at == utc(2026, 10, 25, 0, 30)
    assert p.opens_at.astimezone(LONDON).strftime("%H:%M %Z") == "01:30 BST"


@pytest.mark.parametrize(
    ("first", "last"),
    [(date(2026, 3, 25), date(2026, 4, 2)), (date(2026, 10, 21), date(2026, 10, 29))],
)
def test_exactly_one_obligation_per_day_across_a_dst_change(first: date, last: date) -> None:
    start, _ = local_day(first, LONDON)
    _, end = local_day(last, LONDON)
    planned = expand(london_night_clean(), start, end)
    days = [p.local_date for p in planned]
    assert days == [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert len({p.natural_key for p in planned}) == len(planned)
    assert all(p.opens_at.astimezone(LONDON).hour in (1, 2) for p in planned)


def test_elapsed_due_and_wall_clock_due_differ_across_a_dst_change() -> None:
    # opening 00:30 GMT on the spring change; 02:30 on the wall is already BST
    elapsed = make_schedule(
        [make_market(timezone="Europe/London")], [make_task(opens='"00:30"', due="+2h")]
    )
    wall = make_schedule(
        [make_market(timezone="Europe/London")], [make_task(opens='"00:30"', due='"02:30"')]
    )
    (e,) = expand(elapsed, *local_day(date(2026, 3, 29), LONDON))
    (w,) = expand(wall, *local_day(date(2026, 3, 29), LONDON))
    assert e.opens_at == w.opens_at == utc(2026, 3, 29, 0, 30)
    assert e.due_at == utc(2026, 3, 29, 2, 30)
    assert w.due_at == utc(2026, 3, 29, 1, 30)


def test_a_relative_time_follows_the_market_hours_across_a_dst_change() -> None:
    schedule = make_schedule(
        [make_market(timezone="Europe/London", hours='{ daily: "07:00-17:00" }')], [make_task()]
    )
    (before,) = expand(schedule, *local_day(date(2026, 3, 28), LONDON))
    (after,) = expand(schedule, *local_day(date(2026, 3, 29), LONDON))
    assert before.opens_at == utc(2026, 3, 28, 17)
    assert after.opens_at == utc(2026, 3, 29, 16)


def test_new_york_gap_and_repeat_follow_the_same_policy() -> None:
    def night(opens: str) -> Schedule:
        return make_schedule(
            [make_market(timezone="America/New_York")], [make_task(opens=f'"{opens}"', due="+1h")]
        )

    # 2026-03-08 02:00 EST → 03:00 EDT: 02:30 becomes 03:30 EDT
    (spring,) = expand(night("02:30"), *local_day(date(2026, 3, 8), NEW_YORK))
    assert spring.opens_at == utc(2026, 3, 8, 7, 30)
    # 2026-11-01 02:00 EDT → 01:00 EST: 01:30 is the first one, in EDT
    (autumn,) = expand(night("01:30"), *local_day(date(2026, 11, 1), NEW_YORK))
    assert autumn.opens_at == utc(2026, 11, 1, 5, 30)


def test_to_utc_uses_fold_0_for_gaps_and_repeats() -> None:
    assert to_utc(datetime(2026, 3, 29, 1, 30), LONDON) == utc(2026, 3, 29, 1, 30)
    assert to_utc(datetime(2026, 10, 25, 1, 30), LONDON) == utc(2026, 10, 25, 0, 30)
    assert to_utc(datetime(2026, 5, 12, 18, 30), SHANGHAI) == utc(2026, 5, 12, 10, 30)


# ---------------------------------------------------------------- the state machine

OPENS = utc(2026, 5, 12, 10, 30)
DUE = utc(2026, 5, 12, 12, 30)
MISSED = utc(2026, 5, 12, 13, 30)


@pytest.mark.parametrize(
    ("now", "state"),
    [
        (OPENS - timedelta(seconds=1), State.UPCOMING),
        (OPENS, State.OPEN),
        (DUE + timedelta(minutes=30), State.OPEN),
        (MISSED - timedelta(seconds=1), State.OPEN),
        (MISSED, State.MISSED),
    ],
)
def test_the_clock_moves_an_obligation_from_upcoming_to_open_to_missed(
    now: datetime, state: State
) -> None:
    assert state_by_clock(State.UPCOMING, opens_at=OPENS, missed_at=MISSED, now=now) == state
    if state != State.UPCOMING:
        assert state_by_clock(State.OPEN, opens_at=OPENS, missed_at=MISSED, now=now) == state


@pytest.mark.parametrize(
    "state", [State.DONE, State.LATE, State.FAILED, State.EXCUSED, State.MISSED]
)
def test_the_clock_never_moves_a_settled_obligation(state: State) -> None:
    later = MISSED + timedelta(days=3)
    assert state_by_clock(state, opens_at=OPENS, missed_at=MISSED, now=later) == state


def test_a_completion_up_to_due_is_done_and_after_it_is_late() -> None:
    assert completion_outcome(due_at=DUE, at=DUE, readings_ok=True) == State.DONE
    assert (
        completion_outcome(due_at=DUE, at=DUE + timedelta(seconds=1), readings_ok=True)
        == State.LATE
    )
    # after the grace period too: a late completion is kept, not refused
    assert (
        completion_outcome(due_at=DUE, at=MISSED + timedelta(days=1), readings_ok=True)
        == State.LATE
    )


def test_a_reading_out_of_range_fails_the_obligation_whatever_the_time() -> None:
    assert completion_outcome(due_at=DUE, at=OPENS, readings_ok=False) == State.FAILED
    assert completion_outcome(due_at=DUE, at=MISSED, readings_ok=False) == State.FAILED


def test_overdue_means_past_due_and_not_done_late_done_or_excused() -> None:
    assert not is_overdue(State.OPEN, due_at=DUE, now=DUE)
    assert is_overdue(State.OPEN, due_at=DUE, now=DUE + timedelta(seconds=1))
    assert is_overdue(State.UPCOMING, due_at=DUE, now=DUE + timedelta(seconds=1))  # unswept
    assert is_overdue(State.MISSED, due_at=DUE, now=OPENS)  # missed is always past due
    assert is_overdue(State.FAILED, due_at=DUE, now=DUE + timedelta(seconds=1))
    for state in (State.DONE, State.LATE, State.EXCUSED):
        assert not is_overdue(state, due_at=DUE, now=MISSED + timedelta(days=1))


def test_a_failed_reading_before_the_due_time_is_to_redo_not_overdue() -> None:
    assert not is_overdue(State.FAILED, due_at=DUE, now=OPENS)
    assert redo_by(State.FAILED, due_at=DUE, now=OPENS) == DUE
    assert redo_by(State.FAILED, due_at=DUE, now=DUE + timedelta(seconds=1)) is None
    assert redo_by(State.OPEN, due_at=DUE, now=OPENS) is None


def test_a_failed_reading_before_due_is_to_be_redone_by_its_due_time_not_overdue() -> None:
    before = DUE - timedelta(minutes=95)  # 18:55 for a task due at 20:30
    assert not is_overdue(State.FAILED, due_at=DUE, now=before)
    assert redo_by(State.FAILED, due_at=DUE, now=before) == DUE
    assert redo_by(State.FAILED, due_at=DUE, now=DUE) == DUE
    assert redo_by(State.FAILED, due_at=DUE, now=DUE + timedelta(seconds=1)) is None
    assert redo_by(State.OPEN, due_at=DUE, now=before) is None


@dataclass(frozen=True)
class Candidate:
    id: int
    kind: str
    task_id: str
    state: State
    due_at: datetime


def test_the_next_task_offered_is_the_same_task_still_to_do_earliest_due_first() -> None:
    done = Candidate(1, "disinfection", "disinfect", State.DONE, DUE)
    others = [
        done,
        Candidate(2, "disinfection", "deep-clean", State.OPEN, DUE - timedelta(hours=1)),
        Candidate(3, "disinfection", "disinfect", State.OPEN, DUE + timedelta(minutes=5)),
        Candidate(4, "disinfection", "disinfect", State.FAILED, DUE),
        Candidate(5, "disinfection", "disinfect", State.UPCOMING, DUE - timedelta(hours=2)),
        Candidate(6, "waste_clearance", "waste", State.OPEN, DUE - timedelta(hours=3)),
    ]
    assert next_to_do(done, others) == others[3]
    assert next_to_do(done, [done, others[1], others[5]]) == others[1]
    assert next_to_do(done, [done, others[4], others[5]]) is None


def test_minutes_late_counts_every_minute_begun_after_due() -> None:
    assert minutes_late(due_at=DUE, completed_at=None) == 0
    assert minutes_late(due_at=DUE, completed_at=DUE) == 0
    assert minutes_late(due_at=DUE, completed_at=DUE - timedelta(hours=1)) == 0
    assert minutes_late(due_at=DUE, completed_at=DUE + timedelta(seconds=31)) == 1
    assert minutes_late(due_at=DUE, completed_at=DUE + timedelta(minutes=1)) == 1
    assert minutes_late(due_at=DUE, completed_at=DUE + timedelta(minutes=95, seconds=59)) == 96


def test_a_chlorine_reading_is_checked_against_its_range() -> None:
    assert in_range(1000, (900, 1200))
    assert not in_range(300, (900, 1200))
    assert in_range(250, (250, None)) and not in_range(249.9, (250, None))
    assert in_range(12345, None)
    assert format_range((900, 1200), "mg/L") == "900–1200 mg/L"
    assert format_range((250, None), "mg/L") == "≥ 250 mg/L"
    assert format_range((None, 500), None) == "≤ 500"
    assert format_range(None, "mg/L") == "any value"
