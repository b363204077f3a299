"""Exactly one scheduler at a time among several daemons: leader election.

On PostgreSQL the leader holds a session-level advisory lock on a connection of its own.
PostgreSQL releases it the moment that session ends, so when the leader dies (SIGKILL,
power loss, a cut network) another daemon's next try, a second later, takes over. On
SQLite, where one machine runs one daemon per file, the leader holds the file lock next
to the database (a second scheduler is refused, as before).

Leadership is a guard, not the only defence: every step the leader runs is idempotent in
the ledger (natural keys, watermarks, leases), so even a brief overlap (a leader that
lost its lock connection but has not noticed yet) cannot produce anything twice.

The leader also writes a heartbeat row (``scheduler_leader``) so that readiness checks
and operators can see who leads and since when.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from filelock import FileLock, Timeout

from marketcare.ledger.db import is_sqlite, log_failure, read, write
from marketcare.ledger.models import SchedulerLeader

log = logging.getLogger("marketcare.leader")

#: the advisory lock keys (64-bit): "marketcare scheduler", "marketcare migrate"
SCHEDULER_KEY = 0x6D63_7363_6865_6475
MIGRATE_KEY = 0x6D63_6D69_6772_6174
#: a heartbeat older than this means no leader is known (readiness fails)
STALE_AFTER = timedelta(seconds=30)


def identity() -> str:
    """Who this daemon is, in the heartbeat row and the logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership(Protocol):
    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...


class AdvisoryLock:
    """A PostgreSQL session advisory lock held on a dedicated connection."""

    def __init__(self, engine: sa.Engine, key: int = SCHEDULER_KEY) -> None:
        self.engine = engine
        self.key = key
        self._conn: sa.Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_held()
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(self.key))).scalar_one())
            conn.commit()  # end the implicit transaction; the session lock stays
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def still_held(self) -> bool:
        """True while the lock's session is alive: PostgreSQL keeps a session lock until
        the session ends, so a live session still holds it."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1"))
            self._conn.commit()
        except Exception as exc:
            log_failure(log, "lost the connection that holds the scheduler lock", exc)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(sa.select(sa.func.pg_advisory_unlock(self.key)))
            self._conn.commit()
        except Exception:
            log.debug("unlock failed; closing the session releases it", exc_info=True)
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never return a lock-holding session to the pool
                conn.close()
            except Exception:
                log.debug("closing the lock connection failed", exc_info=True)


def sqlite_lock(path: Path) -> FileLock:
    """The lock file beside SQLite database ``path``: the scheduler holds it while it runs,
    and ``backup``/``restore`` take it to know that no daemon is writing."""
    return FileLock(str(Path(str(path) + ".lock")))


class SqliteFileLock:
    """The file lock next to a SQLite database: one scheduler per file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = sqlite_lock(path)

    @property
    def lock_file(self) -> str:
        return str(self.lock.lock_file)

    def try_acquire(self) -> bool:
        if self.lock.is_locked:
            return True  # held by this process already (the lock counts re-entries)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def still_held(self) -> bool:
        return bool(self.lock.is_locked)

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release()


def leadership_for(engine: sa.Engine, sqlite_path: Path | None) -> Leadership:
    if is_sqlite(engine):
        if sqlite_path is None:  # an in-memory database: one process by definition
            return _Always()
        return SqliteFileLock(sqlite_path)
    return AdvisoryLock(engine)


class _Always:
    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


# ---------------------------------------------------------------- the heartbeat


def heartbeat(engine: sa.Engine, holder: str, *, now: datetime, since: datetime) -> None:
    """Say (again) that ``holder`` leads; one row, replaced by each new leader."""
    with write(engine) as conn:
        changed = conn.execute(
            sa.update(SchedulerLeader)
            .where(SchedulerLeader.id == 1)
            .values(holder=holder, since=since, heartbeat_at=now)
        ).rowcount
        if changed == 0:
            conn.execute(
                sa.insert(SchedulerLeader).values(
                    id=1, holder=holder, since=since, heartbeat_at=now
                )
            )


def current(engine: sa.Engine) -> dict[str, Any] | None:
    """The last leader's heartbeat row, or None."""
    with read(engine) as conn:
        row = conn.execute(sa.select(SchedulerLeader).where(SchedulerLeader.id == 1)).one_or_none()
    if row is None:
        return None
    return {"holder": row.holder, "since": row.since, "heartbeat_at": row.heartbeat_at}


def known(engine: sa.Engine, *, now: datetime) -> dict[str, Any] | None:
    """The leader if its heartbeat is fresh (readiness), else None."""
    row = current(engine)
    if row is None or now - row["heartbeat_at"] > STALE_AFTER:
        return None
    return row


def migrate_exclusively(engine: sa.Engine) -> None:
    """Upgrade the schema; on PostgreSQL one daemon at a time (others wait, then find
    nothing to do), so several daemons starting together never race on a migration."""
    from marketcare.ledger.db import migrate

    if is_sqlite(engine):
        migrate(engine)
        return
    with engine.connect() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_lock(MIGRATE_KEY)))
        conn.commit()
        try:
            migrate(engine)
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATE_KEY)))
            conn.commit()
