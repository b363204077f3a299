"""Schedules as operators really write them, and as nobody should: what is said and done."""

from __future__ import annotations

import os
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from dateutil import rrule as du
from hypothesis import given, settings
from hypothesis import strategies as st

from marketcare.domain import recurrence as rec
from marketcare.domain import yamlsource
from marketcare.domain.obligations import expand_days
from marketcare.domain.recurrence import parse_rule, start_near
from marketcare.domain.schedules import load_paths, load_texts
from marketcare.errors import ScheduleError, SourceError

#: nothing here touches a database
pytestmark = pytest.mark.no_database

TZ = "Asia/Shanghai"
MARKET = """markets:
  - id: lizhong
    name: 鲤中农贸市场
    sub_district: 鲤中
    hours: { daily: "05:30-18:30" }
"""

RULES = [
    "FREQ=HOURLY;INTERVAL=5;BYMINUTE=15",
    "FREQ=HOURLY;BYHOUR=6,12;BYDAY=MO,FR",
    "FREQ=DAILY;INTERVAL=10",
    "FREQ=DAILY;BYHOUR=9,15;BYMINUTE=30",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;WKST=MO",
    "FREQ=WEEKLY;INTERVAL=3;BYDAY=SU;WKST=SU",
    "FREQ=WEEKLY;BYDAY=MO,TU,WE;BYSETPOS=-1",
    "FREQ=MONTHLY;INTERVAL=2",
    "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=2",
    "FREQ=MONTHLY;INTERVAL=5;BYMONTHDAY=-1,15",
    "FREQ=YEARLY;INTERVAL=3",
    "FREQ=YEARLY;BYWEEKNO=20;BYDAY=TU",
]


@settings(max_examples=150, deadline=None)
@given(
    text=st.sampled_from(RULES),
    start=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2030, 12, 31)),
    year=st.integers(2020, 2032),
)
def test_moving_a_rules_start_near_the_year_asked_keeps_every_occurrence(
    text: str, start: datetime, year: int
) -> None:
    rule = parse_rule(text)
    start = start.replace(second=0, microsecond=0)
    lo, hi = datetime(year, 1, 1), datetime(year + 1, 1, 1)
    slow = rule.build(start, until=hi).between(lo, hi, inc=True)
    moved = start_near(rule, start, lo)
    fast = rule.build(start, until=hi, moved=moved).between(lo, hi, inc=True)
    assert fast == slow
    assert moved <= lo or moved == start


@pytest.mark.parametrize("text", [r for r in RULES if "INTERVAL=5;BYMONTHDAY" not in r])
def test_a_start_in_year_one_is_evaluated_from_a_period_or_two_before_the_year_asked(
    text: str,
) -> None:
    rule = parse_rule(text)
    lo = datetime(2027, 1, 1)
    moved = start_near(rule, datetime(1, 1, 1, 6, 0), lo)
    longest = {du.HOURLY: timedelta(hours=1), du.DAILY: timedelta(days=1)}.get(
        rule.freq, timedelta(days=7 if rule.freq == du.WEEKLY else 366)
    )
    assert lo - 2 * rule.interval * longest <= moved <= lo


def test_a_rule_with_count_keeps_its_own_start() -> None:
    rule = parse_rule("FREQ=DAILY;COUNT=10")
    assert start_near(rule, datetime(2000, 1, 1), datetime(2027, 1, 1)) == datetime(2000, 1, 1)


def test_a_pest_control_cycle_anchored_long_ago_plans_what_a_recent_anchor_plans() -> None:
    def plan(anchor: str) -> list[str]:
        task = f"""tasks:
  - id: pest
    kind: pest_control
    name: 灭四害
    scope: market
    recurrence: {{ every_days: 10, anchor: {anchor} }}
    opens: "08:00"
    due: +1d
    contractor: 洁安
"""
        schedule = load_texts({"s.yaml": MARKET + task}, default_timezone=TZ)
        return [p.occurrence.isoformat() for p in expand_days(schedule, date(2027, 1, 1), 40)]

    # 1901-01-01 and 2026-12-21 are 46,010 days apart, a multiple of 10
    assert plan("1901-01-01") == plan("2026-12-21")
    assert plan("2026-12-21")[:2] == ["2027-01-10T00:00:00", "2027-01-20T00:00:00"]


def test_an_hourly_rule_started_in_1900_plans_its_24_rounds_of_a_day() -> None:
    rec._year_cache.clear()
    schedule = load_texts(
        {
            "s.yaml": MARKET
            + """tasks:
  - id: rounds
    kind: deep_cleaning
    name: 巡查
    scope: market
    recurrence: "DTSTART:19000101T000000 FREQ=HOURLY;BYMINUTE=0"
    opens: "00:00"
    due: +1h
"""
        },
        default_timezone=TZ,
    )
    planned = expand_days(schedule, date(2027, 1, 1), 1)
    assert len(planned) == 24


def errors_of(texts: dict[str, str]) -> list[str]:
    with pytest.raises(ScheduleError) as info:
        load_texts(texts, default_timezone=TZ)
    return [str(e) for e in info.value.errors]


def task_with(**fields: str) -> str:
    task = {"opens": '"06:00"', "due": "+1h", "grace": "30m", **fields}
    lines = "".join(f"    {k}: {v}\n" for k, v in task.items())
    return f"""tasks:
  - id: wash
    kind: disinfection
    name: 冲洗
    scope: market
    recurrence: daily
{lines}"""


@pytest.mark.parametrize(
    ("field", "typed", "written"),
    [
        ("opens", '"０６：００"', "06:00"),
        ("opens", '"06：00"', "06:00"),
        ("opens", "closing＋30m", "closing+30m"),
        ("due", '"＋1h"', "+1h"),
        ("grace", "３０ｍ", "30m"),
    ],
)
def test_a_time_typed_in_full_width_is_refused_with_the_half_width_text_to_write(
    field: str, typed: str, written: str
) -> None:
    (error,) = errors_of({"s.yaml": MARKET + task_with(**{field: typed})})
    assert error.startswith("s.yaml:1")
    assert f"tasks[0].{field}: bad " in error
    assert f"write '{written}' (half-width characters, not '" in error


@pytest.mark.parametrize(
    "hours", ["０５：３０－１８：３０", "05:30～18:30", "05:30—18:30", "05:30至18:30"]
)
def test_opening_hours_typed_with_chinese_punctuation_say_what_to_write(hours: str) -> None:
    text = MARKET.replace('"05:30-18:30"', f'"{hours}"')
    (error,) = errors_of({"s.yaml": text})
    assert error.startswith("s.yaml:5:")
    assert "write '05:30-18:30' (half-width characters, not '" in error


def test_a_half_width_text_that_would_still_be_wrong_is_not_offered() -> None:
    text = MARKET.replace('"05:30-18:30"', '"05:30：18:30"')  # a colon where the dash goes
    (error,) = errors_of({"s.yaml": text})
    assert "write them as HH:MM-HH:MM" in error
    assert (
        "'：' is not a half-width character: write digits, ':', '+' and '-' in half-width" in error
    )
    assert "05:30:18:30" not in error


def test_an_escalation_step_typed_in_full_width_says_what_to_write() -> None:
    text = """people:
  - { id: lin, name: 林秀英, role: manager, email: lin@example.org }
escalation:
  - id: hygiene
    steps:
      - { at: "due＋1h", notify: [lin] }
"""
    (error,) = errors_of({"s.yaml": text})
    assert "write 'due+1h' (half-width characters, not '＋')" in error


def test_hidden_files_that_editors_and_copies_leave_beside_a_schedule_are_not_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "markets.yaml").write_text(MARKET, encoding="utf-8")
    (tmp_path / ".#markets.yaml").symlink_to("operator@host.4242:1764650000")  # Emacs's lock
    (tmp_path / "._markets.yaml").write_bytes(b"\x00\x05\x16\x07\x00\x02Mac OS X\xff\xfe")
    (tmp_path / ".markets.yaml.swp").write_bytes(b"b0VIM 9.0\xff")
    schedule = load_paths([tmp_path], default_timezone=TZ)
    assert list(schedule.sources) == [str(tmp_path / "markets.yaml")]
    assert [m.id for m in schedule.markets] == ["lizhong"]


def test_a_hidden_file_named_on_its_own_is_read_all_the_same(tmp_path: Path) -> None:
    hidden = tmp_path / ".draft.yaml"
    hidden.write_text(MARKET, encoding="utf-8")
    assert [m.id for m in load_paths([hidden], default_timezone=TZ).markets] == ["lizhong"]


def test_a_named_pipe_among_the_schedules_is_refused_without_being_opened(tmp_path: Path) -> None:
    (tmp_path / "markets.yaml").write_text(MARKET, encoding="utf-8")
    fifo = tmp_path / "tasks.yaml"
    os.mkfifo(fifo)

    def writer() -> None:  # unblocks a reader that opened it (the defect) with a valid text
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("tasks: []\n")

    feeding = threading.Thread(target=writer, daemon=True)
    feeding.start()
    try:
        (error,) = errors_of_paths([tmp_path])
    finally:
        release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        feeding.join()
        os.close(release)
    assert error == (
        f"{fifo}:1:1: a named pipe (FIFO), not a file: a schedule is a plain file (remove it, "
        "or put the file itself here)"
    )


def test_a_link_to_an_endless_device_is_refused_not_read(tmp_path: Path) -> None:
    (tmp_path / "markets.yaml").write_text(MARKET, encoding="utf-8")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (error,) = errors_of_paths([tmp_path])
    assert error.endswith(
        "zero.yaml:1:1: a device, not a file: a schedule is a plain file "
        "(remove it, or put the file itself here)"
    )


def test_a_file_that_grew_past_the_limit_after_its_size_was_taken_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "markets.yaml"
    big.write_text(MARKET + "#" * 1_100_000 + "\n", encoding="utf-8")
    real_stat = Path.stat

    def as_it_was_a_moment_ago(self: Path, **kwargs: object) -> os.stat_result:
        info = real_stat(self, **kwargs)  # type: ignore[arg-type]
        if self == big:
            return os.stat_result((info.st_mode, *info[1:6], 100, *info[7:]))
        return info

    monkeypatch.setattr(Path, "stat", as_it_was_a_moment_ago)
    (error,) = errors_of_paths([tmp_path])
    assert "file is over 1 MB; a schedule file may be at most 1 MB" in error


def errors_of_paths(paths: list[Path]) -> list[str]:
    with pytest.raises(ScheduleError) as info:
        load_paths(paths, default_timezone=TZ)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("no", "got the boolean false (YAML reads an unquoted yes, no, on, off, true or false so)"),
        ("on", "got the boolean true (YAML reads an unquoted"),
        ("12345", "got the number 12345; write the text in quotes, as it is meant"),
        ("2027-02-06", "got the date 2027-02-06; write the text in quotes"),
    ],
)
def test_an_unquoted_word_yaml_reads_as_another_type_is_explained_where_text_is_expected(
    written: str, said: str
) -> None:
    text = MARKET.replace("sub_district: 鲤中", f"sub_district: {written}")
    (error,) = errors_of({"s.yaml": text})
    assert error.startswith("s.yaml:4:19: markets[0].sub_district: expected text, ")
    assert said in error


def test_a_date_given_twice_once_quoted_is_a_duplicate_key_not_a_silent_override() -> None:
    text = (
        MARKET
        + """    special_hours:
      2027-02-05: "05:30-14:00"
      "2027-02-05": closed
"""
    )
    assert errors_of({"s.yaml": text}) == ["s.yaml:8:7: duplicate key '2027-02-05'"]


def test_one_problem_found_by_two_checks_is_listed_once() -> None:
    found = SourceError("s.yaml", 7, 19, "2027-02-30 is not a date")
    other = SourceError("s.yaml", 5, 12, "bad hours")
    assert ScheduleError([found, other, found]).errors == [other, found]


@pytest.mark.parametrize(
    ("recurrence", "said"),
    [
        ("{ every_days: 10, anchor: 0206-01-05 }", "anchor 0206-01-05 is before 1900"),
        (
            '"DTSTART:00010101T000000 FREQ=HOURLY;BYMONTH=1;BYMONTHDAY=1;BYHOUR=0;COUNT=10000"',
            "DTSTART 0001-01-01 is before 1900",
        ),
    ],
)
def test_a_cycle_started_before_1900_is_a_typo_refused_with_an_example(
    recurrence: str, said: str
) -> None:
    text = MARKET + task_with(recurrence=recurrence).replace("    recurrence: daily\n", "")
    (error,) = errors_of({"s.yaml": text})
    assert ": tasks[0].recurrence: " in error
    assert error.endswith(f"{said}; a cycle starts on a date of this era, e.g. 2026-01-05")


def test_files_that_each_keep_within_the_alias_limit_are_refused_together_past_the_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(yamlsource, "MAX_TOTAL_NODES", 1_000)  # 2,000,000 in a test's terms
    bomb = "x: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\ny: [" + ", ".join(["*a"] * 40) + "]\n"
    texts = {f"f{n}.yaml": bomb for n in range(5)}  # 450 values each, within 200,000
    (error,) = errors_of(texts)  # the third file reaches it; the rest are not read
    assert error.startswith("f2.yaml:1:")
    assert error.endswith(
        ": the schedule files together expand to more than 1000 values (aliases used as a "
        "bomb?); this file is where the limit was reached"
    )
