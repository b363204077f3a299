"""The chain after the commit: a batch of ticks commits its events unchained, and a chainer
links them to the audit chain afterwards, in its own short transaction.

Only PostgreSQL defers (several daemons write at once there); on SQLite a deferred append
is chained at once. The chain's order is the order of linking, never the events' ids; a
chainer that dies mid-batch leaves its events pending for the next; ``audit verify``
counts pending events apart from tampering.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from marketcare.cli import app
from marketcare.ledger import audit
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read, write
from marketcare.ledger.models import AuditHead, Event, Obligation, UnchainedEvent
from marketcare.ledger.verification import examine

from .conftest import utc
from .support.history import START, History, make_history
from .support.procs import make_env
from .support.tamper import unguarded


def _event(name: str, i: int = 0) -> audit.NewEvent:
    return audit.NewEvent(
        at=START + timedelta(seconds=i, microseconds=3),
        actor="李管理员",
        action=name,
        details={"i": i, "读数": 1000.5},
    )


def _chained(engine: sa.Engine) -> list[str]:
    with read(engine) as conn:
        return list(conn.execute(sa.select(Event.action).order_by(Event.seq)).scalars())


def _pending(engine: sa.Engine) -> int:
    with read(engine) as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(UnchainedEvent)).scalar_one()
        )


@pytest.fixture
def history(engine: sa.Engine, tmp_path: Path) -> History:
    return make_history(engine, tmp_path / "exports")


@contextmanager
def _head_held(engine: sa.Engine) -> Iterator[None]:
    """Another chainer in the middle of its round: it holds the chain's head."""
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.select(AuditHead).where(AuditHead.id == 1).with_for_update())
        yield


def test_a_deferred_append_is_pending_on_postgresql_until_chained_and_chained_at_once_on_sqlite(
    engine: sa.Engine,
) -> None:
    with write(engine) as conn:
        audit.append(conn, [_event("a"), _event("b", 1)], defer=True)
    on_postgresql = engine.dialect.name == "postgresql"
    assert _pending(engine) == (2 if on_postgresql else 0)
    assert audit.chain(engine) == (2 if on_postgresql else 0)
    assert _chained(engine) == ["a", "b"] and _pending(engine) == 0
    with read(engine) as conn:
        assert audit.head(conn).seq == 2 and audit.verify(conn).ok


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_events_committed_out_of_order_are_chained_in_one_consistent_order(
    engine: sa.Engine,
) -> None:
    """The first writer's events have the smaller ids but commit last: they are chained
    after the second writer's, and the chain verifies in that order."""
    with write(engine) as conn:
        audit.append(conn, [_event("genesis")])
    with engine.connect() as first, engine.connect() as second:
        with first.begin():
            audit.append(first, [_event("first-1", 1), _event("first-2", 2)], defer=True)
            with second.begin():
                audit.append(second, [_event("second", 3)], defer=True)
            assert audit.chain(engine) == 1  # only what is committed
            assert _chained(engine) == ["genesis", "second"]
        assert audit.chain(engine) == 2
    assert _chained(engine) == ["genesis", "second", "first-1", "first-2"]
    with read(engine) as conn:
        verdict = audit.verify(conn)
    assert verdict.ok and verdict.checked == 4 and verdict.pending == 0


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_an_inline_append_links_the_pending_events_before_its_own(engine: sa.Engine) -> None:
    """A sweep or a problem's move chains in its own transaction: what committed before it
    keeps its place before it."""
    with write(engine) as conn:
        audit.append(conn, [_event("tick", 1)], defer=True)
    with write(engine) as conn:
        audit.append(conn, [_event("sweep", 2)])
    assert _chained(engine) == ["tick", "sweep"] and _pending(engine) == 0


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_a_chainer_killed_mid_batch_leaves_its_events_to_the_next_nothing_lost_nothing_twice(
    engine: sa.Engine,
) -> None:
    with write(engine) as conn:
        audit.append(conn, [_event("genesis")])
        audit.append(conn, [_event(f"tick-{i}", i) for i in range(1, 4)], defer=True)
    with engine.connect() as dying:
        dying.begin()
        # the chainer's round up to its COMMIT: linked, the head moved, the pending deleted
        dying.execute(audit._READ_HEAD)
        pending = list(dying.execute(audit._PENDING).all())
        head = dying.execute(sa.select(AuditHead.seq, AuditHead.hash)).one()
        audit._write_linked(dying, head, pending, [p.id for p in pending])
        assert audit.chain(engine) == 0  # another chainer finds the head taken and leaves
        pid = dying.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        with engine.connect() as killer:
            killer.execute(sa.select(sa.func.pg_terminate_backend(pid)))
        with pytest.raises(sa.exc.DBAPIError):
            dying.execute(sa.select(1))
        dying.invalidate()
    assert _pending(engine) == 3 and _chained(engine) == ["genesis"]
    assert audit.chain(engine) == 3
    assert _chained(engine) == ["genesis", "tick-1", "tick-2", "tick-3"]
    assert _pending(engine) == 0
    with read(engine) as conn:
        verdict = audit.verify(conn)
    assert verdict.ok and verdict.checked == 4


def _tick_while_the_head_is_held(engine: sa.Engine, history: History) -> int:
    """A tick through the web's writer while another chainer holds the head: committed,
    answered, and left pending."""
    with read(engine) as conn:
        missed = conn.execute(
            sa.select(Obligation.id).where(Obligation.state == "missed").limit(1)
        ).scalar_one()
    request = ledger_tick.TickRequest.of(
        obligation_id=missed,
        by="补录",
        now=utc(2026, 11, 24, 2),
        readings={"chlorine": 1000} if missed != history.waste else None,
        token="pending-one",
    )
    writer = ledger_tick.TickWriter(engine)
    with _head_held(engine):
        try:
            assert writer.tick(request).changed
        finally:
            writer.close()  # its chaining after the batch too, while the head is held
    assert _pending(engine) == 1
    return missed


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_verify_counts_a_pending_event_as_pending_and_still_names_a_chained_one_altered(
    engine: sa.Engine, history: History
) -> None:
    _tick_while_the_head_is_held(engine, history)
    with read(engine) as conn:
        result = examine(conn)
    assert result.ok, [f.message for f in result.findings]
    assert result.chain.pending == 1 and result.chain.oldest_pending is not None
    with engine.begin() as conn, unguarded(conn):
        conn.execute(sa.update(Event).where(Event.seq == 3).values(actor="someone else"))
    with read(engine) as conn:
        result = examine(conn)
    assert not result.ok and result.chain.reason == "event 3 was altered"
    assert result.chain.first_bad_seq == 3


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_a_pending_event_removed_before_it_was_chained_is_found_by_the_replay(
    engine: sa.Engine, history: History
) -> None:
    """Until chained an event is not tamper-evident by its hash, but the completion it
    records is still in the table: removing the event leaves a row no event records."""
    _tick_while_the_head_is_held(engine, history)
    with engine.begin() as conn:
        conn.execute(sa.delete(UnchainedEvent))
    with read(engine) as conn:
        result = examine(conn)
    assert not result.ok
    assert any("no event records it" in f.message for f in result.findings)


@pytest.mark.postgresql_only("only PostgreSQL defers the chain (several writers at once)")
def test_audit_verify_links_what_is_pending_and_warns_of_events_left_pending_too_long(
    engine: sa.Engine, history: History, tmp_path: Path
) -> None:
    _tick_while_the_head_is_held(engine, history)
    with engine.begin() as conn:  # written two minutes ago, and no chainer since
        conn.execute(
            sa.update(UnchainedEvent).values(written_at=sa.func.now() - timedelta(minutes=2))
        )
    env = make_env(tmp_path, exports_dir=str(tmp_path / "exports"))
    runner = CliRunner()
    with _head_held(engine):  # a chainer stuck with the head: verify cannot link them
        stuck = runner.invoke(app, ["audit", "verify"], env=env)
    assert stuck.exit_code == 0, stuck.output
    assert "pending: 1 events committed but not chained yet (the oldest written 1" in stuck.output
    assert "warning: an event has waited 1" in stuck.output
    assert "TAMPERED" not in stuck.output
    linked = runner.invoke(app, ["audit", "verify"], env=env)
    assert linked.exit_code == 0, linked.output
    assert "pending" not in linked.output and "warning" not in linked.output
    assert _pending(engine) == 0
