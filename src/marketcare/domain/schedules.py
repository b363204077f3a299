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
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from dateutil import rrule as du_rrule
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from marketcare.domain.timespec import (
    DueSpec,
    Hours,
    TimeSpec,
    parse_due,
    parse_duration,
    parse_hours,
    parse_timespec,
)
from marketcare.domain.vocabulary import WEEKDAYS, AreaKind, TaskKind
from marketcare.domain.yamlsource import Located, YamlSourceError, parse, read_text
from marketcare.errors import ScheduleError, SourceError

if TYPE_CHECKING:
    from marketcare.domain.inspections import InspectionPlan, InspectionTemplate

DEFAULT_ANCHOR = date(2020, 1, 6)  # a Monday; only rules that depend on their start use it
_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Id = Annotated[str, Field(pattern=_ID)]
_RRULE_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _duration(value: object) -> timedelta:
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
TimeOfDay = Annotated[TimeSpec, BeforeValidator(parse_timespec)]
Due = Annotated[DueSpec, BeforeValidator(parse_due)]


class Area(_Strict):
    id: Id
    name: str | None = None
    kind: AreaKind
    m2: PositiveFloat


class ClosedSpan(_Strict):
    date: dt.date
    until: dt.date | None = None
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
    if isinstance(value, date) and not isinstance(value, datetime):
        return {"date": value}
    return value


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


class Market(_Strict):
    id: Id
    name: str = Field(min_length=1)
    sub_district: str = Field(min_length=1)
    timezone: str | None = None
    hours: dict[str, str | None]
    special_hours: dict[date, str] = Field(default_factory=dict)
    closed: list[Annotated[ClosedSpan, BeforeValidator(_closed_item)]] = Field(default_factory=list)
    areas: list[Area] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, str | None]) -> dict[str, str | None]:
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

    @field_validator("special_hours")
    @classmethod
    def _special(cls, value: dict[date, str]) -> dict[date, str]:
        for text in value.values():
            parse_hours(text)
        return value

    @model_validator(mode="after")
    def _unique_areas(self) -> Market:
        ids = [a.id for a in self.areas]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"area id {dupes[0]!r} is used twice in market {self.id!r}")
        return self

    @cached_property
    def weekly_hours(self) -> tuple[Hours | None, ...]:
        table: list[Hours | None] = [None] * 7
        for key, text in self.hours.items():
            for d in _day_names(str(key)):
                table[d] = parse_hours("closed" if text is None else text)
        return tuple(table)

    @cached_property
    def _special_parsed(self) -> dict[date, Hours | None]:
        return {d: parse_hours(t) for d, t in self.special_hours.items()}

    def closed_reason(self, day: date) -> str | None:
        """Why the market is closed on ``day`` (a declared closure), or None."""
        # spans are compared, not expanded into days: 'until: 9999-12-31' is a valid span
        for span in self.closed:
            if span.date <= day <= span.last:
                return span.reason
        return None

    def hours_on(self, day: date) -> Hours | None:
        """Opening hours on ``day``, None when closed (declared, or a closed weekday)."""
        if self.closed_reason(day) is not None:
            return None
        if day in self._special_parsed:
            return self._special_parsed[day]
        return self.weekly_hours[day.weekday()]


def _recurrence_shorthand(value: object) -> object:
    if isinstance(value, str):
        key = value.strip().lower()
        forms: dict[str, dict[str, Any]] = {
            "daily": {"every_days": 1},
            "weekdays": {"weekly": list(WEEKDAYS[:5])},
            "weekends": {"weekly": ["sat", "sun"]},
            "xun": {"monthly_days": [1, 11, 21]},
            "every_xun": {"monthly_days": [1, 11, 21]},
            "monthly": {"monthly_days": [1]},
        }
        if key in forms:
            return forms[key]
        if key in WEEKDAYS:
            return {"weekly": [key]}
        if key.startswith(("freq=", "rrule:", "dtstart")):
            return {"rrule": value}
        raise ValueError(
            f"unknown recurrence {value!r}: use daily, weekdays, weekends, xun (1st/11th/21st), "
            "monthly, a weekday (mon..sun), or a mapping such as {every_weeks: 2, anchor: 2026-01-05}"
        )
    return value


class Recurrence(_Strict):
    """Which local days (or times) a task falls on; compiles to one RFC 5545 rule."""

    every_days: int | None = Field(default=None, ge=1, le=366)
    weekly: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    every_weeks: int | None = Field(default=None, ge=1, le=52)
    monthly_days: list[int] | None = None
    rrule: str | None = None
    anchor: date | None = None

    @field_validator("monthly_days")
    @classmethod
    def _days(cls, value: list[int] | None) -> list[int] | None:
        for d in value or []:
            if not (1 <= d <= 31 or -31 <= d <= -1):
                raise ValueError(f"day of month {d} is outside 1..31 (or -1 for the last day)")
        if value is not None and not value:
            raise ValueError("monthly_days is empty")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Recurrence:
        forms = [
            n
            for n in ("every_days", "weekly", "every_weeks", "monthly_days", "rrule")
            if getattr(self, n) is not None
        ]
        if self.every_weeks is not None and self.weekly is not None:
            forms.remove("weekly")
        if len(forms) != 1:
            raise ValueError(
                "give exactly one of every_days, weekly, every_weeks (with anchor), "
                f"monthly_days or rrule; got {', '.join(forms) or 'none'}"
            )
        if self.weekly is not None and not self.weekly:
            raise ValueError("weekly is empty")
        if self.every_weeks is not None and self.anchor is None:
            raise ValueError("every_weeks needs an anchor date (the first day of the cycle)")
        if self.every_days not in (None, 1) and self.anchor is None:
            raise ValueError("every_days greater than 1 needs an anchor date")
        rule = self.compile()  # raises ValueError with the reason
        start = self.dtstart
        if not rule.between(start, start + timedelta(days=3660), inc=True, count=1):
            raise ValueError(
                f"recurrence {self.rrule_text!r} never fires in the ten years from {start:%Y-%m-%d}"
            )
        return self

    @property
    def dtstart(self) -> datetime:
        return datetime.combine(self.anchor or DEFAULT_ANCHOR, datetime.min.time())

    @property
    def rrule_text(self) -> str:
        """The RFC 5545 RRULE this recurrence means (DTSTART is the anchor)."""
        if self.rrule is not None:
            return self.rrule.strip()
        if self.every_weeks is not None:
            days: list[str] = (
                list(self.weekly) if self.weekly else [WEEKDAYS[self.dtstart.weekday()]]
            )
            byday = ",".join(_RRULE_DAYS[WEEKDAYS.index(d)] for d in days)
            return f"FREQ=WEEKLY;INTERVAL={self.every_weeks};BYDAY={byday};WKST=MO"
        if self.weekly is not None:
            byday = ",".join(_RRULE_DAYS[WEEKDAYS.index(d)] for d in self.weekly)
            return f"FREQ=WEEKLY;BYDAY={byday}"
        if self.monthly_days is not None:
            return f"FREQ=MONTHLY;BYMONTHDAY={','.join(str(d) for d in self.monthly_days)}"
        interval = self.every_days or 1
        return "FREQ=DAILY" if interval == 1 else f"FREQ=DAILY;INTERVAL={interval}"

    def compile(self) -> du_rrule.rrule:
        return _compile_rrule(self.rrule_text, self.dtstart)


@cache
def _compile_rrule(text: str, dtstart: datetime) -> du_rrule.rrule:
    body = text
    if not re.match(r"^(RRULE:|DTSTART)", body, re.I) and "\n" not in body:
        body = f"RRULE:{body}"
    try:
        rule = du_rrule.rrulestr(body, dtstart=dtstart, cache=True, ignoretz=True)
    except Exception as exc:  # dateutil raises many kinds for a bad rule
        raise ValueError(f"bad rrule {text!r}: {exc}") from None
    if not isinstance(rule, du_rrule.rrule):
        raise ValueError(f"bad rrule {text!r}: give one RRULE (with an optional DTSTART)")
    if getattr(rule, "_freq", None) in (du_rrule.MINUTELY, du_rrule.SECONDLY):
        raise ValueError(f"rrule {text!r} fires more often than hourly; that is not supported")
    if getattr(rule, "_dtstart").tzinfo is not None:  # noqa: B009
        raise ValueError(f"rrule {text!r}: DTSTART must be a local time without a zone")
    return rule


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

    @model_validator(mode="after")
    def _coherent(self) -> Task:
        if self.area_kinds is not None and self.scope != "area":
            raise ValueError("area_kinds filters areas; it needs scope: area")
        ids = [c.id for c in self.checklist]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"checklist item id {dupes[0]!r} is used twice")
        if self.kind == TaskKind.PEST_CONTROL and not self.contractor:
            raise ValueError("a pest_control task names its contractor")
        if self.opens.anchor != "clock" and re.search(
            r"BY(HOUR|MINUTE)=", self.recurrence.rrule_text, re.I
        ):
            raise ValueError(
                "a recurrence that gives times of day (BYHOUR/BYMINUTE) opens at those times: "
                f"write a clock time for opens (e.g. '09:00'), not {str(self.opens)!r}"
            )
        return self


_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _email(value: object) -> object:
    if isinstance(value, str) and not _EMAIL.match(value.strip()):
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


class Contract(_Strict):
    """A pest-control contractor's agreed visits per market per month (灭四害 contract)."""

    contractor: str = Field(min_length=1)
    markets: Literal["all"] | list[Id] = "all"
    visits_per_month: int = Field(ge=1, le=31)


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
        raise ValueError(f"bad time {value!r}: write {forms}")
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

    @cached_property
    def digest(self) -> str:
        """SHA-256 over the file names and texts: the identity of a schedule version."""
        return sources_digest(self.default_timezone, self.sources)

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


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# ---------------------------------------------------------------- loading


def schedule_files(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Expand directories into their ``*.yaml``/``*.yml`` files, with stable display names."""
    found: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            for f in sorted([*p.glob("*.yaml"), *p.glob("*.yml")]):
                found.append((f, str(f)))
        else:
            found.append((p, str(p)))
    return found


def load_paths(paths: Iterable[Path], *, default_timezone: str) -> Schedule:
    """Load and validate schedule files or directories; raise ScheduleError with every problem."""
    texts: dict[str, str] = {}
    errors: list[SourceError] = []
    for path, name in schedule_files(paths):
        try:
            texts[name] = read_text(path, display=name)
        except YamlSourceError as exc:
            errors.append(exc.error)
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
    for name in sorted(texts):
        try:
            located = parse(texts[name], name)
        except YamlSourceError as exc:
            errors.append(exc.error)
            continue
        if not isinstance(located.data, dict):
            errors.append(
                located.error((), "a schedule file is a mapping with 'markets' and/or 'tasks'")
            )
            continue
        raw.append(located)
        try:
            parsed.append((located, ScheduleFile.model_validate(located.data)))
        except ValidationError as exc:
            errors.extend(_located_errors(exc, located))
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
    markets = tuple(m for _, f in parsed for m in f.markets)
    tasks = tuple(t for _, f in parsed for t in f.tasks)
    reports = tuple(r for _, f in parsed for r in f.reports)
    contracts = tuple(c for _, f in parsed for c in f.contracts)
    people = tuple(p for _, f in parsed for p in f.people)
    escalation = tuple(e for _, f in parsed for e in f.escalation)
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
        inspection_templates=tuple(t for f in checked for t in f.inspection_templates),
        inspection_plans=tuple(p for f in checked for p in f.inspections),
    )


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
    sections = (
        ("markets", market_ids, "market"),
        ("tasks", task_ids, "task"),
        ("reports", report_ids, "report"),
        ("people", person_ids, "person"),
        ("escalation", policy_ids, "escalation policy"),
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
        (lo, sec) for lo in parsed for sec in ("tasks", "reports", "contracts", "people")
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


def _located_errors(exc: ValidationError, located: Located) -> list[SourceError]:
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
            msg = f"{err['input']!r} is not one of {expected}"
            close = difflib.get_close_matches(str(err["input"]), _enum_values(loc), n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
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
    "closed": ClosedSpan,
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
    for part in loc:
        if isinstance(part, str) and part in _MODEL_AT:
            model = _MODEL_AT[part]
        elif isinstance(part, str) and part in MODEL_AT:
            model = MODEL_AT[part]
    return model


def _valid_keys(loc: tuple[str | int, ...]) -> list[str]:
    return sorted(_model_for(loc).model_fields)


def _enum_values(loc: tuple[str | int, ...]) -> list[str]:
    names = {str(p) for p in loc}
    if names & {"kind"} and "tasks" in names and "checklist" not in names:
        return [k.value for k in TaskKind]
    return [k.value for k in AreaKind]


def sources_digest(default_timezone: str, sources: Mapping[str, str]) -> str:
    """A schedule version's identity from its exact texts (``audit verify`` recomputes it)."""
    h = hashlib.sha256()
    h.update(default_timezone.encode())
    for name in sorted(sources):
        h.update(b"\x00" + name.encode() + b"\x00" + sources[name].encode())
    return h.hexdigest()
