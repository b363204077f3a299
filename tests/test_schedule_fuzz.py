"""No input makes the schedule loader crash: it returns a Schedule or raises ScheduleError."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
pytestmark = pytest.mark.no_database

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
