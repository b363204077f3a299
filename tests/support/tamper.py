"""Tampering as an insider would: the append-only guards lifted for the length of the
change (a DBA or an operator with the database file can), then put back, so that what is
left to find is the change itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from marketcare.ledger.verification import APPEND_ONLY


@contextmanager
def unguarded(conn: sa.Connection) -> Iterator[sa.Connection]:
    """``conn`` with UPDATE and DELETE allowed on events, completions and timestamps."""
    if conn.dialect.name == "sqlite":
        triggers = conn.execute(
            sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        for t in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER {t.name}")
        yield conn
        for t in triggers:
            conn.exec_driver_sql(t.sql)
        return
    for table in APPEND_ONLY:
        conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    yield conn
    for table in APPEND_ONLY:
        conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def sqlite_unguarded(raw: sqlite3.Connection, *statements: str) -> None:
    """Run ``statements`` on a raw SQLite connection with the guards lifted, and commit."""
    triggers = raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _sql in triggers:
        raw.execute(f"DROP TRIGGER {name}")
    for statement in statements:
        raw.execute(statement)
    for _name, sql in triggers:
        raw.execute(sql)
    raw.commit()
