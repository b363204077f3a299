"""Users, passwords, tokens and the sign-in throttle, against a real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from marketcare.domain import signin
from marketcare.domain.access import ALLOWED, MARKET_SCOPED, Action, Principal, Role, may
from marketcare.ledger import accounts, audit, sessions
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger.models import ApiToken, Event, LoginFailure, User

from .conftest import make_market_yaml, make_schedule

pytestmark = pytest.mark.heavy(12)

NOW = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
PW = "a long enough password"


@pytest.fixture
def ledger_with_markets(engine: sa.Engine) -> sa.Engine:
    schedule = make_schedule(make_market_yaml("lizhong") + make_market_yaml("xinhua"))
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=timedelta(days=1))
    return engine


def authenticate(engine: sa.Engine, username: str, password: str, **where: Any) -> Principal | None:
    """The user a sign-in attempt lets in (None: a wrong password), as the form sees it."""
    return accounts.attempt_sign_in(engine, username, password, **where).who


def add(engine: sa.Engine, name: str, role: Role, markets: tuple[str, ...] = ()) -> int:
    return accounts.add_user(engine, accounts.NewUser(name, name, role, PW, markets), now=NOW)


def test_a_password_is_stored_only_as_an_argon2id_hash(ledger_with_markets: sa.Engine) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    with ledger_with_markets.connect() as conn:
        stored = conn.execute(sa.select(User.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PW not in stored


def test_the_right_password_signs_in_and_a_wrong_one_does_not(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    who = authenticate(ledger_with_markets, "MGR", PW, client="1.2.3.4", now=NOW)
    assert who is not None and who.markets == frozenset({"lizhong"})
    assert authenticate(ledger_with_markets, "mgr", "wrong!", client="x", now=NOW) is None
    assert authenticate(ledger_with_markets, "nobody", PW, client="x", now=NOW) is None


def fail(
    engine: sa.Engine, name: str, client: str, at: datetime, device: str | None = None
) -> None:
    assert authenticate(engine, name, "bad", client=client, device=device, now=at) is None


def make_failures(engine: sa.Engine, pairs: list[tuple[str, str]], at: datetime = NOW) -> None:
    """Failed sign-ins as the throttle stores them, without hashing a password for each."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(LoginFailure), [{"username": n, "client": c, "at": at} for n, c in pairs]
        )


def test_five_failures_refuse_that_name_from_that_client_until_the_window_passes(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    for i in range(signin.PAIR_LIMIT):
        fail(ledger_with_markets, "mgr", "6.6.6.6", NOW + timedelta(seconds=i))
    with pytest.raises(accounts.Throttled) as caught:
        authenticate(
            ledger_with_markets, "mgr", PW, client="6.6.6.6", now=NOW + timedelta(minutes=1)
        )
    assert 0 < caught.value.retry_after <= signin.WINDOW.total_seconds() + 1
    later = NOW + signin.WINDOW + timedelta(seconds=10)
    assert authenticate(ledger_with_markets, "mgr", PW, client="6.6.6.6", now=later)


def test_the_owner_signs_in_from_another_address_while_a_guesser_is_refused(
    ledger_with_markets: sa.Engine,
) -> None:
    """Issue 15, row 1: five wrong passwords from anywhere locked the owner out (429)."""
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    for i in range(signin.PAIR_LIMIT):
        fail(ledger_with_markets, "mgr", "6.6.6.6", NOW + timedelta(seconds=i))
    at = NOW + timedelta(minutes=1)
    with pytest.raises(accounts.Throttled):
        authenticate(ledger_with_markets, "mgr", "guess", client="6.6.6.6", now=at)
    who = authenticate(ledger_with_markets, "mgr", PW, client="10.0.0.7", now=at)
    assert who is not None and who.username == "mgr"


def test_five_unknown_names_behind_one_nat_do_not_keep_a_colleague_out(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    for i in range(5):
        fail(ledger_with_markets, f"nobody{i}", "100.64.0.1", NOW)
    assert authenticate(ledger_with_markets, "mgr", PW, client="100.64.0.1", now=NOW)


def test_an_address_guessing_many_names_is_refused_but_a_known_device_behind_it_is_not(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    make_failures(
        ledger_with_markets, [(f"user{i}", "9.9.9.9") for i in range(signin.CLIENT_LIMIT)]
    )
    with pytest.raises(accounts.Throttled):
        authenticate(ledger_with_markets, "someone", "bad", client="9.9.9.9", now=NOW)
    with pytest.raises(accounts.Throttled):
        authenticate(ledger_with_markets, "mgr", PW, client="9.9.9.9", now=NOW)
    # the owner's phone signed in before: it carries a device cookie for "mgr"
    assert authenticate(
        ledger_with_markets, "mgr", PW, client="9.9.9.9", device="a1b2c3d4e5f60718", now=NOW
    )


def test_a_name_attacked_from_many_addresses_is_slowed_and_never_refused(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    make_failures(ledger_with_markets, [("mgr", f"10.1.0.{i}") for i in range(signin.NAME_CEILING)])
    attempt = accounts.attempt_sign_in(ledger_with_markets, "mgr", PW, client="172.16.0.9", now=NOW)
    assert attempt.who is not None and attempt.delay == signin.SLOW_DOWN
    known = accounts.attempt_sign_in(
        ledger_with_markets, "mgr", PW, client="172.16.0.9", device="a1b2c3d4e5f60718", now=NOW
    )
    assert known.who is not None and known.delay == 0


def test_the_owners_sign_in_does_not_forgive_a_guessers_failures(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    for i in range(signin.PAIR_LIMIT):
        fail(ledger_with_markets, "mgr", "6.6.6.6", NOW + timedelta(seconds=i))
    assert authenticate(ledger_with_markets, "mgr", PW, client="10.0.0.7", now=NOW)
    with pytest.raises(accounts.Throttled):
        authenticate(ledger_with_markets, "mgr", PW, client="6.6.6.6", now=NOW)


LIFETIME = signin.Lifetime(idle=timedelta(days=14), absolute=timedelta(days=30))


def start(engine: sa.Engine, uid: int, at: datetime = NOW) -> str:
    return sessions.start(engine, uid, device="Chrome · Android", client="10.0.0.7", now=at)


def test_a_disabled_user_cannot_sign_in_and_loses_sessions_and_tokens(
    ledger_with_markets: sa.Engine,
) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    _, token = accounts.create_token(ledger_with_markets, uid, "phone", now=NOW)
    key = start(ledger_with_markets, uid)
    assert sessions.find(ledger_with_markets, key, now=NOW, lifetime=LIFETIME) is not None
    accounts.set_disabled(ledger_with_markets, "mgr")
    assert sessions.find(ledger_with_markets, key, now=NOW, lifetime=LIFETIME) is None
    assert accounts.principal_for_token(ledger_with_markets, token, now=NOW) is None
    assert authenticate(ledger_with_markets, "mgr", PW, client="x", now=NOW) is None
    accounts.set_disabled(ledger_with_markets, "mgr", False)
    assert sessions.find(ledger_with_markets, key, now=NOW, lifetime=LIFETIME) is None


def test_a_password_change_ends_every_session_and_revokes_the_tokens(
    ledger_with_markets: sa.Engine,
) -> None:
    """Issue 15, row 3: both tokens answered 200 after a password reset."""
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    phone, laptop = start(ledger_with_markets, uid), start(ledger_with_markets, uid)
    tokens = [accounts.create_token(ledger_with_markets, uid, n, now=NOW)[1] for n in "ab"]
    revoked = accounts.set_password(ledger_with_markets, "mgr", "another long password")
    assert revoked == 2
    for key in (phone, laptop):
        assert sessions.find(ledger_with_markets, key, now=NOW, lifetime=LIFETIME) is None
    for token in tokens:
        assert accounts.principal_for_token(ledger_with_markets, token, now=NOW) is None
    fresh = start(ledger_with_markets, uid)
    assert sessions.find(ledger_with_markets, fresh, now=NOW, lifetime=LIFETIME) is not None


def test_an_operator_may_keep_the_tokens_on_a_password_reset_when_they_say_so(
    ledger_with_markets: sa.Engine,
) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    _, token = accounts.create_token(ledger_with_markets, uid, "门禁系统", now=NOW)
    assert accounts.set_password(ledger_with_markets, "mgr", "x" * 12, keep_tokens=True) == 0
    assert accounts.principal_for_token(ledger_with_markets, token, now=NOW) is not None


def test_signing_out_ends_the_session_and_only_that_one(ledger_with_markets: sa.Engine) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    phone, laptop = start(ledger_with_markets, uid), start(ledger_with_markets, uid)
    sessions.end(ledger_with_markets, laptop, now=NOW)
    assert sessions.find(ledger_with_markets, laptop, now=NOW, lifetime=LIFETIME) is None
    assert sessions.find(ledger_with_markets, phone, now=NOW, lifetime=LIFETIME) is not None
    assert [
        s.device for s in sessions.live(ledger_with_markets, uid, now=NOW, lifetime=LIFETIME)
    ] == ["Chrome · Android"]


def test_a_session_slides_while_used_but_ends_at_its_absolute_lifetime(
    ledger_with_markets: sa.Engine,
) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    key = start(ledger_with_markets, uid)
    day = NOW
    while day < NOW + timedelta(days=29):  # used every 10 days: never idle for 14
        day += (
            timedelta(days=10)
            if day + timedelta(days=10) < NOW + timedelta(days=29)
            else timedelta(days=1)
        )
        assert sessions.find(ledger_with_markets, key, now=day, lifetime=LIFETIME) is not None
    at_the_end = NOW + LIFETIME.absolute
    assert sessions.find(ledger_with_markets, key, now=at_the_end, lifetime=LIFETIME) is None
    idle = start(ledger_with_markets, uid)
    later = NOW + LIFETIME.idle + timedelta(minutes=1)
    assert sessions.find(ledger_with_markets, idle, now=later, lifetime=LIFETIME) is None


def test_the_last_active_operator_cannot_be_disabled(ledger_with_markets: sa.Engine) -> None:
    """Issue 15, row 7: the API let an operator disable the last operator (themselves)."""
    add(ledger_with_markets, "root", Role.OPERATOR)
    with pytest.raises(accounts.AccountError, match="last active operator"):
        accounts.set_disabled(ledger_with_markets, "root")
    add(ledger_with_markets, "second", Role.OPERATOR)
    with pytest.raises(accounts.AccountError, match="your own account"):
        accounts.set_disabled(ledger_with_markets, "root", by="root")
    accounts.set_disabled(ledger_with_markets, "second", by="root")
    with pytest.raises(accounts.AccountError, match="last active operator"):
        accounts.set_disabled(ledger_with_markets, "root", by="someone-else")
    assert not any(
        u["disabled"] for u in accounts.list_users(ledger_with_markets) if u["username"] == "root"
    )


def test_account_changes_are_audit_events_naming_who_made_them(
    ledger_with_markets: sa.Engine,
) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    tid, _ = accounts.create_token(ledger_with_markets, uid, "a", now=NOW, by="mgr")
    accounts.revoke_token(ledger_with_markets, uid, tid, now=NOW, by="root")
    accounts.set_password(ledger_with_markets, "mgr", "x" * 12, by="root", now=NOW)
    accounts.set_disabled(ledger_with_markets, "mgr", by="root", now=NOW)
    accounts.rotate_feed(ledger_with_markets, "mgr", now=NOW, by="root")
    with ledger_with_markets.connect() as conn:
        events = conn.execute(
            sa.select(Event.actor, Event.action, Event.details).where(Event.action.like("%.%"))
        ).all()
        assert audit.verify(conn).ok
    assert [(e.actor, e.action) for e in events] == [
        (accounts.CLI, "user.added"),
        ("mgr", "token.created"),
        ("root", "token.revoked"),
        ("root", "user.password_set"),
        ("root", "user.disabled"),
        ("root", "feed.rotated"),
    ]
    assert all(e.details["user"] == "mgr" for e in events)


def test_tokens_are_kept_as_hashes_and_can_be_revoked(ledger_with_markets: sa.Engine) -> None:
    uid = add(ledger_with_markets, "office", Role.OFFICE)
    tid, token = accounts.create_token(ledger_with_markets, uid, "reporting system", now=NOW)
    with ledger_with_markets.connect() as conn:
        assert token not in conn.execute(sa.select(ApiToken.token_hash)).scalar_one()
    who = accounts.principal_for_token(ledger_with_markets, token, now=NOW)
    assert who is not None and who.role == Role.OFFICE
    accounts.revoke_token(ledger_with_markets, uid, tid, now=NOW)
    assert accounts.principal_for_token(ledger_with_markets, token, now=NOW) is None
    assert accounts.principal_for_token(ledger_with_markets, "mc_guess", now=NOW) is None


@pytest.mark.parametrize(
    ("name", "role", "markets", "password", "field"),
    [
        ("Bad Name!", Role.MANAGER, ("lizhong",), PW, "username"),
        ("mgr", Role.MANAGER, (), PW, "markets"),
        ("mgr", Role.MANAGER, ("nowhere",), PW, "markets"),
        ("office", Role.OFFICE, ("lizhong",), PW, "markets"),
        ("mgr", Role.MANAGER, ("lizhong",), "short", "password"),
    ],
)
def test_a_bad_user_is_refused_naming_the_field_and_nothing_is_stored(
    ledger_with_markets: sa.Engine,
    name: str,
    role: Role,
    markets: tuple[str, ...],
    password: str,
    field: str,
) -> None:
    with pytest.raises(accounts.AccountError) as caught:
        accounts.add_user(
            ledger_with_markets, accounts.NewUser(name, "x", role, password, markets), now=NOW
        )
    assert caught.value.field == field
    assert accounts.count_users(ledger_with_markets) == 0


def test_a_user_name_is_never_taken_twice(ledger_with_markets: sa.Engine) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    with pytest.raises(accounts.AccountError, match="already exists"):
        add(ledger_with_markets, "MGR", Role.OFFICE)


def test_the_installation_secret_is_made_once(ledger_with_markets: sa.Engine) -> None:
    first = accounts.app_secret(ledger_with_markets, "sessions", now=NOW)
    assert accounts.app_secret(ledger_with_markets, "sessions", now=NOW) == first
    assert accounts.app_secret(ledger_with_markets, "feeds", now=NOW) != first
    assert accounts.feed_key(first, 1, 0, "lizhong") != accounts.feed_key(first, 2, 0, "lizhong")
    assert accounts.feed_key(first, 1, 0, "lizhong") != accounts.feed_key(first, 1, 1, "lizhong")


# ---------------------------------------------------------------- the matrix


def who(role: Role, markets: frozenset[str] = frozenset()) -> Principal:
    return Principal(1, "u", "u", role, markets)


def test_a_manager_acts_only_in_their_own_markets() -> None:
    mgr = who(Role.MANAGER, frozenset({"lizhong"}))
    for action in MARKET_SCOPED:
        if Role.MANAGER in ALLOWED[action]:
            assert may(mgr, action, "lizhong")
        assert not may(mgr, action, "xinhua")


def test_the_office_reaches_every_market_but_does_not_tick() -> None:
    office = who(Role.OFFICE)
    assert may(office, Action.VIEW_MARKET, "anywhere")
    assert may(office, Action.VERIFY, "anywhere")
    assert not may(office, Action.TICK, "anywhere")


def test_an_operator_manages_users_and_sees_no_market() -> None:
    op = who(Role.OPERATOR)
    assert may(op, Action.MANAGE_USERS) and may(op, Action.OUTBOX)
    assert not any(may(op, a, "lizhong") for a in MARKET_SCOPED)


def test_the_matrix_in_the_web_docs_is_the_one_the_code_enforces() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "web.md").read_text(encoding="utf-8")
    documented: dict[Action, frozenset[Role]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in {a.value for a in Action}:
            documented[Action(cells[0])] = frozenset(
                role for role, cell in zip(Role, cells[1:4], strict=True) if cell != "—"
            )
    assert documented == ALLOWED
