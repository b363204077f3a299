"""Engines set up for a daemon plus concurrent writers, and migrations through Alembic."""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from marketcare.errors import BadInput, MarketcareError, Unavailable
from marketcare.files import folder_fault

if TYPE_CHECKING:
    from alembic.config import Config

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


def unnest_insert(table: sa.Table, names: Sequence[str]) -> sa.Insert:
    """PostgreSQL: ``INSERT INTO table (names) SELECT * FROM unnest(:names, …)``, a row per
    array element; execute it with ``as_arrays(rows, names)``.

    A multi-row VALUES list (SQLAlchemy's "insertmanyvalues") is a new SQL text for every
    number of rows, which psycopg parses placeholder by placeholder each time and cannot
    prepare; an executemany is a Bind/Execute per row. This is one statement of one text
    and one array per column, whatever the number of rows: parsed once, prepared by
    psycopg after a few runs, one round trip.
    """
    from sqlalchemy.dialects import postgresql

    columns = [table.c[name] for name in names]
    rows = (
        sa.func.unnest(*(sa.cast(sa.bindparam(c.name), postgresql.ARRAY(c.type)) for c in columns))
        .table_valued(*names)
        .render_derived(name="new_rows")
    )
    return sa.insert(table).from_select(names, sa.select(*(rows.c[n] for n in names)))


def as_arrays(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, list[Any]]:
    """The parameters of an ``unnest_insert``: one list per column.

    A JSON value goes through its column's own bind processing (an array's elements do
    not), so it is stored exactly as a row by row insert stores it (None as JSON null).
    """
    arrays: dict[str, list[Any]] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if isinstance(table.c[name].type, sa.JSON):
            process = table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            if process is not None:
                values = [process(v) for v in values]
        arrays[name] = values
    return arrays


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
        if any(_has_nul(v) for v in params.values()):
            return {k: _nul_free(v) for k, v in params.items()}
        return params
    if isinstance(params, tuple) and any(isinstance(v, str) and "\x00" in v for v in params):
        return tuple(v.replace("\x00", "") if isinstance(v, str) else v for v in params)
    return params


def _has_nul(value: Any) -> bool:
    """A text with U+0000, or an array parameter (``unnest_insert``) holding one."""
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value)


def _nul_free(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [v.replace("\x00", "") if isinstance(v, str) else v for v in value]
    return value


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


# ---------------------------------------------------------------- faults

#: SQLite's result codes that mean the file, its disk or its lock (sqlite.org/rescode.html)
_SQLITE_FAULTS = {
    3: ("the database file may not be written (permission denied)", 60),  # SQLITE_PERM
    5: ("the database is busy (locked by another writer); try again", 5),  # SQLITE_BUSY
    6: ("the database is busy (locked by another writer); try again", 5),  # SQLITE_LOCKED
    8: ("the database is read-only", 60),  # SQLITE_READONLY
    10: ("the database's disk failed to read or write", 60),  # SQLITE_IOERR
    11: ("the database file is damaged: restore a backup (marketcare restore)", 60),  # CORRUPT
    13: ("the database's disk is full", 60),  # SQLITE_FULL
    14: ("the database file cannot be opened", 60),  # SQLITE_CANTOPEN
    26: ("the file is not a SQLite database: check the setting database_url", 60),  # NOTADB
}
#: PostgreSQL's SQLSTATE classes and codes that mean the server, not the request
_PG_FAULTS = {
    "08": ("the database server cannot be reached (restarting?)", 5),
    "53": ("the database server is out of resources (disk full, memory)", 60),
    "57": ("the database server is shutting down or restarting", 5),
    "58": ("the database server had a system error", 30),
    "25006": ("the database is read-only", 60),
    "40001": ("the database was busy with a conflicting write; try again", 1),
    "40P01": ("the database was busy with a conflicting write; try again", 1),
}


def driver_errors() -> tuple[type[Exception], ...]:
    """The drivers' own exception classes, for code that sees them unwrapped (COPY).

    psycopg's only once it is loaded (by a PostgreSQL engine): a daemon on SQLite never
    loads it (some 9 MiB), and no exception of a driver never loaded can be raised."""
    found: list[type[Exception]] = [sqlite3.Error]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found.append(psycopg.Error)
    return tuple(found)


def database_fault(exc: BaseException) -> Unavailable | None:
    """``exc`` as "the database cannot be used for now" (unreachable, restarting, full,
    read-only, locked past every retry), or None when it is something else (a bug).

    Nothing was committed when one of these is raised inside a transaction, so the
    caller may send the same request again; ``retry_after`` says when that is worth it.
    """
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, sa.exc.TimeoutError):
        return Unavailable("every database connection is busy; try again", retry_after=5)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        known = _SQLITE_FAULTS.get(code & 0xFF)
        if known is not None:
            return Unavailable(f"{known[0]} ({orig})", retry_after=known[1])
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        known = _PG_FAULTS.get(sqlstate) or _PG_FAULTS.get(sqlstate[:2])
        if known is not None:
            return Unavailable(f"{known[0]} ({_first_line(orig)})", retry_after=known[1])
    invalidated = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    if invalidated or isinstance(
        exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)
    ):
        return Unavailable(f"the database failed: {_first_line(orig)}", retry_after=5)
    if _is_driver_fault(orig):
        return Unavailable(f"the database failed: {_first_line(orig)}", retry_after=5)
    return None


def fault_of(exc: BaseException) -> MarketcareError | None:
    """An unexpected exception seen as what it means for the caller, if anything: the
    database or a folder unavailable (``Unavailable``: HTTP 503, exit 75), a value the
    database cannot hold (``BadInput``), or None for a bug. The CLI and the web app both
    ask here, so a fault means the same on both."""
    if isinstance(exc, sa.exc.DataError):
        return BadInput("a value is out of the range the database can hold")
    if isinstance(exc, OSError):
        return folder_fault(exc)
    return database_fault(exc)


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a failed step: a fault of the database or a folder is one WARNING line (it is
    expected and says what to fix); anything else is an ERROR with its traceback (a bug)."""
    meaning = fault_of(exc)
    if meaning is not None:
        logger.warning("%s: %s", what, meaning.message)
    else:
        logger.error("%s", what, exc_info=exc)


def schema_problem(engine: sa.Engine) -> str | None:
    """Why the ledger cannot be used as it is (not initialised, or at another schema
    revision than this version's), or None when it is ready."""
    shown = engine.url.render_as_string(hide_password=True)
    with engine.connect() as conn:
        recorded = _recorded_revisions(conn)
    if recorded is None:
        return f"the database {shown} is not initialised: run `marketcare init`"
    current = recorded[0] if recorded else None
    heads = head_revisions()
    if not heads:
        from alembic.script import ScriptDirectory

        heads = tuple(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    if current not in heads:
        return (
            f"the database {shown} is at schema revision {current}; this version needs "
            f"{', '.join(heads)}: run `marketcare init` to upgrade it"
        )
    return None


@functools.cache
def head_revisions() -> tuple[str, ...]:
    """The newest schema revision(s), read from the migration files without loading
    Alembic (a read command's start-up should not pay for it); empty if unsure."""
    revision = re.compile(r'^revision\s*=\s*["\'](.+?)["\']', re.M)
    down = re.compile(r'^down_revision\s*=\s*["\'](.+?)["\']', re.M)
    found: set[str] = set()
    below: set[str] = set()
    for path in Path(MIGRATIONS, "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if (m := revision.search(text)) is not None:
            found.add(m.group(1))
        if (m := down.search(text)) is not None:
            below.add(m.group(1))
    heads = tuple(sorted(found - below))
    return heads if len(heads) == 1 else ()


def _is_driver_fault(exc: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")  # not loaded: not its fault (see ``driver_errors``)
    if psycopg is None:
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_disconnect(exc: BaseException) -> bool:
    """Whether the connection went away (a restart, a network cut) before an answer:
    the transaction did not commit, unless the loss came during COMMIT itself."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate.startswith("57P"))


def retrying(
    fn: Callable[[], T], *, attempts: int = 20, what: str = "write", idempotent: bool = False
) -> T:
    """Run ``fn`` again when the database was locked past its busy timeout (SQLite), or
    rolled the transaction back for a serialization failure or a deadlock (PostgreSQL).

    With ``idempotent`` (running ``fn`` twice records once, e.g. a tick with its client
    token), a lost or refused connection is retried too, for a few seconds: a database
    server restarting under a running daemon costs a short wait, not an error. ``fn``
    must open its own transaction, so a retry starts from scratch.
    """
    delay = 0.05
    lost_since: float | None = None
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            if idempotent and (is_disconnect(exc) or _is_connect_failure(exc)):
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since < RECONNECT_FOR and attempt < attempts:
                    log.warning("database connection lost during %s; retrying", what)
                    time.sleep(min(max(delay, 0.2), 1.0))
                    delay = min(delay * 2, 1.0)
                    continue
                raise
            if not isinstance(exc, sa.exc.OperationalError):
                raise
            if not _is_locked(exc) or attempt == attempts:
                raise
            log.warning("database busy during %s; retrying (attempt %d)", what, attempt)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


#: how long an idempotent write waits for a lost database connection to come back
RECONNECT_FOR = 5.0


def _is_connect_failure(exc: BaseException) -> bool:
    """A new connection was refused (the server is down or starting): nothing was sent."""
    orig = getattr(exc, "orig", exc)
    text = str(orig).lower()
    return getattr(orig, "sqlstate", None) == "57P03" or text.startswith(
        ("connection failed", "connection to server", "could not connect")
    )


def alembic_config(engine: sa.Engine) -> Config:
    """Alembic's configuration for ``engine``.

    Alembic keeps options in a ConfigParser, which reads ``%`` as interpolation: the
    URL of a PostgreSQL socket (``?host=%2Fvar%2Frun%2Fpostgresql``) must be escaped.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision; safe to run again.

    On PostgreSQL with two roles (docs/operations.md, "Append-only history") the
    application's role may not change the schema: a pending migration is then refused
    with what to do, not a traceback.
    """
    if _at_head(engine):
        return  # most starts: nothing to upgrade, and no need to load Alembic to know it
    from alembic import command

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


def _at_head(engine: sa.Engine) -> bool:
    """Whether the schema is at this version's one newest revision already; False when
    unsure (no version table yet, several heads, a revision this version does not know)."""
    heads = head_revisions()
    if not heads:
        return False
    with engine.connect() as conn:
        return _recorded_revisions(conn) == heads


def _recorded_revisions(conn: sa.Connection) -> tuple[str, ...] | None:
    """The revisions the ledger's version table records; None before ``init`` made it."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return tuple(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
