"""Errors that are part of the interface: each says what was wrong and where.

Every expected failure is a ``MarketcareError`` carrying, as data, its *kind* (what the
caller can do about it) and, where one input is at fault, its *field*. The CLI
(``cli/common.py``) and the web app (``web/app.py``) each turn the kind into an answer in
one place — an exit code, an HTTP status — so no layer ever reads a message's text to
decide how to answer. The policy is written down in docs/cli.md and docs/web.md.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self


class Kind(enum.StrEnum):
    """What the caller can do about a failure; the CLI and the web map each to an answer."""

    #: the input is wrong: fix it and send it again (exit 1; HTTP 422, a page 400)
    BAD_INPUT = "bad_input"
    #: the record does not exist, or the caller may not see it (exit 1; HTTP 404)
    NOT_FOUND = "not_found"
    #: the record's state (or a token's earlier use) does not allow this (exit 1; HTTP 409)
    CONFLICT = "conflict"
    #: not allowed here and now, whatever the input (exit 1; HTTP 403)
    REFUSED = "refused"
    #: the database or a folder cannot be used for now: nothing changed, try again later
    #: (exit 75; HTTP 503 with Retry-After)
    UNAVAILABLE = "unavailable"


class MarketcareError(Exception):
    """Base for every error a user may see; the CLI prints it without a traceback.

    ``field`` names the input at fault as the caller sent it (an API body field, a form
    field, a command-line option); ``kind`` may be given per error where a subclass's
    default does not fit.
    """

    kind: Kind = Kind.BAD_INPUT

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        kind: Kind | None = None,
        by_field: Sequence[tuple[str, str]] = (),
    ):
        super().__init__(message)
        self.field = field
        #: (field, message) of each input at fault, where several are: the message joins
        #: them as ``field: message; …``, and a caller that names inputs its own way (the
        #: CLI names options as typed) builds its own from these, never from the text
        self.by_field = tuple(by_field)
        if kind is not None:
            self.kind = kind

    @classmethod
    def of_fields(cls, by_field: Sequence[tuple[str, str]]) -> Self:
        """One error for several inputs at fault, the first one's field as ``field``."""
        return cls(
            "; ".join(f"{f}: {m}" for f, m in by_field),
            by_field[0][0] if by_field else None,
            by_field=by_field,
        )

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class BadInput(MarketcareError):
    """The input is wrong; the message says what would be valid."""

    kind = Kind.BAD_INPUT


class NotFound(MarketcareError):
    """A referenced record does not exist (or is not the caller's to see)."""

    kind = Kind.NOT_FOUND


class Conflict(MarketcareError):
    """The record's state, or an earlier use of the same token, does not allow this."""

    kind = Kind.CONFLICT


class Refused(MarketcareError):
    """Not allowed here and now, whatever the input (a running daemon, a tampered backup)."""

    kind = Kind.REFUSED


class Unavailable(MarketcareError):
    """The database or a folder cannot be used for now; nothing was changed.

    ``retry_after`` is the caller's hint, in seconds, for when to try again (a restarting
    database is back in seconds; a full disk needs someone to act).
    """

    kind = Kind.UNAVAILABLE

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, order=True)
class SourceError:
    """One problem in one input file, located as an editor would show it (1-based)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ScheduleError(BadInput):
    """The schedules could not be loaded; carries every problem found, not just the first."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = sorted(set(errors))  # one problem found by two checks is said once
        super().__init__("\n".join(str(e) for e in self.errors))


class SettingsError(BadInput):
    """A setting is wrong; the message names it."""


class TickRefused(BadInput):
    """A completion was not accepted; the message says why and what would be valid."""
