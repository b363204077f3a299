"""What every command shares: the app, the consoles, settings and the ledger's engine,
times and dates, and the one place that turns an expected failure into a message.

Only light modules are imported here: ``marketcare --help`` must not pay for SQLAlchemy,
pydantic or pandas. What a command needs it imports inside the command.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

from marketcare.clock import now_utc
from marketcare.errors import MarketcareError, ScheduleError, SettingsError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from marketcare.settings import Settings

app = typer.Typer(
    name="marketcare",
    help="Sanitation compliance for farmers' markets: schedules, a ledger and a daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

#: how a state is shown in a table (keys are the ``State`` values)
STATE_STYLE = {
    "missed": "bold red",
    "failed": "red",
    "open": "cyan",
    "upcoming": "dim",
    "late": "yellow",
    "done": "green",
    "excused": "magenta",
}


class PeriodChoice(enum.StrEnum):
    """The periods a report covers, as the ``--period`` option takes them."""

    day = "day"
    week = "week"
    month = "month"


def handled(fn: F) -> F:
    """Turn every expected failure into a one-line message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ScheduleError as exc:
            for e in exc.errors:
                err.print(str(e), markup=False)
            raise typer.Exit(1) from None
        except SettingsError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
        except MarketcareError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            import sqlalchemy as sa

            if isinstance(exc, sa.exc.OperationalError):
                err.print(f"error: database: {exc.orig}", markup=False)
                raise typer.Exit(1) from None
            raise

    return wrapper  # type: ignore[return-value]


def cli_settings() -> Settings:
    """The validated settings, with logging set up as they say."""
    from marketcare import logs
    from marketcare.settings import load_settings

    s = load_settings()
    logs.setup(s.log_level, s.log_format)
    return s


def ledger_engine(s: Settings) -> sa.Engine:
    from marketcare.ledger.db import make_engine

    return make_engine(s.database_url)


def connect() -> tuple[Settings, sa.Engine]:
    """The settings and an engine on the ledger they name: what most commands start with."""
    s = cli_settings()
    return s, ledger_engine(s)


def utcnow() -> datetime:
    return now_utc()


def local_today(s: Settings) -> date:
    return utcnow().astimezone(ZoneInfo(s.timezone)).date()


def parse_date(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date; write YYYY-MM-DD", param_hint=what
        ) from None


def fmt_local(value: datetime | None, zone: str) -> str:
    return "—" if value is None else f"{value.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M %Z}"


@contextmanager
def progress_bar(label: str, *, unit: str | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr, drawn only on a terminal and gone when the work ends, and
    the callback that moves it: ``progress(done, total)``, with ``label=`` to relabel it.

    ``unit`` names what is counted after the count (``pages``) instead of the time left.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    last = TextColumn(unit) if unit is not None else TimeRemainingColumn()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        last,
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int, label: str | None = None) -> None:
            if label is None:
                bar.update(task, completed=done, total=total)
            else:
                bar.update(task, description=label, completed=done, total=total)

        yield progress
