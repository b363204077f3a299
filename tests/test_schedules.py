"""The schedule loader: the shipped sample, the documented examples, and every refusal."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from marketcare.domain.schedules import Schedule, load_paths, load_texts
from marketcare.domain.vocabulary import WEEKDAYS, AreaKind, TaskKind
from marketcare.domain.yamlsource import MAX_FILE_BYTES
from marketcare.errors import ScheduleError, SourceError

#: nothing here touches a database: it runs once, on the SQLite run (see conftest.py)
pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "schedules"
DOCS = ROOT / "docs" / "schedules.md"
TZ = "Asia/Shanghai"


# ---------------------------------------------------------------- helpers


def make_market(
    market_id: str = "lizhong",
    *,
    hours: str = '{ daily: "05:30-18:30" }',
    areas: str = "[{ id: meat, kind: meat, m2: 400 }, { id: veg, kind: vegetables, m2: 600 }]",
    extra: str = "",
) -> str:
    """One market as a YAML list item (indented for a top-level ``markets:`` list)."""
    text = f"""\
  - id: {market_id}
    name: 测试农贸市场
    sub_district: 鲤中
    hours: {hours}
    areas: {areas}
"""
    return text + textwrap.indent(textwrap.dedent(extra), "    ") if extra else text


def make_task(
    task_id: str = "disinfection",
    *,
    kind: str = "disinfection",
    scope: str = "area",
    recurrence: str = "daily",
    opens: str = "closing",
    due: str = "closing+2h",
    extra: str = "",
) -> str:
    """One task as a YAML list item (indented for a top-level ``tasks:`` list)."""
    text = f"""\
  - id: {task_id}
    kind: {kind}
    name: 测试任务
    scope: {scope}
    recurrence: {recurrence}
    opens: {opens}
    due: {due}
"""
    return text + textwrap.indent(textwrap.dedent(extra), "    ") if extra else text


def make_file(markets: list[str] | None = None, tasks: list[str] | None = None) -> str:
    parts = []
    if markets is not None:
        parts.append("markets:\n" + "".join(markets))
    if tasks is not None:
        parts.append("tasks:\n" + "".join(tasks))
    return "".join(parts)


def load(text: str, name: str = "t.yaml") -> Schedule:
    return load_texts({name: text}, default_timezone=TZ)


def errors_of(texts: dict[str, str] | str) -> list[SourceError]:
    if isinstance(texts, str):
        texts = {"t.yaml": texts}
    with pytest.raises(ScheduleError) as info:
        load_texts(texts, default_timezone=TZ)
    assert info.value.errors, "a ScheduleError always carries at least one error"
    return info.value.errors


def only_error(texts: dict[str, str] | str) -> SourceError:
    errors = errors_of(texts)
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first line of ``text`` containing ``fragment``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in text")


# ---------------------------------------------------------------- the shipped sample


@pytest.fixture(scope="module")
def sample() -> Schedule:
    return load_paths([SAMPLE], default_timezone=TZ)


def test_the_sample_schedules_load(sample: Schedule) -> None:
    assert {Path(name).name for name in sample.sources} == {
        "inspections.yaml",
        "markets.yaml",
        "people.yaml",
        "reports.yaml",
        "tasks.yaml",
    }


def test_the_sample_describes_six_markets_in_distinct_sub_districts(sample: Schedule) -> None:
    assert len(sample.markets) == 6
    subs = {m.sub_district for m in sample.markets}
    assert len(subs) == 6
    assert subs <= {"鲤中", "海滨", "临江", "开元", "浮桥", "江南", "金龙", "常泰"}
    assert all(m.name.endswith("农贸市场") for m in sample.markets)


def test_the_sample_areas_sum_to_about_18000_m2(sample: Schedule) -> None:
    total = sum(a.m2 for m in sample.markets for a in m.areas)
    assert 17_500 <= total <= 18_500


def test_the_sample_uses_every_area_kind_and_every_task_kind(sample: Schedule) -> None:
    assert {a.kind for m in sample.markets for a in m.areas} == set(AreaKind)
    assert {t.kind for t in sample.tasks} == set(TaskKind)


def test_the_sample_markets_run_on_shanghai_time_with_hours_differing_by_weekday(
    sample: Schedule,
) -> None:
    for market in sample.markets:
        assert sample.zone(market).key == "Asia/Shanghai"
        assert all(h is not None for h in market.weekly_hours)
    assert any(len(set(m.weekly_hours)) > 1 for m in sample.markets)
    assert len({m.weekly_hours for m in sample.markets}) > 1


def test_the_sample_markets_close_for_the_spring_festival(sample: Schedule) -> None:
    for market in sample.markets:
        assert market.hours_on(date(2027, 2, 7)) is None
        assert "春节" in (market.closed_reason(date(2027, 2, 7)) or "")
        assert market.hours_on(date(2027, 2, 12)) is not None


def test_the_sample_disinfection_asks_for_1000_mg_per_l_where_fish_meat_and_poultry_are_sold(
    sample: Schedule,
) -> None:
    disinfection = next(t for t in sample.tasks if t.kind == TaskKind.DISINFECTION)
    chlorine = next(c for c in disinfection.checklist if c.reading is not None)
    assert chlorine.unit == "mg/L"
    for kind in ("aquatic", "meat", "poultry"):
        lo, hi = chlorine.range_for(kind) or (None, None)
        assert lo is not None and hi is not None and lo <= 1000 <= hi
    lo, hi = chlorine.range_for("vegetables") or (None, None)
    assert lo is not None and hi is not None and lo <= 500 <= hi


def test_the_sample_pest_control_names_a_contractor_and_the_four_pests(sample: Schedule) -> None:
    pest = next(t for t in sample.tasks if t.kind == TaskKind.PEST_CONTROL)
    assert pest.contractor and "有害生物防治" in pest.contractor
    assert {"rats", "flies", "mosquitoes", "cockroaches"} <= {c.id for c in pest.checklist}
    assert pest.recurrence.every_weeks == 2


def test_the_sample_cleans_up_every_xun(sample: Schedule) -> None:
    rules = {t.recurrence.rrule_text for t in sample.tasks if t.kind == TaskKind.DEEP_CLEANING}
    assert "FREQ=MONTHLY;BYMONTHDAY=1,11,21" in rules


# ---------------------------------------------------------------- the documentation


def doc_yaml_blocks() -> Iterator[tuple[int, str]]:
    text = DOCS.read_text(encoding="utf-8")
    for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        yield text[: match.start()].count("\n") + 1, match.group(1)


def test_the_docs_hold_several_yaml_examples_valid_and_invalid() -> None:
    blocks = [body for _, body in doc_yaml_blocks()]
    invalid = [b for b in blocks if b.startswith("# invalid example")]
    assert len(blocks) - len(invalid) >= 5
    assert len(invalid) >= 2


@pytest.mark.parametrize(
    ("line", "body"), list(doc_yaml_blocks()), ids=lambda v: str(v) if isinstance(v, int) else ""
)
def test_every_yaml_example_in_the_docs_loads_unless_marked_invalid(line: int, body: str) -> None:
    name = f"docs/schedules.md:{line}"
    if body.startswith("# invalid example"):
        with pytest.raises(ScheduleError):
            load_texts({name: body}, default_timezone=TZ)
    else:
        load_texts({name: body}, default_timezone=TZ)


def test_the_docs_describe_every_key_of_the_format() -> None:
    from marketcare.domain.schedules import (
        Area,
        AreaRest,
        ChecklistItem,
        ClosedSpan,
        Contract,
        ContractSeason,
        DistrictClosure,
        Market,
        Recurrence,
        ScheduleFile,
        SeasonalHours,
        Task,
        TaskKindSpec,
    )

    text = DOCS.read_text(encoding="utf-8")
    models = (
        ScheduleFile,
        Market,
        SeasonalHours,
        Area,
        AreaRest,
        ClosedSpan,
        DistrictClosure,
        TaskKindSpec,
        Task,
        Recurrence,
        ChecklistItem,
        Contract,
        ContractSeason,
    )
    for model in models:
        for name, field in model.model_fields.items():
            key = field.alias or name
            assert f"`{key}" in text, f"{model.__name__}.{key} is not documented"
    for kind in [*AreaKind, *TaskKind]:
        assert f"`{kind.value}`" in text


# ---------------------------------------------------------------- locations and suggestions


def test_an_error_reads_as_file_line_column_message() -> None:
    text = make_file(
        [make_market(hours='{ daily: "05:30-18:30" }', areas="[{ id: x, kind: fish, m2: 1 }]")]
    )
    error = only_error({"markets.yaml": text})
    assert str(error) == f"markets.yaml:{error.line}:{error.column}: {error.message}"
    assert error.file == "markets.yaml"


def test_an_unknown_key_is_rejected_with_the_nearest_valid_key() -> None:
    text = make_file([make_market(extra="timezon: Asia/Shanghai\n")])
    error = only_error(text)
    assert error.message == "unknown key 'timezon'; did you mean 'timezone'?"
    assert (error.line, error.column) == (7, 5)


def test_an_unknown_key_deep_inside_a_task_points_at_the_key() -> None:
    text = make_file(
        [make_market()],
        [make_task(extra="checklist:\n  - { id: c, reading: 氯, rang: [400, 700] }\n")],
    )
    error = only_error(text)
    assert error.message == "unknown key 'rang'; did you mean 'range'?"
    assert error.line == line_of(text, "rang:")
    assert error.column == text.splitlines()[error.line - 1].index("rang:") + 1


def test_an_unknown_key_far_from_any_valid_key_lists_the_valid_keys() -> None:
    error = only_error("markets: []\nwhatever: 1\n")
    assert error.message == (
        "unknown key 'whatever'; valid keys: closed, contracts, escalation, "
        "inspection_templates, inspections, markets, people, reports, task_kinds, tasks"
    )
    assert (error.line, error.column) == (2, 1)


def test_an_unknown_area_kind_suggests_the_nearest_kind() -> None:
    text = make_file([make_market(areas="[{ id: fish, kind: aquatc, m2: 300 }]")])
    error = only_error(text)
    assert "'aquatc' is not one of" in error.message
    assert error.message.endswith("did you mean 'aquatic'?")
    assert (error.line, error.column) == (6, 31)


def test_an_unknown_task_kind_suggests_the_nearest_kind() -> None:
    error = only_error(make_file([make_market()], [make_task(kind="disinfecton")]))
    assert error.message.startswith("tasks[0].kind: 'disinfecton' is not one of")
    assert error.message.endswith("did you mean 'disinfection'?")
    assert (error.line, error.column) == (9, 11)


def test_an_unknown_market_reference_suggests_the_nearest_market_id() -> None:
    text = make_file(
        [make_market("lizhong"), make_market("haibin")],
        [make_task(extra="markets: [haibin, lizong]\n")],
    )
    error = only_error(text)
    assert error.message == "unknown market 'lizong'; did you mean 'lizhong'?"
    assert error.line == line_of(text, "markets: [haibin")
    assert error.column == text.splitlines()[error.line - 1].index("lizong") + 1


def test_an_unknown_market_reference_without_a_near_match_lists_the_known_ids() -> None:
    text = make_file([make_market("lizhong")], [make_task(extra="markets: [zzz]\n")])
    assert only_error(text).message == "unknown market 'zzz' (known: lizhong)"


def test_a_market_reference_may_name_a_market_of_another_file() -> None:
    schedule = load_texts(
        {
            "markets.yaml": make_file([make_market("lizhong")]),
            "tasks.yaml": make_file(tasks=[make_task(extra="markets: [lizhong]\n")]),
        },
        default_timezone=TZ,
    )
    assert [m.id for m in schedule.markets_of(schedule.tasks[0])] == ["lizhong"]


def test_a_duplicate_market_id_across_files_names_the_file_of_the_first() -> None:
    error = only_error(
        {
            "a.yaml": make_file([make_market("lizhong")]),
            "b.yaml": make_file([make_market("lizhong")]),
        }
    )
    assert error.file == "b.yaml"
    assert error.message == "market id 'lizhong' is already defined in a.yaml"
    assert (error.line, error.column) == (2, 9)


def test_a_duplicate_task_id_across_files_is_refused() -> None:
    error = only_error(
        {
            "a.yaml": make_file([make_market()], [make_task("clean")]),
            "b.yaml": make_file(tasks=[make_task("clean")]),
        }
    )
    assert (error.file, error.line, error.column) == ("b.yaml", 2, 9)
    assert error.message == "task id 'clean' is already defined in a.yaml"


def test_a_duplicate_area_id_within_a_market_is_refused() -> None:
    text = make_file(
        [make_market(areas="[{ id: a, kind: meat, m2: 1 }, { id: a, kind: meat, m2: 2 }]")]
    )
    assert "area id 'a' is used twice in market 'lizhong'" in only_error(text).message


def test_every_error_of_a_file_is_reported_at_once() -> None:
    text = make_file(
        [make_market(hours='{ mon-sat: "05:30-18:30" }', extra="timezon: Asia/Shanghai\n")],
        [
            make_task("a", kind="disinfecton"),
            make_task("b", due="closng+2h"),
            make_task("c", extra="grace: 1 fortnight\nmarkets: [nowhere]\n"),
        ],
    )
    errors = errors_of(text)
    messages = "\n".join(e.message for e in errors)
    assert len(errors) == 6, messages
    for expected in ("timezon", "sun", "disinfecton", "closng+2h", "fortnight", "nowhere"):
        assert expected in messages
    assert errors == sorted(errors)


def test_errors_of_all_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(make_file([make_market(extra="colsed: []\n")]), "utf-8")
    (tmp_path / "b.yml").write_text("tasks: [\n", "utf-8")
    (tmp_path / "c.yaml").write_bytes(b"markets: []\n# \xff\n")
    (tmp_path / "notes.txt").write_text("not a schedule", "utf-8")
    with pytest.raises(ScheduleError) as info:
        load_paths([tmp_path], default_timezone=TZ)
    assert [Path(e.file).name for e in info.value.errors] == ["a.yaml", "b.yml", "c.yaml"]


# ---------------------------------------------------------------- hostile and broken input


def test_broken_yaml_is_reported_with_its_position() -> None:
    error = only_error("markets:\n  - id: lizhong\n    name: [unclosed\n")
    assert error.message.startswith("invalid YAML:")
    assert error.line >= 3


def test_a_tab_in_the_indentation_is_reported_at_the_tab() -> None:
    error = only_error("markets:\n  - id: lizhong\n\tname: x\n")
    assert error.message == "invalid YAML: a tab character here; YAML indentation must use spaces"
    assert (error.line, error.column) == (3, 1)


def test_a_50_mb_file_is_refused_by_its_size_without_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        chunk = b"# " + b"x" * 1021 + b"\n"
        for _ in range(50 * 1024):
            f.write(chunk)
    assert big.stat().st_size > 50_000_000

    def refuse(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    started = time.perf_counter()
    with pytest.raises(ScheduleError) as info:
        load_paths([big], default_timezone=TZ)
    assert time.perf_counter() - started < 1
    (error,) = info.value.errors
    assert (error.line, error.column) == (1, 1)
    assert "file is 52.4 MB; a schedule file may be at most 1 MB" in error.message


def test_a_text_over_1_mb_is_refused_by_load_texts_too() -> None:
    text = "markets: []\n" + "#" * MAX_FILE_BYTES + "\n"
    assert "larger than 1 MB" in only_error(text).message


def test_a_file_that_is_not_utf8_is_reported_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "gbk.yaml"
    path.write_bytes("markets:\n  - id: lizhong\n    name: 鲤中农贸市场\n".encode("gbk"))
    with pytest.raises(ScheduleError) as info:
        load_paths([path], default_timezone=TZ)
    (error,) = info.value.errors
    assert (error.file, error.line, error.column) == (str(path), 3, 11)
    assert error.message.startswith("file is not valid UTF-8 (byte 0x")
    assert error.message.endswith("save it as UTF-8")


def test_a_utf8_file_with_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + make_file([make_market()]).encode("utf-8"))
    assert load_paths([path], default_timezone=TZ).markets[0].name == "测试农贸市场"


def test_a_nul_byte_is_refused_at_its_position() -> None:
    error = only_error("markets: []\ntasks: [] \x00\n")
    assert (error.line, error.column, error.message) == (2, 11, "file contains a NUL byte")


def test_an_unknown_timezone_suggests_the_nearest_zone() -> None:
    text = make_file([make_market(extra="timezone: Asia/Shangai\n")])
    error = only_error(text)
    assert error.message.startswith("markets[0].timezone: unknown time zone 'Asia/Shangai'")
    assert "did you mean 'Asia/Shanghai'" in error.message
    assert (error.line, error.column) == (7, 15)


def test_an_unknown_default_timezone_is_refused() -> None:
    with pytest.raises(ScheduleError) as info:
        load_texts({"t.yaml": make_file([make_market()])}, default_timezone="Mars/Olympus")
    assert "unknown time zone 'Mars/Olympus'" in str(info.value)


def test_a_market_timezone_overrides_the_default() -> None:
    schedule = load(make_file([make_market(extra="timezone: Europe/London\n"), make_market("b")]))
    assert [schedule.zone(m).key for m in schedule.markets] == ["Europe/London", TZ]


def test_a_recurrence_that_never_fires_is_refused() -> None:
    text = make_file(
        [make_market()], [make_task(recurrence='{ rrule: "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30" }')]
    )
    error = only_error(text)
    assert error.message == (
        "tasks[0].recurrence: recurrence 'FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30' "
        "never fires in the ten years from 2020-01-06"
    )
    assert (error.line, error.column) == (12, 17)


def test_a_malformed_rrule_is_refused_with_the_frequencies_it_may_have() -> None:
    text = make_file([make_market()], [make_task(recurrence='"FREQ=FORTNIGHTLY"')])
    assert only_error(text).message == (
        "tasks[0].recurrence.rrule: FREQ=FORTNIGHTLY: use YEARLY, MONTHLY, WEEKLY, DAILY or HOURLY"
    )


def test_an_rrule_firing_every_minute_is_refused() -> None:
    text = make_file([make_market()], [make_task(recurrence='{ rrule: "FREQ=MINUTELY" }')])
    assert "more often than hourly" in only_error(text).message


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "FREQ=DAILY;INTERVAL=0",
            "INTERVAL=0: the interval is how many days pass between occurrences, a whole "
            "number from 1 to 366 (INTERVAL=2 is every other one)",
        ),
        ("FREQ=WEEKLY;INTERVAL=0", "INTERVAL=0: the interval is how many weeks pass"),
        ("FREQ=MONTHLY;INTERVAL=0", "INTERVAL=0: the interval is how many months pass"),
        ("FREQ=DAILY;INTERVAL=-1", "INTERVAL=-1: the interval is how many days pass"),
        (
            "FREQ=DAILY;BYHOUR=9;BYSECOND=0,30",
            "BYSECOND is not supported: obligations are scheduled to the minute; remove it",
        ),
        ("FREQ=YEARLY;BYMONTH=13", "BYMONTH=13: months are 1 to 12"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY=32: days of the month are 1 to 31"),
        ("FREQ=DAILY;COUNT=1000000", "COUNT=1000000: a rule may count 1 to 10000 occurrences"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20270101", "give COUNT or UNTIL, not both"),
        ("FREQ=WEEKLY;BYDAYS=MO", "unknown rule part 'BYDAYS'; did you mean BYDAY?"),
        ("FREQ=WEEKLY;BYDAY=MO;BYDAY=TU", "BYDAY is given twice"),
        ("FREQ=WEEKLY;BYDAY=1MO", "a position before the weekday"),
        ("FREQ=HOURLY;BYMINUTE=0,30", "the rule fires 48 times a day; at most 24"),
        ("FREQ=MINUTELY", "FREQ=MINUTELY fires more often than hourly"),
        ("FREQ=DAILY;UNTIL=20270101T000000Z", "times in a schedule are local to each market"),
        ("DTSTART;TZID=Asia/Shanghai:20260101T000000\nRRULE:FREQ=DAILY", "drop the TZID"),
        ("RRULE:FREQ=WEEKLY;BYDAY=WE\nEXDATE:2027-02-10", "write a date as YYYYMMDD"),
        ("RRULE:FREQ=WEEKLY;BYDAY=WE\nEXDATE:20270230", "February 2027 has 28 days, not 30"),
        ("RRULE:FREQ=DAILY\nRRULE:FREQ=WEEKLY", "give one RRULE"),
        ("FREQ=DAILY\nEXRULE:FREQ=WEEKLY", "EXRULE is not supported"),
    ],
)
def test_a_rule_that_cannot_be_right_is_refused_in_the_operators_terms(
    rule: str, message: str
) -> None:
    text = make_file(
        [make_market()],
        [make_task(recurrence=f'{{ rrule: "{rule}" }}', opens='"09:00"', due="+1h")],
    )
    error = only_error(text)
    assert message in error.message
    assert error.message.startswith("tasks[0].recurrence")
    for internal in ("unpack", "out of range for month", "separator", "Traceback"):
        assert internal not in error.message


def test_a_rule_with_an_exdate_line_leaves_that_day_out() -> None:
    text = make_file(
        [make_market()],
        [make_task(recurrence='"RRULE:FREQ=WEEKLY;BYDAY=WE\nEXDATE:20270210"')],
    )
    recurrence = load(text).tasks[0].recurrence
    days = [o.day for o in recurrence.occurrences(datetime(2027, 2, 1), datetime(2027, 2, 28))]
    assert days == [3, 17, 24]


def test_the_never_fires_check_counts_from_the_dtstart_written_in_the_rule() -> None:
    rule = "DTSTART:20300101T000000\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"
    text = make_file([make_market()], [make_task(recurrence=f'"{rule}"')])
    assert only_error(text).message.endswith("never fires in the ten years from 2030-01-01")
    late = "DTSTART:20300101T000000\nRRULE:FREQ=YEARLY;BYMONTH=3;BYMONTHDAY=1;UNTIL=20301231"
    recurrence = (
        load(make_file([make_market()], [make_task(recurrence=f'"{late}"')])).tasks[0].recurrence
    )
    assert recurrence.occurrences(datetime(2029, 1, 1), datetime(2031, 12, 31)) == [
        datetime(2030, 3, 1)
    ]


def test_a_rule_that_gives_seconds_cannot_make_two_obligations_of_one_minute() -> None:
    text = make_file(
        [make_market()],
        [make_task(recurrence='"DTSTART:20260101T090030\nRRULE:FREQ=DAILY"', opens='"09:00"')],
    )
    assert "obligations are scheduled to the minute" in only_error(text).message


def test_an_hourly_rule_with_a_relative_opening_is_refused() -> None:
    text = make_file([make_market()], [make_task(recurrence='"FREQ=HOURLY;INTERVAL=2"')])
    assert "opens at those times: write a clock time for opens" in only_error(text).message


@pytest.mark.parametrize(
    ("m2", "message"),
    [
        (".inf", "greater than 0 and at most 1,000,000; got inf (infinite)"),
        ("1e309", "greater than 0 and at most 1,000,000; got 1e309 (infinite)"),
        (".nan", "nan is not a number; write the floor area in square metres"),
        ("-5", "greater than 0 and at most 1,000,000; got -5"),
        ("big", "write the floor area in square metres as a number, e.g. 520; got 'big'"),
    ],
)
def test_a_floor_area_must_be_a_finite_positive_number(m2: str, message: str) -> None:
    error = only_error(make_file([make_market(areas=f"[{{ id: a, kind: meat, m2: {m2} }}]")]))
    assert message in error.message


def test_one_bad_closed_date_does_not_hide_the_other_errors_of_the_file() -> None:
    text = make_file(
        [make_market(extra="closed: [2027-02-30, { date: 2027-13-01 }]\ntimezon: Asia/Shanghai\n")],
        [make_task(recurrence='"FREQ=DAILY;INTERVAL=0"')],
    )
    messages = [e.message for e in errors_of(text)]
    assert messages == [
        "markets[0].closed[0]: 2027-02-30 is not a date: February 2027 has 28 days, not 30",
        "markets[0].closed[1]: 2027-13-01 is not a date: month 13 does not exist "
        "(months are 01 to 12)",
        "unknown key 'timezon'; did you mean 'timezone'?",
        "tasks[0].recurrence.rrule: INTERVAL=0: the interval is how many days pass between "
        "occurrences, a whole number from 1 to 366 (INTERVAL=2 is every other one)",
    ]


def test_a_duplicate_key_is_refused_at_its_second_occurrence() -> None:
    text = make_file([make_market(extra='hours: { daily: "06:00-18:00" }\n')])
    error = only_error(text)
    assert error.message == "duplicate key 'hours'"
    assert (error.line, error.column) == (7, 5)


def test_a_billion_laughs_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    started = time.perf_counter()
    error = only_error("\n".join(lines) + "\n")
    assert time.perf_counter() - started < 5
    assert "aliases used as a bomb?" in error.message


def test_a_recursive_alias_is_refused() -> None:
    assert only_error("markets: &m [*m]\n").message == "a recursive alias is not allowed"


def test_anchors_and_merge_keys_are_allowed() -> None:
    text = make_file(
        [make_market()],
        [
            make_task("a", extra="checklist: &list\n  - { id: washed, tick: 已冲洗 }\n"),
            make_task("b", extra="checklist: *list\n"),
        ],
    )
    schedule = load(text)
    assert schedule.tasks[0].checklist == schedule.tasks[1].checklist


def test_a_python_tag_is_refused_and_never_constructed() -> None:
    error = only_error('markets: !!python/object/apply:os.system ["echo hacked"]\n')
    assert error.line == 1


def test_an_empty_file_defines_nothing() -> None:
    for text in ("", "\n", "# only a comment\n", "---\n", "~\n"):
        schedule = load(text)
        assert schedule.markets == () and schedule.tasks == ()


def test_a_file_that_is_a_list_is_refused() -> None:
    error = only_error("- id: lizhong\n- id: haibin\n")
    assert error.message == "a schedule file is a mapping with 'markets' and/or 'tasks'"
    assert (error.line, error.column) == (1, 1)


def test_a_section_that_is_not_a_list_is_refused() -> None:
    error = only_error("markets:\n  id: lizhong\n")
    assert error.message == "markets: Input should be a valid list"
    assert (error.line, error.column) == (2, 3)


def test_a_list_as_a_mapping_key_is_refused() -> None:
    assert only_error("? [a, b]\n: 1\n").message == "a mapping key must be a plain value"


# ---------------------------------------------------------------- markets


def test_hours_missing_a_weekday_name_the_missing_day() -> None:
    text = make_file([make_market(hours='{ mon-fri: "05:30-18:30", sat: "06:00-18:00" }')])
    error = only_error(text)
    assert error.message == (
        "markets[0].hours: no hours for sun; write e.g. 'sun: closed' "
        "if the market does not open that day"
    )
    assert (error.line, error.column) == (5, 12)


def test_a_weekday_given_twice_in_hours_is_refused() -> None:
    text = make_file(
        [make_market(hours='{ weekends: "05:30-18:30", sat: closed, weekdays: closed }')]
    )
    assert "sat is given twice (in 'weekends' and 'sat')" in only_error(text).message


def test_an_unknown_day_in_hours_is_refused() -> None:
    text = make_file([make_market(hours='{ daily: "05:30-18:30", holiday: closed }')])
    assert "bad day 'holiday' in hours" in only_error(text).message


@pytest.mark.parametrize(
    ("key", "days"),
    [
        ("mon-fri", [0, 1, 2, 3, 4]),
        ("fri-mon", [0, 4, 5, 6]),
        ("weekdays", [0, 1, 2, 3, 4]),
        ("weekends", [5, 6]),
        ("SAT-SUN", [5, 6]),
        ("wed", [2]),
    ],
)
def test_hours_keys_cover_the_days_they_name(key: str, days: list[int]) -> None:
    rest = [WEEKDAYS[d] for d in range(7) if d not in days]
    mapping = ", ".join([f'{key}: "05:30-18:30"', *(f"{d}: closed" for d in rest)])
    market = load(make_file([make_market(hours=f"{{ {mapping} }}")])).markets[0]
    assert [d for d in range(7) if market.weekly_hours[d] is not None] == days


def test_a_closing_before_the_opening_means_after_midnight() -> None:
    market = load(make_file([make_market(hours='{ daily: "18:00-02:00" }')])).markets[0]
    hours = market.hours_on(date(2026, 5, 1))
    assert hours is not None and (hours.opens, hours.closes) == (18 * 60, 26 * 60)


def test_special_hours_and_closed_spans_override_the_weekly_hours() -> None:
    extra = """\
    special_hours:
      2026-12-31: "05:30-20:00"
    closed:
      - { date: 2027-02-06, until: 2027-02-09, reason: 春节休市 }
      - 2026-10-01
    """
    market = load(make_file([make_market(extra=extra)])).markets[0]
    assert str(market.hours_on(date(2026, 12, 31))) == "05:30-20:00"
    assert str(market.hours_on(date(2026, 12, 30))) == "05:30-18:30"
    assert market.hours_on(date(2027, 2, 9)) is None
    assert market.closed_reason(date(2027, 2, 6)) == "春节休市"
    assert market.closed_reason(date(2026, 10, 1)) == "休市"
    assert market.hours_on(date(2027, 2, 10)) is not None


def test_a_closed_span_ending_before_it_starts_is_refused() -> None:
    text = make_file([make_market(extra="closed: [{ date: 2027-02-09, until: 2027-02-06 }]\n")])
    assert "until (2027-02-06) is before date (2027-02-09)" in only_error(text).message


def test_an_area_needs_a_positive_floor_area() -> None:
    error = only_error(make_file([make_market(areas="[{ id: a, kind: meat, m2: 0 }]")]))
    assert error.message == (
        "markets[0].areas[0].m2: the floor area in square metres must be greater than 0 and at "
        "most 1,000,000; got 0"
    )


def test_an_id_with_upper_case_letters_is_refused_with_the_rule() -> None:
    error = only_error(make_file([make_market("LiZhong")]))
    assert error.message.startswith("markets[0].id: 'LiZhong' is not a valid id")
    assert (error.line, error.column) == (2, 9)


# ---------------------------------------------------------------- tasks


@pytest.mark.parametrize(
    ("recurrence", "rrule"),
    [
        ("daily", "FREQ=DAILY"),
        ("weekdays", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"),
        ("weekends", "FREQ=WEEKLY;BYDAY=SA,SU"),
        ("sun", "FREQ=WEEKLY;BYDAY=SU"),
        ("Wed", "FREQ=WEEKLY;BYDAY=WE"),
        ("xun", "FREQ=MONTHLY;BYMONTHDAY=1,11,21"),
        ("every_xun", "FREQ=MONTHLY;BYMONTHDAY=1,11,21"),
        ("monthly", "FREQ=MONTHLY;BYMONTHDAY=1"),
        ("{ every_days: 1 }", "FREQ=DAILY"),
        ("{ every_days: 3, anchor: 2026-01-01 }", "FREQ=DAILY;INTERVAL=3"),
        ("{ weekly: [mon, thu] }", "FREQ=WEEKLY;BYDAY=MO,TH"),
        ("{ every_weeks: 2, anchor: 2026-01-06 }", "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU;WKST=MO"),
        (
            "{ every_weeks: 3, anchor: 2026-01-05, weekly: [mon, fri] }",
            "FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,FR;WKST=MO",
        ),
        ("{ monthly_days: [15, -1] }", "FREQ=MONTHLY;BYMONTHDAY=15,-1"),
        ('{ rrule: "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=1" }', "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=1"),
        ('"FREQ=WEEKLY;BYDAY=SA"', "FREQ=WEEKLY;BYDAY=SA"),
        ('"RRULE:FREQ=WEEKLY;BYDAY=SA"', "RRULE:FREQ=WEEKLY;BYDAY=SA"),
    ],
)
def test_a_recurrence_compiles_to_the_expected_rrule(recurrence: str, rrule: str) -> None:
    task = load(make_file([make_market()], [make_task(recurrence=recurrence)])).tasks[0]
    assert task.recurrence.rrule_text == rrule


def test_the_xun_recurrence_falls_on_the_1st_11th_and_21st() -> None:
    task = load(make_file([make_market()], [make_task(recurrence="xun")])).tasks[0]
    days = [d.day for d in task.recurrence.occurrences(datetime(2026, 3, 1), datetime(2026, 4, 30))]
    assert days == [1, 11, 21, 1, 11, 21]


@pytest.mark.parametrize(
    ("recurrence", "message"),
    [
        ("fortnightly", "unknown recurrence 'fortnightly'"),
        ("{ every_weeks: 2 }", "every_weeks needs an anchor date"),
        ("{ every_days: 2 }", "every_days greater than 1 needs an anchor date"),
        ("{ weekly: [mon], monthly_days: [1] }", "give exactly one of"),
        ("{ weekly: [] }", "weekly is empty"),
        ("{ monthly_days: [32] }", "day of month 32 is outside 1..31"),
        ("{ every_weeks: 2, anchor: 2026-01-06, anchr: 2026-01-06 }", "did you mean 'anchor'?"),
    ],
)
def test_a_wrong_recurrence_is_refused_with_the_reason(recurrence: str, message: str) -> None:
    text = make_file([make_market()], [make_task(recurrence=recurrence)])
    assert message in only_error(text).message


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ('"21:30"', "21:30"),
        ("closing", "closing"),
        ("close", "closing"),
        ("closing+30m", "closing+30m"),
        ("closing + 1h30m", "closing+1h30m"),
        ("30 minutes after closing", "closing+30m"),
        ("1h before opening", "opening-1h"),
        ("Opening - 15m", "opening-15m"),
    ],
)
def test_time_specs_are_read_as_documented(spec: str, text: str) -> None:
    task = load(make_file([make_market()], [make_task(opens=spec, due="+1h")])).tasks[0]
    assert str(task.opens) == text


def test_due_is_a_time_or_a_duration_after_opening() -> None:
    schedule = load(
        make_file(
            [make_market()],
            [make_task("a", due="closing+2h"), make_task("b", opens='"08:00"', due="+3d")],
        )
    )
    a, b = schedule.tasks
    assert a.due.at is not None and str(a.due) == "closing+2h"
    assert b.due.after == timedelta(days=3)


def test_an_unquoted_clock_time_is_refused_with_a_hint_to_quote_it() -> None:
    error = only_error(make_file([make_market()], [make_task(opens="18:30", due="+1h")]))
    assert (
        error.message
        == "tasks[0].opens: got the number 1110; write a clock time in quotes, e.g. '18:30'"
    )
    assert (error.line, error.column) == (13, 12)


def test_a_bad_grace_is_refused_with_the_accepted_forms() -> None:
    text = make_file([make_market()], [make_task(extra="grace: 1 fortnight\n")])
    error = only_error(text)
    assert (
        error.message
        == "tasks[0].grace: bad duration '1 fortnight': write it like 30m, 1h30m, 2h or 7d"
    )
    assert (error.line, error.column) == (15, 12)


def test_grace_accepts_the_documented_durations() -> None:
    for grace, minutes in (
        ("30m", 30),
        ("1h30m", 90),
        ("90 minutes", 90),
        ("1 day", 1440),
        ("0", 0),
    ):
        task = load(make_file([make_market()], [make_task(extra=f"grace: {grace}\n")])).tasks[0]
        assert task.grace == timedelta(minutes=minutes)


def test_area_kinds_needs_scope_area() -> None:
    text = make_file([make_market()], [make_task(scope="market", extra="area_kinds: [meat]\n")])
    assert "area_kinds filters areas; it needs scope: area" in only_error(text).message


def test_pest_control_names_its_contractor() -> None:
    text = make_file([make_market()], [make_task(kind="pest_control", scope="market")])
    assert "a pest_control task names its contractor" in only_error(text).message


def test_a_reading_range_with_min_above_max_is_refused() -> None:
    text = make_file(
        [make_market()],
        [make_task(extra="checklist:\n  - { id: c, reading: 有效氯, range: [700, 400] }\n")],
    )
    error = only_error(text)
    assert (
        error.message
        == "tasks[0].checklist[0].range: range [700, 400] has its minimum above its maximum"
    )
    assert error.line == line_of(text, "range: [700")
    assert error.column == text.splitlines()[error.line - 1].index("[700") + 1


def test_a_reading_range_may_be_open_ended_or_a_mapping() -> None:
    checklist = """\
    checklist:
      - { id: a, reading: x, range: [250, null] }
      - { id: b, reading: y, range: { max: 500 } }
      - { id: c, reading: z, range: [400, 700], by_area_kind: { aquatic: [900, 1200] } }
    """
    task = load(make_file([make_market()], [make_task(extra=checklist)])).tasks[0]
    a, b, c = task.checklist
    assert a.range == (250, None) and b.range == (None, 500)
    assert c.range_for("aquatic") == (900, 1200) and c.range_for("meat") == (400, 700)


def test_a_tick_cannot_carry_a_unit() -> None:
    text = make_file(
        [make_market()], [make_task(extra="checklist: [{ id: a, tick: x, unit: mg }]\n")]
    )
    assert "belong to readings" in only_error(text).message


# ---------------------------------------------------------------- the loaded schedule


def test_the_digest_identifies_the_exact_texts() -> None:
    text = make_file([make_market()])
    same = load(text).digest == load(text).digest
    assert same and load(text).digest != load(text + "# a comment\n").digest


def test_load_paths_reads_only_yaml_files_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "markets.yaml").write_text(make_file([make_market()]), "utf-8")
    (tmp_path / "tasks.yml").write_text(make_file(tasks=[make_task()]), "utf-8")
    (tmp_path / "README.md").write_text("# notes", "utf-8")
    schedule = load_paths([tmp_path], default_timezone=TZ)
    assert len(schedule.markets) == 1 and len(schedule.tasks) == 1
    assert sorted(Path(n).name for n in schedule.sources) == ["markets.yaml", "tasks.yml"]
