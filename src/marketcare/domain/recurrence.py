"""Recurrence rules in the operator's terms, and seasons of the year.

dateutil evaluates RFC 5545 rules, but it accepts rules that make no sense for a market
calendar (``INTERVAL=0`` loops for ever, ``BYSECOND`` makes two obligations one minute
holds) and words its refusals in its own internals. So a rule is read here first, part by
part: what cannot be right for this domain is refused with a message that says how to
write it, and only a rule known to be sound reaches dateutil.

Occurrences are computed one calendar year at a time and kept (a rule evaluated from its
start in 2020 for every one-day chunk was most of the cost of materialising), so asking
for a day costs a dictionary look-up and a bisection.
"""

from __future__ import annotations

import bisect
import calendar
import difflib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from dateutil import rrule as du

FREQS = {
    "YEARLY": du.YEARLY,
    "MONTHLY": du.MONTHLY,
    "WEEKLY": du.WEEKLY,
    "DAILY": du.DAILY,
    "HOURLY": du.HOURLY,
}
_UNITS = {
    du.YEARLY: "years",
    du.MONTHLY: "months",
    du.WEEKLY: "weeks",
    du.DAILY: "days",
    du.HOURLY: "hours",
}
RRULE_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
#: an INTERVAL above this is certainly a typo (every 367 days?)
MAX_INTERVAL = 366
#: a COUNT above this is certainly a typo; UNTIL says "until a date"
MAX_COUNT = 10_000
#: the most obligations one rule may make in one day (every hour, or BYHOUR × BYMINUTE)
MAX_PER_DAY = 24
#: a rule must fire at least once within this span after its start
FIRES_WITHIN = timedelta(days=3660)
_PARTS = (
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "WKST",
    "BYMONTH",
    "BYWEEKNO",
    "BYYEARDAY",
    "BYMONTHDAY",
    "BYDAY",
    "BYHOUR",
    "BYMINUTE",
    "BYSETPOS",
)
#: part name → (dateutil keyword, lowest, highest, zero allowed, negative allowed)
_NUMERIC: dict[str, tuple[str, int, int, bool]] = {
    "BYMONTH": ("bymonth", 1, 12, False),
    "BYWEEKNO": ("byweekno", 1, 53, True),
    "BYYEARDAY": ("byyearday", 1, 366, True),
    "BYMONTHDAY": ("bymonthday", 1, 31, True),
    "BYHOUR": ("byhour", 0, 23, False),
    "BYMINUTE": ("byminute", 0, 59, False),
    "BYSETPOS": ("bysetpos", 1, 366, True),
}
_RANGE_WORDS = {
    "BYMONTH": "months are 1 to 12",
    "BYWEEKNO": "weeks of the year are 1 to 53, or -1 to -53 from the end",
    "BYYEARDAY": "days of the year are 1 to 366, or -1 to -366 from the end",
    "BYMONTHDAY": "days of the month are 1 to 31, or -1 (the last day) to -31",
    "BYHOUR": "hours are 0 to 23",
    "BYMINUTE": "minutes are 0 to 59",
    "BYSETPOS": "positions are 1 to 366, or -1 (the last) to -366",
}
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2})(Z?))?$")


class RuleError(ValueError):
    """A rule that cannot be right; the message says what to write instead."""


@dataclass(frozen=True)
class ParsedRule:
    """One RRULE with its optional DTSTART, EXDATE and RDATE lines, checked and ready."""

    text: str
    freq: int
    interval: int
    count: int | None
    until: datetime | None
    wkst: int | None
    by: tuple[tuple[str, tuple[int, ...]], ...]
    byday: tuple[tuple[int, int], ...]  # (weekday, n); n = 0 for every such weekday
    dtstart: datetime | None
    exdates: tuple[date | datetime, ...]
    rdates: tuple[date | datetime, ...]

    @property
    def parts(self) -> dict[str, tuple[int, ...]]:
        return dict(self.by)

    @property
    def timed(self) -> bool:
        """True when the rule gives times of day (so each time is its own obligation)."""
        parts = self.parts
        return (
            self.freq == du.HOURLY
            or "BYHOUR" in parts
            or "BYMINUTE" in parts
            or (self.dtstart is not None and self.dtstart.time() != time(0))
        )

    def build(
        self, dtstart: datetime, *, until: datetime | None = None, moved: datetime | None = None
    ) -> du.rrule:
        """The dateutil rule starting at ``dtstart`` (the rule's own DTSTART wins); with
        ``until``, one that stops there, so that evaluating it is bounded work; with
        ``moved``, one that starts there instead (see :func:`start_near`)."""
        kwargs: dict[str, object] = {_NUMERIC[n][0]: v for n, v in self.by}
        if self.byday:
            kwargs["byweekday"] = [du.weekday(d, n or None) for d, n in self.byday]
        if self.wkst is not None:
            kwargs["wkst"] = self.wkst
        end, count = self.until, self.count
        if until is not None:  # a bounded evaluation: stop at ``until`` whatever COUNT says
            end, count = (until if end is None else min(end, until)), None
        return du.rrule(
            self.freq,  # type: ignore[arg-type]
            dtstart=moved or self.dtstart or dtstart,
            interval=self.interval,
            count=count,
            until=end,
            **kwargs,  # type: ignore[arg-type]
        )


def start_near(rule: ParsedRule, dtstart: datetime, lo: datetime) -> datetime:
    """A start later than ``dtstart`` that gives ``rule`` the same occurrences from ``lo``
    on, so that evaluating a year does not walk from a distant start (an anchor in 1900,
    a ``DTSTART:00010101`` typed by mistake: two thousand years of hours, a minute of
    work for each year asked). The start moves by whole periods of the rule (INTERVAL
    times its FREQ), which keeps every part the start decides (weekday, day of month,
    time of day, which weeks count), and stays a period before ``lo``. A rule with COUNT
    counts from its start, so it keeps it; so do months from a 29th-31st and years from
    29 February, which not every period has."""
    if rule.count is not None or dtstart >= lo:
        return dtstart
    step = {
        du.HOURLY: timedelta(hours=1),
        du.DAILY: timedelta(days=1),
        du.WEEKLY: timedelta(weeks=1),
    }
    if rule.freq in step:
        period = step[rule.freq] * rule.interval
        periods = (lo - dtstart) // period - 1
        return dtstart + period * periods if periods > 0 else dtstart
    if rule.freq == du.MONTHLY and dtstart.day <= 28:
        months = ((lo.year - dtstart.year) * 12 + lo.month - dtstart.month) // rule.interval - 1
        if months <= 0:
            return dtstart
        total = dtstart.month - 1 + months * rule.interval
        return dtstart.replace(year=dtstart.year + total // 12, month=total % 12 + 1)
    if rule.freq == du.YEARLY and (dtstart.month, dtstart.day) != (2, 29):
        years = (lo.year - dtstart.year) // rule.interval - 1
        return dtstart.replace(year=dtstart.year + years * rule.interval) if years > 0 else dtstart
    return dtstart


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]}?" if close else f" (parts are {', '.join(options)})"


def _int(name: str, raw: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", raw.strip()):
        raise RuleError(f"{name}={raw}: {raw!r} is not a whole number")
    if len(raw) > 12:
        raise RuleError(f"{name}={raw[:14]}…: the number is far too large")
    return int(raw)


def parse_stamp(raw: str, what: str) -> date | datetime:
    """Read ``20270210`` or ``20270210T090000`` (local: no zone) as a date or a time."""
    m = _DATE.match(raw.strip())
    if m is None:
        raise RuleError(
            f"{what} {raw!r}: write a date as YYYYMMDD (e.g. 20270210) or a local time as "
            "YYYYMMDDTHHMMSS (e.g. 20270210T090000)"
        )
    if m.group(7):
        raise RuleError(
            f"{what} {raw!r}: times in a schedule are local to each market; drop the 'Z'"
        )
    try:
        day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        why = describe_bad_date(m.group(1), m.group(2), m.group(3))
        raise RuleError(f"{what} {raw!r}: {why}") from None
    if m.group(4) is None:
        return day
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hour > 23 or minute > 59 or second > 59:
        raise RuleError(f"{what} {raw!r}: {hour:02d}:{minute:02d}:{second:02d} is not a time")
    if second:
        raise RuleError(f"{what} {raw!r}: obligations are scheduled to the minute; use seconds 00")
    return datetime.combine(day, time(hour, minute))


def describe_bad_date(year: str, month: str, day: str) -> str:
    """Why a year, month and day do not make a date, in words."""
    y, m, d = int(year), int(month), int(day)
    if not 1 <= y <= 9999:
        return f"year {y} is out of range"
    if not 1 <= m <= 12:
        return f"month {m} does not exist (months are 01 to 12)"
    last = calendar.monthrange(y, m)[1]
    return f"{calendar.month_name[m]} {y} has {last} days, not {d}"


def _line(name: str, raw: str) -> tuple[str, str]:
    """Split ``NAME;PARAM=X:VALUE`` into the name's parameters and the value."""
    head, sep, value = raw.partition(":")
    if not sep:
        raise RuleError(f"{name} line {raw!r}: write it as {name}:VALUE")
    params = head.split(";")[1:]
    for p in params:
        key, _, val = p.partition("=")
        if key == "TZID":
            raise RuleError(
                f"{name} {raw!r}: times in a schedule are local to each market; drop the TZID"
            )
        if key != "VALUE" or val not in ("DATE", "DATE-TIME"):
            raise RuleError(f"{name} {raw!r}: unknown parameter {p!r}")
    return ";".join(params), value


def parse_rule(text: str) -> ParsedRule:
    """Read an RFC 5545 rule as a schedule may give it; raise RuleError saying what is wrong.

    Accepted: one ``RRULE`` (the ``RRULE:`` prefix is optional), optionally with a
    ``DTSTART`` (local, no zone), ``EXDATE`` and ``RDATE`` lines.
    """
    if not isinstance(text, str) or not text.strip():
        raise RuleError("the rule is empty; write e.g. FREQ=WEEKLY;BYDAY=MO")
    if len(text) > 2000:
        raise RuleError("the rule is longer than 2000 characters")
    rule_body: str | None = None
    dtstart: datetime | None = None
    exdates: list[date | datetime] = []
    rdates: list[date | datetime] = []
    for raw in text.upper().split():
        name = re.split(r"[;:]", raw, maxsplit=1)[0]
        if raw.startswith("FREQ=") or name == "RRULE":
            if rule_body is not None:
                raise RuleError("give one RRULE; combine its days into one rule (BYDAY=MO,TH)")
            rule_body = raw.removeprefix("RRULE:")
        elif name == "DTSTART":
            if dtstart is not None:
                raise RuleError("DTSTART is given twice")
            _, value = _line("DTSTART", raw)
            stamp = parse_stamp(value, "DTSTART")
            dtstart = stamp if isinstance(stamp, datetime) else datetime.combine(stamp, time(0))
        elif name in ("EXDATE", "RDATE"):
            _, value = _line(name, raw)
            target = exdates if name == "EXDATE" else rdates
            target.extend(parse_stamp(v, name) for v in value.split(",") if v)
        elif name in ("EXRULE",):
            raise RuleError("EXRULE is not supported; list the exceptions with EXDATE")
        else:
            hint = difflib.get_close_matches(name, ["RRULE", "DTSTART", "EXDATE", "RDATE"], n=1)
            raise RuleError(
                f"unknown line {raw[:40]!r}: a rule is an RRULE (FREQ=…), optionally with "
                "DTSTART, EXDATE and RDATE lines" + (f"; did you mean {hint[0]}?" if hint else "")
            )
    if rule_body is None:
        raise RuleError("no RRULE: write e.g. FREQ=WEEKLY;BYDAY=MO")
    values: dict[str, str] = {}
    for chunk in rule_body.split(";"):
        if not chunk:
            continue
        key, sep, value = chunk.partition("=")
        if not sep or not value:
            raise RuleError(f"{chunk!r} is not a rule part: write NAME=VALUE, e.g. BYDAY=MO")
        if key == "BYSECOND":
            raise RuleError(
                "BYSECOND is not supported: obligations are scheduled to the minute; remove it"
            )
        if key not in _PARTS:
            raise RuleError(f"unknown rule part {key!r}{_suggest(key, _PARTS)}")
        if key in values:
            raise RuleError(f"{key} is given twice")
        values[key] = value
    if "FREQ" not in values:
        raise RuleError("the rule has no FREQ: write e.g. FREQ=WEEKLY;BYDAY=MO")
    freq_name = values["FREQ"]
    if freq_name in ("MINUTELY", "SECONDLY"):
        raise RuleError(
            f"FREQ={freq_name} fires more often than hourly, which a market schedule cannot "
            "mean; for rounds while the market is open write {every_hours: 2}"
        )
    if freq_name not in FREQS:
        raise RuleError(f"FREQ={freq_name}: use YEARLY, MONTHLY, WEEKLY, DAILY or HOURLY")
    freq = FREQS[freq_name]
    interval = _int("INTERVAL", values["INTERVAL"]) if "INTERVAL" in values else 1
    if not 1 <= interval <= MAX_INTERVAL:
        raise RuleError(
            f"INTERVAL={values['INTERVAL']}: the interval is how many {_UNITS[freq]} pass "
            f"between occurrences, a whole number from 1 to {MAX_INTERVAL} "
            "(INTERVAL=2 is every other one)"
        )
    count = None
    if "COUNT" in values:
        count = _int("COUNT", values["COUNT"])
        if not 1 <= count <= MAX_COUNT:
            raise RuleError(
                f"COUNT={values['COUNT']}: a rule may count 1 to {MAX_COUNT} occurrences; "
                "for an end date write UNTIL=YYYYMMDD"
            )
    until = None
    if "UNTIL" in values:
        if count is not None:
            raise RuleError("give COUNT or UNTIL, not both")
        stamp = parse_stamp(values["UNTIL"], "UNTIL")
        until = stamp if isinstance(stamp, datetime) else datetime.combine(stamp, time(23, 59))
    wkst = None
    if "WKST" in values:
        if values["WKST"] not in RRULE_DAYS:
            raise RuleError(f"WKST={values['WKST']}: use one of {', '.join(RRULE_DAYS)}")
        wkst = RRULE_DAYS.index(values["WKST"])
    by: list[tuple[str, tuple[int, ...]]] = []
    for name, (_kw, lo, hi, negative) in _NUMERIC.items():
        if name not in values:
            continue
        items = [_int(name, v) for v in values[name].split(",")]
        if len(items) > 366:
            raise RuleError(f"{name} lists more than 366 values")
        for v in items:
            if not (lo <= v <= hi or (negative and -hi <= v <= -1)):
                raise RuleError(f"{name}={v}: {_RANGE_WORDS[name]}")
        by.append((name, tuple(sorted(set(items)))))
    parts = dict(by)
    if "BYWEEKNO" in parts and freq != du.YEARLY:
        raise RuleError("BYWEEKNO needs FREQ=YEARLY")
    byday: list[tuple[int, int]] = []
    if "BYDAY" in values:
        for item in values["BYDAY"].split(","):
            m = re.fullmatch(r"([+-]?\d{1,2})?([A-Z]{2})", item)
            if m is None or m.group(2) not in RRULE_DAYS:
                raise RuleError(
                    f"BYDAY={item}: write weekdays as {', '.join(RRULE_DAYS)}, optionally with "
                    "a position (1MO is the first Monday, -1FR the last Friday)"
                )
            n = int(m.group(1)) if m.group(1) else 0
            if n:
                if freq not in (du.MONTHLY, du.YEARLY):
                    raise RuleError(
                        f"BYDAY={item}: a position before the weekday (the first Monday, "
                        "the last Friday) needs FREQ=MONTHLY or FREQ=YEARLY"
                    )
                top = 5 if freq == du.MONTHLY or "BYMONTH" in parts else 53
                if not 1 <= abs(n) <= top:
                    raise RuleError(f"BYDAY={item}: the position is 1 to {top}, or -1 to -{top}")
            byday.append((RRULE_DAYS.index(m.group(2)), n))
    if "BYSETPOS" in parts and not (byday or len(parts) > 1):
        raise RuleError("BYSETPOS picks among the days other BY parts give; add e.g. BYDAY=MO")
    hours = len(parts.get("BYHOUR", ())) or (-(-24 // interval) if freq == du.HOURLY else 1)
    per_day = hours * (len(parts.get("BYMINUTE", ())) or 1)
    if per_day > MAX_PER_DAY:
        raise RuleError(
            f"the rule fires {per_day} times a day; at most {MAX_PER_DAY} (every hour) — for "
            "rounds while the market is open write {every_hours: 2}"
        )
    parsed = ParsedRule(
        text=text.strip(),
        freq=freq,
        interval=interval,
        count=count,
        until=until,
        wkst=wkst,
        by=tuple(by),
        byday=tuple(sorted(set(byday))),
        dtstart=dtstart,
        exdates=tuple(exdates),
        rdates=tuple(rdates),
    )
    try:  # the parts were checked one by one; dateutil judges their combination
        parsed.build(datetime(2020, 1, 6))
    except (ValueError, TypeError, OverflowError) as exc:
        raise RuleError(f"these parts cannot be combined ({exc})") from None
    return parsed


# ---------------------------------------------------------------- seasons

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH_DAY = re.compile(r"^(\d{1,2})-(\d{1,2})$")


@dataclass(frozen=True)
class Season:
    """A span of every year, both ends included; it may run over the new year (nov–feb)."""

    start: tuple[int, int]  # (month, day)
    end: tuple[int, int]

    def contains(self, day: date) -> bool:
        md = (day.month, day.day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end

    @property
    def whole_months(self) -> bool:
        return self.start[1] == 1 and self.end[1] == calendar.monthrange(2024, self.end[0])[1]

    def months(self) -> list[int]:
        return [m for m in range(1, 13) if self.contains(date(2024, m, 15))]

    def __str__(self) -> str:
        if self.whole_months:
            a, b = _MONTHS[self.start[0] - 1], _MONTHS[self.end[0] - 1]
            return a if a == b else f"{a}-{b}"
        return f"{self.start[0]:02d}-{self.start[1]:02d}..{self.end[0]:02d}-{self.end[1]:02d}"


def _month_day(value: object, what: str) -> tuple[int, int]:
    if isinstance(value, date):
        raise ValueError(
            f"{what}: {value.isoformat()} is a date; a season repeats every year, so write "
            f"the month and day only: '{value:%m-%d}'"
        )
    m = _MONTH_DAY.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{what}: write a month and day as MM-DD, e.g. '04-01', got {value!r}")
    month, day = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        raise ValueError(f"{what}: month {month} does not exist (months are 01 to 12)")
    last = calendar.monthrange(2024, month)[1]  # a leap year: 02-29 is a valid boundary
    if not 1 <= day <= last:
        raise ValueError(f"{what}: {calendar.month_name[month]} has at most {last} days")
    return month, day


def _month(word: str) -> int | None:
    w = word.strip().lower()[:3]
    return _MONTHS.index(w) + 1 if w in _MONTHS else None


def parse_season(value: object) -> Season:
    """Read ``apr-oct``, ``jul`` or ``{from: 04-15, until: 10-15}`` as a season."""
    if isinstance(value, Season):
        return value
    if isinstance(value, dict):
        extra = set(map(str, value)) - {"from", "until"}
        if extra:
            raise ValueError(
                f"unknown key {sorted(extra)[0]!r} in a season; write {{from: MM-DD, until: MM-DD}}"
            )
        if "from" not in value or "until" not in value:
            raise ValueError("a season needs both from and until, e.g. {from: 04-01, until: 10-31}")
        return Season(_month_day(value["from"], "from"), _month_day(value["until"], "until"))
    if isinstance(value, str):
        words = [w for w in re.split(r"\s*(?:-|–|to)\s*", value.strip()) if w]
        months = [_month(w) for w in words]
        if 1 <= len(words) <= 2 and all(months) and len(words[0]) >= 3:
            first, last = months[0], months[-1]
            assert first is not None and last is not None
            return Season((first, 1), (last, calendar.monthrange(2024, last)[1]))
    shown = value.isoformat() if isinstance(value, date) else repr(value)
    raise ValueError(
        f"a season is a span of months such as 'apr-oct' or 'nov-feb', or "
        f"{{from: 04-15, until: 10-15}} (it repeats every year); got {shown}"
    )


# ---------------------------------------------------------------- occurrences, a year at a time

_cache_lock = threading.Lock()
_year_cache: OrderedDict[tuple[Hashable, int], tuple[datetime, ...]] = OrderedDict()
_CACHE_SIZE = 8192


def year_occurrences(
    key: Hashable, year: int, compute: Callable[[datetime, datetime], list[datetime]]
) -> tuple[datetime, ...]:
    """The sorted occurrences of one calendar year, computed once per (key, year)."""
    with _cache_lock:
        found = _year_cache.get((key, year))
        if found is not None:
            _year_cache.move_to_end((key, year))
            return found
    lo = datetime(year, 1, 1)
    hi = datetime(year + 1, 1, 1) if year < 9999 else datetime(9999, 12, 31, 23, 59)
    result = tuple(compute(lo, hi))
    with _cache_lock:
        _year_cache[(key, year)] = result
        while len(_year_cache) > _CACHE_SIZE:
            _year_cache.popitem(last=False)
    return result


def occurrences_between(
    key: Hashable,
    lo: datetime,
    hi: datetime,
    compute: Callable[[datetime, datetime], list[datetime]],
) -> list[datetime]:
    """Occurrences in ``[lo, hi]`` (naive local), from the per-year cache."""
    out: list[datetime] = []
    for year in range(max(lo.year, 1), min(hi.year, 9999) + 1):
        items = year_occurrences(key, year, compute)
        out.extend(items[bisect.bisect_left(items, lo) : bisect.bisect_right(items, hi)])
    return out


def day_span(day: date) -> tuple[datetime, datetime]:
    midnight = datetime.combine(day, time(0))
    return midnight, midnight + timedelta(days=1)
