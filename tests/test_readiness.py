"""Readiness: the plain decision of ``/readyz``, and a database that stopped taking writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from marketcare.ledger import audit, leader
from marketcare.ledger.db import make_engine, migrate
from marketcare.ledger.health import Health, StepRecord, probe_writes, readiness
from marketcare.ledger.models import UnchainedEvent
from marketcare.settings import Settings
from marketcare.web.app import WebServer, create_app

from .conftest import database_url, utc

NOW = utc(2026, 11, 27, 10, 0)
S = timedelta(seconds=1)


def steps(**ages: float | None) -> dict[str, StepRecord]:
    """Steps with their interval and allowance, last completed ``age`` seconds ago."""
    shapes = {"sweep": (10, 60), "materialise": (60, 240), "reload": (1, 150), "outbox": (10, 90)}
    return {
        name: StepRecord(
            interval, allowance, last_ok=None if ages.get(name) is None else NOW - ages[name] * S
        )
        for name, (interval, allowance) in shapes.items()
    }


def healthy(**changes: object) -> Health:
    health = Health(started_at=NOW - 600 * S, write_ok_at=NOW - 5 * S)
    health.steps = steps(sweep=3, materialise=20, reload=1, outbox=4)
    health.steps_since = NOW - 600 * S
    for key, value in changes.items():
        setattr(health, key, value)
    return health


def decide(
    health: Health | None, *, leading: bool = True, **overrides: object
) -> tuple[bool, dict, list[str]]:  # type: ignore[type-arg]
    args: dict[str, object] = {
        "now": NOW,
        "database": None,
        "schedule_applied": True,
        "leader_holder": "host:1",
        "health": health,
        "leading": leading,
    }
    args.update(overrides)
    return readiness(**args)  # type: ignore[arg-type]


def test_a_leader_whose_steps_writes_and_files_are_fine_is_ready() -> None:
    ready, checks, problems = decide(healthy())
    assert ready and problems == []
    assert checks == {
        "database": "ok",
        "schedule": "ok",
        "scheduler_leader": "host:1",
        "schedule_files": "ok",
        "writes": "ok",
        "steps": {"sweep": "ok", "materialise": "ok", "reload": "ok", "outbox": "ok"},
    }


def test_a_sweep_late_beyond_its_allowance_makes_the_leader_not_ready_and_says_how_late() -> None:
    ready, checks, problems = decide(
        healthy(steps=steps(sweep=300, materialise=20, reload=1, outbox=4))
    )
    assert not ready
    assert checks["steps"]["sweep"] == "sweep last completed 5 min ago; it runs every 10 s"
    assert problems == ["steps: sweep last completed 5 min ago; it runs every 10 s"]


def test_a_step_that_never_completed_is_measured_from_when_it_was_expected() -> None:
    health = healthy(steps=steps(sweep=3, materialise=None, reload=1, outbox=4))
    health.steps_since = NOW - 100 * S  # the lead was taken 100 s ago; 240 s allowed
    assert decide(health)[0]
    health.steps_since = NOW - 300 * S
    ready, checks, _ = decide(health)
    assert not ready
    assert checks["steps"]["materialise"] == (
        "materialise has not completed since the start, 5 min ago; it runs every 60 s"
    )


def test_a_step_failing_again_and_again_says_its_last_error() -> None:
    health = healthy(steps=steps(sweep=3, materialise=20, reload=1, outbox=600))
    health.steps["outbox"].last_error = "OperationalError: database is locked"
    _, checks, _ = decide(health)
    assert checks["steps"]["outbox"].endswith("; last error: OperationalError: database is locked")


def test_a_follower_is_not_judged_by_the_steps_it_does_not_run() -> None:
    ready, checks, _ = decide(healthy(steps=steps()), leading=False)
    assert ready and "steps" not in checks


def test_a_broken_schedule_file_makes_it_not_ready_naming_the_file() -> None:
    problem = (
        "tasks.yaml invalid (1 error; first: tasks.yaml:12:17: …); keeping the last good schedule"
    )
    ready, checks, problems = decide(healthy(schedule_problem=problem))
    assert not ready
    assert checks["schedule_files"] == problem
    assert problems == [f"schedule_files: {problem}"]


def test_a_failing_write_and_a_write_probe_gone_quiet_make_it_not_ready() -> None:
    failing = healthy(write_error="OperationalError: database or disk is full")
    assert (
        decide(failing)[1]["writes"]
        == "writes are failing: OperationalError: database or disk is full"
    )
    quiet = healthy(write_ok_at=NOW - 90 * S)
    ready, checks, _ = decide(quiet)
    assert not ready and checks["writes"] == "no write has succeeded for 90 s"


def test_an_unreachable_database_is_named_and_nothing_else_is_claimed() -> None:
    ready, checks, problems = decide(healthy(), database="OperationalError")
    assert not ready
    assert checks == {"database": "unreachable: OperationalError"}
    assert problems == ["database: unreachable: OperationalError"]


def test_no_leader_heartbeat_and_no_schedule_are_named() -> None:
    ready, checks, _ = decide(healthy(), leader_holder=None, schedule_applied=False)
    assert not ready
    assert (checks["schedule"], checks["scheduler_leader"]) == (
        "no schedule applied yet",
        "no leader heartbeat",
    )


def test_audit_events_left_unlinked_past_the_bound_make_every_daemon_not_ready() -> None:
    """On PostgreSQL ticks are linked to the audit chain after their commit: events that
    wait longer than ``PENDING_BOUND`` mean no chainer is working, and the ledger is
    taking writes that are not tamper-evident yet: a follower says so too."""
    waiting = audit.Waiting(3, audit.PENDING_BOUND + 30 * S)
    for leading in (True, False):
        ready, checks, problems = decide(healthy(), leading=leading, chain=waiting)
        assert not ready
        assert checks["audit_chain"].startswith("3 audit events have waited 90 s to be linked")
        assert problems == [f"audit_chain: {checks['audit_chain']}"]
    ready, checks, _ = decide(healthy(), chain=audit.Waiting(40, 5 * S))
    assert ready and checks["audit_chain"] == "ok"


# ---------------------------------------------------------------- a real failing write


def read_only(engine: sa.Engine) -> sa.Engine:
    """The same database through connections that may only read."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    # a new connection each time: a pooled one that served a read-only snapshot is reset
    # to READ WRITE explicitly, which would override the default
    return sa.create_engine(
        url,
        poolclass=sa.pool.NullPool,
        connect_args={"options": "-c default_transaction_read_only=on"},
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = make_engine(database_url(tmp_path, migrated=True))
    migrate(engine)
    yield engine
    engine.dispose()


def test_the_write_probe_fails_on_a_database_that_no_longer_takes_writes(
    ledger: sa.Engine, tmp_path: Path
) -> None:
    probe_writes(ledger, [tmp_path / "exports"], "host:1", now=NOW)  # a writable one passes
    locked = read_only(ledger)
    try:
        with pytest.raises(sa.exc.SQLAlchemyError):
            probe_writes(locked, [], "host:1", now=NOW)
    finally:
        locked.dispose()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the exports folder should be")
    with pytest.raises(OSError):
        probe_writes(ledger, [blocked], "host:1", now=NOW)


def test_readyz_answers_503_naming_failing_writes(ledger: sa.Engine, tmp_path: Path) -> None:
    settings = Settings(database_url=str(ledger.url), schedules_dir=tmp_path, web_port=0)
    create_app(settings, ledger, clock=lambda: NOW)  # makes the app's secrets while it can
    leader.heartbeat(ledger, "host:1", now=NOW, since=NOW)
    locked = read_only(ledger)
    server = WebServer(create_app(settings, locked, clock=lambda: NOW), "127.0.0.1", 0)
    server.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=30)
    finally:
        server.stop()
        locked.dispose()
    assert answer.status_code == 503
    body = answer.json()
    assert body["checks"]["database"] == "ok", body
    assert body["checks"]["writes"].startswith("writes are failing: ")
    assert any(p.startswith("writes: writes are failing") for p in body["problems"])


def test_a_web_server_that_hangs_while_starting_is_reported_with_where_it_hung() -> None:
    """The start's bound is a liveness check: past it the error names the function the
    server's thread was in (a hang is told from a slow machine) and the server stops."""
    import threading
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from marketcare.errors import MarketcareError

    release = threading.Event()

    @asynccontextmanager
    async def stuck_in_start_up(app: FastAPI) -> AsyncIterator[None]:
        release.wait(30)  # blocks the server's loop, as a hang in start-up would
        yield

    server = WebServer(FastAPI(lifespan=stuck_in_start_up), "127.0.0.1", 0)
    with pytest.raises(
        MarketcareError, match=r"did not start in 0 s; it was in .*stuck_in_start_up"
    ):
        server.start(timeout=0.3)
    release.set()
    server.thread.join(timeout=10)
    assert not server.thread.is_alive()


@pytest.mark.postgresql_only("only PostgreSQL links the chain after the commit")
def test_readyz_names_audit_events_that_no_chainer_has_linked(
    ledger: sa.Engine, tmp_path: Path
) -> None:
    settings = Settings(database_url=str(ledger.url), schedules_dir=tmp_path, web_port=0)
    leader.heartbeat(ledger, "host:1", now=NOW, since=NOW)
    server = WebServer(create_app(settings, ledger, clock=lambda: NOW), "127.0.0.1", 0)
    server.start()
    try:
        event = {"at": NOW, "actor": "林秀英", "action": "tick", "details": {}}
        with ledger.begin() as conn:
            conn.execute(sa.insert(UnchainedEvent), [event, event])
        fresh = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=30).json()
        with ledger.begin() as conn:  # no chainer runs here: the two grow old
            conn.execute(
                sa.update(UnchainedEvent).values(written_at=sa.func.now() - timedelta(minutes=3))
            )
        late = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=30)
    finally:
        server.stop()
    assert fresh["checks"]["audit_chain"] == "ok", fresh
    assert late.status_code == 503
    assert late.json()["checks"]["audit_chain"].startswith("2 audit events have waited 3 min")
