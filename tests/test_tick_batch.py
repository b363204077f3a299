"""Group commit of ticks: the ``TickWriter`` records many ticks in one transaction, in a
few statements for the whole batch (or, when the batch repeats an obligation or a token,
each tick in its own savepoint), with exactly the rule (and the rows) of
``ledger_tick.tick`` one by one.

Batches are made deterministic without timing: a writer made with ``start=False`` only
queues, so every request submitted before ``start()`` is in its first batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from marketcare.domain.obligations import State
from marketcare.errors import MarketcareError, NotFound, TickRefused
from marketcare.ledger import audit
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import readmodel as ledger_readmodel
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger import versions as ledger_versions
from marketcare.ledger.db import make_engine, read
from marketcare.ledger.models import Completion, Event, Obligation

from .conftest import DISINFECTION, WASTE, database_url, make_market_yaml, make_schedule, utc

# Friday 2026-11-27: the markets close at 18:30 CST (10:30 UTC); disinfection and waste
# clearance open then; at 10:45 UTC every one of the day's obligations may be ticked
NOW = utc(2026, 11, 27, 2, 0)
TICK_AT = utc(2026, 11, 27, 10, 45)
MARKETS = [f"m{i:02d}" for i in range(12)]
#: an in-range chlorine reading per area kind (aquatic 900–1200, vegetables 400–700)
GOOD = {"aquatic": 1000.0, "veg": 500.0}


def _schedule(closed: str | None = None) -> Any:
    markets = "".join(
        make_market_yaml(m, closed=closed if closed and m == MARKETS[0] else "[]") for m in MARKETS
    )
    return make_schedule(markets=markets, tasks=DISINFECTION + WASTE)


def _ledger(folder: Path) -> sa.Engine:
    engine = make_engine(database_url(folder, migrated=True))
    ledger_materialise.materialise(engine, _schedule(), now=NOW, horizon=timedelta(days=1))
    return engine


@pytest.fixture
def city(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = _ledger(tmp_path)
    yield engine
    engine.dispose()


def _today(engine: sa.Engine) -> list[Any]:
    """The day's obligations in a stable order (market, area, task)."""
    with read(engine) as conn:
        return list(
            conn.execute(
                sa.select(Obligation)
                .where(Obligation.local_date == "2026-11-27")
                .order_by(Obligation.market_id, Obligation.area_id, Obligation.task_id)
            ).all()
        )


def _request(ob: Any, *, token: str, **changes: Any) -> ledger_tick.TickRequest:
    """A tick of ``ob`` with its checklist satisfied (readings in range) unless changed."""
    readings = {"chlorine": GOOD[ob.area_id]} if ob.task_id == "disinfect" else {}
    values: dict[str, Any] = {
        "obligation_id": ob.id,
        "by": f"mgr-{ob.market_id}",
        "now": TICK_AT,
        "readings": readings,
        "token": token,
        "note": "ok",
    }
    values.update(changes)
    return ledger_tick.TickRequest.of(**values)


def _rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a tick writes, as plain tuples to compare ledgers with."""
    with read(engine) as conn:
        return {
            "completions": [
                tuple(r) for r in conn.execute(sa.select(Completion).order_by(Completion.id))
            ],
            "obligations": [
                (r.id, r.state, r.state_changed_at, r.completed_at)
                for r in conn.execute(sa.select(Obligation).order_by(Obligation.id))
            ],
            "events": [
                (r.seq, r.action, r.obligation_id, r.from_state, r.to_state, r.details, r.hash)
                for r in conn.execute(sa.select(Event).order_by(Event.seq))
            ],
        }


def _count(engine: sa.Engine, table: Any) -> int:
    with read(engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _chain_ok(engine: sa.Engine) -> audit.Verdict:
    with read(engine) as conn:
        return audit.verify(conn)


def _outcome(fut: Future[ledger_tick.TickResult]) -> ledger_tick.TickResult | BaseException:
    exc = fut.exception()
    return exc if exc is not None else fut.result()


# ---------------------------------------------------------------- concurrent ticks


def test_many_concurrent_ticks_through_the_writer_are_each_recorded_once(
    city: sa.Engine,
) -> None:
    obligations = _today(city)
    assert len(obligations) == 36  # 12 markets x (2 areas' disinfection + waste)
    # every third disinfection gets a reading far out of range: it fails, and is kept
    requests = [
        _request(ob, token=f"t{i}", readings={"chlorine": 5.0})
        if ob.task_id == "disinfect" and i % 3 == 0
        else _request(ob, token=f"t{i}")
        for i, ob in enumerate(obligations)
    ]
    writer = ledger_tick.TickWriter(city)
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            results = list(pool.map(writer.tick, requests))
    finally:
        writer.close()
    expected = [
        State.FAILED if "chlorine" in r.readings and r.readings["chlorine"] == 5.0 else State.DONE
        for r in requests
    ]
    assert [r.state for r in results] == expected
    assert all(r.changed for r in results)
    assert [r.obligation_id for r in results] == [ob.id for ob in obligations]
    assert len({r.completion_id for r in results}) == len(results)
    with read(city) as conn:
        per_obligation = dict(
            conn.execute(
                sa.select(Completion.obligation_id, sa.func.count()).group_by(
                    Completion.obligation_id
                )
            ).all()
        )
    assert per_obligation == {ob.id: 1 for ob in obligations}
    assert [ob.state for ob in _today(city)] == [s.value for s in expected]
    assert _chain_ok(city).ok


# ---------------------------------------------------------------- one batch


def test_refused_ticks_leave_the_others_of_their_batch_committed(tmp_path: Path) -> None:
    engine = _ledger(tmp_path)
    # the first market closes for the day: its unfinished obligations are excused
    closed = _schedule(closed="[{date: 2026-11-27, reason: 停水检修}]")
    ledger_materialise.materialise(
        engine, closed, now=TICK_AT - timedelta(minutes=5), horizon=timedelta(days=1)
    )
    obligations = _today(engine)
    excused = next(ob for ob in obligations if ob.state == State.EXCUSED.value)
    open_ = [ob for ob in obligations if ob.market_id != MARKETS[0]]
    other_market = open_[3]
    requests = [
        _request(open_[0], token="good-1"),
        _request(open_[1], token="unknown", readings={"chlorine": 500, "ph": 7}),
        _request(other_market, token="elsewhere", allowed_markets=frozenset({MARKETS[1]})),
        _request(open_[2], token="good-2"),
        _request(excused, token="excused"),
        _request(open_[4], token="good-3", allowed_markets=frozenset({open_[4].market_id})),
    ]
    events_before = _count(engine, Event)
    writer = ledger_tick.TickWriter(engine, start=False)
    futures = [writer.submit(r) for r in requests]
    writer.start()
    writer.close()
    outcomes = [_outcome(f) for f in futures]
    good = [outcomes[i] for i in (0, 3, 5)]
    assert all(isinstance(o, ledger_tick.TickResult) and o.changed for o in good)
    assert isinstance(outcomes[1], TickRefused) and "unknown reading 'ph'" in str(outcomes[1])
    assert isinstance(outcomes[2], NotFound)
    assert isinstance(outcomes[4], TickRefused) and "excused (停水检修)" in str(outcomes[4])
    with read(engine) as conn:
        recorded = set(conn.execute(sa.select(Completion.token)).scalars())
    assert recorded == {"good-1", "good-2", "good-3"}
    assert {ob.id: ob.state for ob in _today(engine)}[other_market.id] == other_market.state
    # one event per recorded tick, in the order of the batch, and the chain holds
    with read(engine) as conn:
        ticked = list(
            conn.execute(
                sa.select(Event.obligation_id).where(Event.seq > events_before).order_by(Event.seq)
            ).scalars()
        )
    assert ticked == [open_[0].id, open_[2].id, open_[4].id]
    assert _chain_ok(engine) == audit.Verdict(True, events_before + 3)
    engine.dispose()


def test_an_obligation_moved_after_its_batch_was_judged_is_ticked_again_by_the_rule(
    city: sa.Engine,
) -> None:
    """Just before the batch's first write, the writer's own connection excuses one of its
    obligations (on PostgreSQL that commits at once, as another daemon's move would:
    the batch was judged on reads that lock nothing; on SQLite it is inside the batch's
    transaction). The write's compare-and-swap loses, nothing of it stays, and the batch
    is ticked one by one: every answer agrees with the ledger, each tick is recorded at
    most once, with its one event, and the chain holds."""
    obligations = _today(city)[:6]
    moved = obligations[2]
    excused: list[bool] = []
    events_before = _count(city, Event)

    def excuse_it(conn: sa.Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        first_write = statement.startswith(("WITH locked", "UPDATE obligations"))
        if first_write and not excused:
            excused.append(True)
            conn.exec_driver_sql(
                "UPDATE obligations SET state = 'excused', note = 'closed'"
                f" WHERE id = {int(moved.id)}"
            )

    writer = ledger_tick.TickWriter(city, start=False)
    futures = [writer.submit(_request(ob, token=f"m{i}")) for i, ob in enumerate(obligations)]
    event.listen(city, "before_cursor_execute", excuse_it)
    try:
        writer.start()
        writer.close()
    finally:
        event.remove(city, "before_cursor_execute", excuse_it)
    outcomes = [_outcome(f) for f in futures]
    states = {ob.id: ob.state for ob in _today(city)}
    with read(city) as conn:
        recorded = set(conn.execute(sa.select(Completion.token)).scalars())
    for i, (ob, outcome) in enumerate(zip(obligations, outcomes, strict=True)):
        if isinstance(outcome, ledger_tick.TickResult):
            assert outcome.changed and f"m{i}" in recorded
            assert states[ob.id] == outcome.state.value
        else:
            assert isinstance(outcome, TickRefused) and "excused (closed)" in str(outcome)
            assert ob.id == moved.id and f"m{i}" not in recorded
            assert states[ob.id] == State.EXCUSED.value
    assert excused and _count(city, Completion) == len(recorded)
    refused = sum(not isinstance(o, ledger_tick.TickResult) for o in outcomes)
    assert refused == (1 if city.dialect.name == "postgresql" else 0)
    assert _count(city, Event) - events_before == len(recorded)
    assert _chain_ok(city).ok


def test_the_same_token_twice_in_one_batch_records_once(city: sa.Engine) -> None:
    ob = _today(city)[0]
    writer = ledger_tick.TickWriter(city, start=False)
    first = writer.submit(_request(ob, token="phone-1"))
    again = writer.submit(_request(ob, token="phone-1"))
    writer.start()
    writer.close()
    assert first.result().changed is True and first.result().state == State.DONE
    assert again.result().changed is False
    assert again.result().completion_id == first.result().completion_id
    assert again.result().message == "already recorded (same submission)"
    assert len(ledger_readmodel.completions_of(city, ob.id)) == 1


def test_a_failing_commit_fails_every_tick_of_the_batch_and_records_nothing(
    city: sa.Engine,
) -> None:
    """On SQLite the batch's ``COMMIT`` fails; on PostgreSQL its one write statement, which
    is its own transaction (autocommit), so its commit's failure is that statement's."""
    obligations = _today(city)[:5]
    before = _rows(city)
    failed: list[bool] = []

    def disk_full(*args: Any) -> None:
        committing = city.dialect.name == "sqlite" or args[2].startswith("WITH locked")
        if committing and not failed:
            failed.append(True)
            raise OSError("disk I/O error while committing")

    where = "commit" if city.dialect.name == "sqlite" else "before_cursor_execute"
    event.listen(city, where, disk_full)
    writer = ledger_tick.TickWriter(city, start=False)
    try:
        futures = [writer.submit(_request(ob, token=f"c{i}")) for i, ob in enumerate(obligations)]
        writer.start()
        errors = [f.exception() for f in futures]
        assert all(isinstance(e, OSError) and "disk I/O" in str(e) for e in errors)
        assert _rows(city) == before
        # the writer goes on: the same ticks sent again are recorded
        again = [writer.tick(_request(ob, token=f"c{i}")) for i, ob in enumerate(obligations)]
    finally:
        writer.close()
        event.remove(city, where, disk_full)
    assert all(r.changed for r in again)
    assert _count(city, Completion) == len(obligations)
    assert _chain_ok(city).ok


def test_close_writes_the_ticks_it_took_and_refuses_new_ones(city: sa.Engine) -> None:
    obligations = _today(city)[:4]
    writer = ledger_tick.TickWriter(city)
    futures = [writer.submit(_request(ob, token=f"s{i}")) for i, ob in enumerate(obligations)]
    writer.close()
    assert all(f.done() and f.result().changed for f in futures)
    with pytest.raises(MarketcareError, match="shutting down"):
        writer.submit(_request(_today(city)[5], token="late"))
    # a writer closed before it was started still writes what it was given
    idle = ledger_tick.TickWriter(city, start=False)
    held = idle.submit(_request(_today(city)[6], token="held"))
    idle.close()
    assert held.result().changed
    assert _count(city, Completion) == len(obligations) + 1


# ---------------------------------------------------------------- the same rule as tick()


def _mixed_requests(obligations: list[Any]) -> list[ledger_tick.TickRequest]:
    """Good, failed, refused, replayed and already-done ticks, in one order."""
    first, second, third, fourth = obligations[:4]
    disinfect = next(ob for ob in obligations[4:] if ob.task_id == "disinfect")
    return [
        _request(first, token="a"),
        _request(disinfect, token="b", readings={"chlorine": 5.0}),  # failed
        _request(second, token="c", readings={"nope": 1.0}),  # refused
        _request(first, token="a"),  # the same submission again
        _request(first, token="d"),  # already done: nothing changes
        _request(disinfect, token="e"),  # the failed one redone
        _request(third, token="f", items=["bogus"]),  # refused
        _request(fourth, token="g", by="  someone  ", note=None),
        _request(second, token="h", now=TICK_AT + timedelta(hours=3)),  # late
    ]


def _by_tick(engine: sa.Engine, requests: list[ledger_tick.TickRequest]) -> list[Any]:
    out: list[Any] = []
    for r in requests:
        try:
            out.append(
                ledger_tick.tick(
                    engine,
                    obligation_id=r.obligation_id,
                    by=r.by,
                    now=r.now,
                    readings=r.readings,
                    items=r.items,
                    note=r.note,
                    token=r.token,
                    texts=r.texts,
                )
            )
        except MarketcareError as exc:
            out.append(exc)
    return out


def _described(outcomes: list[Any]) -> list[Any]:
    return [(type(o).__name__, str(o)) if isinstance(o, BaseException) else o for o in outcomes]


def test_a_batch_leaves_the_same_ledger_as_ticking_one_by_one(tmp_path: Path) -> None:
    one_by_one, batched = _ledger(tmp_path / "one"), _ledger(tmp_path / "batch")
    try:
        obligations = _today(one_by_one)
        assert [ob.id for ob in obligations] == [ob.id for ob in _today(batched)]
        requests = _mixed_requests(obligations)
        expected = _by_tick(one_by_one, requests)
        writer = ledger_tick.TickWriter(batched, start=False)
        futures = [writer.submit(r) for r in requests]
        writer.start()
        writer.close()
        got = [_outcome(f) for f in futures]
        assert _described(got) == _described(expected)
        assert sum(isinstance(o, TickRefused) for o in got) == 2
        assert _rows(batched) == _rows(one_by_one)
        assert _chain_ok(batched).ok
    finally:
        one_by_one.dispose()
        batched.dispose()


def _distinct_requests(obligations: list[Any]) -> list[ledger_tick.TickRequest]:
    """One tick per obligation (a batch the writer takes in bulk), every outcome but a repeat:
    good, failed, refused twice, late, already done, and an earlier submission sent again."""
    disinfect = [ob for ob in obligations if ob.task_id == "disinfect"]
    waste = [ob for ob in obligations if ob.task_id == "waste"]
    return [
        _request(disinfect[0], token="a"),
        _request(disinfect[1], token="b", readings={"chlorine": 5.0}),  # failed
        _request(disinfect[2], token="c", readings={"nope": 1.0}),  # refused
        _request(waste[0], token="d", items=["bogus"]),  # refused
        _request(waste[1], token="e", by="  someone  ", note=None),
        _request(disinfect[3], token="f", now=TICK_AT + timedelta(hours=3)),  # late
        _request(waste[2], token="g"),  # already done before the batch
        _request(waste[3], token="earlier", by="mgr"),  # the same submission as before the batch
        *(_request(ob, token=f"more-{i}") for i, ob in enumerate(disinfect[4:12])),
    ]


def _before_the_batch(engine: sa.Engine, obligations: list[Any]) -> None:
    waste = [ob for ob in obligations if ob.task_id == "waste"]
    ledger_tick.tick(engine, obligation_id=waste[2].id, by="mgr", now=TICK_AT, token="first")
    ledger_tick.tick(engine, obligation_id=waste[3].id, by="mgr", now=TICK_AT, token="earlier")


def test_a_batch_of_different_obligations_takes_a_few_statements_and_the_rule_of_tick(
    tmp_path: Path,
) -> None:
    """Sixteen ticks, each of another obligation, in nine statements (the batch's
    obligations and earlier tokens; who completed one already, a rare read; one
    executemany of the moves and one of the completions, then their ids; the audit
    chain's three), eight on PostgreSQL: four reads that lock nothing (the same three
    reads, then ids for the completions), one write that is the batch's transaction
    (the moves, the completions and the events unchained, no lock on the chain's head),
    and three in the chaining transaction after it (the head's try-lock, the pending
    events, one statement that links them): no SAVEPOINT and no statement per tick,
    and the same results and rows as ticking them one by one."""
    one_by_one, batched = _ledger(tmp_path / "one"), _ledger(tmp_path / "batch")
    try:
        obligations = _today(one_by_one)
        for engine in (one_by_one, batched):
            _before_the_batch(engine, obligations)
        requests = _distinct_requests(obligations)
        assert len({r.obligation_id for r in requests}) == len(requests) == 16
        expected = _by_tick(one_by_one, requests)
        futures, statements = _written_in_one_batch(batched, requests)
        got = [_outcome(f) for f in futures]
        assert _described(got) == _described(expected)
        assert sum(isinstance(o, TickRefused) for o in got) == 2
        assert got[6].message.startswith("already done by mgr")  # type: ignore[union-attr]
        assert got[7].message == "already recorded (same submission)"  # type: ignore[union-attr]
        assert _rows(batched) == _rows(one_by_one)
        assert _chain_ok(batched).ok
        assert "SAVEPOINT" not in statements
        on_postgresql = batched.dialect.name == "postgresql"
        assert len(statements) == (8 if on_postgresql else 9), "\n".join(statements)
        if on_postgresql:  # reads that lock nothing, then one write, the batch's transaction
            batch = statements[:5]
            assert all(s.startswith("SELECT") for s in batch[:4]), batch
            assert batch[-1].startswith("WITH locked"), batch
            assert not any("audit_head" in s for s in batch), batch
    finally:
        one_by_one.dispose()
        batched.dispose()


def _written_in_one_batch(
    engine: sa.Engine, requests: list[ledger_tick.TickRequest]
) -> tuple[list[Any], list[str]]:
    """The requests queued before the writer starts (so they go as one batch), with the
    statements the batch sent (without SQLite's ``BEGIN IMMEDIATE``)."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE is a statement
            statements.append(statement[:90])

    writer = ledger_tick.TickWriter(engine, start=False)
    futures = [writer.submit(r) for r in requests]
    event.listen(engine, "before_cursor_execute", count)
    try:
        writer.start()
        writer.close()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return futures, statements


def test_a_nul_in_a_batchs_notes_is_stored_as_ticking_one_by_one_stores_it(
    tmp_path: Path,
) -> None:
    """PostgreSQL's text cannot hold U+0000: a batch's columns go as arrays there, and a
    NUL inside one is dropped as from a single value, so the batch stays one bulk write
    (no SAVEPOINT) and leaves the rows, and a chain that verifies, of one by one."""
    one_by_one, batched = _ledger(tmp_path / "one"), _ledger(tmp_path / "batch")
    try:
        obligations = [ob for ob in _today(one_by_one) if ob.task_id == "waste"][:4]
        requests = [
            _request(ob, token=f"nul-{i}", note="空\x00字符" if i % 2 else "ok")
            for i, ob in enumerate(obligations)
        ]
        expected = _by_tick(one_by_one, requests)
        futures, statements = _written_in_one_batch(batched, requests)
        assert _described([_outcome(f) for f in futures]) == _described(expected)
        assert not any(s.startswith("SAVEPOINT") for s in statements)
        assert _rows(batched) == _rows(one_by_one)
        assert _chain_ok(batched).ok
    finally:
        one_by_one.dispose()
        batched.dispose()


def test_a_parsed_schedule_version_is_reused_without_reading_it_again(city: sa.Engine) -> None:
    ob = _today(city)[0]
    statements: list[str] = []

    def seen(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    with read(city) as conn:
        first = ledger_versions.schedule_of_version(conn, ob.version_id)
        event.listen(city, "before_cursor_execute", seen)
        try:
            again = ledger_versions.schedule_of_version(conn, ob.version_id)
        finally:
            event.remove(city, "before_cursor_execute", seen)
    assert again is first and statements == []
    with read(city) as conn, pytest.raises(NotFound):
        ledger_versions.schedule_of_version(conn, 9999)


# ---------------------------------------------------------------- answers on an event loop


class _CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the calls other threads make into it."""

    calls_from_threads = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.calls_from_threads += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_batch_of_awaited_ticks_is_answered_on_the_loop_in_one_call(city: sa.Engine) -> None:
    obligations = _today(city)[:6]
    writer = ledger_tick.TickWriter(city, start=False)
    loop = _CountingLoop()

    async def ticks() -> list[Any]:
        waiting = [
            writer.submit_awaitable(_request(ob, token=f"w{i}")) for i, ob in enumerate(obligations)
        ]
        missing = writer.submit_awaitable(
            _request(obligations[0], token="nowhere", obligation_id=10**9)
        )
        writer.start()
        return await asyncio.gather(*waiting, missing, return_exceptions=True)

    try:
        *answers, refused = loop.run_until_complete(ticks())
    finally:
        writer.close()
        loop.close()
    assert [a.obligation_id for a in answers] == [ob.id for ob in obligations]
    assert all(a.changed for a in answers) and isinstance(refused, NotFound)
    assert loop.calls_from_threads == 1  # one batch, one wake-up of the loop
    assert _count(city, Completion) == len(obligations)


def test_an_awaited_tick_cancelled_before_it_is_written_is_not_recorded(
    city: sa.Engine,
) -> None:
    first, second = _today(city)[:2]
    writer = ledger_tick.TickWriter(city, start=False)

    async def ticks() -> Any:
        gone = writer.submit_awaitable(_request(first, token="gone"))
        kept = writer.submit_awaitable(_request(second, token="kept"))
        gone.cancel()  # the client went away before the writer took it
        await asyncio.sleep(0)  # (the loop runs the cancellation's callbacks)
        writer.start()
        return await kept

    try:
        kept = asyncio.run(ticks())
    finally:
        writer.close()
    assert kept.changed and _count(city, Completion) == 1
