"""Tampering as an insider would: the append-only guards lifted for the length of the
change (a DBA or an operator with the database file can), then put back, so that what is
left to find is the change itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


def rehash(conn: sa.Connection, from_seq: int = 1) -> None:
    """Recompute every hash from ``from_seq`` on, and the head: a consistent forgery."""
    from marketcare.ledger.audit import GENESIS, event_hash
    from marketcare.ledger.models import AuditHead, Event

    prev = (
        GENESIS
        if from_seq <= 1
        else conn.execute(sa.select(Event.hash).where(Event.seq == from_seq - 1)).scalar_one()
    )
    rows = conn.execute(sa.select(Event).where(Event.seq >= from_seq).order_by(Event.seq)).all()
    last = from_seq - 1
    for ev in rows:
        digest = event_hash(prev, ev.seq, ev)
        conn.execute(
            sa.update(Event).where(Event.seq == ev.seq).values(prev_hash=prev, hash=digest)
        )
        prev, last = digest, ev.seq
    conn.execute(sa.update(AuditHead).where(AuditHead.id == 1).values(seq=last, hash=prev))


def _renumber(conn: sa.Connection, seqs: list[int], delta: int) -> None:
    from marketcare.ledger.models import Event

    for seq in sorted(seqs, reverse=delta > 0):
        conn.execute(sa.update(Event).where(Event.seq == seq).values(seq=seq + delta))


def remove_event(conn: sa.Connection, seq: int) -> None:
    """Delete event ``seq``, close the gap and rehash: the chain verifies again."""
    from marketcare.ledger.models import Event

    conn.execute(sa.delete(Event).where(Event.seq == seq))
    later = list(conn.execute(sa.select(Event.seq).where(Event.seq > seq)).scalars())
    _renumber(conn, later, -1)
    rehash(conn, seq)


def insert_event(conn: sa.Connection, seq: int, event: Any) -> None:
    """Slip ``event`` in at ``seq``, the later ones moved up one, and rehash."""
    from marketcare.ledger.models import Event

    later = list(conn.execute(sa.select(Event.seq).where(Event.seq >= seq)).scalars())
    _renumber(conn, later, +1)
    conn.execute(
        sa.insert(Event).values(
            seq=seq,
            at=event.at,
            actor=event.actor,
            action=event.action,
            obligation_id=event.obligation_id,
            problem_id=event.problem_id,
            from_state=event.from_state,
            to_state=event.to_state,
            details=event.details,
            prev_hash="",
            hash="",
        )
    )
    rehash(conn, seq)


_CONTENT = ("at", "actor", "action", "obligation_id", "problem_id", "from_state", "to_state")


def swap_events(conn: sa.Connection, a: int, b: int, *, rehash_after: bool) -> None:
    """Exchange the contents of events ``a`` and ``b`` (their order in the history)."""
    from marketcare.ledger.models import Event

    first = conn.execute(sa.select(Event).where(Event.seq == a)).one()
    second = conn.execute(sa.select(Event).where(Event.seq == b)).one()
    for seq, src in ((a, second), (b, first)):
        values = {k: getattr(src, k) for k in _CONTENT}
        conn.execute(sa.update(Event).where(Event.seq == seq).values(details=src.details, **values))
    if rehash_after:
        rehash(conn, a)
