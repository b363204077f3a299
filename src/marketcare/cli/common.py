"""What every command shares: the app, the consoles, settings and the ledger's engine,
times and dates, and the one place that turns an expected failure into a message.

The error policy (docs/cli.md, "Exit codes") is enforced here and nowhere else:
``handled`` turns every expected failure into one line on stderr and the exit code of
its kind; ``main`` (``cli/__init__.py``) turns a bug into one line and exit 70.

Only light modules are imported here: ``marketcare --help`` must not pay for SQLAlchemy,
pydantic or pandas (bench/startup.py measures it). What a command needs it imports inside
the command.
"""

from __future__ import annotations

import enum
import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from marketcare.clock import now_utc
from marketcare.errors import BadInput, Kind, MarketcareError, Refused, ScheduleError, SettingsError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from marketcare.i18n import Translator
    from marketcare.settings import Settings

#: exit codes (docs/cli.md): each kind of expected failure has its code
EXIT_USAGE = 2  # a usage or settings error (also what Click uses for a bad option)
EXIT_FAILED_READING = 3  # tick recorded a reading out of range
EXIT_INTERNAL = 70  # a bug (sysexits EX_SOFTWARE)
EXIT_UNAVAILABLE = 75  # the database or a folder cannot be used now (sysexits EX_TEMPFAIL)
EXIT_INTERRUPTED = 130
EXIT: dict[Kind, int] = {
    Kind.BAD_INPUT: 1,
    Kind.NOT_FOUND: 1,
    Kind.CONFLICT: 1,
    Kind.REFUSED: 1,
    Kind.UNAVAILABLE: EXIT_UNAVAILABLE,
}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"marketcare {version('marketcare')}\n")
        raise typer.Exit()


app = typer.Typer(
    name="marketcare",
    help="Sanitation compliance for farmers' markets: schedules, a ledger and a daemon.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Sanitation compliance for farmers' markets: schedules, a ledger and a daemon."""


#: the width of a table written to a pipe or a file: never cut a row (grep must see it)
UNLIMITED = 1_000_000


class _Console(Console):
    """A console that prints user text as it is (no Rich markup: a problem described
    as ``灯管[bold]损坏`` prints exactly that) and, when not on a terminal, never cuts
    a table to the terminal's width (``marketcare status | grep`` sees every row)."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        return dims if self.is_terminal else ConsoleDimensions(UNLIMITED, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _Console(highlight=False, soft_wrap=True, markup=False)
err = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
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


def styled(text: str, style: str = "") -> Text:
    """A table cell: the text exactly as given (never read as markup), in a style."""
    return Text(text, style=style)


# ---------------------------------------------------------------- the error policy


def fail(exc: MarketcareError) -> typer.Exit:
    """Print an expected failure (one line per problem) and give its exit code."""
    if isinstance(exc, ScheduleError):
        for e in exc.errors:
            err.print(str(e))
        return typer.Exit(EXIT[exc.kind])
    err.print(f"error: {exc.message}")
    return typer.Exit(EXIT_USAGE if isinstance(exc, SettingsError) else EXIT[exc.kind])


def fault_meaning(exc: BaseException) -> MarketcareError | None:
    """What an unexpected exception means for the user (the database or a folder
    unavailable, a value the database cannot hold), or None for a bug."""
    if isinstance(exc, OSError):
        from marketcare.files import folder_fault

        return folder_fault(exc)
    if "sqlalchemy" in sys.modules or "sqlite3" in sys.modules:
        from marketcare.ledger.db import fault_of

        return fault_of(exc)
    return None


def handled(fn: F) -> F:
    """Turn every expected failure into a one-line message and its exit code, never a
    traceback (docs/cli.md, "Exit codes"); a bug is left to ``main`` (exit 70)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _refuse_undecodable(fn, kwargs)
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MarketcareError as exc:
            if not isinstance(exc, ScheduleError):
                exc.args = (_as_typed(fn, exc), *exc.args[1:])
            raise fail(exc) from None
        except KeyboardInterrupt:
            err.print("interrupted: the command stopped before its end")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            meaning = fault_meaning(exc)
            if meaning is None:
                raise
            raise fail(meaning) from None

    return wrapper  # type: ignore[return-value]


def _as_typed(fn: Callable[..., Any], exc: MarketcareError) -> str:
    """A message of the shared rules names a field as the domain does (``found_by: say
    who found it``); on the command line, name the option the user typed (``--found-by``).
    Built from the error's fields as data, never by reading its text for names."""
    parameters = inspect.signature(fn).parameters

    def typed(name: str) -> str:
        return _option_name(fn, name) if name in parameters else name

    if exc.by_field:
        return "; ".join(f"{typed(f)}: {m}" for f, m in exc.by_field)
    message, field = exc.message, exc.field
    if field and message.startswith(f"{field}: "):
        return f"{typed(field)}: {message[len(field) + 2 :]}"
    return message


def _refuse_undecodable(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """An argument that is not valid UTF-8 (Python keeps such bytes as lone surrogates)
    cannot be stored, printed or sent: refuse it, naming the option."""
    for name, value in kwargs.items():
        values: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, (str, Path)) and _undecodable(str(v)) for v in values):
            option = _option_name(fn, name)
            raise BadInput(f"{option}: not valid UTF-8 text; give it in UTF-8", name)


def _option_name(fn: Callable[..., Any], name: str) -> str:
    """How the user wrote parameter ``name`` of command ``fn``: ``--out``, or ``PATH``."""
    import typing

    hint = typing.get_type_hints(fn, include_extras=True).get(name)
    for info in getattr(hint, "__metadata__", ()):
        # in ``Annotated``, ``typer.Option("--out")`` keeps its first name as the default
        given = [*(getattr(info, "param_decls", None) or ()), getattr(info, "default", None)]
        decls = [d for d in given if isinstance(d, str) and d.startswith("--")]
        if decls:
            return str(decls[0])
        if type(info).__name__ == "ArgumentInfo":
            return name.upper()
    return "--" + name.rstrip("_").replace("_", "-")


def _undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" or "\ud800" <= ch <= "\udfff" for ch in text)


# ---------------------------------------------------------------- settings and the ledger


def cli_settings() -> Settings:
    """The validated settings, with logging set up as they say."""
    from marketcare import logs
    from marketcare.settings import load_settings

    s = load_settings()
    logs.setup(s.log_level, s.log_format)
    return s


def ledger_engine(s: Settings, *, create: bool = False) -> sa.Engine:
    """An engine on the ledger the settings name.

    Unless ``create`` (``init``, ``demo``), the ledger must exist and be initialised at
    this version's schema: a command run from the wrong folder, or before ``init``, says
    so instead of making an empty database where it stands.
    """
    from marketcare.ledger.db import make_engine, schema_problem

    path = s.sqlite_path
    if not create and path is not None and not path.is_file():
        raise Refused(
            f"no database at {path}: run `marketcare init` first (from the folder that "
            "holds config/ and schedules/, or set MARKETCARE_DATABASE_URL)"
        )
    engine = make_engine(s.database_url)
    if not create:
        problem = schema_problem(engine)
        if problem is not None:
            engine.dispose()
            raise Refused(problem)
    return engine


def connect(*, create: bool = False) -> tuple[Settings, sa.Engine]:
    """The settings and an engine on the ledger they name: what most commands start with."""
    s = cli_settings()
    return s, ledger_engine(s, create=create)


def words(s: Settings) -> Translator:
    """The words of tables and summaries, in the language of the settings (``language``)."""
    from marketcare.i18n import translator

    return translator(s.language)


def utcnow() -> datetime:
    return now_utc()


def local_today(s: Settings) -> date:
    return utcnow().astimezone(ZoneInfo(s.timezone)).date()


def parse_date(value: str | None, what: str) -> date | None:
    """A date option (YYYY-MM-DD), within the years the ledger reasons about."""
    from marketcare.domain.inputs import check_date

    if value is None:
        return None
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise BadInput(f"{what}: {value!r} is not a date; write YYYY-MM-DD", what) from None
    return check_date(day, what)


def check_choices(values: Iterable[str] | None, known: Iterable[str], what: str) -> None:
    """A filter's values must be among the known ones: an unknown one is an error that
    lists the valid ones, never a silent "nothing found"."""
    valid = list(known)
    for v in values or ():
        if v not in valid:
            raise BadInput(
                f"{what}: unknown value {v!r} (valid: {', '.join(valid) or 'none yet'})", what
            )


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
