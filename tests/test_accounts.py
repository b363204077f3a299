"""Users, passwords, tokens and the sign-in throttle, against a real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.domain.access import ALLOWED, MARKET_SCOPED, Action, Principal, Role, may
from marketcare.ledger import accounts
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger.models import ApiToken, User

from .conftest import make_market_yaml, make_schedule

NOW = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
PW = "a long enough password"


@pytest.fixture
def ledger_with_markets(engine: sa.Engine) -> sa.Engine:
    schedule = make_schedule(make_market_yaml("lizhong") + make_market_yaml("xinhua"))
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=timedelta(days=1))
    return engine


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
    who = accounts.authenticate(ledger_with_markets, "MGR", PW, client="1.2.3.4", now=NOW)
    assert who is not None and who.markets == frozenset({"lizhong"})
    assert accounts.authenticate(ledger_with_markets, "mgr", "wrong!", client="x", now=NOW) is None
    assert accounts.authenticate(ledger_with_markets, "nobody", PW, client="x", now=NOW) is None


def test_five_failures_lock_the_name_until_the_window_passes(
    ledger_with_markets: sa.Engine,
) -> None:
    add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    for i in range(accounts.MAX_FAILURES):
        at = NOW + timedelta(seconds=i)
        assert (
            accounts.authenticate(ledger_with_markets, "mgr", "bad", client=f"c{i}", now=at) is None
        )
    with pytest.raises(accounts.Throttled) as caught:
        accounts.authenticate(
            ledger_with_markets, "mgr", PW, client="other", now=NOW + timedelta(minutes=1)
        )
    assert 0 < caught.value.retry_after <= accounts.FAILURE_WINDOW.total_seconds()
    later = NOW + accounts.FAILURE_WINDOW + timedelta(seconds=10)
    assert (
        accounts.authenticate(ledger_with_markets, "mgr", PW, client="other", now=later) is not None
    )


def test_one_client_guessing_many_names_is_throttled_too(ledger_with_markets: sa.Engine) -> None:
    for i in range(accounts.MAX_FAILURES):
        accounts.authenticate(ledger_with_markets, f"user{i}", "bad", client="9.9.9.9", now=NOW)
    with pytest.raises(accounts.Throttled):
        accounts.authenticate(ledger_with_markets, "someone", "bad", client="9.9.9.9", now=NOW)


def test_a_disabled_user_cannot_sign_in_and_loses_sessions_and_tokens(
    ledger_with_markets: sa.Engine,
) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    _, token = accounts.create_token(ledger_with_markets, uid, "phone", now=NOW)
    epoch = accounts.session_epoch(ledger_with_markets, uid)
    assert accounts.principal(ledger_with_markets, uid, epoch) is not None
    accounts.set_disabled(ledger_with_markets, "mgr")
    assert accounts.principal(ledger_with_markets, uid, epoch) is None
    assert accounts.principal_for_token(ledger_with_markets, token, now=NOW) is None
    assert accounts.authenticate(ledger_with_markets, "mgr", PW, client="x", now=NOW) is None


def test_a_password_change_ends_existing_sessions(ledger_with_markets: sa.Engine) -> None:
    uid = add(ledger_with_markets, "mgr", Role.MANAGER, ("lizhong",))
    epoch = accounts.session_epoch(ledger_with_markets, uid)
    accounts.set_password(ledger_with_markets, "mgr", "another long password")
    assert accounts.principal(ledger_with_markets, uid, epoch) is None
    fresh = accounts.session_epoch(ledger_with_markets, uid)
    assert accounts.principal(ledger_with_markets, uid, fresh) is not None


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
    key = accounts.feed_key(first, "lizhong")
    assert accounts.feed_key_ok(first, "lizhong", key)
    assert not accounts.feed_key_ok(first, "xinhua", key)


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
