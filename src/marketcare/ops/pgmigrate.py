"""Move a district's whole history from SQLite to PostgreSQL, and prove nothing was lost.

Every table of the schema is copied in foreign-key order, ids kept, inside one PostgreSQL
transaction; before it commits, each table's row count and checksum on the target are
compared with the source's and the audit chain is verified there. Any difference rolls
the whole copy back, so the target is either the complete history or untouched.

The checksum is computed the same way on both sides from the values SQLAlchemy reads
(rows in primary-key order, each value rendered canonically), so it compares what the
application sees, not how each engine happens to store it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Json
from sqlalchemy.engine import make_url

from marketcare.errors import MarketcareError
from marketcare.ledger import audit
from marketcare.ledger.db import make_engine, migrate, read
from marketcare.ledger.models import Base

#: rows per batch read from SQLite and written to PostgreSQL
BATCH = 5000

#: called with (table, rows copied so far in all tables, rows in all tables)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TableSum:
    """A table's row count and the SHA-256 of its rows in primary-key order."""

    table: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Comparison:
    source: TableSum
    target: TableSum

    @property
    def table(self) -> str:
        return self.source.table

    @property
    def ok(self) -> bool:
        return (self.source.rows, self.source.sha256) == (self.target.rows, self.target.sha256)


@dataclass(frozen=True)
class Moved:
    comparisons: list[Comparison]
    chain: audit.Verdict

    @property
    def mismatched(self) -> list[str]:
        return [c.table for c in self.comparisons if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.mismatched and self.chain.ok


# ---------------------------------------------------------------- the checksum


def canonical(value: Any) -> str:
    """One value as text that is the same whichever engine it was read from."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        moment: datetime = value.astimezone(UTC) if value.tzinfo is not None else value
        return moment.isoformat(timespec="microseconds")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _row_bytes(row: Sequence[Any]) -> bytes:
    return ("\x1f".join(canonical(v) for v in row) + "\n").encode()


def _ordered(table: sa.Table, dialect: sa.Dialect) -> sa.Select[Any]:
    """All rows in primary-key order; text keys in byte order on both engines (SQLite's
    BINARY collation is PostgreSQL's "C", whatever the server's locale)."""
    keys: list[Any] = []
    for col in table.primary_key.columns:
        if dialect.name == "postgresql" and isinstance(col.type, sa.String):
            keys.append(col.collate("C"))
        else:
            keys.append(col)
    return sa.select(table).order_by(*keys)


def _stream(conn: sa.Connection, table: sa.Table, batch: int) -> Iterable[Sequence[Any]]:
    result = conn.execution_options(yield_per=batch).execute(_ordered(table, conn.dialect))
    yield from result.partitions()


def table_sum(conn: sa.Connection, table: sa.Table, *, batch: int = BATCH) -> TableSum:
    """Count and checksum one table as this connection sees it."""
    digest, rows = hashlib.sha256(), 0
    for part in _stream(conn, table, batch):
        for row in part:
            digest.update(_row_bytes(row))
        rows += len(part)
    return TableSum(table.name, rows, digest.hexdigest())


def sums(conn: sa.Connection, *, batch: int = BATCH) -> dict[str, TableSum]:
    """Every table of the schema, counted and checksummed."""
    return {t.name: table_sum(conn, t, batch=batch) for t in Base.metadata.sorted_tables}


# ---------------------------------------------------------------- the move


def source_file(url: str) -> Path:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise MarketcareError(
            f"--from: {url!r} is not a database URL (e.g. sqlite:///var/marketcare.db)", "from"
        ) from None
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        raise MarketcareError(
            f"--from must be a SQLite file URL such as sqlite:///var/marketcare.db, not "
            f"{parsed.render_as_string(hide_password=True)!r}"
        )
    path = Path(parsed.database)
    if not path.is_file():
        raise MarketcareError(f"--from: no database at {path}")
    return path


def target_url(url: str) -> str:
    """The target as a psycopg URL (``postgresql://`` would pick a driver not installed)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise MarketcareError(
            f"--to: {url!r} is not a database URL (e.g. postgresql+psycopg://user@host/marketcare)"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise MarketcareError(
            f"--to must be a PostgreSQL URL such as postgresql+psycopg://user@host/marketcare, "
            f"not {parsed.render_as_string(hide_password=True)!r}"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def move(
    source: str, target: str, *, batch: int = BATCH, progress: Progress | None = None
) -> Moved:
    """Copy every table from the SQLite ``source`` to the empty PostgreSQL ``target``.

    The caller makes sure no daemon writes to the source meanwhile; the source is read in
    one snapshot anyway, so the copy is consistent. Returns the comparison; when it shows
    any difference the target transaction was rolled back.
    """
    if batch < 1:
        raise MarketcareError("--batch must be at least 1")
    src_engine = make_engine(source)
    dst_engine = make_engine(target_url(target))
    try:
        migrate(src_engine)  # the same schema on both sides, as the daemon would at start
        migrate(dst_engine)
        with read(src_engine) as src, dst_engine.connect() as dst:
            chain = audit.verify(src)
            if not chain.ok:
                raise MarketcareError(
                    f"the source's audit chain is broken ({chain.reason}); moving it would carry "
                    "the damage over: investigate with marketcare audit verify first"
                )
            with dst.begin() as transaction:
                moved = _copy_all(src, dst, batch=batch, progress=progress)
                if not moved.ok:
                    transaction.rollback()
            return moved
    finally:
        src_engine.dispose()
        dst_engine.dispose()


def _copy_all(
    src: sa.Connection, dst: sa.Connection, *, batch: int, progress: Progress | None
) -> Moved:
    tables = Base.metadata.sorted_tables
    quote = dst.dialect.identifier_preparer.quote
    # no daemon may write to the target half-way (one starting now waits for the commit)
    dst.exec_driver_sql(
        f"LOCK TABLE {', '.join(quote(t.name) for t in tables)} IN ACCESS EXCLUSIVE MODE"
    )
    occupied = {
        t.name: n
        for t in tables
        if (n := dst.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
    }
    if occupied:
        listed = ", ".join(f"{name}: {n}" for name, n in occupied.items())
        raise MarketcareError(
            f"the target database is not empty ({listed}); this command only fills an empty "
            "database: create a new one (createdb) and give its URL to --to"
        )
    totals = {
        t.name: src.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in tables
    }
    grand, done = sum(totals.values()), 0
    source_sums: dict[str, TableSum] = {}
    for table in tables:
        digest, rows = hashlib.sha256(), 0
        for part in _stream(src, table, batch):
            _write(dst, table, part)
            for row in part:
                digest.update(_row_bytes(row))
            rows += len(part)
            done += len(part)
            if progress is not None:
                progress(table.name, done, grand)
        source_sums[table.name] = TableSum(table.name, rows, digest.hexdigest())
        if progress is not None:
            progress(table.name, done, grand)
    _reset_sequences(dst, tables)
    comparisons = [Comparison(source_sums[t.name], table_sum(dst, t, batch=batch)) for t in tables]
    return Moved(comparisons, audit.verify(dst))


def _write(dst: sa.Connection, table: sa.Table, rows: Sequence[Sequence[Any]]) -> None:
    """Append rows with COPY when the driver is psycopg, else a multi-row INSERT."""
    if not rows:
        return
    raw = dst.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        dst.execute(
            sa.insert(table), [dict(zip(table.columns.keys(), r, strict=True)) for r in rows]
        )
        return
    # JSON values go as JSON text; None stays SQL NULL where the column allows it
    as_json = [(isinstance(c.type, sa.JSON), bool(c.nullable)) for c in table.columns]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
    )
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(
                [
                    Json(v) if is_json and (v is not None or not nullable) else v
                    for v, (is_json, nullable) in zip(row, as_json, strict=True)
                ]
            )


def _reset_sequences(dst: sa.Connection, tables: Sequence[sa.Table]) -> None:
    """Point each id sequence past the copied ids, so the next insert does not collide."""
    quote = dst.dialect.identifier_preparer.quote
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1:
            continue
        column = keys[0]
        sequence = dst.execute(
            sa.select(sa.func.pg_get_serial_sequence(quote(table.name), column.name))
        ).scalar_one()
        if sequence is None:
            continue
        top = dst.execute(sa.select(sa.func.max(column))).scalar_one()
        dst.execute(
            sa.select(sa.func.setval(sequence, top if top is not None else 1, top is not None))
        )
