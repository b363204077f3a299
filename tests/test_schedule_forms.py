"""The forms of the schedule format real markets need, counted as a person would check them.

The district example of docs/schedules.md (a 24-hour wholesale market, a community market
with summer hours and a poultry area resting on Wednesdays, a morning market whose poultry
area rests on the 15th, the Spring Festival closing all three) is expanded over a whole
year and counted market by market and day by day against a table worked out by hand, in
Beijing time and in a zone with both daylight-saving changes.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from marketcare.domain.obligations import Planned, expand, expand_days
from marketcare.domain.schedules import Schedule, load_texts
from marketcare.errors import ScheduleError, SourceError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schedules.md"
LONDON = ZoneInfo("Europe/London")
FIRST = date(2026, 7, 1)  # a Wednesday; the year runs to 2027-06-30, also a Wednesday


def doc_example(heading: str) -> str:
    """The first YAML block after a heading of docs/schedules.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"### {heading}\n")
    match = re.search(r"^```yaml\n(.*?)^```", text[start:], re.S | re.M)
    assert match is not None, heading
    return match.group(1)


def district(zone: str) -> Schedule:
    return load_texts(
        {"district.yaml": doc_example("A district of three markets")}, default_timezone=zone
    )


@pytest.fixture(scope="module", params=["Asia/Shanghai", "Europe/London"])
def year(request: pytest.FixtureRequest) -> tuple[str, list[Planned]]:
    return request.param, expand_days(district(request.param), FIRST, 365)


def counts(planned: list[Planned]) -> Counter[tuple[str, str]]:
    return Counter((p.market_id, p.local_date.isoformat()) for p in planned)


def excused(planned: list[Planned]) -> Counter[tuple[str, str]]:
    return Counter((p.market_id, p.local_date.isoformat()) for p in planned if p.excused)


# Worked out by hand. A normal day: wholesale 15 (waste 1, disinfection of 2 areas, 12
# toilet rounds from its 04:00 boundary to the next); community 10 in winter (1 + 3 areas
# + 6 rounds 06:00…16:00), 11 in summer hours (May–Sep, rounds to 18:00); morning 3 (1 +
# 2 areas). Then: Wednesdays the community's poultry area rests (its disinfection excused,
# plus the rest-day disinfection: +1); the 15th the morning market's does (+1); the 1st,
# 11th and 21st bait stations (+1 each market); Mondays April–October mosquito control
# (+1); the 5th November–March the winter pest visit (+1); Thursdays the facility round
# (+1), except 2026-10-01, and on 2026-10-09 too.
TABLE = [
    # day,        wholesale, community, morning, excused (community, morning)
    ("2026-07-01", 16, 13, 4, (1, 0)),  # Wed, xun, summer: 1+3+1 rest+7 rounds+1
    ("2026-07-15", 15, 12, 4, (1, 1)),  # Wed and the 15th: both poultry areas rest
    ("2026-09-30", 15, 12, 3, (1, 0)),  # Wed, last day of summer hours
    ("2026-10-01", 16, 11, 4, (0, 0)),  # Thu, xun; no facility round (except); winter hours
    ("2026-10-05", 16, 11, 4, (0, 0)),  # Mon: mosquito control still in season (Oct)
    ("2026-10-08", 16, 11, 4, (0, 0)),  # Thu: facility round
    ("2026-10-09", 16, 11, 4, (0, 0)),  # Fri: the extra facility round
    ("2026-10-25", 15, 10, 3, (0, 0)),  # Sun: clocks go back in London
    ("2026-11-02", 15, 10, 3, (0, 0)),  # Mon: mosquito season over
    ("2026-11-05", 17, 12, 5, (0, 0)),  # Thu and the 5th: facility + winter pest visit
    ("2027-02-05", 16, 9, 4, (0, 0)),  # 除夕: community closes 14:00 (4 rounds); the 5th
    ("2027-02-06", 0, 0, 0, (0, 0)),  # Spring Festival: the district is closed
    ("2027-02-09", 0, 0, 0, (0, 0)),  # last closed day
    ("2027-02-10", 15, 11, 3, (1, 0)),  # Wed: reopened, poultry rests
    ("2027-02-11", 17, 12, 5, (0, 0)),  # Thu, xun
    ("2027-03-28", 15, 10, 3, (0, 0)),  # Sun: clocks go forward in London
    ("2027-04-05", 16, 11, 4, (0, 0)),  # Mon: mosquito season again; no winter visit
    ("2027-05-01", 16, 12, 4, (0, 0)),  # Sat, xun, summer hours start
]


@pytest.mark.parametrize(("day", "wholesale", "community", "morning", "rest"), TABLE)
def test_each_market_makes_the_hand_counted_obligations_on_a_given_day(
    year: tuple[str, list[Planned]],
    day: str,
    wholesale: int,
    community: int,
    morning: int,
    rest: tuple[int, int],
) -> None:
    _zone, planned = year
    got = counts(planned)
    assert (got[("wholesale", day)], got[("community", day)], got[("morning", day)]) == (
        wholesale,
        community,
        morning,
    )
    off = excused(planned)
    assert (off[("community", day)], off[("morning", day)]) == rest


def test_a_year_of_each_market_adds_up_to_the_hand_computed_totals(
    year: tuple[str, list[Planned]],
) -> None:
    # 361 trading days (365 less the 4 days of the Spring Festival), 53 Wednesdays, 12
    # 15ths, 36 xun days, 30 Mondays in April–October, 5 winter 5ths, 52 Thursdays
    # (less 2026-10-01, plus 2026-10-09); the community's rounds: 153 summer days × 7,
    # 207 winter days × 6 and 4 on 除夕
    _zone, planned = year
    by_market = Counter(p.market_id for p in planned)
    assert by_market == {
        "wholesale": 361 + 2 * 361 + 12 * 361 + 36 + 30 + 5 + 52,
        "community": 361 + 3 * 361 + 53 + (153 * 7 + 207 * 6 + 4) + 36 + 30 + 5 + 52,
        "morning": 361 + 2 * 361 + 12 + 36 + 30 + 5 + 52,
    }
    assert Counter(p.market_id for p in planned if p.excused) == {"community": 53, "morning": 12}
    assert {p.excused for p in planned if p.excused} == {"活禽休市"}


def test_no_obligation_is_made_twice_across_either_daylight_saving_change(
    year: tuple[str, list[Planned]],
) -> None:
    _zone, planned = year
    keys = [p.natural_key for p in planned]
    assert len(keys) == len(set(keys))
    assert all(p.opens_at < p.due_at <= p.missed_at for p in planned)


# ---------------------------------------------------------------- each form on its own


def load(text: str, zone: str = "Asia/Shanghai") -> Schedule:
    return load_texts({"t.yaml": text}, default_timezone=zone)


def errors_of(text: str) -> list[SourceError]:
    with pytest.raises(ScheduleError) as info:
        load(text)
    return info.value.errors


def only_error(text: str) -> SourceError:
    errors = errors_of(text)
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


MARKET = """\
markets:
  - id: m
    name: 测试农贸市场
    sub_district: 鲤中
    hours: {hours}
{extra}    areas:
      - {{ id: poultry, kind: poultry, m2: 100{rest} }}
      - {{ id: veg, kind: vegetables, m2: 300 }}
      - {{ id: toilets, kind: toilets, m2: 40 }}
"""


def market(hours: str = '{ daily: "06:00-18:00" }', extra: str = "", rest: str = "") -> str:
    return MARKET.format(hours=hours, extra=extra, rest=f", rest: {rest}" if rest else "")


def task(
    task_id: str = "t",
    *,
    kind: str = "disinfection",
    scope: str = "area",
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


def plan(schedule: Schedule, first: date, days: int = 1) -> list[Planned]:
    return expand_days(schedule, first, days)


def local(p: datetime, zone: str = "Asia/Shanghai") -> str:
    return f"{p.astimezone(ZoneInfo(zone)):%m-%d %H:%M}"


def test_an_area_resting_on_wednesdays_has_its_obligations_excused_with_the_reason() -> None:
    schedule = load(market(rest="{ days: wed, reason: 活禽休市 }") + "tasks:\n" + task())
    wednesday = plan(schedule, date(2026, 12, 2))
    assert {(p.area_id, p.excused) for p in wednesday} == {
        ("poultry", "活禽休市"),
        ("veg", None),
        ("toilets", None),
    }
    thursday = plan(schedule, date(2026, 12, 3))
    assert {p.excused for p in thursday} == {None}


def test_a_rest_days_task_falls_only_on_the_rest_days_of_areas_that_rest() -> None:
    schedule = load(
        market(rest="{ monthly_days: [15] }")
        + "tasks:\n"
        + task(recurrence="rest_days", opens="opening", due="closing")
    )
    month = plan(schedule, date(2026, 12, 1), 31)
    assert [(p.area_id, p.occurrence.day, p.excused) for p in month] == [("poultry", 15, None)]


def test_rest_days_need_an_area_task() -> None:
    error = only_error(market() + "tasks:\n" + task(scope="market", recurrence="rest_days"))
    assert "rest_days follows the areas' rest days; it needs scope: area" in error.message


def test_seasonal_hours_move_closing_in_their_season_and_special_hours_still_win() -> None:
    schedule = load(
        market(
            extra='    seasonal_hours:\n      - { season: may-sep, hours: { daily: "06:00-19:00" } }\n'
            '    special_hours: { 2026-08-08: "06:00-12:00" }\n'
        )
        + "tasks:\n"
        + task(scope="market")
    )
    opens = {p.occurrence.date(): local(p.opens_at) for p in plan(schedule, date(2026, 4, 30), 3)}
    assert opens == {
        date(2026, 4, 30): "04-30 18:00",
        date(2026, 5, 1): "05-01 19:00",
        date(2026, 5, 2): "05-02 19:00",
    }
    assert [local(p.opens_at) for p in plan(schedule, date(2026, 8, 8))] == ["08-08 12:00"]
    assert [local(p.opens_at) for p in plan(schedule, date(2026, 10, 1))] == ["10-01 18:00"]


def test_overlapping_seasons_of_hours_are_refused_naming_a_common_day() -> None:
    error = only_error(
        market(
            extra="    seasonal_hours:\n"
            '      - { season: may-sep, hours: { daily: "06:00-19:00" } }\n'
            '      - { season: { from: 09-15, until: 10-15 }, hours: { daily: "06:00-18:30" } }\n'
        )
    )
    assert "the seasons may-sep and 09-15..10-15 overlap (09-15 is in both)" in error.message


def test_toilets_are_cleaned_every_two_hours_while_open_and_not_after_an_early_close() -> None:
    schedule = load(
        market(extra='    special_hours: { 2027-02-05: "06:00-14:00" }\n')
        + "tasks:\n"
        + task(
            kind="deep_cleaning",
            recurrence="{ every_hours: 2 }",
            opens="opening",
            due="+1h",
            extra="    area_kinds: [toilets]\n",
        )
    )
    normal = [f"{p.occurrence:%H:%M}" for p in plan(schedule, date(2027, 2, 4))]
    assert normal == ["06:00", "08:00", "10:00", "12:00", "14:00", "16:00"]
    eve = plan(schedule, date(2027, 2, 5))
    assert [f"{p.occurrence:%H:%M}" for p in eve] == ["06:00", "08:00", "10:00", "12:00"]
    assert all(p.due_at - p.opens_at == timedelta(hours=1) for p in eve)


def test_rounds_while_open_need_a_due_after_each_round() -> None:
    error = only_error(
        market()
        + "tasks:\n"
        + task(recurrence="{ every_hours: 2 }", opens="opening", due="closing")
    )
    assert "with every_hours each round is due a duration after it opens" in error.message


def test_exception_and_extra_dates_leave_out_and_add_whole_days() -> None:
    schedule = load(
        market()
        + "tasks:\n"
        + task(
            scope="market", recurrence="{ days: wed, except: [2027-02-10], extra: [2027-02-12] }"
        )
    )
    days = sorted({p.occurrence.date().isoformat() for p in plan(schedule, date(2027, 2, 1), 28)})
    assert days == ["2027-02-03", "2027-02-12", "2027-02-17", "2027-02-24"]


def test_exdate_and_rdate_lines_of_a_rule_mean_the_same() -> None:
    schedule = load(
        market()
        + "tasks:\n"
        + task(
            scope="market",
            recurrence='"RRULE:FREQ=WEEKLY;BYDAY=WE\\nEXDATE:20270210\\nRDATE:20270212"',
        )
    )
    days = sorted({p.occurrence.date().isoformat() for p in plan(schedule, date(2027, 2, 1), 28)})
    assert days == ["2027-02-03", "2027-02-12", "2027-02-17", "2027-02-24"]


def test_a_season_on_a_task_keeps_it_to_those_months() -> None:
    schedule = load(
        market()
        + "tasks:\n"
        + task(
            scope="market", recurrence="{ days: mon, season: apr-oct }", opens='"08:00"', due="+1d"
        )
    )
    months = Counter(p.occurrence.month for p in plan(schedule, date(2027, 1, 1), 365))
    assert sorted(months) == [4, 5, 6, 7, 8, 9, 10]
    assert months[4] == 4 and months[5] == 5  # Mondays of April and May 2027


def test_a_season_may_run_over_the_new_year() -> None:
    schedule = load(
        market()
        + "tasks:\n"
        + task(
            scope="market",
            recurrence="{ monthly_days: [5], season: nov-mar }",
            opens='"08:00"',
            due="+3d",
        )
    )
    months = [p.occurrence.month for p in plan(schedule, date(2026, 7, 1), 365)]
    assert months == [11, 12, 1, 2, 3]


def test_a_season_that_leaves_no_day_is_refused_as_never_firing() -> None:
    error = only_error(
        market()
        + "tasks:\n"
        + task(
            scope="market",
            recurrence="{ monthly_days: [31], season: { from: 02-01, until: 02-28 } }",
        )
    )
    assert "never fires in its season 02-01..02-28" in error.message


def test_a_district_wide_closure_closes_every_market_or_those_listed() -> None:
    text = (
        "closed:\n"
        "  - { date: 2027-02-06, until: 2027-02-07, reason: 春节休市 }\n"
        "  - { date: 2027-03-01, markets: [m] }\n"
        + market()
        + market().replace("markets:\n", "").replace("id: m\n", "id: n\n", 1)
        + "tasks:\n"
        + task(scope="market")
    )
    schedule = load(text)
    assert plan(schedule, date(2027, 2, 6), 2) == []
    assert [p.market_id for p in plan(schedule, date(2027, 3, 1))] == ["n"]
    assert schedule.market_by_id["m"].closed_reason(date(2027, 2, 6)) == "春节休市"


def test_a_district_closure_naming_an_unknown_market_suggests_the_nearest() -> None:
    error = only_error("closed:\n  - { date: 2027-03-01, markets: [mm] }\n" + market())
    assert error.message == "unknown market 'mm'; did you mean 'm'?"
    assert (error.line, error.column) == (2, 35)


def test_an_operator_task_kind_reports_as_its_category_and_needs_no_contractor() -> None:
    schedule = load(
        "task_kinds:\n"
        "  - { id: bait-station-check, name: 毒饵站自查, reports_as: pest_control }\n"
        + market()
        + "tasks:\n"
        + task(
            kind="bait-station-check", scope="market", recurrence="xun", opens="opening", due="+8h"
        )
    )
    t = schedule.tasks[0]
    assert (t.kind.value, t.kind_id) == ("pest_control", "bait-station-check")
    assert {p.kind for p in plan(schedule, date(2026, 12, 1))} == {"pest_control"}


def test_an_operator_task_kind_may_require_a_contractor() -> None:
    error = only_error(
        "task_kinds:\n"
        "  - { id: rodent-visit, name: 灭鼠, reports_as: pest_control, needs_contractor: true }\n"
        + market()
        + "tasks:\n"
        + task(kind="rodent-visit", scope="market")
    )
    assert error.message == "tasks[0]: a rodent-visit task names its contractor"


def test_an_unknown_task_kind_suggests_the_operators_kinds_too() -> None:
    error = only_error(
        "task_kinds:\n"
        "  - { id: toilet-round, name: 公厕巡查, reports_as: deep_cleaning }\n"
        + market()
        + "tasks:\n"
        + task(kind="toilet-rund")
    )
    assert "or one of the task_kinds: toilet-round" in error.message
    assert error.message.endswith("did you mean 'toilet-round'?")


def test_an_operator_task_kind_may_not_take_a_built_in_name() -> None:
    error = only_error(
        "task_kinds:\n  - { id: disinfection, name: 消毒, reports_as: disinfection }\n"
    )
    assert "'disinfection' is a built-in task kind already" in error.message


def test_a_seasonal_contract_owes_the_visits_of_each_months_season() -> None:
    schedule = load(
        market()
        + "contracts:\n"
        + "  - contractor: 洁安\n    visits_per_month: 1\n"
        + "    seasons: [{ season: apr-oct, visits_per_month: 4 }]\n"
    )
    contract = schedule.contracts[0]
    assert [contract.visits_in(date(2027, m, 1)) for m in range(1, 13)] == [
        1,
        1,
        1,
        4,
        4,
        4,
        4,
        4,
        4,
        4,
        1,
        1,
    ]


def test_a_contract_season_must_be_whole_months() -> None:
    error = only_error(
        market()
        + "contracts:\n  - contractor: 洁安\n    visits_per_month: 1\n"
        + "    seasons: [{ season: { from: 04-15, until: 10-15 }, visits_per_month: 4 }]\n"
    )
    assert "its seasons are whole months, e.g. apr-oct" in error.message


def test_a_24_hour_market_closes_at_its_day_boundary_not_at_midnight() -> None:
    schedule = load(
        market(hours="{ daily: 24h }", extra='    day_boundary: "04:00"\n')
        + "tasks:\n"
        + task(scope="market", opens="closing", due="closing+2h")
    )
    [p] = plan(schedule, date(2026, 12, 1))
    assert (local(p.opens_at), local(p.due_at)) == ("12-02 04:00", "12-02 06:00")


def test_a_day_boundary_needs_hours_around_the_clock() -> None:
    error = only_error(market(extra='    day_boundary: "04:00"\n'))
    assert "it needs hours written '24h'" in error.message


def test_plan_lists_a_night_markets_clean_up_under_the_evening_it_follows() -> None:
    schedule = load(market(hours='{ daily: "18:00-02:00" }') + "tasks:\n" + task(scope="market"))
    [p] = plan(schedule, date(2026, 12, 2))
    assert (p.occurrence.date(), local(p.opens_at)) == (date(2026, 12, 2), "12-03 02:00")
    # by opening time, 12-02 holds the clean-up of the evening before instead
    lo = datetime(2026, 12, 1, 16, tzinfo=UTC)  # 12-02 00:00 in Beijing
    [q] = expand(schedule, lo, lo + timedelta(days=1))
    assert (q.occurrence.date(), local(q.opens_at)) == (date(2026, 12, 1), "12-02 02:00")


def test_a_closing_relative_window_keeps_its_hour_in_the_spring_gap() -> None:
    schedule = load(CAMDEN, zone="Europe/London")
    [saturday] = plan(schedule, date(2026, 3, 28))
    # closing 01:30 does not exist that night: it becomes 02:30 BST (01:30 UTC)
    assert saturday.opens_at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert saturday.due_at - saturday.opens_at == timedelta(hours=1)
    [autumn] = plan(schedule, date(2026, 10, 24))
    assert autumn.due_at - autumn.opens_at == timedelta(hours=1)


CAMDEN = """\
markets:
  - id: camden
    name: Camden night market
    sub_district: Camden
    timezone: Europe/London
    hours: { fri-sat: "18:00-01:30", sun-thu: closed }
tasks:
  - id: night-waste
    kind: waste_clearance
    name: Waste cleared after closing
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
"""


def test_the_camden_example_of_the_docs_is_the_one_tested() -> None:
    assert CAMDEN.split("markets:", 1)[1] in DOCS.read_text(encoding="utf-8")
