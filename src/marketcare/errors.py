"""Errors that are part of the interface: each says what was wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


class MarketcareError(Exception):
    """Base for every error a user may see; the CLI prints it without a traceback."""


@dataclass(frozen=True, order=True)
class SourceError:
    """One problem in one input file, located as an editor would show it (1-based)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ScheduleError(MarketcareError):
    """The schedules could not be loaded; carries every problem found, not just the first."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class SettingsError(MarketcareError):
    """A setting is wrong; the message names it."""


class NotFound(MarketcareError):
    """A referenced record does not exist."""


class TickRefused(MarketcareError):
    """A completion was not accepted; the message says why and what would be valid."""
