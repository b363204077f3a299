"""Real processes against a real database: the daemon, CLI commands, polling the ledger;
and CLI commands run in this process (``run_cli``) where the process is not the point.

The database is the test's own (``tests/support/pg.py``): a SQLite file in the test's
folder, or a fresh PostgreSQL database when the suite runs on PostgreSQL.

Every timeout here is a liveness bound (something that should happen did not happen at
all), never a performance assertion: they are generous on purpose.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from .pg import database_url

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CLOCKRUN = Path(__file__).with_name("clockrun.py")
TICKER = Path(__file__).with_name("ticker.py")
#: how long anything that should happen may take before a test gives up on it
LIVENESS = 60.0


def make_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a marketcare process confined to ``tmp_path``.

    No MARKETCARE_* variable of the caller leaks in; the repository's config file is
    replaced by one that does not exist. ``settings`` are MARKETCARE_* names without the
    prefix, e.g. ``horizon="30d"``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env.update(
        MARKETCARE_CONFIG="",  # no settings file (a file it names must exist)
        MARKETCARE_DATABASE_URL=database_url(tmp_path),
        MARKETCARE_SCHEDULES_DIR=str(tmp_path / "schedules"),
        MARKETCARE_LOG_FORMAT="json",
        MARKETCARE_WEB_PORT="0",  # a free port: daemons of parallel tests never collide
        # files a test has just written are read after a tenth of a second, not a second
        # (tests/test_reload.py proves the settling itself)
        MARKETCARE_RELOAD_SETTLE_SECONDS="0.1",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        COLUMNS="200",
    )
    for key, value in settings.items():
        env[f"MARKETCARE_{key.upper()}"] = value
    return env


def database(env: dict[str, str]) -> str:
    """The URL of the database the processes of ``env`` use."""
    return env["MARKETCARE_DATABASE_URL"]


def command(args: Sequence[str], *, at: datetime | None = None) -> list[str]:
    """The argv of ``marketcare ARGS``, under a clock moved to ``at`` when given."""
    if at is None:
        return [sys.executable, "-m", "marketcare.cli", *args]
    if at.tzinfo is None:
        raise ValueError("give an aware instant")
    return [sys.executable, str(CLOCKRUN), at.isoformat(), *args]


def cli(
    env: dict[str, str],
    *args: str,
    cwd: Path,
    at: datetime | None = None,
    timeout: float = LIVENESS,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end in a process of its own; stdout and stderr are captured
    as text, ``input`` (given) is its standard input through a pipe. Where the process is
    not what a test asserts, ``run_cli`` answers the same without starting one."""
    return subprocess.run(
        command(args, at=at),
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def run_cli(
    env: dict[str, str],
    *args: str,
    cwd: Path,
    at: datetime | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``marketcare ARGS`` in this process, as ``cli`` would run it in a new one.

    For a test that asserts what a command answers (its exit code, its stdout and stderr
    text, what it did to the files and the database), not that it is a process: a process
    costs 0.5-1.2 s of CPU, mostly imports this process has made already. The command
    sees ``env`` as its whole environment (``os.environ`` is set to it for the call, then
    given back), ``cwd`` as its folder, ``input`` on its standard input (none: it ends at
    once) and, given ``at``, a clock moved there that keeps ticking (as ``command`` moves
    a process's). What ``main`` does around ``app`` is done here too: a bug (an exception
    ``handled`` leaves) is exit 70, an interruption exit 130, with the traceback on stderr
    so that the failing test shows it; the root logger's handlers (the command installs
    its own) are given back.

    What only a process shows stays with ``cli``/``start``: signals and exit on SIGTERM,
    a lock held by another process, the bytes of the arguments, standard input's
    encoding or its lack of a terminal, a table written to a pipe, the installed script.
    Each command run here also runs as a real process somewhere in the suite: ``init``
    (the installation each document starts from), ``backup``, ``audit verify``, ``demo``,
    ``status`` and ``export`` among the documents' examples in tests/test_docs.py;
    ``backup`` again in tests/test_backup.py (taken while a daemon writes) and ``restore``
    there (its standard input ends unanswered); ``migrate-sqlite-to-postgres`` in
    tests/test_pgmigrate.py (refused while another process holds the daemon's lock);
    ``users add`` in tests/test_cli_errors.py (no terminal, bytes piped in).
    """
    import logging
    import traceback
    from contextlib import nullcontext

    import time_machine
    from click.testing import CliRunner

    from marketcare.cli.common import EXIT_INTERNAL, EXIT_INTERRUPTED

    if at is not None and at.tzinfo is None:
        raise ValueError("give an aware instant")
    changes: dict[str, str | None] = {k: None for k in os.environ if k not in env}
    changes.update({k: v for k, v in env.items() if os.environ.get(k) != v})
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    before = Path.cwd()
    os.chdir(cwd)
    try:
        clock = time_machine.travel(at, tick=True) if at is not None else nullcontext()
        with clock:
            result = CliRunner().invoke(
                cli_command(), list(args), input=input, env=changes, prog_name="marketcare"
            )
    finally:
        os.chdir(before)
        root.handlers[:] = handlers
        root.setLevel(level)
    code, stderr = result.exit_code, result.stderr
    failure = result.exception
    if failure is not None and not isinstance(failure, SystemExit):
        code = EXIT_INTERRUPTED if isinstance(failure, KeyboardInterrupt) else EXIT_INTERNAL
        stderr += f"an exception escaped the command (main would exit {code}):\n" + "".join(
            traceback.format_exception(failure)
        )
    return subprocess.CompletedProcess(
        ["marketcare", *args], code, stdout=result.stdout, stderr=stderr
    )


@functools.cache
def cli_command() -> click.Command:
    """The click command ``app()`` runs, built from the Typer app once: building it costs
    20 ms of processor time, which ``app()`` and typer's CliRunner pay at every call."""
    import typer.main

    from marketcare.cli import app

    return typer.main.get_command(app)


def start(
    env: dict[str, str],
    *args: str,
    cwd: Path,
    at: datetime | None = None,
    name: str = "proc",
) -> Proc:
    """Start a command in the background; its output goes to files in ``cwd``."""
    return _spawn(command(args, at=at), env, cwd=cwd, name=name)


def start_ticker(env: dict[str, str], *, cwd: Path, name: str = "ticker") -> Proc:
    """One long-lived writer of ticks (tests/support/ticker.py) in the background.

    Write ``OBLIGATION_ID TOKEN`` lines to ``proc.popen.stdin`` (flushing each); close it
    and wait for the process to end; ``proc.stdout()`` then holds one JSON line per tick.
    """
    return _spawn([sys.executable, str(TICKER)], env, cwd=cwd, name=name, stdin=True)


def _spawn(
    argv: list[str], env: dict[str, str], *, cwd: Path, name: str, stdin: bool = False
) -> Proc:
    out = cwd / f"{name}.stdout"
    err = cwd / f"{name}.stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else None,
            stdout=fo,
            stderr=fe,
        )
    return Proc(popen, out, err, name)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    name: str = "proc"
    returncode: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = LIVENESS) -> int:
        try:
            self.returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) did not end within {timeout:.0f} s; "
                f"stderr:\n{self.stderr()[-3000:]}"
            ) from None
        return self.returncode

    def terminate(self, timeout: float = LIVENESS) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it outlives ``timeout``)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> int:
        """SIGKILL and reap."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.returncode = self.popen.wait(timeout=LIVENESS)
        return self.returncode


def start_daemon(
    env: dict[str, str], *, cwd: Path, at: datetime | None = None, name: str = "daemon"
) -> Proc:
    """``marketcare run`` in the background."""
    return start(env, "run", cwd=cwd, at=at, name=name)


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = LIVENESS,
    interval: float = 0.05,
    what: str = "condition",
    proc: Proc | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails early, with its output, when ``proc`` exits in the meantime.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}; "
                f"stderr:\n{proc.stderr()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


_engines: dict[str, sa.Engine] = {}


def _reader(url: str) -> sa.Engine | None:
    """An engine that only reads, holds no connection between calls (a test's database is
    dropped at its end) and, on SQLite, never creates the file the daemon has yet to make."""
    if url not in _engines:
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "")
            if not path.exists():
                return None
            engine = sa.create_engine(
                f"sqlite:///file:{path}?mode=ro&uri=true",
                connect_args={"timeout": 30},
                poolclass=sa.pool.NullPool,
            )
        else:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        _engines[url] = engine
    return _engines[url]


def query(
    db: str, sql: str | sa.Executable, params: Sequence[Any] | dict[str, Any] = ()
) -> list[tuple[Any, ...]]:
    """Read rows with a short-lived connection (never blocks the writers).

    ``sql`` is SQL text that works on SQLite and PostgreSQL alike, with ``:name``
    parameters or ``?`` placeholders (given as a sequence), or a SQLAlchemy statement.
    A table that does not exist yet reads as no rows: the daemon has not migrated yet.
    """
    engine = _reader(db)
    if engine is None:
        return []
    if isinstance(sql, str):
        if not isinstance(params, dict):
            numbered = iter(range(len(params)))
            sql = re.sub(r"\?", lambda _m: f":p{next(numbered)}", sql)
            params = {f"p{i}": v for i, v in enumerate(params)}
        statement: sa.Executable = sa.text(sql)
    else:
        statement = sql
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(statement, params or {})]
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        text = str(exc.orig)
        if "no such table" in text or "UndefinedTable" in type(exc.orig).__name__:
            return []
        raise


def scalar(db: str, sql: str | sa.Executable, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    rows = query(db, sql, params)
    return rows[0][0] if rows else None


def watermark(db: str) -> datetime | None:
    """The materialiser's ``materialised_until`` (aware UTC), or None before the first run."""
    raw = scalar(db, "SELECT materialised_until FROM ledger_state WHERE id = 1")
    return None if raw is None else parse_utc(raw)


def parse_utc(raw: str | datetime) -> datetime:
    """A datetime column as read raw: naive UTC text on SQLite, aware on PostgreSQL."""
    value = raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
