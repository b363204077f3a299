"""Signing in: when to refuse or slow a sign-in, and how long a session lives.

Plain Python with ``now`` and the counts as arguments; ``ledger.accounts`` counts the
failures and ``ledger.sessions`` keeps the sessions, both by these rules.

**Why the throttle looks like this.** A throttle that counts failures per user name
lets anyone who knows a name keep its owner out (five wrong passwords every fifteen
minutes, from anywhere). So failures are counted per *(name, client)* pair and per
*client*, where a client is the browser's device cookie when it has a valid one for
the name (it signed in as that user before) and its address otherwise:

* 5 failures of one pair in 15 minutes refuse that pair (that name from that client)
  until the oldest leaves the window: a guesser is stopped, the owner elsewhere is not;
* 20 failures from one address in 15 minutes, over any names, refuse that address for
  every name, except to a browser with a device cookie for the name (the owner's phone
  behind the same NAT still signs in);
* past 50 failures of one name in 15 minutes, from any number of addresses, each
  further attempt for the name from a browser without its device cookie waits
  ``SLOW_DOWN`` seconds before it is answered: a distributed guesser gets slower, and
  the owner is slowed, never refused.

A correct password from a client that has not been failing is therefore never refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

WINDOW = timedelta(minutes=15)
#: failures of one (name, client) pair within the window that refuse the pair
PAIR_LIMIT = 5
#: failures from one address within the window, over any names, that refuse the address
CLIENT_LIMIT = 20
#: failures of one name within the window, from anywhere, past which attempts are slowed
NAME_CEILING = 50
#: how long an attempt past the name's ceiling waits before it is answered (seconds)
SLOW_DOWN = 3.0


class Scope(StrEnum):
    """What a refusal is about."""

    PAIR = "pair"  # this name from this client
    CLIENT = "client"  # this address, for any name


@dataclass(frozen=True)
class Verdict:
    """What to do with an attempt: refuse it for ``retry_after`` seconds (``refused``),
    or answer it after waiting ``delay`` seconds (0: at once)."""

    refused: Scope | None = None
    retry_after: int = 0
    delay: float = 0.0


def judge(
    *,
    pair: Sequence[datetime],
    client: Sequence[datetime],
    name_failures: int,
    trusted: bool,
    now: datetime,
) -> Verdict:
    """Judge a sign-in attempt by the failures within the window before ``now``.

    ``pair``: failure times of this name from this client; ``client``: failure times from
    this address for any name; ``name_failures``: failures of this name from anywhere;
    ``trusted``: the browser carries a valid device cookie for this name (then ``pair``
    is counted for that device, and the address and the name's ceiling do not apply).
    """
    since = now - WINDOW
    recent_pair = sorted(t for t in pair if t > since)
    if len(recent_pair) >= PAIR_LIMIT:
        return Verdict(Scope.PAIR, _retry_after(recent_pair, PAIR_LIMIT, now))
    if trusted:
        return Verdict()
    recent_client = sorted(t for t in client if t > since)
    if len(recent_client) >= CLIENT_LIMIT:
        return Verdict(Scope.CLIENT, _retry_after(recent_client, CLIENT_LIMIT, now))
    if name_failures >= NAME_CEILING:
        return Verdict(delay=SLOW_DOWN)
    return Verdict()


def _retry_after(times: Sequence[datetime], limit: int, now: datetime) -> int:
    """Seconds until fewer than ``limit`` of ``times`` (sorted) are within the window."""
    oldest_that_counts = times[-limit]
    return max(1, int((oldest_that_counts + WINDOW - now).total_seconds()) + 1)


# ---------------------------------------------------------------- session lifetime


@dataclass(frozen=True)
class Lifetime:
    """A session ends after ``idle`` without use (each use renews it) and, however much
    it is used, ``absolute`` after sign-in: a stolen cookie does not live for ever."""

    idle: timedelta
    absolute: timedelta


def session_alive(
    *, created_at: datetime, last_seen_at: datetime, now: datetime, lifetime: Lifetime
) -> bool:
    return now - last_seen_at < lifetime.idle and now - created_at < lifetime.absolute


#: last seen is written at most this often per session (not on every request)
TOUCH_EVERY = timedelta(minutes=5)


def needs_touch(last_seen_at: datetime, now: datetime) -> bool:
    return now - last_seen_at >= TOUCH_EVERY
