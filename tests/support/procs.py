"""Real processes against a real SQLite file: the daemon, CLI commands, polling the ledger.

Every timeout here is a liveness bound (something that should happen did not happen at
all), never a performance assertion: they are generous on purpose.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CLOCKRUN = Path(__file__).with_name("clockrun.py")
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
        MARKETCARE_CONFIG=str(tmp_path / "no-such-config.toml"),
        MARKETCARE_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        MARKETCARE_SCHEDULES_DIR=str(tmp_path / "schedules"),
        MARKETCARE_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        COLUMNS="200",
    )
    for key, value in settings.items():
        env[f"MARKETCARE_{key.upper()}"] = value
    return env


def db_path(env: dict[str, str]) -> Path:
    return Path(env["MARKETCARE_DATABASE_URL"].removeprefix("sqlite:///"))


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
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; stdout and stderr are captured as text."""
    return subprocess.run(
        command(args, at=at),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def start(
    env: dict[str, str],
    *args: str,
    cwd: Path,
    at: datetime | None = None,
    name: str = "proc",
) -> Proc:
    """Start a command in the background; its output goes to files in ``cwd``."""
    out = cwd / f"{name}.stdout"
    err = cwd / f"{name}.stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        popen = subprocess.Popen(command(args, at=at), env=env, cwd=cwd, stdout=fo, stderr=fe)
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


def query(db: Path, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
    """Read rows with a short-lived connection (WAL: never blocks the writers)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, params).fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def scalar(db: Path, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    rows = query(db, sql, params)
    return rows[0][0] if rows else None


def watermark(db: Path) -> datetime | None:
    """The materialiser's ``materialised_until`` (aware UTC), or None before the first run."""
    raw = scalar(db, "SELECT materialised_until FROM ledger_state WHERE id = 1")
    return None if raw is None else parse_utc(raw)


def parse_utc(raw: str) -> datetime:
    """A datetime column as SQLite stores it (naive UTC) as an aware datetime."""
    value = datetime.fromisoformat(raw)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
