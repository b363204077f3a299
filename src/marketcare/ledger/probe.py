"""The write probe: one small write that proves the database still takes writes."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from marketcare.ledger.db import dialect_insert, write
from marketcare.ledger.models import HealthProbe


def probe_write(engine: sa.Engine, holder: str, *, now: datetime) -> None:
    """Record ``now`` in this daemon's probe row, in a transaction of its own; raises the
    database's error when it cannot write (a full disk, a read-only file system)."""
    with write(engine) as conn:
        stmt = dialect_insert(conn, HealthProbe).values(holder=holder, at=now)
        conn.execute(stmt.on_conflict_do_update(index_elements=["holder"], set_={"at": now}))
