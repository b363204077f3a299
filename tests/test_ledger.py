"""The ledger: idempotent materialising, the state machine in the database, the audit chain."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from marketcare.domain.obligations import State, expand
from marketcare.errors import NotFound, TickRefused
from marketcare.ledger import audit
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import readmodel as ledger_readmodel
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read, write
from marketcare.ledger.models import Completion, Event, Obligation
from marketcare.ledger.verification import examine

from .conftest import DISINFECTION, WASTE, make_market_yaml, make_schedule, utc
from .support.tamper import unguarded

# 2026-11-27 is a Friday; closing 18:30 Asia/Shanghai = 10:30 UTC
NOW = utc(2026, 11, 27, 2, 0)
DAY = timedelta(days=1)


def keys(engine: sa.Engine) -> list[str]:
    with read(engine) as conn:
        return list(
            conn.execute(
                sa.select(Obligation.natural_key).order_by(Obligation.natural_key)
            ).scalars()
        )


def obligation(engine: sa.Engine, key_part: str) -> sa.Row:  # type: ignore[type-arg]
    with read(engine) as conn:
        return conn.execute(
            sa.select(Obligation)
            .where(Obligation.natural_key.like(f"%{key_part}%"))
            .order_by(Obligation.id)
        ).first()


def test_materialising_creates_each_obligation_of_the_horizon_once(engine: sa.Engine) -> None:
    schedule = make_schedule()
    result = ledger_materialise.materialise(engine, schedule, now=NOW, horizon=2 * DAY)
    assert result.created == len(expand(schedule, NOW, NOW + 2 * DAY)) == 6
    again = ledger_materialise.materialise(engine, schedule, now=NOW, horizon=2 * DAY)
    assert again.created == 0
    assert len(keys(engine)) == 6


def test_materialising_from_an_old_watermark_replays_the_downtime(engine: sa.Engine) -> None:
    schedule = make_schedule()
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=DAY)
    later = NOW + 3 * DAY
    ledger_materialise.materialise(engine, schedule, now=later, horizon=DAY)
    assert len(keys(engine)) == len(expand(schedule, NOW, later + DAY))
    swept = ledger_sweep.sweep_all(engine, now=later)
    assert swept.missed == 9  # three days of two areas and one market-wide task


def test_a_second_schedule_run_never_duplicates_even_with_overlapping_starts(
    engine: sa.Engine,
) -> None:
    schedule = make_schedule()
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=3 * DAY)
    with write(engine) as conn:  # pretend a crash left the watermark behind
        conn.execute(
            sa.text("UPDATE ledger_state SET materialised_until = :t"),
            {"t": NOW.replace(tzinfo=None)},
        )
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=3 * DAY)
    assert len(keys(engine)) == len(set(keys(engine))) == 9


def test_the_sweep_opens_then_misses_after_grace(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    closing = utc(2026, 11, 27, 10, 30)
    assert ledger_sweep.sweep_all(engine, now=closing).opened == 3
    assert obligation(engine, "veg|disinfect").state == "open"
    # disinfection due closing+2h, grace 1h
    assert (
        ledger_sweep.sweep_all(engine, now=closing + timedelta(hours=2, minutes=59)).missed == 1
    )  # waste
    assert ledger_sweep.sweep_all(engine, now=closing + timedelta(hours=3)).missed == 2


def test_a_tick_on_time_is_done_and_a_second_tick_changes_nothing(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "aquatic|disinfect")
    at = ob.opens_at + timedelta(minutes=30)
    first = ledger_tick.tick(
        engine, obligation_id=ob.id, by="林秀英", now=at, readings={"chlorine": 1000}
    )
    assert first.state == State.DONE and first.changed
    second = ledger_tick.tick(
        engine, obligation_id=ob.id, by="陈建国", now=at, readings={"chlorine": 1000}
    )
    assert not second.changed and "already done" in second.message and "林秀英" in second.message
    assert len(ledger_readmodel.completions_of(engine, ob.id)) == 1


def test_the_same_client_token_records_once(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "|waste|")
    at = ob.opens_at + timedelta(minutes=5)
    ledger_tick.tick(engine, obligation_id=ob.id, by="a", now=at, token="t-1")
    replay = ledger_tick.tick(engine, obligation_id=ob.id, by="a", now=at, token="t-1")
    assert not replay.changed and "same submission" in replay.message


def test_a_reading_out_of_range_marks_failed_and_a_redo_completes_it(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "aquatic|disinfect")
    at = ob.opens_at + timedelta(minutes=10)
    failed = ledger_tick.tick(
        engine, obligation_id=ob.id, by="a", now=at, readings={"chlorine": 300}
    )
    assert failed.state == State.FAILED and "chlorine" in failed.failures
    assert "900–1200 mg/L" in failed.message
    redo = ledger_tick.tick(
        engine,
        obligation_id=ob.id,
        by="a",
        now=at + timedelta(minutes=40),
        readings={"chlorine": 1000},
    )
    assert redo.state == State.DONE
    outcomes = [c.outcome for c in ledger_readmodel.completions_of(engine, ob.id)]
    assert outcomes == ["failed", "done"]


def test_the_range_depends_on_the_area_kind(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    veg = obligation(engine, "veg|disinfect")
    result = ledger_tick.tick(
        engine, obligation_id=veg.id, by="a", now=veg.opens_at, readings={"chlorine": 500}
    )
    assert result.state == State.DONE


def test_a_tick_before_the_window_opens_is_refused_with_the_opening_time(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "|waste|")
    with pytest.raises(TickRefused, match="opens at 2026-11-27 18:30 CST"):
        ledger_tick.tick(engine, obligation_id=ob.id, by="a", now=NOW)
    assert ledger_readmodel.completions_of(engine, ob.id) == []


def test_a_late_tick_after_a_miss_is_kept_as_late(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "|waste|")
    ledger_sweep.sweep_all(engine, now=ob.missed_at + timedelta(minutes=1))
    assert obligation(engine, "|waste|").state == "missed"
    result = ledger_tick.tick(
        engine, obligation_id=ob.id, by="a", now=ob.missed_at + timedelta(hours=1)
    )
    assert result.state == State.LATE and "90 min after due" in result.message


def test_missing_or_unknown_readings_are_refused_and_change_nothing(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "veg|disinfect")
    with pytest.raises(TickRefused, match="missing reading.*chlorine"):
        ledger_tick.tick(engine, obligation_id=ob.id, by="a", now=ob.opens_at)
    with pytest.raises(TickRefused, match="unknown reading 'chlorin'"):
        ledger_tick.tick(
            engine, obligation_id=ob.id, by="a", now=ob.opens_at, readings={"chlorin": 500}
        )
    with pytest.raises(TickRefused, match="unknown item 'bogus'"):
        ledger_tick.tick(
            engine,
            obligation_id=ob.id,
            by="a",
            now=ob.opens_at,
            readings={"chlorine": 500},
            items=["bogus"],
        )
    assert obligation(engine, "veg|disinfect").state == "upcoming"


def test_ticking_an_unknown_obligation_says_so(engine: sa.Engine) -> None:
    with pytest.raises(NotFound):
        ledger_tick.tick(engine, obligation_id=999, by="a", now=NOW)


def test_a_schedule_change_applies_to_the_future_only(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=2 * DAY)
    ob = obligation(engine, "aquatic|disinfect")
    ledger_tick.tick(
        engine, obligation_id=ob.id, by="a", now=ob.opens_at, readings={"chlorine": 1000}
    )
    # later that evening the disinfection task is removed from the schedule
    evening = ob.opens_at + timedelta(minutes=30)
    ledger_materialise.materialise(engine, make_schedule(tasks=WASTE), now=evening, horizon=2 * DAY)
    remaining = keys(engine)
    assert any("2026-11-27" in k and "disinfect" in k for k in remaining)  # open or past: kept
    assert not any("2026-11-28" in k and "disinfect" in k for k in remaining)  # future: withdrawn
    assert len(ledger_readmodel.completions_of(engine, ob.id)) == 1
    with read(engine) as conn:
        actions = list(conn.execute(sa.select(Event.action)).scalars())
    assert "withdrawn" in actions and "schedule_applied" in actions


def test_changed_hours_move_upcoming_obligations_but_not_open_ones(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=2 * DAY)
    later = make_schedule(markets=make_market_yaml(hours='{daily: "06:00-20:00"}'))
    ledger_materialise.materialise(engine, later, now=NOW, horizon=2 * DAY)
    ob = obligation(engine, "aquatic|disinfect|2026-11-27")
    assert ob.opens_at == utc(2026, 11, 27, 12, 0)  # 20:00 CST


def test_a_closed_day_declared_afterwards_excuses_its_obligations_with_the_reason(
    engine: sa.Engine,
) -> None:
    schedule = make_schedule()
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=DAY)
    after = utc(2026, 11, 27, 16, 0)
    ledger_sweep.sweep_all(engine, now=after)
    closed = make_schedule(
        markets=make_market_yaml(closed="[{date: 2026-11-27, reason: 停水检修}]")
    )
    result = ledger_materialise.materialise(engine, closed, now=after, horizon=DAY)
    assert result.excused == 3
    ob = obligation(engine, "|waste|2026-11-27")
    assert ob.state == "excused" and ob.note == "停水检修"


RESTING_AQUATIC = (
    "[{id: aquatic, kind: aquatic, m2: 600, rest: {days: fri, reason: 活禽休市}}, "
    "{id: veg, kind: vegetables, m2: 900}]"
)


def test_an_area_rest_day_is_materialised_excused_with_its_reason_and_refuses_a_tick(
    engine: sa.Engine,
) -> None:
    schedule = make_schedule(markets=make_market_yaml(areas=RESTING_AQUATIC))
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=DAY)
    resting = obligation(engine, "aquatic|disinfect|2026-11-27")
    assert (resting.state, resting.note) == ("excused", "活禽休市")
    assert obligation(engine, "veg|disinfect|2026-11-27").state == "upcoming"
    with read(engine) as conn:  # excused from birth, and the events say so
        examination = examine(conn, anchors=[])
        assert examination.ok, [f.message for f in examination.findings]
    ledger_sweep.sweep_all(engine, now=NOW + DAY)
    assert obligation(engine, "aquatic|disinfect|2026-11-27").state == "excused"
    with pytest.raises(TickRefused, match="活禽休市"):
        ledger_tick.tick(
            engine,
            obligation_id=resting.id,
            by="林秀英",
            now=NOW + DAY,
            readings={"chlorine": 1000},
        )


def test_a_rest_day_declared_later_excuses_what_has_not_opened_and_lifting_it_reinstates(
    engine: sa.Engine,
) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=2 * DAY)
    resting = make_schedule(markets=make_market_yaml(areas=RESTING_AQUATIC))
    result = ledger_materialise.materialise(engine, resting, now=NOW, horizon=2 * DAY)
    assert result.excused == 1
    ob = obligation(engine, "aquatic|disinfect|2026-11-27")
    assert (ob.state, ob.note) == ("excused", "活禽休市")
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=2 * DAY)
    back = obligation(engine, "aquatic|disinfect|2026-11-27")
    assert (back.id, back.state, back.note) == (ob.id, "upcoming", None)
    with read(engine) as conn:
        actions = [
            r.action
            for r in conn.execute(
                sa.select(Event.action).where(Event.obligation_id == ob.id).order_by(Event.seq)
            )
        ]
        assert audit.verify(conn).ok
        examination = examine(conn, anchors=[])  # the tables as the events say
        assert examination.ok, [f.message for f in examination.findings]
    assert actions == ["excused", "reinstated"]


def test_the_audit_chain_verifies_and_names_the_first_altered_event(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ledger_sweep.sweep_all(engine, now=NOW + DAY)
    with read(engine) as conn:
        assert audit.verify(conn).ok
        n = conn.execute(sa.select(sa.func.count()).select_from(Event)).scalar_one()
    with write(engine) as conn, unguarded(conn):
        conn.execute(sa.update(Event).where(Event.seq == 3).values(actor="somebody else"))
    with read(engine) as conn:
        verdict = audit.verify(conn)
    assert not verdict.ok and verdict.first_bad_seq == 3 and "altered" in verdict.reason
    assert n > 3


def test_the_audit_chain_notices_a_removed_event_and_a_removed_tail(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ledger_sweep.sweep_all(engine, now=NOW + DAY)
    with write(engine) as conn, unguarded(conn):
        last = conn.execute(sa.select(sa.func.max(Event.seq))).scalar_one()
        conn.execute(sa.delete(Event).where(Event.seq == last))
    with read(engine) as conn:
        verdict = audit.verify(conn)
    assert not verdict.ok and verdict.first_bad_seq == last
    with write(engine) as conn, unguarded(conn):
        conn.execute(sa.delete(Event).where(Event.seq == 2))
    with read(engine) as conn:
        verdict = audit.verify(conn)
    assert not verdict.ok and verdict.first_bad_seq == 2 and "removed" in verdict.reason


def test_every_state_change_is_in_the_event_log(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "|waste|")
    ledger_sweep.sweep_all(engine, now=ob.opens_at)
    ledger_tick.tick(
        engine, obligation_id=ob.id, by="郑海峰", now=ob.opens_at + timedelta(minutes=1)
    )
    with read(engine) as conn:
        trail = conn.execute(
            sa.select(Event.action, Event.from_state, Event.to_state, Event.actor)
            .where(Event.obligation_id == ob.id)
            .order_by(Event.seq)
        ).all()
    assert [tuple(r) for r in trail] == [
        ("opened", "upcoming", "open", "system"),
        ("completed", "open", "done", "郑海峰"),
    ]


def test_the_board_lists_overdue_first(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    late = utc(2026, 11, 27, 12, 45)  # waste missed (20:00), disinfection due 20:30 not yet
    rows = ledger_readmodel.board(engine, day=NOW.date(), now=late)
    assert [r.task_id for r in rows][0] == "waste"
    assert rows[0].state == State.MISSED and rows[0].overdue
    assert rows[0].as_json()["due_at"] == "2026-11-27T19:30:00+08:00"


def test_completions_are_stored_with_who_and_what(engine: sa.Engine) -> None:
    ledger_materialise.materialise(
        engine, make_schedule(markets=None, tasks=DISINFECTION), now=NOW, horizon=DAY
    )
    ob = obligation(engine, "veg|disinfect")
    ledger_tick.tick(
        engine,
        obligation_id=ob.id,
        by="吴丽娟",
        now=ob.opens_at,
        readings={"chlorine": 520},
        note="加大浓度",
    )
    with read(engine) as conn:
        c = conn.execute(sa.select(Completion)).one()
    assert (c.by, c.readings, c.items, c.note) == (
        "吴丽娟",
        {"chlorine": 520},
        {"washed": True},
        "加大浓度",
    )


def test_a_schedule_edit_adds_updates_and_deactivates_markets_and_areas(
    engine: sa.Engine,
) -> None:
    from marketcare.ledger.models import AreaRow, MarketRow

    now = utc(2026, 11, 23, 1)
    first = make_schedule(make_market_yaml("lizhong") + make_market_yaml("xinhua"))
    ledger_materialise.materialise(engine, first, now=now, horizon=timedelta(hours=1))
    second = make_schedule(
        make_market_yaml(
            "lizhong",
            areas="[{id: aquatic, kind: aquatic, m2: 650}, {id: meat, kind: meat, m2: 300}]",
        )
    )
    ledger_materialise.materialise(engine, second, now=now, horizon=timedelta(hours=1))
    with read(engine) as conn:
        markets = {r.id: r.active for r in conn.execute(sa.select(MarketRow))}
        areas = {
            (r.market_id, r.id): (r.active, r.m2)
            for r in conn.execute(sa.select(AreaRow).where(AreaRow.market_id == "lizhong"))
        }
    assert markets == {"lizhong": True, "xinhua": False}
    assert areas == {
        ("lizhong", "aquatic"): (True, 650),
        ("lizhong", "veg"): (False, 900),
        ("lizhong", "meat"): (True, 300),
    }


def test_the_sweep_moves_obligations_exactly_as_the_clock_rule_says(engine: sa.Engine) -> None:
    """The sweep's SQL is built from ``obligations.CLOCK_MOVES``; at every edge of every
    window (a second before, on it) the ledger ends where ``state_by_clock`` says."""
    from marketcare.domain.obligations import state_by_clock

    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    with read(engine) as conn:
        rows = conn.execute(sa.select(Obligation)).all()
    edges = sorted(
        {
            t + d
            for r in rows
            for t in (r.opens_at, r.missed_at)
            for d in (-timedelta(seconds=1), timedelta(0))
        }
    )
    for now in edges:
        with read(engine) as conn:
            before = {r.id: r for r in conn.execute(sa.select(Obligation)).all()}
        expected = {
            i: state_by_clock(
                State(r.state), opens_at=r.opens_at, missed_at=r.missed_at, now=now
            ).value
            for i, r in before.items()
        }
        ledger_sweep.sweep_all(engine, now=now)
        with read(engine) as conn:
            after = dict(conn.execute(sa.select(Obligation.id, Obligation.state)).all())
        assert after == expected, now
    assert set(after.values()) == {"missed"}


def test_the_tick_and_the_checklist_page_agree_on_what_can_be_ticked(engine: sa.Engine) -> None:
    """``obligations.can_tick`` is the rule: a tick is recorded exactly when it allows one,
    and the obligation's page offers the form for every state it may allow."""
    from marketcare.domain.obligations import can_tick

    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    closing = utc(2026, 11, 27, 10, 30)
    waste = obligation(engine, "|-|waste|")
    aquatic = obligation(engine, "aquatic|disinfect")
    veg = obligation(engine, "veg|disinfect")
    # before opening: refused; then done; then a second tick changes nothing
    cases = [(waste, closing - timedelta(minutes=1)), (waste, closing), (waste, closing)]
    # failed, then redone; missed, then done late
    cases += [(aquatic, closing + timedelta(minutes=5)), (aquatic, closing + timedelta(hours=4))]
    cases += [(veg, closing + timedelta(hours=4))]
    readings = {aquatic.id: [{"chlorine": 100}, {"chlorine": 1000}], veg.id: [{"chlorine": 500}]}
    for ob, at in cases:
        ledger_sweep.sweep_all(engine, now=at)
        view = ledger_readmodel.obligation(engine, ob.id, now=at)
        allowed = can_tick(view.row.state, opens_at=ob.opens_at, now=at)
        assert view.tickable == (allowed or view.row.state == State.UPCOMING)
        values = readings.get(ob.id, [{}]).pop(0) if readings.get(ob.id) else {}
        try:
            result = ledger_tick.tick(
                engine, obligation_id=ob.id, by="林秀英", now=at, readings=values
            )
        except TickRefused:
            recorded = False
        else:
            recorded = result.changed
        assert recorded == allowed, (ob.task_id, at, view.row.state)


# ---------------------------------------------------------------- a phone's time (offline queue)


def test_an_offline_completion_counts_at_the_phone_time_and_keeps_both_times(
    engine: sa.Engine,
) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "aquatic|disinfect")
    on_phone = ob.due_at - timedelta(minutes=20)
    arrived = ob.due_at + timedelta(hours=2)  # after the grace: the sweep marked it missed
    ledger_sweep.sweep_all(engine, now=arrived)
    result = ledger_tick.tick(
        engine,
        obligation_id=ob.id,
        by="林秀英",
        now=arrived,
        readings={"chlorine": 1000},
        phone_at=on_phone,
        phone_sent_at=arrived - timedelta(seconds=40),
    )
    assert result.state == State.DONE and "phone's time" in result.message
    with read(engine) as conn:
        c = conn.execute(sa.select(Completion).where(Completion.obligation_id == ob.id)).one()
        event = conn.execute(
            sa.select(Event).where(Event.obligation_id == ob.id, Event.action == "completed")
        ).one()
        row = conn.execute(sa.select(Obligation).where(Obligation.id == ob.id)).one()
    assert (c.at, c.phone_at, c.arrived_at, c.time_basis) == (on_phone, on_phone, arrived, "phone")
    assert (row.completed_at, row.state_changed_at) == (on_phone, arrived)
    assert event.at == arrived
    assert event.details["phone_at"] == on_phone.isoformat()
    assert event.details["arrived_at"] == arrived.isoformat()
    assert event.details["time_basis"] == "phone"
    assert (event.from_state, event.to_state) == ("missed", "done")
    with read(engine) as conn:
        assert audit.verify(conn).ok


def test_an_offline_completion_from_a_wrong_clock_is_late_with_both_times_shown(
    engine: sa.Engine,
) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "aquatic|disinfect")
    arrived = ob.due_at + timedelta(minutes=30)
    wrong = ob.due_at - timedelta(hours=1)
    result = ledger_tick.tick(
        engine,
        obligation_id=ob.id,
        by="a",
        now=arrived,
        readings={"chlorine": 1000},
        phone_at=wrong,
        phone_sent_at=arrived - timedelta(hours=2),  # the phone's clock is 2 hours slow
    )
    assert result.state == State.LATE and "clock off" in result.message
    assert result.timing is not None and result.timing.phone_at == wrong
    [c] = ledger_readmodel.completions_of(engine, ob.id)
    assert (c.at, c.phone_at, c.arrived_at, c.time_basis) == (arrived, wrong, arrived, "clock_off")


def test_a_resent_offline_submission_reports_the_first_ones_times(engine: sa.Engine) -> None:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=DAY)
    ob = obligation(engine, "|waste|")
    on_phone = ob.opens_at + timedelta(minutes=5)
    sent = ob.opens_at + timedelta(minutes=50)
    for resent in (timedelta(0), timedelta(minutes=3)):
        again = ledger_tick.tick(
            engine,
            obligation_id=ob.id,
            by="a",
            token="q-1",
            phone_at=on_phone,
            now=sent + resent,
            phone_sent_at=sent + resent,
        )
    assert not again.changed and again.timing is not None
    assert (again.timing.at, again.timing.arrived_at) == (on_phone, sent)
    assert len(ledger_readmodel.completions_of(engine, ob.id)) == 1
