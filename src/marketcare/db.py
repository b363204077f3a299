"""Engines set up for a daemon plus concurrent writers, and migrations through Alembic."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
MIGRATIONS = str(Path(__file__).with_name("migrations"))


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """Create an engine; SQLite gets WAL, foreign keys, FULL sync and ``BEGIN IMMEDIATE``.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction that reads and then
    writes cannot fail with SQLITE_BUSY_SNAPSHOT once another connection committed; the
    busy timeout then makes writers queue instead of failing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "sqlite"


def _is_locked(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return (
        "database is locked" in text
        or "database table is locked" in text
        or "deadlock detected" in text
    )


@contextmanager
def write(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def read(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One read-only transaction: a consistent snapshot that never blocks writers."""
    with engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn


def retrying(fn: Callable[[], T], *, attempts: int = 20, what: str = "write") -> T:
    """Run ``fn`` again when the database was locked past its busy timeout.

    ``fn`` must open its own transaction, so a retry starts from scratch.
    """
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except sa.exc.OperationalError as exc:
            if not _is_locked(exc) or attempt == attempts:
                raise
            log.warning("database busy during %s; retrying (attempt %d)", what, attempt)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision; safe to run again."""
    command.upgrade(alembic_config(engine), "head")


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
