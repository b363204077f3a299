"""Who this ledger is: a name made once per database, so that two ledgers sharing an
exports folder (the README's ``var/demo.db`` beside ``var/marketcare.db``) never write
their reports over each other's.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

import sqlalchemy as sa

from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import Installation


@dataclass(frozen=True)
class Identity:
    uid: str
    #: the folder of its reports under the exports folder: ``marketcare-3f2a9c1b``
    name: str


def identity(engine: sa.Engine, *, now: datetime) -> Identity:
    """This ledger's identity, made on first use (a copy or a move keeps it)."""

    def step() -> Identity:
        with write(engine) as conn:
            return identity_in(conn, now=now)

    found = _read(engine)
    return found if found is not None else retrying(step, what="installation")


def identity_in(conn: sa.Connection, *, now: datetime) -> Identity:
    found = conn.execute(sa.select(Installation).where(Installation.id == 1)).one_or_none()
    if found is None:
        uid = uuid.uuid4().hex
        conn.execute(
            dialect_insert(conn, Installation)
            .values(id=1, uid=uid, name=f"{_stem(conn)}-{uid[:8]}", created_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        found = conn.execute(sa.select(Installation).where(Installation.id == 1)).one()
    return Identity(found.uid, found.name)


def _read(engine: sa.Engine) -> Identity | None:
    with read(engine) as conn:
        found = conn.execute(sa.select(Installation).where(Installation.id == 1)).one_or_none()
    return None if found is None else Identity(found.uid, found.name)


def _stem(conn: sa.Connection) -> str:
    """The database's own name, readable in a folder listing (``marketcare``, ``demo``)."""
    database = conn.engine.url.database or "ledger"
    stem = PurePosixPath(database).stem if conn.dialect.name == "sqlite" else database
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")[:40] or "ledger"
