"""Users, passwords, API tokens and sign-in throttling, stored in the ledger database.

Passwords are hashed with Argon2id (argon2-cffi's defaults, re-hashed when they change).
API tokens are 256-bit random strings shown once; only their SHA-256 is stored, so a
stolen database does not yield working tokens. Failed sign-ins are rows in the database,
so the limit holds across restarts and across several daemons sharing one database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from marketcare.clock import iso
from marketcare.domain.access import Principal, Role
from marketcare.errors import BadInput, NotFound, Refused
from marketcare.i18n import LANGUAGES
from marketcare.ledger.db import read, retrying, write
from marketcare.ledger.models import ApiToken, AppSecret, LoginFailure, MarketRow, User, UserMarket

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10
TOKEN_PREFIX = "mc_"

#: sign-in throttle: this many failures within the window locks the name (and the client)
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)

_hasher = PasswordHasher()
#: verified against when the user does not exist, so timing does not reveal names
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(BadInput):
    """A user or token request was refused; ``field`` names the input at fault."""


class Throttled(Refused):
    """Too many failed sign-ins; ``retry_after`` seconds until the next attempt counts."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after // 60 + 1} min")
        self.retry_after = retry_after


@dataclass(frozen=True)
class NewUser:
    username: str
    display_name: str
    role: Role
    password: str
    markets: tuple[str, ...] = ()
    language: str | None = None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters", "password")
    if len(password) > 1024:
        raise AccountError("a password may have at most 1024 characters", "password")


def _check_markets(conn: sa.Connection, role: Role, markets: tuple[str, ...]) -> None:
    if role == Role.MANAGER and not markets:
        raise AccountError("a market manager needs at least one market", "markets")
    if role != Role.MANAGER and markets:
        raise AccountError(f"a {role.value} user reaches markets by role; give none", "markets")
    known = set(conn.execute(sa.select(MarketRow.id)).scalars())
    unknown = [m for m in markets if m not in known]
    if unknown:
        raise AccountError(
            f"unknown market {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none yet'})",
            "markets",
        )


def add_user(engine: sa.Engine, new: NewUser, *, now: datetime) -> int:
    """Create a user; the name must be new (names are lower-case, never reused)."""
    username = new.username.strip().lower()
    if not USERNAME.match(username):
        raise AccountError(
            f"{new.username!r} is not a valid user name: 2–64 of a-z 0-9 . _ -, "
            "starting with a letter or digit",
            "username",
        )
    if not new.display_name.strip():
        raise AccountError("give the user's name as shown on pages", "display_name")
    if new.language is not None and new.language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}", "language")
    check_password(new.password)
    hashed = _hasher.hash(new.password)
    markets = tuple(dict.fromkeys(new.markets))

    def step() -> int:
        with write(engine) as conn:
            if conn.execute(sa.select(User.id).where(User.username == username)).first():
                raise AccountError(f"user {username!r} already exists", "username")
            _check_markets(conn, new.role, markets)
            uid = conn.execute(
                sa.insert(User)
                .values(
                    username=username,
                    display_name=new.display_name.strip(),
                    role=new.role.value,
                    password_hash=hashed,
                    language=new.language,
                    disabled=False,
                    session_epoch=0,
                    created_at=now,
                )
                .returning(User.id)
            ).scalar_one()
            for m in markets:
                conn.execute(sa.insert(UserMarket).values(user_id=uid, market_id=m))
            return int(uid)

    return retrying(step, what="add user")


def _user_row(conn: sa.Connection, username: str) -> Any:
    row = conn.execute(
        sa.select(User).where(User.username == username.strip().lower())
    ).one_or_none()
    if row is None:
        raise NotFound(f"no user {username!r}")
    return row


def set_password(engine: sa.Engine, username: str, password: str) -> None:
    """Change a password; every session of the user is signed out."""
    check_password(password)
    _change_and_sign_out(
        engine, username, {"password_hash": _hasher.hash(password)}, "set password"
    )


def set_disabled(engine: sa.Engine, username: str, disabled: bool = True) -> None:
    """Disable (or enable) a user: sessions end, tokens stop working, sign-in is refused."""
    _change_and_sign_out(engine, username, {"disabled": disabled}, "disable user")


def _change_and_sign_out(
    engine: sa.Engine, username: str, values: dict[str, Any], what: str
) -> None:
    """Change a user and end every session of theirs (the epoch their cookies carry moves
    on) in one transaction; cached token lookups are forgotten after it."""

    def step() -> None:
        with write(engine) as conn:
            row = _user_row(conn, username)
            conn.execute(
                sa.update(User)
                .where(User.id == row.id)
                .values(**values, session_epoch=row.session_epoch + 1)
            )

    retrying(step, what=what)
    forget_tokens()


def set_language(engine: sa.Engine, user_id: int, language: str | None) -> None:
    if language is not None and language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}", "language")
    with write(engine) as conn:
        conn.execute(sa.update(User).where(User.id == user_id).values(language=language))
    forget_tokens()


def list_users(engine: sa.Engine, *, zone: tzinfo = UTC) -> list[dict[str, Any]]:
    """Every user, as the CLI's and the API's JSON show them (times by ``clock.iso``)."""
    with read(engine) as conn:
        users = conn.execute(sa.select(User).order_by(User.username)).all()
        links = conn.execute(sa.select(UserMarket)).all()
    markets: dict[int, list[str]] = {}
    for link in links:
        markets.setdefault(link.user_id, []).append(link.market_id)
    return [
        {
            "username": u.username,
            "display_name": u.display_name,
            "role": u.role,
            "markets": sorted(markets.get(u.id, [])),
            "language": u.language,
            "disabled": u.disabled,
            "created_at": iso(u.created_at, zone),
        }
        for u in users
    ]


def display_names(engine: sa.Engine, usernames: Iterable[str]) -> dict[str, str]:
    """The display names of those of ``usernames`` that are users (records name people by
    user name; pages show their names). A name that is no user (the CLI's ``--by 林秀英``,
    ``system``) is left out: the caller shows it as it is."""
    wanted = sorted({u for u in usernames if u})
    if not wanted:
        return {}
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(User.username, User.display_name).where(User.username.in_(wanted))
        ).all()
    return {r.username: r.display_name for r in rows}


def count_users(engine: sa.Engine, role: Role | None = None) -> int:
    with read(engine) as conn:
        stmt = sa.select(sa.func.count()).select_from(User)
        if role is not None:
            stmt = stmt.where(User.role == role.value)
        return int(conn.execute(stmt).scalar_one())


# ---------------------------------------------------------------- principals


def principal(engine: sa.Engine, user_id: int, epoch: int | None = None) -> Principal | None:
    """The active user ``user_id`` (None when disabled, gone, or ``epoch`` is stale)."""
    with read(engine) as conn:
        return principal_in(conn, user_id, epoch)


def principal_in(conn: sa.Connection, user_id: int, epoch: int | None = None) -> Principal | None:
    row = conn.execute(sa.select(User).where(User.id == user_id)).one_or_none()
    if row is None or row.disabled or (epoch is not None and epoch != row.session_epoch):
        return None
    markets = frozenset(
        conn.execute(sa.select(UserMarket.market_id).where(UserMarket.user_id == user_id)).scalars()
    )
    return Principal(
        user_id=row.id,
        username=row.username,
        display_name=row.display_name,
        role=Role(row.role),
        markets=markets,
        language=row.language,
    )


def session_epoch(engine: sa.Engine, user_id: int) -> int:
    with read(engine) as conn:
        return int(
            conn.execute(sa.select(User.session_epoch).where(User.id == user_id)).scalar_one()
        )


# ---------------------------------------------------------------- sign-in


def _recent_failures(conn: sa.Connection, username: str, client: str, now: datetime) -> list[Any]:
    since = now - FAILURE_WINDOW
    return list(
        conn.execute(
            sa.select(LoginFailure.at)
            .where(
                LoginFailure.at > since,
                sa.or_(LoginFailure.username == username, LoginFailure.client == client),
            )
            .order_by(LoginFailure.at)
        ).scalars()
    )


def authenticate(
    engine: sa.Engine, username: str, password: str, *, client: str, now: datetime
) -> Principal | None:
    """The user if the password is right; None if not; ``Throttled`` after too many failures.

    Failures count per user name and per client address, so guessing many passwords for
    one name or one password against many names are both slowed down.
    """
    name = username.strip().lower()[:64]
    client = client[:64]
    with read(engine) as conn:
        failures = _recent_failures(conn, name, client, now)
        row = conn.execute(sa.select(User).where(User.username == name)).one_or_none()
    if len(failures) >= MAX_FAILURES:
        oldest = failures[-MAX_FAILURES]
        raise Throttled(max(1, int((oldest + FAILURE_WINDOW - now).total_seconds())))
    ok = False
    try:
        ok = _hasher.verify(row.password_hash if row else _DUMMY_HASH, password) and row is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None or row.disabled:

        def record() -> None:
            with write(engine) as conn:
                conn.execute(sa.insert(LoginFailure).values(username=name, client=client, at=now))
                # keep the table small: failures older than the window no longer count
                conn.execute(sa.delete(LoginFailure).where(LoginFailure.at < now - FAILURE_WINDOW))

        retrying(record, what="record failed sign-in")
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        with write(engine) as conn:
            conn.execute(
                sa.update(User)
                .where(User.id == row.id)
                .values(password_hash=_hasher.hash(password))
            )
    with write(engine) as conn:
        conn.execute(sa.delete(LoginFailure).where(LoginFailure.username == name))
    return principal(engine, row.id)


# ---------------------------------------------------------------- API tokens


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: sa.Engine, user_id: int, name: str, *, now: datetime) -> tuple[int, str]:
    """A new token for ``user_id``: returns (id, token); the token is not stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise AccountError(
            "name the token (1–100 characters), e.g. the system that uses it", "name"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with write(engine) as conn:
        tid = conn.execute(
            sa.insert(ApiToken)
            .values(user_id=user_id, name=name, token_hash=_token_hash(token), created_at=now)
            .returning(ApiToken.id)
        ).scalar_one()
    return int(tid), token


def revoke_token(engine: sa.Engine, user_id: int, token_id: int, *, now: datetime) -> None:
    with write(engine) as conn:
        changed = conn.execute(
            sa.update(ApiToken)
            .where(
                ApiToken.id == token_id,
                ApiToken.user_id == user_id,
                ApiToken.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        ).rowcount
    forget_tokens()
    if changed != 1:
        raise NotFound(f"no active token {token_id}")


def tokens_of(engine: sa.Engine, user_id: int) -> list[dict[str, Any]]:
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)
        ).all()
    return [
        {
            "id": r.id,
            "name": r.name,
            "created_at": r.created_at.isoformat(),
            "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
            "revoked": r.revoked_at is not None,
        }
        for r in rows
    ]


#: last_used_at is written at most this often per token (not on every request)
_TOUCH_EVERY = timedelta(minutes=5)
#: how long this process trusts what it last read about a token (see ``principal_for_token``)
TOKEN_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class _KnownToken:
    who: Principal
    token_id: int
    last_used_at: datetime | None
    fetched: float  # time.monotonic() when read from the database


_known_lock = threading.Lock()
#: engine → SHA-256 of a token → what the database said about it (weak: per engine,
#: because a token hash means something only in its own database)
_known: weakref.WeakKeyDictionary[sa.Engine, dict[str, _KnownToken]] = weakref.WeakKeyDictionary()
#: bumped by ``forget_tokens``: a lookup that began before a change does not cache its answer
_known_generation = 0


def forget_tokens() -> None:
    """Drop every cached token → user answer, at once, in this process.

    Called after every change that could change a token's answer (disable, password,
    revoke, language). Another process (a second daemon, the CLI) cannot reach this
    cache: there the old answer lasts at most ``TOKEN_CACHE_SECONDS``.
    """
    global _known_generation
    with _known_lock:
        _known.clear()
        _known_generation += 1


def _needs_touch(last_used_at: datetime | None, now: datetime) -> bool:
    return last_used_at is None or now - last_used_at > _TOUCH_EVERY


def cached_principal_for_token(engine: sa.Engine, token: str, *, now: datetime) -> Principal | None:
    """The user of ``token`` if this process read it less than ``TOKEN_CACHE_SECONDS`` ago
    and ``last_used_at`` need not be written; None means "ask ``principal_for_token``".

    It never touches the database, so the web's event loop can call it without handing
    the request to a worker thread.
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    key = _token_hash(token)
    with _known_lock:
        table = _known.get(engine)
        known = table.get(key) if table is not None else None
    if known is None or time.monotonic() - known.fetched > TOKEN_CACHE_SECONDS:
        return None
    if _needs_touch(known.last_used_at, now):
        return None
    return known.who


def principal_for_token(engine: sa.Engine, token: str, *, now: datetime) -> Principal | None:
    """The user an API token belongs to, if the token is valid and the user active.

    A valid answer is kept for ``TOKEN_CACHE_SECONDS``: an API client sends many requests
    a second and each lookup was a read transaction of three statements (a third of a
    tick's database work). This process forgets at once when it changes a user or a
    token (``forget_tokens``); a change made by another process shows within the TTL.
    Invalid tokens are not cached, so a new token works at once.
    """
    hit = cached_principal_for_token(engine, token, now=now)
    if hit is not None:
        return hit
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    key = _token_hash(token)
    with _known_lock:
        generation = _known_generation
    with read(engine) as conn:
        row = conn.execute(
            sa.select(ApiToken).where(ApiToken.token_hash == key, ApiToken.revoked_at.is_(None))
        ).one_or_none()
        if row is None:
            return None
        who = principal_in(conn, row.user_id)
    if who is None:
        return None
    used = row.last_used_at
    if _needs_touch(used, now):
        with write(engine) as conn:
            conn.execute(sa.update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        used = now
    with _known_lock:
        if generation == _known_generation:  # nothing changed while we were reading
            _known.setdefault(engine, {})[key] = _KnownToken(who, row.id, used, time.monotonic())
    return who


# ---------------------------------------------------------------- installation secrets


def app_secret(engine: sa.Engine, name: str, *, now: datetime) -> str:
    """A random secret made once per installation and shared by every daemon on it."""
    with read(engine) as conn:
        value = conn.execute(
            sa.select(AppSecret.value).where(AppSecret.name == name)
        ).scalar_one_or_none()
    if value is not None:
        return str(value)

    def step() -> str:
        with write(engine) as conn:
            existing = conn.execute(
                sa.select(AppSecret.value).where(AppSecret.name == name)
            ).scalar_one_or_none()
            if existing is not None:
                return str(existing)
            fresh = secrets.token_hex(32)
            conn.execute(sa.insert(AppSecret).values(name=name, value=fresh, created_at=now))
            return fresh

    return retrying(step, what="create secret")


def feed_key(secret: str, market_id: str) -> str:
    """The secret part of a market's calendar feed URL (stable; changes with the secret)."""
    return hmac.new(secret.encode(), f"ical:{market_id}".encode(), hashlib.sha256).hexdigest()[:32]


def feed_key_ok(secret: str, market_id: str, key: str) -> bool:
    return hmac.compare_digest(feed_key(secret, market_id), key)
