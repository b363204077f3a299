"""Inspections: the scoring sheet's format and rules, planned rounds, ranking, and the
ledger's unit of work (problems raised, re-inspected, recorded once)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.domain import inspections as rules
from marketcare.domain.inspections import Figures
from marketcare.domain.schedules import Schedule, load_paths, load_texts
from marketcare.errors import ScheduleError
from marketcare.ledger import inspections as ledger
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import read
from marketcare.ledger.materialise import materialise
from marketcare.ledger.models import Event, InspectionResult, ProblemRow

from .conftest import ROOT, make_market_yaml, make_schedule_text, utc

SHEET = """
inspection_templates:
  - id: sheet
    name: 督查评分表
    pass_mark: 80
    cap: 59
    photo_on_fail: true
    sections:
      - id: env
        name: 环境卫生
        items:
          - {id: floors, name: 地面干净, deduct: 10}
          - {id: bins, name: 垃圾桶加盖, deduct: 6, photo_on_fail: false}
          - {id: garbage, name: 垃圾日产日清, deduct: 10, critical: cap}
      - id: poultry
        name: 活禽
        deadline: 3d
        category: order
        items:
          - {id: separation, name: 活禽隔离, deduct: 10, area_kinds: [poultry], critical: fail}
      - id: repair
        name: 设施
        category: repair
        deadline: 7d
        items:
          - {id: damage, name: 设施完好, deduct: 5}
"""


def make_sheet_schedule(extra: str = "", *, sheet: str = SHEET) -> Schedule:
    return load_texts(
        {"test.yaml": make_schedule_text(), "inspections.yaml": sheet + extra},
        default_timezone="Asia/Shanghai",
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(ScheduleError) as info:
        load_texts(
            {"test.yaml": make_schedule_text(), "inspections.yaml": text},
            default_timezone="Asia/Shanghai",
        )
    return [str(e) for e in info.value.errors]


# ---------------------------------------------------------------- the format


def test_the_sample_sheet_loads_and_deducts_one_hundred_points() -> None:
    schedule = load_paths([ROOT / "schedules"], default_timezone="Asia/Shanghai")
    (sheet,) = schedule.inspection_templates
    assert sheet.scoring == "deduct"
    assert sum(i.points for _, i in sheet.items()) == 100
    assert sheet.sources, "the sample names the standards it follows"
    assert [p.template for p in schedule.inspection_plans] == [sheet.id]


def test_an_item_with_both_weight_and_deduct_is_refused_at_its_line() -> None:
    text = SHEET.replace(
        "{id: floors, name: 地面干净, deduct: 10}", "{id: floors, name: x, deduct: 10, weight: 5}"
    )
    (error,) = errors_of(text)
    assert error.startswith("inspections.yaml:12:13:")
    assert "either weight" in error


def test_a_misspelt_key_is_located_and_the_right_one_suggested() -> None:
    text = SHEET.replace("photo_on_fail: false", "photo_on_fial: false")
    (error,) = errors_of(text)
    assert error.startswith("inspections.yaml:13:")
    assert "unknown key 'photo_on_fial'; did you mean 'photo_on_fail'?" in error


def test_a_bad_deadline_and_an_unknown_category_are_each_reported() -> None:
    text = SHEET.replace("deadline: 3d", "deadline: soon").replace(
        "category: repair", "category: repairs"
    )
    errors = errors_of(text)
    assert len(errors) == 2
    assert any(":17:" in e and "bad duration 'soon'" in e for e in errors)
    assert any(":23:" in e and "'repair', 'pest'" in e for e in errors)


def test_item_ids_are_unique_in_a_sheet_and_modes_are_not_mixed() -> None:
    twice = SHEET.replace("{id: bins,", "{id: floors,")
    assert any("item id 'floors' is used twice" in e for e in errors_of(twice))
    mixed = SHEET.replace(
        "{id: damage, name: 设施完好, deduct: 5}", "{id: damage, name: x, weight: 5}"
    )
    assert any("mix of weight and deduct" in e for e in errors_of(mixed))


def test_a_cap_at_or_above_the_pass_mark_is_refused_since_a_critical_failure_would_pass() -> None:
    (error,) = errors_of(SHEET.replace("cap: 59", "cap: 80"))
    assert error.startswith("inspections.yaml:3:5:")
    assert (
        "cap 80 is not below pass_mark 80: a failed critical: cap item ('garbage') would" in error
    )
    assert error.endswith("write a cap below pass_mark")


def test_a_sheet_out_of_ten_is_told_its_default_marks_are_out_of_100() -> None:
    sheet = """
inspection_templates:
  - id: small
    name: 小表
    total: 10
    sections:
      - id: s
        name: s
        items:
          - {id: a, name: a, deduct: 5, critical: cap}
          - {id: b, name: b, deduct: 5}
"""
    (error,) = errors_of(sheet)
    assert "pass_mark 60 (by default) is above total 10; write a pass_mark of at most 10" in error
    assert "cap 59 (by default) is above total 10" in error
    fixed = sheet.replace("total: 10", "total: 10\n    pass_mark: 6\n    cap: 5")
    load_texts(
        {"test.yaml": make_schedule_text(), "inspections.yaml": fixed},
        default_timezone="Asia/Shanghai",
    )


def test_deductions_too_small_to_fail_anyone_are_refused() -> None:
    sheet = """
inspection_templates:
  - id: lenient
    name: 宽松表
    pass_mark: 60
    sections:
      - id: s
        name: s
        items:
          - {id: a, name: a, deduct: 10}
          - {id: b, name: b, deduct: 20}
"""
    (error,) = errors_of(sheet)
    assert "the deductions of all items add up to 30, so a market failing every item" in error
    assert "still scores 70 of 100 and passes (pass_mark 60); raise the deductions" in error
    # a critical item can still fail the inspection: nothing to say
    load_texts(
        {
            "test.yaml": make_schedule_text(),
            "inspections.yaml": sheet.replace("deduct: 20}", "deduct: 20, critical: fail}"),
        },
        default_timezone="Asia/Shanghai",
    )


def test_a_plan_names_a_known_sheet_and_known_markets() -> None:
    plan = """
inspections:
  - id: rounds
    template: shet
    markets: [lizhong, lizhnog]
    recurrence: {monthly_days: [1, 16]}
"""
    errors = errors_of(SHEET + plan)
    assert any("unknown template 'shet'; did you mean 'sheet'?" in e for e in errors)
    assert any("unknown market 'lizhnog'; did you mean 'lizhong'?" in e for e in errors)


# ---------------------------------------------------------------- scoring


def sheet_rules(kinds: list[str]) -> list[rules.ItemRule]:
    return make_sheet_schedule().inspection_templates[0].rules(kinds)


def test_deductions_are_taken_from_the_total_and_na_costs_nothing() -> None:
    items = sheet_rules(["aquatic"])
    assert [r.item_id for r in items] == ["floors", "bins", "garbage", "damage"]
    got = rules.score(items, {"floors": "fail", "bins": "pass", "garbage": "pass", "damage": "na"})
    assert (got.value, got.passed, got.failed) == (90.0, True, ("floors",))


def test_a_critical_cap_item_caps_the_score_and_a_fail_item_fails_it() -> None:
    items = sheet_rules(["poultry"])
    capped = rules.score(
        items,
        {
            "floors": "pass",
            "bins": "pass",
            "garbage": "fail",
            "separation": "pass",
            "damage": "pass",
        },
        pass_mark=80,
        cap=59,
    )
    assert (capped.value, capped.passed, capped.capped_by) == (59.0, False, "garbage")
    vetoed = rules.score(
        items,
        {
            "floors": "pass",
            "bins": "pass",
            "garbage": "pass",
            "separation": "fail",
            "damage": "pass",
        },
    )
    assert (vetoed.value, vetoed.passed, vetoed.failed_by) == (0.0, False, "separation")


def test_weights_score_the_share_of_applicable_points_passed() -> None:
    items = [
        rules.ItemRule("a", "S", "A", "weight", 30, None, False, "sanitation", timedelta(1)),
        rules.ItemRule("b", "S", "B", "weight", 10, None, False, "sanitation", timedelta(1)),
        rules.ItemRule("c", "S", "C", "weight", 60, None, False, "sanitation", timedelta(1)),
    ]
    got = rules.score(items, {"a": "pass", "b": "fail", "c": "na"})
    assert got.value == 75.0  # 30 of the 40 points that applied
    assert rules.score(items, {"a": "na", "b": "na", "c": "na"}).value is None


def test_every_item_needs_an_answer_and_a_failure_its_photo() -> None:
    items = sheet_rules(["aquatic"])
    errors = rules.check_answers(items, {"floors": "fail", "bins": "fail", "garbage": "maybe"}, [])
    assert dict(errors) == {
        "photo.floors": "地面干净: a failure needs a photo",
        "item.garbage": "垃圾日产日清: 'maybe' is not one of pass, fail, na",
        "item.damage": "设施完好: answer pass, fail or na",
    }


# ---------------------------------------------------------------- plans and ranking


def test_twice_a_month_unannounced_gives_two_week_long_windows_per_market() -> None:
    plan = """
inspections:
  - {id: rounds, template: sheet, recurrence: {monthly_days: [1, 16]}, within: 7d}
"""
    (p,) = make_sheet_schedule(plan).inspection_plans
    windows = rules.plan_windows(p, ["lizhong"], start=date(2026, 11, 1), end=date(2026, 12, 1))
    assert [(w.start, w.end) for w in windows] == [
        (date(2026, 11, 1), date(2026, 11, 8)),
        (date(2026, 11, 16), date(2026, 11, 23)),
    ]
    states = rules.window_states(
        windows, [(7, "lizhong", "sheet", date(2026, 11, 5))], today=date(2026, 11, 18)
    )
    assert [(s.state, s.inspection_id) for s in states] == [("done", 7), ("open", None)]


def test_a_planned_round_keeps_to_its_season_and_skips_its_except_dates() -> None:
    plan = """
inspections:
  - id: summer
    template: sheet
    recurrence: {days: mon, season: apr-oct, except: [2026-10-12], extra: [2026-12-02]}
    within: 2d
"""
    (p,) = make_sheet_schedule(plan).inspection_plans
    windows = rules.plan_windows(p, ["lizhong"], start=date(2026, 10, 1), end=date(2027, 1, 1))
    assert [w.start for w in windows] == [
        date(2026, 10, 5),
        date(2026, 10, 19),  # not 10-12
        date(2026, 10, 26),  # the last Monday of the season: nothing in November
        date(2026, 12, 2),
    ]


@pytest.mark.parametrize(
    ("recurrence", "said"),
    [
        ("rest_days", "rest_days follows an area's rest, and a plan is for whole markets"),
        ("{every_hours: 2}", "a window starts on a day; give days, not times of day"),
        ('"FREQ=DAILY;BYHOUR=9,15"', "a window starts on a day; give days, not times of day"),
    ],
)
def test_a_plan_whose_recurrence_has_no_days_of_its_own_is_refused(
    recurrence: str, said: str
) -> None:
    plan = f"""
inspections:
  - {{id: rounds, template: sheet, recurrence: {recurrence}, within: 7d}}
"""
    (error,) = errors_of(SHEET + plan)
    assert error.startswith("inspections.yaml:29:5: inspections[0]: recurrence: ")
    assert said in error


def test_ranking_orders_by_score_then_compliance_and_shows_the_movement() -> None:
    this_week = [
        Figures("a", scores=(90.0,), on_time=9, due=10),
        Figures("b", scores=(95.0, 85.0), on_time=10, due=10),  # 90 too, better compliance
        Figures("c", scores=(70.0,)),
        Figures("d"),  # not inspected: last
    ]
    last_week = [Figures("a", scores=(99.0,)), Figures("b", scores=(80.0,)), Figures("c")]
    standings = rules.rank(this_week, last_week)
    assert [(s.key, s.rank, s.movement) for s in standings] == [
        ("b", 1, 1),
        ("a", 2, -1),
        ("c", 3, 0),
        ("d", 4, None),
    ]
    assert rules.red_and_black(standings, size=1) == (["b"], ["c"])


def test_a_sub_district_counts_each_market_once_and_pools_the_rates() -> None:
    combined = rules.combine(
        "鲤中",
        [
            Figures("a", scores=(100.0, 80.0), on_time=1, due=2, verified=1, rectification_due=1),
            Figures("b", scores=(60.0,), on_time=3, due=3, verified=0, rectification_due=1),
        ],
    )
    assert combined.inspection_score == 75.0  # (90 + 60) / 2
    assert combined.compliance == 0.8
    assert combined.rectification == 0.5


# ---------------------------------------------------------------- in the ledger


POULTRY_MARKET = make_market_yaml(
    areas="[{id: aquatic, kind: aquatic, m2: 600}, {id: birds, kind: poultry, m2: 100}]"
)


@pytest.fixture
def sheet_ledger(engine: sa.Engine) -> tuple[sa.Engine, rules.InspectionTemplate]:
    schedule = load_texts(
        {"test.yaml": make_schedule_text(POULTRY_MARKET), "inspections.yaml": SHEET},
        default_timezone="Asia/Shanghai",
    )
    materialise(engine, schedule, now=utc(2026, 11, 23, 0), horizon=timedelta(days=1))
    return engine, schedule.inspection_templates[0]


PHOTO = {"name": "a.jpg", "sha256": "0" * 64, "path": "/x", "bytes": 3, "kind": "jpeg"}
ALL_PASS = {
    "floors": "pass",
    "bins": "pass",
    "garbage": "pass",
    "separation": "pass",
    "damage": "pass",
}


def test_each_failed_item_becomes_a_problem_with_its_deadline_and_category(
    sheet_ledger: tuple[sa.Engine, rules.InspectionTemplate], tmp_path: Path
) -> None:
    engine, sheet = sheet_ledger
    now = utc(2026, 11, 23, 2)
    got = ledger.record(
        engine,
        sheet,
        ledger.Submission(
            market_id="lizhong",
            by="督查员 陈",
            outcomes={**ALL_PASS, "floors": "fail", "separation": "fail", "damage": "fail"},
            notes={"floors": "水产区积水"},
            photos={"floors": [PHOTO], "separation": [PHOTO], "damage": [PHOTO]},
            token="t1",
        ),
        now=now,
    )
    assert (got.score, got.passed, len(got.raised)) == (0.0, False, 3)
    with read(engine) as conn:
        problems = conn.execute(sa.select(ProblemRow).order_by(ProblemRow.id)).all()
        items = {r.id: r.item_id for r in conn.execute(sa.select(InspectionResult)).all()}
    assert [(items[p.inspection_result_id], p.category, p.deadline - now) for p in problems] == [
        ("floors", "sanitation", timedelta(days=1)),
        ("separation", "order", timedelta(days=3)),
        ("damage", "repair", timedelta(days=7)),
    ]
    assert problems[0].description == "环境卫生：地面干净（水产区积水）"
    assert problems[0].evidence == {"items": [PHOTO]}
    again = ledger.record(
        engine,
        sheet,
        ledger.Submission(market_id="lizhong", by="x", outcomes={}, token="t1"),
        now=now,
    )
    assert (again.inspection_id, again.created, again.raised) == (
        got.inspection_id,
        False,
        got.raised,
    )


def test_the_next_inspection_verifies_reopens_or_keeps_the_earlier_problems(
    sheet_ledger: tuple[sa.Engine, rules.InspectionTemplate],
) -> None:
    engine, sheet = sheet_ledger
    first = ledger.record(
        engine,
        sheet,
        ledger.Submission(
            market_id="lizhong",
            by="陈",
            outcomes={**ALL_PASS, "floors": "fail", "bins": "fail", "damage": "fail"},
            photos={"floors": [PHOTO], "damage": [PHOTO]},
        ),
        now=utc(2026, 11, 23, 2),
    )
    floors, bins, damage = first.raised
    for pid in (floors, bins):
        problem_ledger.rectify(
            engine, problem_id=pid, by="王", note="已整改", now=utc(2026, 11, 23, 20)
        )
    second = ledger.record(
        engine,
        sheet,
        ledger.Submission(
            market_id="lizhong",
            by="陈",
            outcomes={**ALL_PASS, "bins": "fail", "damage": "fail"},
            photos={"damage": [PHOTO]},
        ),
        now=utc(2026, 11, 26, 2),
    )
    assert (second.verified, second.reopened, second.still_open, second.raised) == (
        (floors,),
        (bins,),
        (damage,),
        (),
    )
    with read(engine) as conn:
        states = dict(conn.execute(sa.select(ProblemRow.id, ProblemRow.state)).all())
        actions = list(conn.execute(sa.select(Event.action).order_by(Event.seq)).scalars())
    assert states == {floors: "verified", bins: "open", damage: "open"}
    assert actions.count("inspection_recorded") == 2


def test_a_refused_submission_names_the_items_and_changes_nothing(
    sheet_ledger: tuple[sa.Engine, rules.InspectionTemplate],
) -> None:
    engine, sheet = sheet_ledger
    with pytest.raises(ledger.InspectionRefused) as info:
        ledger.record(
            engine,
            sheet,
            ledger.Submission(
                market_id="lizhong", by="陈", outcomes={**ALL_PASS, "floors": "fail"}
            ),
            now=utc(2026, 11, 23, 2),
        )
    assert info.value.errors == [("photo.floors", "地面干净: a failure needs a photo")]
    assert ledger.listing(engine) == []


def test_past_deadline_counts_what_was_not_verified_by_then(
    sheet_ledger: tuple[sa.Engine, rules.InspectionTemplate],
) -> None:
    engine, sheet = sheet_ledger
    got = ledger.record(
        engine,
        sheet,
        ledger.Submission(
            market_id="lizhong",
            by="陈",
            outcomes={**ALL_PASS, "bins": "fail"},
        ),
        now=utc(2026, 11, 23, 2),
    )
    (pid,) = got.raised
    problem_ledger.rectify(engine, problem_id=pid, by="王", note="好了", now=utc(2026, 11, 25))
    problem_ledger.verify(engine, problem_id=pid, by="陈", now=utc(2026, 11, 26))
    with read(engine) as conn:
        assert ledger.past_deadline(conn, as_of=utc(2026, 11, 24, 3)) == {"lizhong": 1}
        assert ledger.past_deadline(conn, as_of=utc(2026, 11, 27)) == {}


# ---------------------------------------------------------------- the demo


def test_the_demo_seeds_a_month_of_inspections_so_a_ranking_and_trend_show_at_once(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from marketcare.domain.periods import Period
    from marketcare.ledger import demo
    from marketcare.reports import scores

    schedule = load_paths([ROOT / "schedules"], default_timezone="Asia/Shanghai")
    now = utc(2026, 11, 27, 8)
    result = demo.fill(
        engine,
        schedule,
        days=2,
        seed=3,
        now=now,
        horizon=timedelta(days=1),
        evidence_dir=tmp_path / "evidence",
    )
    assert result.inspections == 12  # six markets, two planned rounds in November so far
    assert result.problems > 0
    with read(engine) as conn:
        month = scores.ranking(conn, Period.of("month", date(2026, 11, 27)), as_of=now)
        trend = scores.trend(conn, as_of=now, zone="Asia/Shanghai", weeks=5)[""]
    assert all(s.figures.inspection_score is not None for s in month.markets)
    assert len({s.figures.inspection_score for s in month.markets}) > 1  # a real ranking
    assert sum(1 for p in trend if p.figures.inspection_score is not None) >= 2
    assert list((tmp_path / "evidence").glob("*.png"))


# ---------------------------------------------------------------- the docs


def test_every_yaml_example_in_the_inspections_docs_loads() -> None:
    import re

    text = (ROOT / "docs" / "inspections.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    schedule = load_texts(
        {"test.yaml": make_schedule_text(), **{f"doc{i}.yaml": b for i, b in enumerate(blocks)}},
        default_timezone="Asia/Shanghai",
    )
    assert [t.id for t in schedule.inspection_templates] == ["weekly-walk"]
    assert [r.kind for r in schedule.reports] == ["bulletin"]


def test_the_worked_example_of_the_docs_is_what_the_sample_sheet_scores() -> None:
    schedule = load_paths([ROOT / "schedules"], default_timezone="Asia/Shanghai")
    (sheet,) = schedule.inspection_templates
    kinds = ["aquatic", "vegetables"]
    answers = {r.item_id: "pass" for r in sheet.rules(kinds)}
    two = rules.template_score(
        sheet, {**answers, "floors": "fail", "bins": "fail"}, area_kinds=kinds
    )
    assert (two.value, two.passed) == (84.0, True)
    three = rules.template_score(
        sheet, {**answers, "floors": "fail", "bins": "fail", "garbage": "fail"}, area_kinds=kinds
    )
    assert (three.value, three.passed) == (59.0, False)


def test_the_docs_describe_every_key_of_a_sheet_and_a_plan() -> None:
    text = (ROOT / "docs" / "inspections.md").read_text(encoding="utf-8")
    for model in (
        rules.InspectionTemplate,
        rules.InspectionSection,
        rules.InspectionItem,
        rules.InspectionPlan,
    ):
        for key in model.model_fields:
            assert f"`{key}" in text, f"{model.__name__}.{key} is not documented"
