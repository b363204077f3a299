"""The rules of signing in, as plain functions: when the throttle refuses or slows an
attempt, how long a session lives, and that the last operator stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from marketcare.domain import signin
from marketcare.domain.access import leaves_no_operator

NOW = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


def ago(*minutes: float) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in minutes]


def judge(
    pair: list[datetime] | None = None,
    client: list[datetime] | None = None,
    name_failures: int = 0,
    trusted: bool = False,
) -> signin.Verdict:
    return signin.judge(
        pair=pair or [], client=client or [], name_failures=name_failures, trusted=trusted, now=NOW
    )


def test_a_client_that_has_not_been_failing_is_answered_at_once() -> None:
    assert judge() == signin.Verdict()


def test_five_failures_of_a_pair_refuse_it_until_the_oldest_leaves_the_window() -> None:
    verdict = judge(pair=ago(14, 10, 5, 2, 1))
    assert verdict.refused == signin.Scope.PAIR
    assert verdict.retry_after == 61  # the failure 14 minutes ago counts one more minute
    assert judge(pair=ago(16, 10, 5, 2, 1)) == signin.Verdict()  # one has left the window


def test_failures_older_than_the_window_do_not_count() -> None:
    assert judge(pair=ago(20, 19, 18, 17, 16), client=ago(*range(16, 56))) == signin.Verdict()


def test_an_address_failing_for_many_names_is_refused_for_every_name() -> None:
    verdict = judge(client=ago(*[m / 2 for m in range(signin.CLIENT_LIMIT)]))
    assert verdict.refused == signin.Scope.CLIENT and 0 < verdict.retry_after <= 15 * 60 + 1


def test_a_trusted_device_is_judged_by_its_own_failures_only() -> None:
    crowded = ago(*[m / 2 for m in range(signin.CLIENT_LIMIT)])
    assert judge(client=crowded, name_failures=500, trusted=True) == signin.Verdict()
    assert judge(pair=ago(5, 4, 3, 2, 1), trusted=True).refused == signin.Scope.PAIR


def test_a_name_past_its_ceiling_is_slowed_never_refused() -> None:
    verdict = judge(name_failures=signin.NAME_CEILING)
    assert verdict.refused is None and verdict.delay == signin.SLOW_DOWN
    assert judge(name_failures=signin.NAME_CEILING - 1).delay == 0


def test_the_limits_are_ordered_as_the_docs_say() -> None:
    assert signin.PAIR_LIMIT < signin.CLIENT_LIMIT < signin.NAME_CEILING
    assert signin.WINDOW == timedelta(minutes=15)


LIFETIME = signin.Lifetime(idle=timedelta(days=14), absolute=timedelta(days=30))


def test_a_session_lives_while_used_and_ends_when_idle_or_too_old() -> None:
    made = NOW - timedelta(days=20)

    def alive(last_seen: datetime, created: datetime = made) -> bool:
        return signin.session_alive(
            created_at=created, last_seen_at=last_seen, now=NOW, lifetime=LIFETIME
        )

    assert alive(NOW - timedelta(days=13))
    assert not alive(NOW - timedelta(days=14))
    assert not alive(NOW - timedelta(minutes=1), created=NOW - timedelta(days=30))


def test_last_seen_is_written_at_most_every_few_minutes() -> None:
    assert not signin.needs_touch(NOW - timedelta(minutes=4), NOW)
    assert signin.needs_touch(NOW - signin.TOUCH_EVERY, NOW)


def test_the_last_active_operator_cannot_be_taken_away() -> None:
    assert leaves_no_operator(["root"], "root")
    assert not leaves_no_operator(["root", "second"], "root")
    assert not leaves_no_operator(["root"], "someone-else")
    assert not leaves_no_operator(iter(["root", "second"]), "second")
