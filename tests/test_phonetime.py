"""How far a phone's clock is trusted for a checklist recorded offline (domain.phonetime).

Pure domain tests: every time is an argument. The task opens at 18:30 and is due at 20:30
(Asia/Shanghai), the manager records it offline at 20:10 by the phone's clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from marketcare.domain.obligations import State, completion_outcome
from marketcare.domain.phonetime import ClockTrust, TimeBasis, Timing, judge

SHANGHAI = ZoneInfo("Asia/Shanghai")
LONDON = ZoneInfo("Europe/London")
OPENS = datetime(2026, 11, 23, 18, 30, tzinfo=SHANGHAI)
DUE = datetime(2026, 11, 23, 20, 30, tzinfo=SHANGHAI)
DONE_ON_PHONE = datetime(2026, 11, 23, 20, 10, tzinfo=SHANGHAI)
TRUST = ClockTrust(max_delay=timedelta(hours=12), max_skew=timedelta(minutes=10))


def judged(
    arrived_at: datetime, phone_at: datetime | None, phone_sent_at: datetime | None
) -> Timing:
    return judge(
        arrived_at=arrived_at,
        phone_at=phone_at,
        phone_sent_at=phone_sent_at,
        opens_at=OPENS,
        trust=TRUST,
    )


def test_without_a_phone_time_a_completion_counts_when_it_arrives() -> None:
    t = judged(DUE, None, None)
    assert (t.at, t.basis, t.arrived_at) == (DUE, TimeBasis.ARRIVAL, DUE)


def test_a_completion_made_offline_in_time_counts_as_on_time_when_the_phone_clock_is_right() -> (
    None
):
    arrived = DUE + timedelta(hours=2)  # the network came back at 22:30
    t = judged(arrived, DONE_ON_PHONE, arrived - timedelta(minutes=3))
    assert (t.at, t.basis) == (DONE_ON_PHONE, TimeBasis.PHONE)
    assert (t.phone_at, t.arrived_at) == (DONE_ON_PHONE, arrived)
    assert completion_outcome(due_at=DUE, at=t.at, readings_ok=True) == State.DONE


def test_a_phone_clock_off_by_more_than_the_skew_is_not_trusted_and_the_arrival_counts() -> None:
    arrived = DUE + timedelta(hours=1)
    t = judged(arrived, DONE_ON_PHONE, arrived - timedelta(minutes=11))
    assert (t.at, t.basis) == (arrived, TimeBasis.CLOCK_OFF)
    assert completion_outcome(due_at=DUE, at=t.at, readings_ok=True) == State.LATE
    assert judged(arrived, DONE_ON_PHONE, None).basis == TimeBasis.CLOCK_OFF


def test_a_phone_reset_to_1970_after_a_battery_swap_is_not_trusted() -> None:
    epoch = datetime(1970, 1, 1, 8, 0, tzinfo=SHANGHAI)
    arrived = DUE + timedelta(minutes=30)
    assert judged(arrived, epoch, epoch + timedelta(minutes=5)).basis == TimeBasis.CLOCK_OFF
    # reset between recording and sending: the sending clock is right, the record is not
    assert judged(arrived, epoch, arrived).basis == TimeBasis.INCONSISTENT


def test_a_completion_arriving_after_the_delay_counts_at_its_arrival() -> None:
    arrived = DONE_ON_PHONE + timedelta(hours=12, seconds=1)
    t = judged(arrived, DONE_ON_PHONE, arrived)
    assert (t.at, t.basis) == (arrived, TimeBasis.TOO_LATE)
    on_the_limit = DONE_ON_PHONE + timedelta(hours=12)
    assert judged(on_the_limit, DONE_ON_PHONE, on_the_limit).basis == TimeBasis.PHONE


def test_a_phone_time_after_its_sending_or_before_the_window_is_inconsistent() -> None:
    arrived = DUE
    assert judged(arrived, arrived, arrived - timedelta(minutes=1)).basis == TimeBasis.INCONSISTENT
    before = OPENS - timedelta(minutes=1)
    assert judged(arrived, before, arrived).basis == TimeBasis.INCONSISTENT


def test_a_trusted_phone_time_is_never_later_than_the_arrival() -> None:
    arrived = DONE_ON_PHONE - timedelta(minutes=4)  # the phone runs 4 minutes fast
    t = judged(arrived, DONE_ON_PHONE, DONE_ON_PHONE)
    assert (t.at, t.basis) == (arrived, TimeBasis.PHONE)


def test_the_rule_compares_instants_whatever_the_zones() -> None:
    arrived = DUE + timedelta(hours=1)
    phone_at = DONE_ON_PHONE.astimezone(LONDON)  # a phone set to another zone
    t = judged(arrived, phone_at, (arrived - timedelta(minutes=1)).astimezone(LONDON))
    assert t.basis == TimeBasis.PHONE and t.at == DONE_ON_PHONE
