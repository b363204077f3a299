"""Users, passwords, API tokens, sign-in throttling and calendar feed keys, in the ledger.

Passwords are hashed with Argon2id (argon2-cffi's defaults, re-hashed when they change).
API tokens are 256-bit random strings shown once; only their SHA-256 is stored, so a
stolen database does not yield working tokens. Failed sign-ins are rows in the database,
so the limit (``domain.signin``) holds across restarts and across several daemons.

Every change to an account (added, disabled, enabled, password set, tokens made or
revoked, calendar addresses rotated) is an audit event in the hash chain and a line of
the security log, naming who made it.
"""

from __future__ import annotations

import functools
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

from marketcare import logs
from marketcare.clock import iso, now_utc
from marketcare.domain import signin
from marketcare.domain.access import ALLOWED, Action, Principal, Role, leaves_no_operator, may
from marketcare.errors import BadInput, NotFound, Refused
from marketcare.i18n import LANGUAGES
from marketcare.ledger import audit, sessions
from marketcare.ledger.db import read, retrying, write
from marketcare.ledger.models import (
    ApiToken,
    AppSecret,
    LoginFailure,
    MarketRow,
    User,
    UserMarket,
    WebSession,
)

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10
#: the visible prefix of every API token (not a secret: bandit B105 accepted)
TOKEN_PREFIX = "mc_"  # nosec B105

#: the actor named in audit events of changes made on the command line
CLI = "(cli)"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so timing does not reveal names.

    Made at the first sign-in, not at import: a hash costs 0.1 s of CPU, which every
    process that imports this module (each CLI command, each daemon) paid before."""
    return _hasher.hash("not a password of anyone")


class AccountError(BadInput):
    """A user or token request was refused; ``field`` names the input at fault."""


class Throttled(Refused):
    """Too many failed sign-ins; ``retry_after`` seconds until the next attempt counts."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after // 60 + 1} min")
        self.retry_after = retry_after


def _audit(conn: sa.Connection, *, by: str, action: str, now: datetime, **details: Any) -> None:
    """An account change as an audit event (inside the change's own transaction)."""
    audit.append(conn, [audit.NewEvent(at=now, actor=by, action=action, details=details)])


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


def add_user(engine: sa.Engine, new: NewUser, *, now: datetime, by: str = CLI) -> int:
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
            _audit(
                conn,
                by=by,
                action="user.added",
                now=now,
                user=username,
                role=new.role.value,
                markets=list(markets),
            )
            return int(uid)

    uid = retrying(step, what="add user")
    logs.security("user_added", user=username, role=new.role.value, by=by)
    return uid


def _user_row(conn: sa.Connection, username: str) -> Any:
    row = conn.execute(
        sa.select(User).where(User.username == username.strip().lower())
    ).one_or_none()
    if row is None:
        raise NotFound(f"no user {username!r}")
    return row


def set_password(
    engine: sa.Engine,
    username: str,
    password: str,
    *,
    keep_tokens: bool = False,
    by: str = CLI,
    now: datetime | None = None,
) -> int:
    """Set a password: every session of the user ends and, unless ``keep_tokens`` is
    chosen explicitly, every API token is revoked (a reset usually means the old
    password leaked, and a token made with it is no safer). Returns tokens revoked."""
    check_password(password)
    hashed = _hasher.hash(password)
    when = now or now_utc()

    def step() -> int:
        with write(engine) as conn:
            row = _user_row(conn, username)
            conn.execute(sa.update(User).where(User.id == row.id).values(password_hash=hashed))
            sessions.end_in(conn, WebSession.user_id == row.id, why=sessions.Why.PASSWORD, now=when)
            revoked = 0 if keep_tokens else _revoke_all_in(conn, row.id, when)
            _audit(
                conn,
                by=by,
                action="user.password_set",
                now=when,
                user=row.username,
                tokens_revoked=revoked,
                tokens_kept=keep_tokens,
            )
            return revoked

    revoked = retrying(step, what="set password")
    forget_tokens()
    logs.security(
        "password_set", user=username, by=by, tokens_revoked=revoked, tokens_kept=keep_tokens
    )
    return revoked


def _revoke_all_in(conn: sa.Connection, user_id: int, now: datetime) -> int:
    return int(
        conn.execute(
            sa.update(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
    )


def set_disabled(
    engine: sa.Engine,
    username: str,
    disabled: bool = True,
    *,
    by: str = CLI,
    now: datetime | None = None,
) -> None:
    """Disable (or enable) a user: sessions end, tokens stop working, sign-in is refused.

    Refused for the last active operator (nobody could manage users any more) and for
    one's own account (``by``). The active operators are locked first, so two operators
    disabling each other at once cannot both succeed.
    """
    when = now or now_utc()
    name = username.strip().lower()
    if disabled and name == by:
        raise AccountError("you cannot disable your own account", "username")

    def step() -> None:
        with write(engine) as conn:
            row = _user_row(conn, username)
            if disabled and row.role == Role.OPERATOR.value and not row.disabled:
                operators = conn.execute(
                    sa.select(User.username)
                    .where(User.role == Role.OPERATOR.value, User.disabled.is_(False))
                    .order_by(User.id)
                    .with_for_update()
                ).scalars()
                if leaves_no_operator(operators, row.username):
                    logs.security("last_operator_refused", level=30, user=row.username, by=by)
                    raise AccountError(
                        f"{row.username!r} is the last active operator; make or enable "
                        "another operator first",
                        "username",
                    )
            conn.execute(sa.update(User).where(User.id == row.id).values(disabled=disabled))
            if disabled:
                sessions.end_in(
                    conn,
                    WebSession.user_id == row.id,
                    why=sessions.Why.DISABLED,
                    now=when,
                )
            _audit(
                conn,
                by=by,
                action="user.disabled" if disabled else "user.enabled",
                now=when,
                user=row.username,
            )

    retrying(step, what="disable user")
    forget_tokens()
    logs.security("user_disabled" if disabled else "user_enabled", user=name, by=by)


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


def principal(engine: sa.Engine, user_id: int) -> Principal | None:
    """The active user ``user_id`` (None when disabled or gone)."""
    with read(engine) as conn:
        return principal_in(conn, user_id)


def principal_in(conn: sa.Connection, user_id: int) -> Principal | None:
    row = conn.execute(sa.select(User).where(User.id == user_id)).one_or_none()
    if row is None or row.disabled:
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


# ---------------------------------------------------------------- sign-in


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt: the user (None: refused), and how long to wait
    before answering (``domain.signin``: a name under attack from many addresses)."""

    who: Principal | None
    delay: float = 0.0


def _failure_times(conn: sa.Connection, *where: Any) -> list[datetime]:
    return list(conn.execute(sa.select(LoginFailure.at).where(*where)).scalars())


def _count_attempt(engine: sa.Engine, name: str, key: str, now: datetime) -> int:
    """Write a sign-in attempt down as a failure (until its password proves right)."""

    def step() -> int:
        with write(engine) as conn:
            return int(
                conn.execute(
                    sa.insert(LoginFailure)
                    .values(username=name, client=key, at=now)
                    .returning(LoginFailure.id)
                ).scalar_one()
            )

    return retrying(step, what="count sign-in attempt")


def _forget_attempt(engine: sa.Engine, attempt: int) -> None:
    def step() -> None:
        with write(engine) as conn:
            conn.execute(sa.delete(LoginFailure).where(LoginFailure.id == attempt))

    retrying(step, what="forget sign-in attempt")


def attempt_sign_in(
    engine: sa.Engine,
    username: str,
    password: str,
    *,
    client: str,
    device: str | None = None,
    now: datetime,
) -> SignIn:
    """Check a password under the throttle of ``domain.signin``; ``Throttled`` if refused.

    ``client`` is the address; ``device`` the id of a device cookie the caller verified
    for this name (the browser signed in as this user before), or None.
    """
    name = username.strip().lower()[:64]
    address = client[:64]
    key = f"d:{device}"[:64] if device else address
    since = now - signin.WINDOW
    # The attempt is written down as a failure *before* the failures are counted, and
    # stays one unless the password is right: attempts sent at the same moment each see
    # the others (the last of them to count sees them all), so a burst of guesses in
    # parallel is throttled as the same guesses one after another would be. Counted
    # after it, without it, every parallel guess was judged on the failures before the
    # burst: thirty at once were thirty guesses where the limit is five.
    attempt = _count_attempt(engine, name, key, now)
    others = LoginFailure.id != attempt
    with read(engine) as conn:
        pair = _failure_times(
            conn,
            others,
            LoginFailure.at > since,
            LoginFailure.username == name,
            LoginFailure.client == key,
        )
        from_address = (
            []
            if device
            else _failure_times(
                conn, others, LoginFailure.at > since, LoginFailure.client == address
            )
        )
        name_failures = int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(LoginFailure)
                .where(others, LoginFailure.at > since, LoginFailure.username == name)
            ).scalar_one()
        )
        row = conn.execute(sa.select(User).where(User.username == name)).one_or_none()
    verdict = signin.judge(
        pair=pair,
        client=from_address,
        name_failures=name_failures,
        trusted=device is not None,
        now=now,
    )
    if verdict.refused is not None:
        _forget_attempt(engine, attempt)  # refused unheard: not a guess
        logs.security(
            "signin_throttled",
            level=30,
            user=name,
            client=address,
            device=device or "",
            scope=verdict.refused.value,
            retry_after=verdict.retry_after,
        )
        raise Throttled(verdict.retry_after)
    if verdict.delay:
        logs.security("signin_slowed", level=30, user=name, client=address, delay=verdict.delay)
    ok = False
    try:
        ok = (
            _hasher.verify(row.password_hash if row else _dummy_hash(), password)
            and row is not None
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None or row.disabled:
        reason = "unknown user" if row is None else "disabled" if ok else "wrong password"

        def record() -> None:  # the attempt's row is the failure
            with write(engine) as conn:
                # keep the table small: failures older than the window no longer count
                conn.execute(sa.delete(LoginFailure).where(LoginFailure.at < since))

        retrying(record, what="record failed sign-in")
        logs.security(
            "signin_failed",
            level=30,
            user=name,
            client=address,
            device=device or "",
            reason=reason,
        )
        return SignIn(None, verdict.delay)
    if _hasher.check_needs_rehash(row.password_hash):
        with write(engine) as conn:
            conn.execute(
                sa.update(User)
                .where(User.id == row.id)
                .values(password_hash=_hasher.hash(password))
            )
    with write(engine) as conn:
        # only this pair's failures are forgiven: the owner signing in from their phone
        # does not reset a guesser's count elsewhere
        conn.execute(
            sa.delete(LoginFailure).where(LoginFailure.username == name, LoginFailure.client == key)
        )
    return SignIn(principal(engine, row.id), verdict.delay)


def device_id() -> str:
    """A fresh id for a device cookie (the web app signs it for the user who signed in)."""
    return secrets.token_hex(8)


# ---------------------------------------------------------------- API tokens


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    engine: sa.Engine, user_id: int, name: str, *, now: datetime, by: str = CLI
) -> tuple[int, str]:
    """A new token for ``user_id``: returns (id, token); the token is not stored.

    The pages and the API ask for the password again before calling this
    (``attempt_sign_in``): a session left open on a shared computer must not be enough
    to mint a credential that outlives it.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise AccountError(
            "name the token (1–100 characters), e.g. the system that uses it", "name"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)

    def step() -> tuple[int, str]:
        with write(engine) as conn:
            tid = conn.execute(
                sa.insert(ApiToken)
                .values(user_id=user_id, name=name, token_hash=_token_hash(token), created_at=now)
                .returning(ApiToken.id)
            ).scalar_one()
            owner = conn.execute(sa.select(User.username).where(User.id == user_id)).scalar_one()
            _audit(conn, by=by, action="token.created", now=now, user=owner, token_id=int(tid))
            return int(tid), str(owner)

    tid, owner = retrying(step, what="create token")
    logs.security("token_created", user=owner, token_id=tid, token_name=name, by=by)
    return tid, token


def revoke_token(
    engine: sa.Engine, user_id: int, token_id: int, *, now: datetime, by: str = CLI
) -> None:
    """Revoke one of ``user_id``'s tokens (the owner's own, or any user's by an operator)."""

    def step() -> tuple[int, str | None]:
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
            owner = conn.execute(
                sa.select(User.username).where(User.id == user_id)
            ).scalar_one_or_none()
            if changed == 1:
                _audit(conn, by=by, action="token.revoked", now=now, user=owner, token_id=token_id)
            return int(changed), owner

    changed, owner = retrying(step, what="revoke token")
    forget_tokens()
    if changed != 1:
        raise NotFound(f"no active token {token_id}")
    logs.security("token_revoked", user=owner or "", token_id=token_id, by=by)


def user_id_of(engine: sa.Engine, username: str) -> int:
    """The id of the user named ``username`` (``NotFound`` when there is none)."""
    with read(engine) as conn:
        return int(_user_row(conn, username).id)


def tokens_of(engine: sa.Engine, user_id: int) -> list[dict[str, Any]]:
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)
        ).all()
    return [_token_json(r) for r in rows]


def _token_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "created_at": r.created_at.isoformat(),
        "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
        "revoked": r.revoked_at is not None,
    }


def active_tokens(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every user's tokens not revoked, with their owner: what an operator reviews."""
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(*ApiToken.__table__.c, User.username, User.disabled)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.revoked_at.is_(None))
            .order_by(User.username, ApiToken.id)
        ).all()
    return [{**_token_json(r), "username": r.username, "user_disabled": r.disabled} for r in rows]


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


# ---------------------------------------------------------------- calendar feeds


def feed_key(secret: str, user_id: int, generation: int, market_id: str) -> str:
    """The secret part of one user's calendar feed address for one market.

    Per user, so a feed can be taken from one person without touching anyone else's:
    disabling the user, taking the market from them, or rotating (``rotate_feed``, which
    bumps ``generation``) makes the old address answer 404 at once.
    """
    message = f"ical:{user_id}:{generation}:{market_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def feed_keys(engine: sa.Engine, secret: str, who: Principal, markets: list[str]) -> dict[str, str]:
    """The caller's feed key of each of ``markets`` (those they may view)."""
    with read(engine) as conn:
        generation = conn.execute(
            sa.select(User.feed_generation).where(User.id == who.user_id)
        ).scalar_one()
    return {
        m: feed_key(secret, who.user_id, int(generation), m)
        for m in markets
        if may(who, Action.VIEW_MARKET, m)
    }


def feed_reader(engine: sa.Engine, secret: str, market_id: str, key: str) -> Principal | None:
    """Whose feed of ``market_id`` the address ``key`` is, if its owner may still view it.

    Each active user's key is computed and compared in constant time; there are a few
    dozen users, so this costs microseconds and stores no key.
    """
    if len(key) != 32 or not key.isascii():
        return None
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(User.id, User.feed_generation).where(
                User.disabled.is_(False),
                User.role.in_([r.value for r in ALLOWED[Action.VIEW_MARKET]]),
            )
        ).all()
        found = None
        for uid, generation in rows:
            if hmac.compare_digest(feed_key(secret, uid, int(generation), market_id), key):
                found = int(uid)
        who = principal_in(conn, found) if found is not None else None
    if who is None or not may(who, Action.VIEW_MARKET, market_id):
        return None
    return who


def rotate_feed(engine: sa.Engine, username: str, *, now: datetime, by: str = CLI) -> None:
    """Give the user new calendar feed addresses; the old ones stop working at once."""

    def step() -> str:
        with write(engine) as conn:
            row = _user_row(conn, username)
            conn.execute(
                sa.update(User)
                .where(User.id == row.id)
                .values(feed_generation=User.feed_generation + 1)
            )
            _audit(conn, by=by, action="feed.rotated", now=now, user=row.username)
            return str(row.username)

    name = retrying(step, what="rotate feed")
    logs.security("feed_rotated", user=name, by=by)
