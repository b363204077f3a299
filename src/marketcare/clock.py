"""The one clock the program reads (tests move it with time-machine), and the one way a
time is written in JSON."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None, zone: tzinfo) -> str | None:
    """A time as every JSON answer writes it (the CLI's ``--json`` and the API alike):
    ISO 8601 in ``zone`` (the market's, or the installation's ``timezone``) with its
    offset, to the second: ``2026-11-27T18:30:00+08:00``. A naive value is UTC."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(zone).isoformat(timespec="seconds")
