"""How far a phone's clock is trusted: when a completion made offline counts as done.

A manager without signal records a checklist on the phone; it reaches the ledger when the
network comes back, minutes or hours later. The phone's clock is evidence, not truth
(clocks are set by hand, and reset to 1970 when a battery is swapped), so the ledger keeps
both times and this rule decides which one the completion counts at.

The completion counts at the phone's time (``phone_at``, when the manager pressed
*record*) only when all of these hold, and otherwise at its arrival:

1. the phone's clock agreed with the server's when it sent the submission:
   ``|arrived_at - phone_sent_at| <= max_skew`` (a phone that cannot say when it sent is
   not checked, so not trusted);
2. it arrived soon enough: ``arrived_at - phone_at <= max_delay``;
3. the times are in order: ``phone_at <= phone_sent_at`` (a phone cannot have done the
   work after sending it) and ``phone_at`` is not before the obligation opened.

A trusted phone time is never later than the arrival (the earlier of the two counts).
Nothing is moved silently: the ledger stores the phone's times, the arrival and the
basis (``TimeBasis``), and the audit event carries them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class TimeBasis(StrEnum):
    """Which time a completion counts at, and why."""

    #: no phone time was given (a form sent online, the CLI, an API call): the arrival
    ARRIVAL = "arrival"
    #: the phone's time, trusted by the rule
    PHONE = "phone"
    #: the phone's clock was off (or could not be checked) when it sent: the arrival
    CLOCK_OFF = "clock_off"
    #: it arrived more than ``max_delay`` after the phone's time: the arrival
    TOO_LATE = "arrived_too_late"
    #: the phone's times contradict each other or the window: the arrival
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True)
class ClockTrust:
    """How much of a phone's clock the ledger believes (settings ``phone_*``)."""

    max_delay: timedelta = timedelta(hours=12)
    max_skew: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Timing:
    """When a completion counts as made, with every time it was judged on."""

    at: datetime
    arrived_at: datetime
    phone_at: datetime | None
    phone_sent_at: datetime | None
    basis: TimeBasis

    @property
    def trusted_phone(self) -> bool:
        return self.basis == TimeBasis.PHONE

    def as_json(self) -> dict[str, str | None]:
        def iso(v: datetime | None) -> str | None:
            return None if v is None else v.isoformat()

        return {
            "at": iso(self.at),
            "arrived_at": iso(self.arrived_at),
            "phone_at": iso(self.phone_at),
            "phone_sent_at": iso(self.phone_sent_at),
            "time_basis": self.basis.value,
        }


def judge(
    *,
    arrived_at: datetime,
    phone_at: datetime | None,
    phone_sent_at: datetime | None,
    opens_at: datetime,
    trust: ClockTrust,
) -> Timing:
    """The time a completion counts at, by the rule of this module."""

    def timing(at: datetime, basis: TimeBasis) -> Timing:
        return Timing(at, arrived_at, phone_at, phone_sent_at, basis)

    if phone_at is None:
        return timing(arrived_at, TimeBasis.ARRIVAL)
    if phone_sent_at is None or abs(arrived_at - phone_sent_at) > trust.max_skew:
        return timing(arrived_at, TimeBasis.CLOCK_OFF)
    if phone_at > phone_sent_at or phone_at < opens_at:
        return timing(arrived_at, TimeBasis.INCONSISTENT)
    if arrived_at - phone_at > trust.max_delay:
        return timing(arrived_at, TimeBasis.TOO_LATE)
    return timing(min(phone_at, arrived_at), TimeBasis.PHONE)
