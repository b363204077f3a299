"""Schedules as operators write them: YAML files validated into a typed, immutable model.

Every problem is reported as ``file:line:column: message``; all problems of all files
are collected before anything is raised, and nothing here touches the database.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from marketcare.domain import recurrence as rec
from marketcare.domain.inputs import is_email
from marketcare.domain.recurrence import ParsedRule, RuleError, Season, parse_rule, parse_season
from marketcare.domain.timespec import (
    ROUND_THE_CLOCK,
    DueSpec,
    Hours,
    TimeSpec,
    parse_clock,
    parse_due,
    parse_duration,
    parse_hours,
    parse_timespec,
    width_hint,
)
from marketcare.domain.vocabulary import WEEKDAYS, AreaKind, TaskKind
from marketcare.domain.yamlsource import Allowance, Located, YamlSourceError, parse, read_text
from marketcare.errors import ScheduleError, SourceError

if TYPE_CHECKING:
    from marketcare.domain.inspections import InspectionPlan, InspectionTemplate

DEFAULT_ANCHOR = date(2020, 1, 6)  # a Monday; only rules that depend on their start use it
_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Id = Annotated[str, Field(pattern=_ID)]
_RRULE_DAYS = rec.RRULE_DAYS
#: the largest floor area an area may declare (a whole wholesale market is ~100,000 m²)
MAX_M2 = 1_000_000.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _duration(value: object) -> timedelta:
    return parse_duration(value)


_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*$")


def parse_date(value: object) -> date:
    """A calendar date as written in a schedule (``2027-02-10``), refused in plain words."""
    if isinstance(value, datetime):
        raise ValueError(
            f"{value.isoformat()} has a time; write the date alone, e.g. {value:%Y-%m-%d}"
        )
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        m = _ISO_DATE.match(value)
        if m is not None:
            try:
                return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                why = rec.describe_bad_date(m.group(1), m.group(2), m.group(3))
                raise ValueError(f"{value.strip()} is not a date: {why}") from None
    raise ValueError(f"expected a date written YYYY-MM-DD, e.g. 2027-02-10; got {value!r}")


def _m2(value: object) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 1e309 (no dot) as text
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise ValueError(
            f"write the floor area in square metres as a number, e.g. 520; got {value!r}"
        )
    if number != number:
        raise ValueError(
            f"{value!r} is not a number; write the floor area in square metres, e.g. 520"
        )
    if not 0 < number <= MAX_M2:
        shown = f"{value} (infinite)" if number in (float("inf"), float("-inf")) else f"{value}"
        raise ValueError(
            f"the floor area in square metres must be greater than 0 and at most "
            f"{MAX_M2:,.0f}; got {shown}"
        )
    return number


Duration = Annotated[timedelta, BeforeValidator(_duration)]
TimeOfDay = Annotated[TimeSpec, BeforeValidator(parse_timespec)]
Due = Annotated[DueSpec, BeforeValidator(parse_due)]
LocalDate = Annotated[date, BeforeValidator(parse_date)]
SeasonSpan = Annotated[Season, BeforeValidator(parse_season)]
SquareMetres = Annotated[float, BeforeValidator(_m2)]


class ClosedSpan(_Strict):
    date: LocalDate
    until: LocalDate | None = None
    reason: str = "休市"

    @model_validator(mode="after")
    def _order(self) -> ClosedSpan:
        if self.until is not None and self.until < self.date:
            raise ValueError(f"until ({self.until}) is before date ({self.date})")
        return self

    @property
    def last(self) -> dt.date:
        return self.until or self.date


def _closed_item(value: object) -> object:
    if isinstance(value, date | str) and not isinstance(value, datetime):
        return {"date": value}  # a bare date (or a bad one, refused as a date below)
    return value


class DistrictClosure(ClosedSpan):
    """A closure for every market of the district (or those listed), written once."""

    markets: Literal["all"] | list[Id] = "all"

    def applies_to(self, market_id: str) -> bool:
        return self.markets == "all" or market_id in self.markets


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str) -> str:
    """Return ``name`` if it is an IANA zone, or explain with the nearest valid names."""
    if name in _zones():
        return name
    close = difflib.get_close_matches(name, sorted(_zones()), n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Asia/Shanghai'){hint}")


def _day_names(key: str) -> list[int]:
    k = key.strip().lower()
    if k in {"daily", "all", "every day"}:
        return list(range(7))
    if k == "weekdays":
        return list(range(5))
    if k == "weekends":
        return [5, 6]
    if "-" in k:
        a, b = (p.strip() for p in k.split("-", 1))
        if a in WEEKDAYS and b in WEEKDAYS:
            i, j = WEEKDAYS.index(a), WEEKDAYS.index(b)
            return list(range(i, j + 1)) if i <= j else [*range(i, 7), *range(0, j + 1)]
    if k in WEEKDAYS:
        return [WEEKDAYS.index(k)]
    raise ValueError(
        f"bad day {key!r} in hours: use mon..sun, a range such as mon-fri, weekdays, weekends or daily"
    )


def _check_week(value: dict[str, str | None]) -> dict[str, str | None]:
    """Every weekday exactly once, every value valid hours."""
    seen: dict[int, str] = {}
    for key, text in value.items():
        for d in _day_names(str(key)):
            if d in seen:
                raise ValueError(f"{WEEKDAYS[d]} is given twice (in {seen[d]!r} and {key!r})")
            seen[d] = str(key)
        parse_hours("closed" if text is None else text)
    missing = [WEEKDAYS[d] for d in range(7) if d not in seen]
    if missing:
        raise ValueError(
            f"no hours for {', '.join(missing)}; write e.g. '{missing[0]}: closed' "
            "if the market does not open that day"
        )
    return value


def _week_table(value: Mapping[str, str | None], boundary: int) -> tuple[Hours | None, ...]:
    table: list[Hours | None] = [None] * 7
    for key, text in value.items():
        for d in _day_names(str(key)):
            table[d] = parse_hours("closed" if text is None else text, day_boundary=boundary)
    return tuple(table)


def _is_round_the_clock(text: object) -> bool:
    return isinstance(text, str) and text.strip().lower() in ROUND_THE_CLOCK


# ---------------------------------------------------------------- recurrence

_SHORTHANDS: dict[str, dict[str, Any]] = {
    "daily": {"every_days": 1},
    "weekdays": {"weekly": list(WEEKDAYS[:5])},
    "weekends": {"weekly": ["sat", "sun"]},
    "xun": {"monthly_days": [1, 11, 21]},
    "every_xun": {"monthly_days": [1, 11, 21]},
    "monthly": {"monthly_days": [1]},
    "rest_days": {"rest_days": True},
}
_FORMS = ("every_days", "weekly", "every_weeks", "monthly_days", "rrule", "rest_days")


def _shorthand_form(value: str) -> dict[str, Any]:
    key = value.strip().lower()
    if key in _SHORTHANDS:
        return dict(_SHORTHANDS[key])
    if key in WEEKDAYS:
        return {"weekly": [key]}
    if key.startswith(("freq=", "rrule:", "dtstart")):
        return {"rrule": value}
    raise ValueError(
        f"unknown recurrence {value!r}: use daily, weekdays, weekends, xun (1st/11th/21st), "
        "monthly, a weekday (mon..sun), rest_days, or a mapping such as "
        "{every_weeks: 2, anchor: 2026-01-05}"
    )


def _recurrence_shorthand(value: object) -> object:
    if isinstance(value, str):
        return {"days": value}
    return value


class Recurrence(_Strict):
    """Which local days (or times) a task falls on: one RFC 5545 rule, narrowed by a season
    and exception dates, widened by extra dates, and optionally repeated every few hours
    while the market is open."""

    days: str | None = None
    every_days: int | None = Field(default=None, ge=1, le=366)
    weekly: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    every_weeks: int | None = Field(default=None, ge=1, le=52)
    monthly_days: list[int] | None = None
    rrule: str | None = None
    rest_days: bool = False
    anchor: LocalDate | None = None
    season: SeasonSpan | None = None
    except_dates: list[LocalDate] = Field(default_factory=list, alias="except")
    extra: list[LocalDate] = Field(default_factory=list)
    every_hours: int | None = Field(default=None, ge=1, le=12)

    @model_validator(mode="before")
    @classmethod
    def _days_word(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "days" not in data:
            return data
        word = data["days"]
        if not isinstance(word, str):
            raise ValueError(f"days is a word such as daily, xun or wed; got {word!r}")
        form = _shorthand_form(word)
        clash = sorted(set(form) & set(map(str, data)))
        if clash:
            raise ValueError(f"give days or {clash[0]}, not both")
        return {**data, **form}

    @field_validator("monthly_days")
    @classmethod
    def _monthdays(cls, value: list[int] | None) -> list[int] | None:
        for d in value or []:
            if not (1 <= d <= 31 or -31 <= d <= -1):
                raise ValueError(f"day of month {d} is outside 1..31 (or -1 for the last day)")
        if value is not None and not value:
            raise ValueError("monthly_days is empty")
        return value

    @field_validator("rrule")
    @classmethod
    def _rule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_rule(value)
            except RuleError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Recurrence:
        forms = [n for n in _FORMS if getattr(self, n) not in (None, False)]
        if self.every_weeks is not None and self.weekly is not None:
            forms.remove("weekly")
        if not forms and self.every_hours is not None:
            forms = ["every_days"]  # {every_hours: 2} alone: every day
        if len(forms) != 1:
            raise ValueError(
                "give exactly one of days, every_days, weekly, every_weeks (with anchor), "
                f"monthly_days or rrule; got {', '.join(forms) or 'none'}"
            )
        if self.weekly is not None and not self.weekly:
            raise ValueError("weekly is empty")
        if self.every_weeks is not None and self.anchor is None:
            raise ValueError("every_weeks needs an anchor date (the first day of the cycle)")
        if self.every_days not in (None, 1) and self.anchor is None:
            raise ValueError("every_days greater than 1 needs an anchor date")
        rule = self.parsed
        if rule is None:
            if self.extra or self.anchor is not None:
                raise ValueError("rest_days follows each area's rest; it takes no anchor or extra")
            return self
        if rule.dtstart is not None and self.anchor is not None:
            raise ValueError("give the start once: as anchor, or as DTSTART in the rule")
        if rule.timed and self.every_hours is not None:
            raise ValueError(
                "every_hours repeats the task while the market is open; the rule must give "
                "days, not times of day (remove FREQ=HOURLY, BYHOUR, BYMINUTE)"
            )
        if rule.timed and (self.extra or rule.rdates):
            raise ValueError(
                "extra dates add whole days; a rule that gives times of day cannot take them"
            )
        start = self.dtstart
        if start.year < EARLIEST_START:
            # a typo (0206 for 2026); it would also be walked from there: a COUNT rule
            # cannot move its start, and 2,000 years of days take seconds every year asked
            given = "anchor" if self.anchor is not None else "DTSTART"
            raise ValueError(
                f"{given} {start.year:04d}-{start.month:02d}-{start.day:02d} is before "
                f"{EARLIEST_START}; a cycle starts on a date of this era, e.g. 2026-01-05"
            )
        if not self._fires_within_ten_years(rule, start):
            where = f" in its season {self.season}" if self.season is not None else ""
            raise ValueError(
                f"recurrence {self.rrule_text!r} never fires{where} in the ten years from "
                f"{start:%Y-%m-%d}"
            )
        return self

    def _fires_within_ten_years(self, rule: ParsedRule, start: datetime) -> bool:
        if self.extra or rule.rdates:
            return True
        skip = self.exclusions
        for occurrence in rule.build(start, until=start + rec.FIRES_WITHIN):
            if self.season is not None and not self.season.contains(occurrence.date()):
                continue
            if occurrence.date() in skip[0] or occurrence in skip[1]:
                continue
            return True
        return False

    @cached_property
    def parsed(self) -> ParsedRule | None:
        """The checked rule (None for ``rest_days``, which follows each area's rest)."""
        if self.rest_days:
            return None
        return parse_rule(self.rrule_text)

    @property
    def timed(self) -> bool:
        """True when the rule gives times of day: each time is its own obligation."""
        return self.parsed is not None and self.parsed.timed

    @property
    def dtstart(self) -> datetime:
        if self.parsed is not None and self.parsed.dtstart is not None:
            return self.parsed.dtstart
        return datetime.combine(self.anchor or DEFAULT_ANCHOR, datetime.min.time())

    @property
    def rrule_text(self) -> str:
        """The RFC 5545 RRULE this recurrence means (DTSTART is the anchor)."""
        if self.rrule is not None:
            return self.rrule.strip()
        if self.rest_days:
            return ""
        if self.every_weeks is not None:
            anchor = self.anchor or DEFAULT_ANCHOR
            days: list[str] = list(self.weekly) if self.weekly else [WEEKDAYS[anchor.weekday()]]
            byday = ",".join(_RRULE_DAYS[WEEKDAYS.index(d)] for d in days)
            return f"FREQ=WEEKLY;INTERVAL={self.every_weeks};BYDAY={byday};WKST=MO"
        if self.weekly is not None:
            byday = ",".join(_RRULE_DAYS[WEEKDAYS.index(d)] for d in self.weekly)
            return f"FREQ=WEEKLY;BYDAY={byday}"
        if self.monthly_days is not None:
            return f"FREQ=MONTHLY;BYMONTHDAY={','.join(str(d) for d in self.monthly_days)}"
        interval = self.every_days or 1
        return "FREQ=DAILY" if interval == 1 else f"FREQ=DAILY;INTERVAL={interval}"

    @cached_property
    def exclusions(self) -> tuple[frozenset[date], frozenset[datetime]]:
        """Whole days left out (``except``, EXDATE dates) and single times (EXDATE times)."""
        rule = self.parsed
        stamps = rule.exdates if rule is not None else ()
        days = {*self.except_dates, *(s for s in stamps if not isinstance(s, datetime))}
        times = {s for s in stamps if isinstance(s, datetime)}
        return frozenset(days), frozenset(times)

    @cached_property
    def additions(self) -> tuple[datetime, ...]:
        """Extra occurrences (``extra``, RDATE): whole days at midnight, or given times."""
        rule = self.parsed
        stamps = [*self.extra, *(rule.rdates if rule is not None else ())]
        return tuple(
            sorted({s if isinstance(s, datetime) else datetime.combine(s, time(0)) for s in stamps})
        )

    @cached_property
    def _key(self) -> tuple[object, ...]:
        return (
            self.rrule_text,
            self.dtstart,
            self.season,
            self.exclusions,
            self.additions,
        )

    def _year(self, lo: datetime, hi: datetime) -> list[datetime]:
        rule = self.parsed
        assert rule is not None
        if rule.count is not None:
            found = rule.build(self.dtstart).between(lo, hi, inc=True)
        else:
            moved = rec.start_near(rule, self.dtstart, lo)
            found = rule.build(self.dtstart, until=hi, moved=moved).between(lo, hi, inc=True)
        days, times = self.exclusions
        season = self.season
        out = {
            o
            for o in found
            if o < hi
            and (season is None or season.contains(o.date()))
            and o.date() not in days
            and o not in times
        }
        out.update(a for a in self.additions if lo <= a < hi)
        return sorted(out)

    def occurrences(self, lo: datetime, hi: datetime) -> list[datetime]:
        """The rule's occurrences from ``lo`` to ``hi`` (naive local times, both included)."""
        if self.parsed is None:
            return []
        return rec.occurrences_between(self._key, lo, hi, self._year)

    def falls_on(self, day: date) -> bool:
        """True when the recurrence has an occurrence on ``day``."""
        lo, hi = rec.day_span(day)
        return bool(self.occurrences(lo, hi - timedelta(microseconds=1)))


#: the earliest year a recurrence may start (its anchor or DTSTART)
EARLIEST_START = 1900


def _rest_shorthand(value: object) -> object:
    if isinstance(value, str):
        return {"days": value}
    return value


class AreaRest(Recurrence):
    """The days an area rests while the market trades (活禽休市), and why."""

    reason: str = Field(default="休市", min_length=1)

    @model_validator(mode="after")
    def _whole_days(self) -> AreaRest:
        if self.rest_days:
            raise ValueError(
                "an area's rest is given by its own days, e.g. wed or {monthly_days: [15]}"
            )
        if self.timed or self.every_hours is not None:
            raise ValueError("a rest day is a whole day: give days, not times of day")
        return self


class Area(_Strict):
    id: Id
    name: str | None = None
    kind: AreaKind
    m2: SquareMetres
    rest: Annotated[AreaRest, BeforeValidator(_rest_shorthand)] | None = None

    def rest_reason(self, day: date) -> str | None:
        """Why the area does not trade on ``day`` (its rest day), or None."""
        if self.rest is not None and self.rest.falls_on(day):
            return self.rest.reason
        return None


class SeasonalHours(_Strict):
    """Weekly hours that replace ``hours`` during a season of every year (summer hours)."""

    season: SeasonSpan
    hours: dict[str, str | None]

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        return _check_week(value)


def _boundary(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"got the number {value}; write the time in quotes, e.g. '04:00'")
    if isinstance(value, str):
        t, end = parse_clock(value)
        if end:
            raise ValueError("day_boundary is a time of the day, 00:00 to 23:59")
        return f"{t:%H:%M}"
    return value


class Market(_Strict):
    id: Id
    name: str = Field(min_length=1)
    sub_district: str = Field(min_length=1)
    timezone: str | None = None
    day_boundary: Annotated[str, BeforeValidator(_boundary)] | None = None
    hours: dict[str, str | None]
    seasonal_hours: list[SeasonalHours] = Field(default_factory=list)
    special_hours: dict[LocalDate, str] = Field(default_factory=dict)
    closed: list[Annotated[ClosedSpan, BeforeValidator(_closed_item)]] = Field(default_factory=list)
    areas: list[Area] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        return _check_week(value)

    @field_validator("special_hours")
    @classmethod
    def _special(cls, value: dict[date, str]) -> dict[date, str]:
        for text in value.values():
            parse_hours(text)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Market:
        ids = [a.id for a in self.areas]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"area id {dupes[0]!r} is used twice in market {self.id!r}")
        if self.day_boundary is not None:
            texts = [
                *self.hours.values(),
                *self.special_hours.values(),
                *(t for s in self.seasonal_hours for t in s.hours.values()),
            ]
            if not any(_is_round_the_clock(t) for t in texts):
                raise ValueError(
                    "day_boundary is where a 24-hour market's day starts and ends; "
                    "it needs hours written '24h'"
                )
        for i, a in enumerate(self.seasonal_hours):
            for b in self.seasonal_hours[i + 1 :]:
                common = next(
                    (
                        date(2024, 1, 1) + timedelta(days=n)
                        for n in range(366)
                        if a.season.contains(date(2024, 1, 1) + timedelta(days=n))
                        and b.season.contains(date(2024, 1, 1) + timedelta(days=n))
                    ),
                    None,
                )
                if common is not None:
                    raise ValueError(
                        f"seasonal_hours: the seasons {a.season} and {b.season} overlap "
                        f"({common:%m-%d} is in both)"
                    )
        return self

    @property
    def boundary_minutes(self) -> int:
        if self.day_boundary is None:
            return 0
        hh, mm = self.day_boundary.split(":")
        return int(hh) * 60 + int(mm)

    @cached_property
    def weekly_hours(self) -> tuple[Hours | None, ...]:
        return _week_table(self.hours, self.boundary_minutes)

    @cached_property
    def _seasonal_tables(self) -> tuple[tuple[Season, tuple[Hours | None, ...]], ...]:
        return tuple(
            (s.season, _week_table(s.hours, self.boundary_minutes)) for s in self.seasonal_hours
        )

    @cached_property
    def _special_parsed(self) -> dict[date, Hours | None]:
        return {
            d: parse_hours(t, day_boundary=self.boundary_minutes)
            for d, t in self.special_hours.items()
        }

    def closed_reason(self, day: date) -> str | None:
        """Why the market is closed on ``day`` (a declared closure), or None."""
        # spans are compared, not expanded into days: 'until: 9999-12-31' is a valid span
        for span in self.closed:
            if span.date <= day <= span.last:
                return span.reason
        return None

    def hours_on(self, day: date) -> Hours | None:
        """Opening hours on ``day``, None when closed (declared, or a closed weekday).

        The most specific wins: a closure, then ``special_hours`` of that date, then the
        weekly hours of the season the date falls in, then the weekly ``hours``.
        """
        if self.closed_reason(day) is not None:
            return None
        if day in self._special_parsed:
            return self._special_parsed[day]
        for season, table in self._seasonal_tables:
            if season.contains(day):
                return table[day.weekday()]
        return self.weekly_hours[day.weekday()]


Range = tuple[float | None, float | None]


def _range(value: object) -> object:
    if isinstance(value, Mapping):
        extra = set(value) - {"min", "max"}
        if extra:
            raise ValueError(
                f"unknown key {sorted(map(str, extra))[0]!r} in a range; use min and max"
            )
        value = [value.get("min"), value.get("max")]
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError("a range is [min, max] (use null for an open end)")
        lo, hi = value
        for v in (lo, hi):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"range bound {v!r} is not a number")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"range [{lo}, {hi}] has its minimum above its maximum")
        if lo is None and hi is None:
            raise ValueError("a range needs at least a min or a max")
        return (lo, hi)
    raise ValueError(f"expected a range [min, max] or {{min: .., max: ..}}, got {value!r}")


ReadingRange = Annotated[Range, BeforeValidator(_range)]


class ChecklistItem(_Strict):
    """A tick (something done), a reading (a measured number with its required range) or a
    text (what a record must say in words: agents used, findings)."""

    id: Id
    tick: str | None = None
    reading: str | None = None
    text: str | None = None
    required: bool = False
    unit: str | None = None
    range: ReadingRange | None = None
    by_area_kind: dict[AreaKind, ReadingRange] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> ChecklistItem:
        if [self.tick, self.reading, self.text].count(None) != 2:
            raise ValueError(
                "a checklist item is one of 'tick: label', 'reading: label' or 'text: label'"
            )
        if self.reading is None and (self.unit or self.range or self.by_area_kind):
            raise ValueError("unit, range and by_area_kind belong to readings")
        if self.required and self.text is None:
            raise ValueError("required is for text items (ticks and readings are always required)")
        return self

    @property
    def label(self) -> str:
        return self.tick or self.reading or self.text or self.id

    def range_for(self, area_kind: str | None) -> Range | None:
        if area_kind is not None and area_kind in self.by_area_kind:
            return self.by_area_kind[AreaKind(area_kind)]
        return self.range


def _both_outcomes() -> list[Literal["missed", "failed"]]:
    return ["missed", "failed"]


class RaiseProblem(_Strict):
    """Turn a missed obligation or a failed reading into a problem with a deadline."""

    when: list[Literal["missed", "failed"]] = Field(default_factory=_both_outcomes, min_length=1)
    category: Literal["sanitation", "repair", "pest", "order"] = "sanitation"
    within: Duration = timedelta(days=1)


class TaskKindSpec(_Strict):
    """An operator's own kind of task, reported under one of the built-in categories."""

    id: Id
    name: str = Field(min_length=1)
    reports_as: TaskKind
    needs_contractor: bool = False

    @field_validator("id")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in {k.value for k in TaskKind}:
            raise ValueError(f"{value!r} is a built-in task kind already; choose another id")
        return value


@dataclass(frozen=True)
class _KindRule:
    reports_as: TaskKind
    needs_contractor: bool


class Task(_Strict):
    id: Id
    kind: TaskKind
    name: str = Field(min_length=1)
    scope: Literal["market", "area"]
    markets: Literal["all"] | list[Id] = "all"
    area_kinds: list[AreaKind] | None = None
    recurrence: Annotated[Recurrence, BeforeValidator(_recurrence_shorthand)]
    opens: TimeOfDay
    due: Due
    grace: Duration = timedelta(0)
    skip_closed: bool = True
    contractor: str | None = None
    description: str | None = None
    checklist: list[ChecklistItem] = Field(default_factory=list)
    raise_problem: RaiseProblem | None = None
    #: the operator's own kind (``task_kinds``) when the task names one; ``kind`` is then
    #: the category it reports as
    _own_kind: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _operator_kind(cls, data: Any, handler: Any, info: ValidationInfo) -> Task:
        kinds: Mapping[str, _KindRule] = (info.context or {}).get("task_kinds", {})
        own = data.get("kind") if isinstance(data, dict) else None
        rule = kinds.get(own) if isinstance(own, str) else None
        if rule is not None:
            data = {**data, "kind": rule.reports_as.value}
        task: Task = handler(data)
        task._own_kind = own if rule is not None else None
        needs = rule.needs_contractor if rule is not None else task.kind == TaskKind.PEST_CONTROL
        if needs and not task.contractor:
            raise ValueError(f"a {task.kind_id} task names its contractor")
        return task

    @property
    def kind_id(self) -> str:
        """The kind as the operator wrote it (their own, or a built-in one)."""
        return self._own_kind or self.kind.value

    @model_validator(mode="after")
    def _coherent(self) -> Task:
        if self.area_kinds is not None and self.scope != "area":
            raise ValueError("area_kinds filters areas; it needs scope: area")
        ids = [c.id for c in self.checklist]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"checklist item id {dupes[0]!r} is used twice")
        if self.opens.anchor != "clock" and self.recurrence.timed:
            raise ValueError(
                "a recurrence that gives times of day (FREQ=HOURLY, BYHOUR, BYMINUTE or a "
                "DTSTART time) opens at those times: write a clock time for opens "
                f"(e.g. '09:00'), not {str(self.opens)!r}"
            )
        if self.recurrence.every_hours is not None and self.due.after is None:
            raise ValueError(
                "with every_hours each round is due a duration after it opens: "
                f"write e.g. due: +1h, not {str(self.due)!r}"
            )
        if self.recurrence.rest_days and self.scope != "area":
            raise ValueError(
                "recurrence rest_days follows the areas' rest days; it needs scope: area"
            )
        return self


def _email(value: object) -> object:
    if isinstance(value, str) and not is_email(value.strip()):
        raise ValueError(f"{value!r} is not an email address")
    return value.strip() if isinstance(value, str) else value


class ReportSpec(_Strict):
    """A compliance report the daemon produces and emails on its own schedule."""

    id: Id
    #: ``bulletin``: the double report (ranking and problems past deadline, Excel and PDF)
    kind: Literal["compliance", "bulletin"] = "compliance"
    period: Literal["day", "week", "month"]
    at: TimeOfDay = Field(default_factory=lambda: parse_timespec("08:00"))
    covers: Literal["current", "previous"] | None = None
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    day: int = Field(default=1, ge=1, le=28)
    markets: Literal["all"] | list[Id] = "all"
    recipients: list[Annotated[str, BeforeValidator(_email)]] = Field(min_length=1)
    language: Literal["zh_CN", "en"] | None = None

    @model_validator(mode="after")
    def _clock(self) -> ReportSpec:
        if self.at.anchor != "clock":
            raise ValueError("at is a clock time such as '22:30'")
        if self.kind == "bulletin" and self.period == "day":
            raise ValueError("a bulletin covers a week or a month, not a day")
        return self

    @property
    def covered(self) -> Literal["current", "previous"]:
        """A daily report covers its own day; weekly and monthly ones the one before."""
        return self.covers or ("current" if self.period == "day" else "previous")


class ContractSeason(_Strict):
    """Visits agreed per month during a season (weekly in summer, monthly in winter)."""

    season: SeasonSpan
    visits_per_month: int = Field(ge=1, le=31)

    @field_validator("season")
    @classmethod
    def _months(cls, value: Season) -> Season:
        if not value.whole_months:
            raise ValueError(
                f"a contract counts visits per month, so its seasons are whole months, "
                f"e.g. apr-oct; got {value}"
            )
        return value


class Contract(_Strict):
    """A pest-control contractor's agreed visits per market per month (灭四害 contract)."""

    contractor: str = Field(min_length=1)
    markets: Literal["all"] | list[Id] = "all"
    visits_per_month: int = Field(ge=1, le=31)
    seasons: list[ContractSeason] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct(self) -> Contract:
        seen: dict[int, str] = {}
        for s in self.seasons:
            for m in s.season.months():
                if m in seen:
                    raise ValueError(
                        f"the seasons {seen[m]} and {s.season} overlap (both have month {m})"
                    )
                seen[m] = str(s.season)
        return self

    def visits_in(self, month: date) -> int:
        """Visits agreed for the month of ``month``: its season's figure, or the default."""
        for s in self.seasons:
            if s.season.contains(month.replace(day=15)):
                return s.visits_per_month
        return self.visits_per_month


# ---------------------------------------------------------------- people and escalation

#: where a person stands on the escalation ladder (the YAML key ``role``); not a user's
#: role in the web app (``access.Role``)
POSITIONS = ("manager", "supervisor", "office")
_QUIET = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
_AT = re.compile(r"^\s*(opens|due|deadline)\s*(?:([+-])\s*(.+))?$")


def _clock(value: object) -> dt.time:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'{value!r} is a number for YAML: quote a clock time, e.g. "21:00"')
    m = _CLOCK.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f'expected a clock time such as "21:00", got {value!r}')
    return dt.time(int(m.group(1)), int(m.group(2)))


def _quiet(value: object) -> object:
    if isinstance(value, str):
        m = _QUIET.match(value)
        if m is None:
            raise ValueError(f'quiet_hours is a local span such as "22:00-07:00", got {value!r}')
        start = _clock(f"{m.group(1)}:{m.group(2)}")
        end = _clock(f"{m.group(3)}:{m.group(4)}")
        if start == end:
            raise ValueError(f"quiet_hours {value!r} is empty (start equals end)")
        return (start, end)
    return value


ClockTime = Annotated[dt.time, BeforeValidator(_clock)]
QuietHours = Annotated[tuple[dt.time, dt.time], BeforeValidator(_quiet)]


@dataclass(frozen=True)
class StepAt:
    """A time relative to an obligation (opens, due) or a problem (deadline)."""

    anchor: Literal["opens", "due", "deadline"]
    offset: timedelta

    def __str__(self) -> str:
        if not self.offset:
            return self.anchor
        sign = "-" if self.offset < timedelta(0) else "+"
        from marketcare.domain.timespec import format_duration

        return f"{self.anchor}{sign}{format_duration(abs(self.offset))}"


def parse_step_at(value: object, anchors: tuple[str, ...]) -> StepAt:
    """Parse ``opens``, ``due-30m``, ``due+1h``, ``deadline+1d`` for the given anchors."""
    if isinstance(value, StepAt):
        return value
    m = _AT.match(value) if isinstance(value, str) else None
    if m is None or m.group(1) not in anchors:
        forms = ", ".join(f"{a}, {a}-30m, {a}+1h" for a in anchors)
        raise ValueError(
            f"bad time {value!r}: write {forms}{width_hint(value, lambda v: parse_step_at(v, anchors))}"
        )
    offset = parse_duration(m.group(3)) if m.group(3) else timedelta(0)
    return StepAt(m.group(1), -offset if m.group(2) == "-" else offset)  # type: ignore[arg-type]


ObligationAt = Annotated[StepAt, BeforeValidator(lambda v: parse_step_at(v, ("opens", "due")))]
DeadlineAt = Annotated[StepAt, BeforeValidator(lambda v: parse_step_at(v, ("deadline",)))]


def _url(value: object) -> object:
    if isinstance(value, str) and not re.match(r"^https?://[^\s/]+", value.strip()):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.strip() if isinstance(value, str) else value


class Person(_Strict):
    """Someone notified: a market manager, a supervisor or the district office."""

    id: Id
    name: str = Field(min_length=1)
    position: Literal["manager", "supervisor", "office"] = Field(alias="role")
    markets: Literal["all"] | list[Id] = "all"
    email: Annotated[str, BeforeValidator(_email)] | None = None
    webhook: Annotated[str, BeforeValidator(_url)] | None = None
    webhook_format: Literal["wecom", "dingtalk", "generic"] = "generic"
    quiet_hours: QuietHours | None = None

    @model_validator(mode="after")
    def _reachable(self) -> Person:
        if self.email is None and self.webhook is None:
            raise ValueError(f"person {self.id!r} needs an email or a webhook to be notified")
        return self

    def covers(self, market_id: str) -> bool:
        return self.markets == "all" or market_id in self.markets


class EscalationStep(_Strict):
    at: ObligationAt
    notify: list[str] = Field(min_length=1)


class ProblemStep(_Strict):
    at: DeadlineAt
    notify: list[str] = Field(min_length=1)


class EscalationPolicy(_Strict):
    """Who is told, and when, while an obligation or a problem stays unresolved."""

    id: Id
    task_kinds: Literal["all"] | list[TaskKind] = "all"
    steps: list[EscalationStep] = Field(default_factory=list)
    problem_steps: list[ProblemStep] = Field(default_factory=list)
    digest: ClockTime | None = None

    def applies_to(self, kind: str) -> bool:
        """Whether an obligation of task kind ``kind`` is this policy's concern."""
        return self.task_kinds == "all" or kind in {k.value for k in self.task_kinds}


class ScheduleFile(_Strict):
    markets: list[Market] = Field(default_factory=list)
    tasks: list[Task] = Field(default_factory=list)
    closed: list[Annotated[DistrictClosure, BeforeValidator(_closed_item)]] = Field(
        default_factory=list
    )
    task_kinds: list[TaskKindSpec] = Field(default_factory=list)
    reports: list[ReportSpec] = Field(default_factory=list)
    contracts: list[Contract] = Field(default_factory=list)
    people: list[Person] = Field(default_factory=list)
    escalation: list[EscalationPolicy] = Field(default_factory=list)
    #: validated by ``domain/inspections.py`` (its models build on this module's)
    inspection_templates: Any = None
    inspections: Any = None


@dataclass(frozen=True)
class Schedule:
    """Every market and task from a set of files, plus the exact text that produced them."""

    markets: tuple[Market, ...]
    tasks: tuple[Task, ...]
    sources: Mapping[str, str]
    default_timezone: str
    reports: tuple[ReportSpec, ...] = ()
    contracts: tuple[Contract, ...] = ()
    people: tuple[Person, ...] = ()
    escalation: tuple[EscalationPolicy, ...] = ()
    inspection_templates: tuple[InspectionTemplate, ...] = ()
    inspection_plans: tuple[InspectionPlan, ...] = ()
    task_kinds: tuple[TaskKindSpec, ...] = ()
    #: the district-wide closures (already part of each market's ``closed``)
    closures: tuple[DistrictClosure, ...] = ()
    #: where each task's recurrence is written: task id → (file, line, column)
    positions: Mapping[str, tuple[str, int, int]] = field(default_factory=dict, compare=False)

    def error_at(self, task_id: str, message: str) -> SourceError:
        """A located error about a task (at its recurrence), for problems found later."""
        file, line, column = self.positions.get(task_id, ("<schedule>", 1, 1))
        return SourceError(file, line, column, message)

    @cached_property
    def digest(self) -> str:
        """SHA-256 over the file names and texts: the identity of a schedule version."""
        return digest_of(self.sources, self.default_timezone)

    @cached_property
    def market_by_id(self) -> dict[str, Market]:
        return {m.id: m for m in self.markets}

    @cached_property
    def task_by_id(self) -> dict[str, Task]:
        return {t.id: t for t in self.tasks}

    def zone(self, market: Market) -> ZoneInfo:
        return _zone(market.timezone or self.default_timezone)

    def markets_of(self, task: Task) -> list[Market]:
        if task.markets == "all":
            return list(self.markets)
        return [self.market_by_id[m] for m in task.markets if m in self.market_by_id]


def digest_of(sources: Mapping[str, str], default_timezone: str) -> str:
    """A schedule version's identity from its exact texts, without loading them (the
    daemon's reloader compares it; ``audit verify`` recomputes it)."""
    h = hashlib.sha256()
    h.update(default_timezone.encode())
    for name in sorted(sources):
        h.update(b"\x00" + name.encode() + b"\x00" + sources[name].encode())
    return h.hexdigest()


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# ---------------------------------------------------------------- loading


def files_in(directory: Path) -> list[Path]:
    """The schedule files of a directory: ``*.yaml`` and ``*.yml``, in name order, but not
    hidden ones, which editors and file copies leave beside a file (Emacs's lock
    ``.#tasks.yaml``, a dangling link; macOS's ``._tasks.yaml``, binary): they are
    nobody's schedule."""
    found = [*directory.glob("*.yaml"), *directory.glob("*.yml")]
    return sorted(f for f in found if not f.name.startswith("."))


def schedule_files(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Expand directories into their schedule files (:func:`files_in`), with stable display
    names; a file named on its own is read whatever its name."""
    found: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            for f in files_in(p):
                found.append((f, str(f)))
        else:
            found.append((p, str(p)))
    return found


def read_sources(paths: Iterable[Path]) -> tuple[dict[str, str], list[SourceError]]:
    """The texts of the schedule files (by display name), and the files that cannot be
    read (too large, not UTF-8) or a folder that holds none. Reading is bounded: each
    file is at most 1 MB."""
    texts: dict[str, str] = {}
    errors: list[SourceError] = []
    paths = list(paths)
    for path, name in schedule_files(paths):
        try:
            texts[name] = read_text(path, display=name)
        except YamlSourceError as exc:
            errors.append(exc.error)
    # a folder without a schedule file (emptied, moved, the wrong one) would be read as a
    # schedule of no markets: taken, it would cancel every obligation still ahead
    errors += [
        SourceError(
            str(p), 1, 1, "no schedule files (*.yaml, *.yml) in this folder; is it the right one?"
        )
        for p in paths
        if p.is_dir() and not any(p.glob("*.yaml")) and not any(p.glob("*.yml"))
    ]
    return texts, errors


def load_paths(paths: Iterable[Path], *, default_timezone: str) -> Schedule:
    """Load and validate schedule files or directories; raise ScheduleError with every problem."""
    texts, errors = read_sources(paths)
    if errors:
        # still validate the readable files so all problems are reported at once
        try:
            load_texts(texts, default_timezone=default_timezone)
        except ScheduleError as more:
            errors.extend(more.errors)
        raise ScheduleError(errors)
    return load_texts(texts, default_timezone=default_timezone)


def load_texts(texts: Mapping[str, str], *, default_timezone: str) -> Schedule:
    """Validate schedule texts keyed by file name (the form stored with each version)."""
    from marketcare.domain import inspections

    errors: list[SourceError] = []
    parsed: list[tuple[Located, ScheduleFile]] = []
    checked: list[inspections.InspectionFile] = []
    raw: list[Located] = []
    allowance = Allowance()  # what all the files may expand to together
    for name in sorted(texts):
        try:
            located = parse(texts[name], name, allowance)
        except YamlSourceError as exc:
            errors.append(exc.error)
            if allowance.left < 0:  # the rest would each be refused the same way
                raise ScheduleError(errors) from None
            continue
        if not isinstance(located.data, dict):
            errors.append(
                located.error((), "a schedule file is a mapping with 'markets' and/or 'tasks'")
            )
            continue
        raw.append(located)
    kinds = _operator_kinds(raw)
    context = {"task_kinds": kinds}
    for located in raw:
        try:
            parsed.append((located, ScheduleFile.model_validate(located.data, context=context)))
        except ValidationError as exc:
            errors.extend(_located_errors(exc, located, sorted(kinds)))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            errors.append(located.error((), f"invalid schedule: {exc}"))
        own = {k: located.data[k] for k in inspections.KEYS if k in located.data}
        try:
            checked.append(inspections.InspectionFile.model_validate(own))
        except ValidationError as exc:
            errors.extend(_located_errors(exc, located))
    errors.extend(_cross_check(raw))
    errors.extend(inspections.cross_check(raw, _market_ids(raw)))
    if errors:
        raise ScheduleError(errors)
    closures = tuple(c for _, f in parsed for c in f.closed)
    markets = tuple(_with_closures(m, closures) for _, f in parsed for m in f.markets)
    tasks = tuple(t for _, f in parsed for t in f.tasks)
    reports = tuple(r for _, f in parsed for r in f.reports)
    contracts = tuple(c for _, f in parsed for c in f.contracts)
    people = tuple(p for _, f in parsed for p in f.people)
    escalation = tuple(e for _, f in parsed for e in f.escalation)
    positions: dict[str, tuple[str, int, int]] = {}
    for located, f in parsed:
        for i, t in enumerate(f.tasks):
            line, column = located.position(("tasks", i, "recurrence"))
            positions[t.id] = (located.file, line, column)
    try:
        check_timezone(default_timezone)
    except ValueError as exc:
        raise ScheduleError([SourceError("<settings>", 1, 1, f"timezone: {exc}")]) from None
    return Schedule(
        markets=markets,
        tasks=tasks,
        sources=dict(texts),
        default_timezone=default_timezone,
        reports=reports,
        contracts=contracts,
        people=people,
        escalation=escalation,
        task_kinds=tuple(k for _, f in parsed for k in f.task_kinds),
        closures=closures,
        positions=positions,
        inspection_templates=tuple(t for f in checked for t in f.inspection_templates),
        inspection_plans=tuple(p for f in checked for p in f.inspections),
    )


def _operator_kinds(parsed: list[Located]) -> dict[str, _KindRule]:
    """The operators' task kinds of every file, read before the tasks that name them (a
    kind may be defined in another file); a malformed entry is reported where it is."""
    kinds: dict[str, _KindRule] = {}
    for located in parsed:
        entries = located.data.get("task_kinds")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            ident, category = entry.get("id"), entry.get("reports_as")
            if not isinstance(ident, str) or category not in {k.value for k in TaskKind}:
                continue
            if ident in {k.value for k in TaskKind}:
                continue
            kinds.setdefault(
                ident, _KindRule(TaskKind(category), entry.get("needs_contractor") is True)
            )
    return kinds


def _with_closures(market: Market, closures: tuple[DistrictClosure, ...]) -> Market:
    """The market with the district-wide closures that apply to it added to its own."""
    mine = [c for c in closures if c.applies_to(market.id)]
    if not mine:
        return market
    return market.model_copy(update={"closed": [*market.closed, *mine]})


def _market_ids(parsed: list[Located]) -> list[str]:
    ids: list[str] = []
    for located in parsed:
        markets = located.data.get("markets")
        for m in markets if isinstance(markets, list) else []:
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                ids.append(m["id"])
    return ids


def _cross_check(parsed: list[Located]) -> list[SourceError]:
    """Check ids and references across files, on the raw data so that a file with other
    errors still gets these reported too."""
    errors: list[SourceError] = []
    market_ids: dict[str, str] = {}
    task_ids: dict[str, str] = {}
    report_ids: dict[str, str] = {}
    person_ids: dict[str, str] = {}
    policy_ids: dict[str, str] = {}
    kind_ids: dict[str, str] = {}
    sections = (
        ("markets", market_ids, "market"),
        ("tasks", task_ids, "task"),
        ("reports", report_ids, "report"),
        ("people", person_ids, "person"),
        ("escalation", policy_ids, "escalation policy"),
        ("task_kinds", kind_ids, "task kind"),
    )
    for located in parsed:
        for section, seen, what in sections:
            items = located.data.get(section)
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                ident = item.get("id") if isinstance(item, dict) else None
                if not isinstance(ident, str):
                    continue
                if ident in seen:
                    errors.append(
                        located.error(
                            (section, i, "id"),
                            f"{what} id {ident!r} is already defined in {seen[ident]}",
                        )
                    )
                seen.setdefault(ident, located.file)
    known = sorted(market_ids)
    for located, section in (
        (lo, sec) for lo in parsed for sec in ("tasks", "reports", "contracts", "people", "closed")
    ):
        entries = located.data.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            refs = entry.get("markets") if isinstance(entry, dict) else None
            if not isinstance(refs, list):
                continue
            for j, ref in enumerate(refs):
                if isinstance(ref, str) and ref not in market_ids:
                    close = difflib.get_close_matches(ref, known, n=1)
                    hint = (
                        f"; did you mean {close[0]!r}?"
                        if close
                        else f" (known: {', '.join(known) or 'none'})"
                    )
                    errors.append(
                        located.error((section, i, "markets", j), f"unknown market {ref!r}{hint}")
                    )
    errors.extend(_check_notify(parsed, person_ids))
    return errors


def _check_notify(parsed: list[Located], person_ids: Mapping[str, str]) -> list[SourceError]:
    """Every ``notify`` entry of an escalation policy names a position (the YAML calls it
    a role) or a known person."""
    errors: list[SourceError] = []
    valid = sorted([*POSITIONS, *person_ids])
    for located in parsed:
        policies = located.data.get("escalation")
        for i, policy in enumerate(policies if isinstance(policies, list) else []):
            if not isinstance(policy, dict):
                continue
            for section in ("steps", "problem_steps"):
                steps = policy.get(section)
                for j, step in enumerate(steps if isinstance(steps, list) else []):
                    refs = step.get("notify") if isinstance(step, dict) else None
                    for k, ref in enumerate(refs if isinstance(refs, list) else []):
                        if not isinstance(ref, str) or ref in POSITIONS or ref in person_ids:
                            continue
                        close = difflib.get_close_matches(ref, valid, n=1)
                        hint = (
                            f"; did you mean {close[0]!r}?"
                            if close
                            else f" (roles: {', '.join(POSITIONS)}; people: "
                            f"{', '.join(sorted(person_ids)) or 'none'})"
                        )
                        errors.append(
                            located.error(
                                ("escalation", i, section, j, "notify", k),
                                f"unknown person or role {ref!r}{hint}",
                            )
                        )
    return errors


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "file"


def _located_errors(
    exc: ValidationError, located: Located, own_kinds: list[str] | None = None
) -> list[SourceError]:
    out: list[SourceError] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            valid = _valid_keys(loc[:-1])
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else (f"; valid keys: {', '.join(valid)}" if valid else "")
            )
            out.append(located.error(loc, f"unknown key {key!r}{hint}", key=True))
            continue
        where = _dotted(loc)
        if kind == "missing":
            out.append(located.error(loc[:-1], f"{_dotted(loc[:-1])}: missing key {loc[-1]!r}"))
            continue
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        if kind == "enum":
            expected = err.get("ctx", {}).get("expected", "")
            options = _enum_values(loc)
            if own_kinds and options == [k.value for k in TaskKind] and loc[-1] == "kind":
                expected += f", or one of the task_kinds: {', '.join(own_kinds)}"
                options = [*options, *own_kinds]
            msg = f"{err['input']!r} is not one of {expected}"
            close = difflib.get_close_matches(str(err["input"]), options, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        elif kind == "string_type" and isinstance(err["input"], (bool, int, float, dt.date)):
            msg = _unquoted(err["input"])
        elif kind == "string_pattern_mismatch":
            msg = (
                f"{err['input']!r} is not a valid id: use lower-case letters, digits, "
                "'-' and '_' (at most 63 characters)"
            )
        out.append(located.error(loc, f"{where}: {msg}"))
    # pydantic reports one error per failing union member; keep one per position
    unique: dict[tuple[int, int, str], SourceError] = {}
    for e in out:
        unique.setdefault((e.line, e.column, e.message), e)
    return list(unique.values())


def _unquoted(value: bool | int | float | dt.date) -> str:
    """Why an unquoted word or number is not text: YAML 1.1 reads ``no``, ``on``, ``yes``
    as booleans, ``12345`` and ``1e3`` as numbers, ``2026-01-01`` as a date."""
    if isinstance(value, bool):
        return (
            f"expected text, got the boolean {str(value).lower()} (YAML reads an unquoted "
            "yes, no, on, off, true or false so); write the word in quotes, e.g. 'no'"
        )
    what = "date" if isinstance(value, dt.date) else "number"
    return f"expected text, got the {what} {value}; write the text in quotes, as it is meant"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str | int, ...]:
    """Drop pydantic's union/validator tags, keeping the path as the YAML was written."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and (
            part in {"[key]", "list", "str", "literal['all']", "none", "date", "int", "float"}
            or part.startswith(("function-", "literal[", "tuple[", "lax-", "json-", "is-instance["))
            or part.endswith("]")
            and "[" in part
            and not part.startswith("[")
        ):
            continue
        out.append(part if isinstance(part, int) else str(part))
    return tuple(out)


_MODEL_AT: dict[str, type[BaseModel]] = {
    "markets": Market,
    "areas": Area,
    "rest": AreaRest,
    "seasonal_hours": SeasonalHours,
    "closed": ClosedSpan,
    "task_kinds": TaskKindSpec,
    "seasons": ContractSeason,
    "tasks": Task,
    "checklist": ChecklistItem,
    "recurrence": Recurrence,
    "reports": ReportSpec,
    "raise_problem": RaiseProblem,
    "contracts": Contract,
    "people": Person,
    "escalation": EscalationPolicy,
    "steps": EscalationStep,
    "problem_steps": ProblemStep,
}


def _model_for(loc: tuple[str | int, ...]) -> type[BaseModel]:
    from marketcare.domain.inspections import MODEL_AT

    model: type[BaseModel] = ScheduleFile
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in _MODEL_AT:
            model = _MODEL_AT[part]
            if part == "closed" and i == 0:
                model = DistrictClosure
        elif isinstance(part, str) and part in MODEL_AT:
            model = MODEL_AT[part]
    return model


def _valid_keys(loc: tuple[str | int, ...]) -> list[str]:
    fields = _model_for(loc).model_fields
    return sorted(f.alias or name for name, f in fields.items())


def _enum_values(loc: tuple[str | int, ...]) -> list[str]:
    names = {str(p) for p in loc}
    if names & {"kind"} and "tasks" in names and "checklist" not in names:
        return [k.value for k in TaskKind]
    return [k.value for k in AreaKind]
