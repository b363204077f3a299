"""Durations, clock times and the "30 minutes after closing" language of schedules."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal

_UNITS = {
    "d": 1440,
    "day": 1440,
    "days": 1440,
    "h": 60,
    "hr": 60,
    "hrs": 60,
    "hour": 60,
    "hours": 60,
    "m": 1,
    "min": 1,
    "mins": 1,
    "minute": 1,
    "minutes": 1,
}
_PART = re.compile(r"\s*(\d{1,5})\s*([a-z]+)")


#: how a Chinese text writes the dash of a span of hours (05:30～18:30, 05:30至18:30)
_SPAN_DASHES = str.maketrans(dict.fromkeys("~～〜—–－至到", "-"))


def width_hint(text: object, parser: Callable[[str], object] | None = None) -> str:
    """How to fix a time typed with a Chinese input method (``０６：００``, ``05:30～18:30``),
    said after the message: the full-width colon looks like the one expected. The text
    in half-width is offered only when ``parser`` takes it."""
    if not isinstance(text, str):
        return ""
    odd = next((c for c in text if not c.isascii()), None)
    if odd is None:
        return ""
    plain = unicodedata.normalize("NFKC", text.translate(_SPAN_DASHES)).translate(_SPAN_DASHES)
    if plain.isascii() and parser is not None:
        try:
            parser(plain)
        except ValueError:
            pass
        else:
            return f"; write {plain!r} (half-width characters, not {odd!r})"
    return f"; {odd!r} is not a half-width character: write digits, ':', '+' and '-' in half-width"


def parse_duration(text: object) -> timedelta:
    """Parse ``30m``, ``1h30m``, ``2d``, ``90 minutes`` or ``0`` into a timedelta."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30m, 2h or 1d, got a boolean")
    if isinstance(text, int) and text == 0:
        return timedelta(0)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as 30m, 2h or 1d, got {text!r}")
    s = text.strip().lower()
    if s in {"0", "none"}:
        return timedelta(0)
    pos, minutes = 0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.group(2) not in _UNITS:
            raise ValueError(
                f"bad duration {text!r}: write it like 30m, 1h30m, 2h or 7d{width_hint(text, parse_duration)}"
            )
        minutes += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
        while pos < len(s) and s[pos] in " ,":
            pos += 1
    if pos == 0:
        raise ValueError(
            f"bad duration {text!r}: write it like 30m, 1h30m, 2h or 7d{width_hint(text, parse_duration)}"
        )
    if minutes > 366 * 1440:
        raise ValueError(f"duration {text!r} is longer than a year")
    return timedelta(minutes=minutes)


def format_duration(value: timedelta) -> str:
    total = int(value.total_seconds() // 60)
    days, rest = divmod(total, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return "".join(parts) or "0m"


_CLOCK = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


def parse_clock(text: str) -> tuple[time, bool]:
    """Parse ``HH:MM``; ``24:00`` is midnight at the end of the day (second value True)."""
    m = _CLOCK.match(text.strip())
    if not m:
        raise ValueError(
            f"bad time {text!r}: write it as HH:MM, e.g. 05:30 or 18:00{width_hint(text, parse_clock)}"
        )
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour == 24:
        if minute:
            raise ValueError(f"bad time {text!r}: 24:00 is the latest time of a day")
        return time(0, 0), True
    return time(hour, minute), False


@dataclass(frozen=True)
class Hours:
    """Opening hours of one day as minutes from that day's midnight (closing may pass 24:00)."""

    opens: int
    closes: int

    def __str__(self) -> str:
        def fmt(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{fmt(self.opens)}-{fmt(self.closes)}"


#: the ways of writing "open around the clock" (from the market's day boundary)
ROUND_THE_CLOCK = frozenset({"24h", "24 h", "24 hours", "24/7"})


def parse_hours(text: object, *, day_boundary: int = 0) -> Hours | None:
    """Parse ``05:30-18:30`` (a closing at or before the opening means after midnight), or
    ``24h``: open from the day boundary (minutes after midnight) to the next one."""
    if not isinstance(text, str):
        raise ValueError(f"expected opening hours such as '05:30-18:30' or 'closed', got {text!r}")
    s = text.strip().lower()
    if s == "closed":
        return None
    if s in ROUND_THE_CLOCK:
        return Hours(day_boundary, day_boundary + 1440)
    if "-" not in s:
        raise ValueError(
            f"bad hours {text!r}: write them as HH:MM-HH:MM, '24h' or 'closed'{width_hint(text, parse_hours)}"
        )
    left, right = (p.strip() for p in s.split("-", 1))
    o, o24 = parse_clock(left)
    c, c24 = parse_clock(right)
    if o24:
        raise ValueError(f"bad hours {text!r}: a market cannot open at 24:00")
    opens = o.hour * 60 + o.minute
    closes = 1440 if c24 else c.hour * 60 + c.minute
    if closes <= opens:
        closes += 1440
    return Hours(opens, closes)


Anchor = Literal["clock", "opening", "closing"]
_REL = re.compile(r"^(opening|closing|open|close)\s*(?:([+-])\s*(.+))?$")
_WORDS = re.compile(r"^(.+?)\s+(after|before)\s+(opening|closing|open|close)$")


@dataclass(frozen=True)
class TimeSpec:
    """A time of day, either on the clock or relative to the market's opening or closing."""

    anchor: Anchor
    minutes: int  # clock: minutes since midnight; opening/closing: signed offset

    def resolve(self, day: datetime, hours: Hours | None) -> datetime | None:
        """Local wall time on ``day`` (midnight), or None when the market has no hours."""
        if self.anchor == "clock":
            return day + timedelta(minutes=self.minutes)
        if hours is None:
            return None
        base = hours.opens if self.anchor == "opening" else hours.closes
        return day + timedelta(minutes=base + self.minutes)

    def __str__(self) -> str:
        if self.anchor == "clock":
            return f"{self.minutes // 60:02d}:{self.minutes % 60:02d}"
        if not self.minutes:
            return self.anchor
        sign = "+" if self.minutes > 0 else "-"
        return f"{self.anchor}{sign}{format_duration(timedelta(minutes=abs(self.minutes)))}"


def parse_timespec(text: object) -> TimeSpec:
    """Parse ``18:30``, ``closing``, ``closing+30m``, ``30 minutes after closing``."""
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text <= 1440:
        # YAML 1.1 reads an unquoted 18:30 as the base-60 number 1110
        clock = f"{text // 60:02d}:{text % 60:02d}"
        raise ValueError(f"got the number {text}; write a clock time in quotes, e.g. '{clock}'")
    if not isinstance(text, str):
        raise ValueError(
            f"expected a time such as '21:00', 'closing+30m' or '1h before opening', got {text!r}"
        )
    s = " ".join(text.strip().lower().split())
    if _CLOCK.match(s):
        t, end = parse_clock(s)
        return TimeSpec("clock", 1440 if end else t.hour * 60 + t.minute)
    anchor: Anchor
    m = _REL.match(s)
    if m:
        anchor = "opening" if m.group(1).startswith("open") else "closing"
        offset = 0
        if m.group(2):
            offset = int(parse_duration(m.group(3)).total_seconds() // 60)
            offset = -offset if m.group(2) == "-" else offset
        return TimeSpec(anchor, offset)
    w = _WORDS.match(s)
    if w:
        anchor = "opening" if w.group(3).startswith("open") else "closing"
        offset = int(parse_duration(w.group(1)).total_seconds() // 60)
        return TimeSpec(anchor, offset if w.group(2) == "after" else -offset)
    raise ValueError(
        f"bad time {text!r}: write a clock time (21:00), or relative to the market's hours "
        "(closing, closing+30m, '30 minutes after closing', '1h before opening')"
        + width_hint(text, parse_due)  # opens and due: a due may be +duration
    )


@dataclass(frozen=True)
class DueSpec:
    """When an obligation is due: a time of day, or a duration after it opens (``+2h``)."""

    at: TimeSpec | None = None
    after: timedelta | None = None

    def __str__(self) -> str:
        return f"+{format_duration(self.after)}" if self.after is not None else str(self.at)


def parse_due(text: object) -> DueSpec:
    if isinstance(text, str) and text.strip().startswith("+"):
        after = parse_duration(text.strip()[1:])
        if after <= timedelta(0):
            raise ValueError(f"bad due {text!r}: the duration after opening must be positive")
        return DueSpec(after=after)
    return DueSpec(at=parse_timespec(text))
