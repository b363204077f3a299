"""Web sessions as rows: one per sign-in, ended by signing out, a password change or a
disable, and by ``domain.signin.session_alive`` (idle and absolute lifetime).

The browser's cookie carries a random key; the row keeps its SHA-256 only. A copied
cookie therefore stops working the moment its session ends, which a signed stateless
cookie could not do.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from marketcare import logs
from marketcare.domain.access import Principal
from marketcare.domain.signin import Lifetime, needs_touch, session_alive
from marketcare.ledger.db import read, retrying, write
from marketcare.ledger.models import WebSession


class Why:
    """Why a session ended (``web_sessions.ended_why``)."""

    SIGNED_OUT = "signed out"
    EVERYWHERE = "signed out everywhere"
    #: a reason a session ended, not a password (bandit B105 accepted)
    PASSWORD = "password changed"  # nosec B105
    DISABLED = "user disabled"
    EXPIRED = "expired"
    BY_USER = "ended by the user"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def start(engine: sa.Engine, user_id: int, *, device: str, client: str, now: datetime) -> str:
    """A new session for ``user_id``; returns the key for the cookie (not stored)."""
    key = secrets.token_urlsafe(32)

    def step() -> None:
        with write(engine) as conn:
            conn.execute(
                sa.insert(WebSession).values(
                    user_id=user_id,
                    key_hash=_hash(key),
                    device=device[:200] or "?",
                    client=client[:64],
                    created_at=now,
                    last_seen_at=now,
                )
            )

    retrying(step, what="start session")
    return key


@dataclass(frozen=True)
class Found:
    """The session a cookie names, and its user."""

    session_id: int
    who: Principal


def find(engine: sa.Engine, key: str, *, now: datetime, lifetime: Lifetime) -> Found | None:
    """The live session of ``key`` and its active user; None otherwise.

    A session past its lifetime is ended on the way (``expired``); one seen more than
    ``TOUCH_EVERY`` ago is marked seen now (the sliding part of its lifetime).
    """
    from marketcare.ledger.accounts import principal_in

    if not key or len(key) > 100:
        return None
    with read(engine) as conn:
        row = conn.execute(
            sa.select(WebSession).where(
                WebSession.key_hash == _hash(key), WebSession.ended_at.is_(None)
            )
        ).one_or_none()
        if row is None:
            return None
        who = principal_in(conn, row.user_id)
    if not session_alive(
        created_at=row.created_at, last_seen_at=row.last_seen_at, now=now, lifetime=lifetime
    ):
        _end_where(engine, WebSession.id == row.id, why=Why.EXPIRED, now=now)
        return None
    if who is None:
        return None
    if needs_touch(row.last_seen_at, now):
        with write(engine) as conn:
            conn.execute(
                sa.update(WebSession).where(WebSession.id == row.id).values(last_seen_at=now)
            )
    return Found(int(row.id), who)


def _end_where(engine: sa.Engine, *where: Any, why: str, now: datetime) -> int:
    def step() -> int:
        with write(engine) as conn:
            return end_in(conn, *where, why=why, now=now)

    return retrying(step, what="end session")


def end_in(conn: sa.Connection, *where: Any, why: str, now: datetime) -> int:
    """End the live sessions matching ``where`` inside the caller's transaction."""
    return int(
        conn.execute(
            sa.update(WebSession)
            .where(WebSession.ended_at.is_(None), *where)
            .values(ended_at=now, ended_why=why)
        ).rowcount
    )


def end(engine: sa.Engine, key: str, *, now: datetime) -> None:
    """Sign out: the session of ``key`` ends (nothing happens for an unknown key)."""
    _end_where(engine, WebSession.key_hash == _hash(key), why=Why.SIGNED_OUT, now=now)


def end_one(engine: sa.Engine, user_id: int, session_id: int, *, now: datetime) -> bool:
    """End one of the user's own sessions (another device); False when there is none."""
    ended = _end_where(
        engine,
        WebSession.id == session_id,
        WebSession.user_id == user_id,
        why=Why.BY_USER,
        now=now,
    )
    if ended:
        logs.security("session_ended", user_id=user_id, session_id=session_id)
    return ended == 1


def end_all(engine: sa.Engine, user_id: int, *, why: str, now: datetime) -> int:
    """End every session of the user (sign out everywhere); returns how many ended."""
    ended = _end_where(engine, WebSession.user_id == user_id, why=why, now=now)
    logs.security("sessions_ended", user_id=user_id, count=ended, why=why)
    return ended


def live(engine: sa.Engine, user_id: int, *, now: datetime, lifetime: Lifetime) -> list[Any]:
    """The user's live sessions, the most recently used first (the account page's list)."""
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(WebSession)
            .where(WebSession.user_id == user_id, WebSession.ended_at.is_(None))
            .order_by(WebSession.last_seen_at.desc(), WebSession.id.desc())
        ).all()
    return [
        r
        for r in rows
        if session_alive(
            created_at=r.created_at, last_seen_at=r.last_seen_at, now=now, lifetime=lifetime
        )
    ]
