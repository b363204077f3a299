"""No input makes the schedule loader crash: it returns a Schedule or raises ScheduleError."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketcare.domain.obligations import expand_days
from marketcare.domain.schedules import (
    Area,
    ChecklistItem,
    ClosedSpan,
    Market,
    Recurrence,
    Schedule,
    ScheduleFile,
    Task,
    load_texts,
)
from marketcare.domain.vocabulary import WEEKDAYS, AreaKind, TaskKind
from marketcare.domain.yamlsource import YamlSourceError, decode
from marketcare.errors import ScheduleError

#: nothing here touches a database: it runs once, on the SQLite run (see conftest.py)
pytestmark = [pytest.mark.no_database, pytest.mark.heavy(9)]

TZ = "Asia/Shanghai"
SAMPLE = Path(__file__).resolve().parents[1] / "schedules"
SAMPLE_TEXTS = {p.name: p.read_text("utf-8") for p in sorted(SAMPLE.glob("*.yaml"))}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = sorted(
    {
        key
        for model in (ScheduleFile, Market, Area, ClosedSpan, Task, Recurrence, ChecklistItem)
        for key in model.model_fields
    }
    | {"min", "max", "daily", "weekdays", "weekends", "mon-fri", "sat-sun", *WEEKDAYS}
)
WORDS = [
    *[k.value for k in AreaKind],
    *[k.value for k in TaskKind],
    *WEEKDAYS,
    "05:30-18:30",
    "18:00-02:00",
    "24:00",
    "closed",
    "closing",
    "closing+2h",
    "opening-30m",
    "30 minutes after closing",
    "+3d",
    "30m",
    "1h30m",
    "all",
    "area",
    "market",
    "daily",
    "xun",
    "monthly",
    "FREQ=DAILY",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=HOURLY;BYHOUR=9",
    "DTSTART;TZID=Asia/Shanghai:20260101T000000\nRRULE:FREQ=DAILY",
    "Asia/Shanghai",
    "Europe/London",
    "Mars/Olympus",
    "鲤中农贸市场",
    "春节休市",
    "mg/L",
]


def printable_or_not() -> st.SearchStrategy[str]:
    """Text with ASCII, control characters, CJK and the odd surrogate or non-character."""
    return st.text(
        alphabet=st.one_of(
            st.characters(codec="utf-8"),
            st.characters(min_codepoint=0, max_codepoint=0x1F),
            st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
            st.sampled_from(list(":-[]{}&*!|>'\"#%@`,? \n\t\ufeff\ufffe\x85\u2028")),
        ),
        max_size=300,
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
        st.sampled_from(WORDS),
        st.sampled_from(KEYS),
        st.text(max_size=20),
    )


def values() -> st.SearchStrategy[Any]:
    """Nested data whose keys are mostly the format's own key names."""
    keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), scalars())
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(keys, inner, max_size=6),
        ),
        max_leaves=40,
    )


def schedule_like() -> st.SearchStrategy[dict[str, Any]]:
    """A mapping shaped like a schedule file, with plausible or wild values in each field."""

    def item(fields: list[str]) -> st.SearchStrategy[dict[Any, Any]]:
        return st.dictionaries(
            st.one_of(st.sampled_from(fields), st.sampled_from(KEYS)),
            st.one_of(st.sampled_from(WORDS), values()),
            max_size=len(fields) + 1,
        )

    market = item(sorted(Market.model_fields))
    task = item(sorted(Task.model_fields))
    return st.fixed_dictionaries(
        {},
        optional={
            "markets": st.lists(market, max_size=3),
            "tasks": st.lists(task, max_size=3),
        },
    )


def must_not_crash(texts: dict[str, str]) -> None:
    try:
        result = load_texts(texts, default_timezone=TZ)
    except ScheduleError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.line >= 1 and error.column >= 1 and error.message
            assert error.file in texts or error.file == "<settings>"
    else:
        assert isinstance(result, Schedule)


@FUZZ
@given(printable_or_not())
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    must_not_crash({"fuzz.yaml": text})


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_loader(raw: bytes) -> None:
    try:
        text = decode(raw, "fuzz.yaml")
    except YamlSourceError as exc:
        assert exc.error.line >= 1 and "UTF-8" in exc.error.message
        return
    must_not_crash({"fuzz.yaml": text})


@FUZZ
@given(values())
def test_arbitrary_nested_data_never_crashes_the_loader(data: Any) -> None:
    must_not_crash({"fuzz.yaml": yaml.safe_dump(data, allow_unicode=True)})


@FUZZ
@given(schedule_like(), schedule_like())
def test_schedule_shaped_data_never_crashes_the_loader(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    must_not_crash(
        {
            "a.yaml": yaml.safe_dump(a, allow_unicode=True),
            "b.yaml": yaml.safe_dump(b, allow_unicode=True, default_flow_style=True),
        }
    )


@st.composite
def mutated_sample(draw: st.DrawFn) -> dict[str, str]:
    """The shipped sample with characters deleted, duplicated or replaced, or lines moved."""
    texts = dict(SAMPLE_TEXTS)
    name = draw(st.sampled_from(sorted(texts)))
    text = texts[name]
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not text:
            break
        i = draw(st.integers(min_value=0, max_value=len(text) - 1))
        j = min(len(text), i + draw(st.integers(min_value=1, max_value=40)))
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "swap-lines"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "replace":
            text = (
                text[:i]
                + draw(st.sampled_from([*WORDS, *KEYS, "\t", " ", ":", "&a", "*a"]))
                + text[j:]
            )
        elif op == "insert":
            text = text[:i] + draw(printable_or_not()) + text[i:]
        else:
            lines = text.splitlines(keepends=True)
            a = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            b = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "".join(lines)
    texts[name] = text
    return texts


@FUZZ
@given(mutated_sample())
def test_a_mutated_sample_never_crashes_the_loader(texts: dict[str, str]) -> None:
    must_not_crash(texts)


@FUZZ
@given(st.sampled_from(sorted(KEYS)), st.sampled_from(WORDS), st.data())
def test_replacing_one_value_of_the_sample_never_crashes_the_loader(
    key: str, word: str, data: st.DataObject
) -> None:
    texts = dict(SAMPLE_TEXTS)
    name = data.draw(st.sampled_from(sorted(texts)))
    lines = texts[name].splitlines()
    candidates = [i for i, line in enumerate(lines) if f"{key}:" in line]
    if not candidates:
        return
    i = data.draw(st.sampled_from(candidates))
    head = lines[i].split(f"{key}:", 1)[0]
    lines[i] = f"{head}{key}: {yaml.safe_dump(word, allow_unicode=True).splitlines()[0]}"
    texts[name] = "\n".join(lines) + "\n"
    must_not_crash(texts)


# ---------------------------------------------------------------- recurrence rules and hours

#: a generous bound per example: it detects a hang, it does not measure speed
GUARD_SECONDS = 30


class Hung(Exception):
    """An example ran past GUARD_SECONDS."""


@contextlib.contextmanager
def wall_clock_guard(seconds: float) -> Iterator[None]:
    """Interrupt the example with Hung if it runs longer than ``seconds`` (SIGALRM)."""

    def alarm(_signum: int, _frame: Any) -> None:
        raise Hung(f"the example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def rule_parts() -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(min_value=-400, max_value=400),
        st.sampled_from([0, -1, 13, 32, 54, 367, 10_001, 2**40]),
    )
    listed = st.lists(numbers, min_size=1, max_size=4).map(lambda v: ",".join(map(str, v)))
    day = st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU", "XX"])
    byday = st.lists(
        st.tuples(st.sampled_from(["", "1", "-1", "2", "5", "53", "+3", "0"]), day),
        min_size=1,
        max_size=3,
    ).map(lambda v: ",".join(n + d for n, d in v))
    stamp = st.one_of(
        st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(
            lambda d: f"{d:%Y%m%d}".zfill(8)
        ),
        st.sampled_from(
            ["20270230", "20261301", "20270210T090000", "20270210T090030Z", "2027-02-10", ""]
        ),
    )
    part = st.one_of(
        st.sampled_from(
            ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY", "X"]
        ).map(lambda f: f"FREQ={f}"),
        numbers.map(lambda n: f"INTERVAL={n}"),
        numbers.map(lambda n: f"COUNT={n}"),
        stamp.map(lambda s: f"UNTIL={s}"),
        day.map(lambda d: f"WKST={d}"),
        st.tuples(
            st.sampled_from(
                [
                    "BYMONTH",
                    "BYWEEKNO",
                    "BYYEARDAY",
                    "BYMONTHDAY",
                    "BYHOUR",
                    "BYMINUTE",
                    "BYSETPOS",
                    "BYSECOND",
                ]
            ),
            listed,
        ).map(lambda t: f"{t[0]}={t[1]}"),
        byday.map(lambda v: f"BYDAY={v}"),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ=;,0123456789-", max_size=12),
    )
    body = st.lists(part, min_size=1, max_size=6).map(";".join)
    line = st.one_of(
        stamp.map(lambda s: f"DTSTART:{s}"),
        st.lists(stamp, min_size=1, max_size=3).map(lambda v: "EXDATE:" + ",".join(v)),
        st.lists(stamp, min_size=1, max_size=3).map(lambda v: "RDATE:" + ",".join(v)),
        st.sampled_from(["EXRULE:FREQ=DAILY", "DTSTART;TZID=Asia/Shanghai:20260101T000000", "X:1"]),
    )
    return st.tuples(body, st.lists(line, max_size=3), st.booleans()).map(
        lambda t: "\n".join([*t[1], ("RRULE:" if t[2] else "") + t[0]])
    )


def hours_text() -> st.SearchStrategy[str]:
    clock = st.tuples(st.integers(0, 25), st.integers(0, 61)).map(
        lambda t: f"{t[0]:02d}:{t[1]:02d}"
    )
    return st.one_of(
        st.tuples(clock, clock).map(lambda t: f'"{t[0]}-{t[1]}"'),
        st.sampled_from(["24h", "closed", '"24:00-06:00"', '"06:00"', "null"]),
    )


def recurrence_text() -> st.SearchStrategy[str]:
    season = st.sampled_from(
        [
            "apr-oct",
            "nov-feb",
            "jul",
            "{from: 02-30, until: 03-01}",
            "{from: 04-01, until: 10-31}",
            "xyz",
        ]
    )
    dates = st.lists(st.sampled_from(["2026-12-02", "2027-02-30", "2026-12-05", "x"]), max_size=2)
    modifiers = st.fixed_dictionaries(
        {},
        optional={
            "season": season,
            "except": dates.map(lambda v: "[" + ", ".join(v) + "]"),
            "extra": dates.map(lambda v: "[" + ", ".join(v) + "]"),
            "every_hours": st.integers(-1, 30).map(str),
            "anchor": st.sampled_from(["2026-01-05", "2030-01-01", "1900-01-01"]),
        },
    )
    form = st.one_of(
        rule_parts().map(lambda r: f"rrule: {json.dumps(r)}"),
        st.sampled_from(
            ["days: daily", "days: xun", "days: wed", "days: rest_days", "weekly: [mon]"]
        ),
        st.integers(-2, 400).map(lambda n: f"every_days: {n}, anchor: 2026-01-01"),
        st.lists(st.integers(-33, 33), min_size=1, max_size=3).map(lambda v: f"monthly_days: {v}"),
    )
    return st.tuples(form, modifiers).map(
        lambda t: "{ " + ", ".join([t[0], *(f"{k}: {v}" for k, v in t[1].items())]) + " }"
    )


RULE_SCHEDULE = """\
closed:
  - {{ date: 2026-12-04, reason: 检修 }}
markets:
  - id: m
    name: 测试农贸市场
    sub_district: 鲤中
    timezone: {zone}
    hours: {{ mon-fri: {weekday}, sat-sun: {weekend} }}
    day_boundary: {boundary}
    seasonal_hours:
      - {{ season: may-sep, hours: {{ daily: {summer} }} }}
    areas:
      - {{ id: poultry, kind: poultry, m2: 100, rest: {rest} }}
      - {{ id: toilets, kind: toilets, m2: 30 }}
tasks:
  - id: t
    kind: disinfection
    name: 测试
    scope: area
    recurrence: {recurrence}
    opens: {opens}
    due: {due}
"""


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recurrence=recurrence_text(),
    rest=st.one_of(recurrence_text(), st.sampled_from(["wed", "{ monthly_days: [15] }"])),
    weekday=hours_text(),
    weekend=hours_text(),
    summer=hours_text(),
    boundary=st.sampled_from(["null", '"04:00"', '"25:00"']),
    zone=st.sampled_from(["Asia/Shanghai", "Europe/London", "America/New_York"]),
    opens=st.sampled_from(['"09:00"', "opening", "closing", "closing+30m", '"00:00"']),
    due=st.sampled_from(["+1h", "closing+2h", '"06:00"', "+0m"]),
)
def test_no_recurrence_rule_or_hours_can_hang_check_or_escape_as_anything_but_a_located_error(
    recurrence: str,
    rest: str,
    weekday: str,
    weekend: str,
    summer: str,
    boundary: str,
    zone: str,
    opens: str,
    due: str,
) -> None:
    text = RULE_SCHEDULE.format(
        recurrence=recurrence,
        rest=rest,
        weekday=weekday,
        weekend=weekend,
        summer=summer,
        boundary=boundary,
        zone=zone,
        opens=opens,
        due=due,
    )
    with wall_clock_guard(GUARD_SECONDS):
        try:
            schedule = load_texts({"fuzz.yaml": text}, default_timezone=TZ)
        except ScheduleError as exc:
            for error in exc.errors:
                assert error.file == "fuzz.yaml" and error.line >= 1 and error.column >= 1
                for internal in ("unpack", "out of range for", "separator", "Traceback", "object"):
                    assert internal not in error.message, error.message
            return
        # what `plan` then does with it: a year of the trading days around the DST changes
        planned = expand_days(schedule, date(2026, 3, 1), 366)
        assert len({p.natural_key for p in planned}) == len(planned)
