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

from marketcare.errors import MarketcareError

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
#: rows per multi-row statement (SQLite allows 32,766 bound parameters per statement)
CHUNK = 500
MIGRATIONS = str(Path(__file__).with_name("migrations"))


def dialect_insert(conn: sa.Connection, table: Any) -> Any:
    """An INSERT of the connection's dialect, so ``on_conflict_do_nothing`` and
    ``on_conflict_do_update`` are available on SQLite and PostgreSQL alike."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """Create an engine; SQLite gets WAL, foreign keys, FULL sync and ``BEGIN IMMEDIATE``.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction that reads and then
    writes cannot fail with SQLITE_BUSY_SNAPSHOT once another connection committed; the
    busy timeout then makes writers queue instead of failing.
    """
    parsed = make_url(url)
    # the ledger counts what an INSERT … ON CONFLICT DO NOTHING wrote (0: someone was first);
    # SQLAlchemy only keeps an INSERT's rowcount when asked to (psycopg reports -1 otherwise)
    options = {"preserve_rowcount": True, **kwargs.pop("execution_options", {})}
    if parsed.get_backend_name() != "sqlite":
        engine = sa.create_engine(url, pool_pre_ping=True, execution_options=options, **kwargs)
        _strip_nul_on(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        execution_options=options,
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


def _strip_nul_on(engine: sa.Engine) -> None:
    """Drop U+0000 from text parameters: PostgreSQL's text cannot hold it (SQLite's can).

    A NUL in a note or a name is never something a person meant, and refusing the whole
    write for it would lose what they did type; the exports drop control characters anyway.
    """

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _strip(
        _conn: sa.Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> tuple[str, Any]:
        # an executemany gives a list of rows; "insertmanyvalues" batches give one mapping
        if isinstance(parameters, list):
            return statement, [_without_nul(p) for p in parameters]
        return statement, _without_nul(parameters)


def _without_nul(params: Any) -> Any:
    if isinstance(params, dict):
        if any(isinstance(v, str) and "\x00" in v for v in params.values()):
            return {
                k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in params.items()
            }
        return params
    if isinstance(params, tuple) and any(isinstance(v, str) and "\x00" in v for v in params):
        return tuple(v.replace("\x00", "") if isinstance(v, str) else v for v in params)
    return params


def is_sqlite(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "sqlite"


#: PostgreSQL's "try the transaction again": serialization failure, deadlock detected
RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def _is_locked(exc: BaseException) -> bool:
    """Whether running the transaction again may succeed: SQLite's lock held past the busy
    timeout, or PostgreSQL aborting one of two transactions that got in each other's way."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in RETRY_SQLSTATES:
        return True
    text = str(orig).lower()
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
    """One read-only transaction: a consistent snapshot that never blocks writers.

    SQLite's WAL gives every transaction one snapshot; PostgreSQL's default (READ
    COMMITTED) takes a new one per statement, so a read of several queries asks for
    REPEATABLE READ there (read only, it never fails with a serialization error).
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(
                readonly=True, isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        else:
            conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn


def retrying(fn: Callable[[], T], *, attempts: int = 20, what: str = "write") -> T:
    """Run ``fn`` again when the database was locked past its busy timeout (SQLite), or
    rolled the transaction back for a serialization failure or a deadlock (PostgreSQL).

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
    """Bring the schema to the newest revision; safe to run again.

    On PostgreSQL with two roles (docs/operations.md, "Append-only history") the
    application's role may not change the schema: a pending migration is then refused
    with what to do, not a traceback.
    """
    try:
        command.upgrade(alembic_config(engine), "head")
    except sa.exc.ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise MarketcareError(
            "the database schema needs an upgrade that this role may not make: run "
            "`marketcare init` once with the owner role's URL (docs/operations.md, "
            "Append-only history)"
        ) from None


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
