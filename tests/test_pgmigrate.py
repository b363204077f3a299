"""``marketcare migrate-sqlite-to-postgres`` against a real PostgreSQL server.

A district's simulated history moves from SQLite to PostgreSQL; every table must arrive
with the same rows (counts and checksums read back independently), the audit chain must
verify there, and the daemon must carry on on the new database. A target that already
holds rows is refused and left as it was.

The command runs in this process (``run_cli``), except where a daemon's lock must be held
by another process than the command's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from marketcare.domain import checklists
from marketcare.domain.access import Role
from marketcare.domain.schedules import Schedule, load_paths
from marketcare.ledger import accounts, audit, demo
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import make_engine, migrate
from marketcare.ledger.leader import SqliteFileLock
from marketcare.ledger.models import AreaRow, Completion, Obligation, ProblemRow
from marketcare.ops.daemon import Daemon
from marketcare.ops.pgmigrate import TableSum, sums
from marketcare.settings import load_settings

from .conftest import ROOT
from .support import pg
from .support.procs import cli, make_env, run_cli

NewDatabase = Callable[[Path], str]


@pytest.fixture(scope="module")
def new_database() -> Iterator[NewDatabase]:
    """Hands out an empty PostgreSQL database per folder: the suite's server when it runs
    on PostgreSQL, else a throwaway one for this module (tests/support/pg.py)."""
    if pg.on_postgresql():
        yield lambda folder: pg.database_url(folder)
        return
    server = pg.ThrowawayServer.start()
    try:
        databases = pg.Databases(make_url(server.url))
        yield lambda folder: databases.fresh(folder, migrated=False)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One district's SQLite history for the module; each test works on a copy."""
    folder = tmp_path_factory.mktemp("district")
    fill_district(folder)
    return folder


def make_district(district: Path, folder: Path) -> str:
    """A copy of the module's district (its schedules and its ledger) in ``folder``."""
    shutil.copytree(district / "schedules", folder / "schedules")
    (folder / "var").mkdir()
    shutil.copyfile(district / "var" / "marketcare.db", folder / "var" / "marketcare.db")
    return f"sqlite:///{folder / 'var' / 'marketcare.db'}"


def fill_district(folder: Path) -> None:
    """A SQLite ledger with a few days of the sample district's life: completions (with
    readings, failures, redos), missed ones, problems raised from them, a user, a token."""
    shutil.copytree(ROOT / "schedules", folder / "schedules")
    url = f"sqlite:///{folder / 'var' / 'marketcare.db'}"
    engine = make_engine(url)
    try:
        migrate(engine)
        schedule = load_paths([folder / "schedules"], default_timezone="Asia/Shanghai")
        now = datetime.now(UTC)
        demo.fill(engine, schedule, days=3, seed=11, now=now, horizon=timedelta(days=1))
        assert ledger_problems.raise_from_obligations(engine, schedule, now=now) > 0
        user = accounts.add_user(
            engine,
            accounts.NewUser("chen", "陈建国", Role.MANAGER, "correct horse battery", ("lizhong",)),
            now=now,
        )
        accounts.create_token(engine, user, "手机", now=now)
    finally:
        engine.dispose()  # the last connection folds the WAL into the file


def tick_an_open_obligation(engine: sa.Engine, schedule: Schedule) -> int | None:
    """Complete one open obligation with good readings; returns the completion id."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(Obligation.id, Obligation.task_id, AreaRow.kind)
            .outerjoin(
                AreaRow,
                sa.and_(
                    AreaRow.market_id == Obligation.market_id, AreaRow.id == Obligation.area_id
                ),
            )
            .where(Obligation.state == "open")
            .order_by(Obligation.id)
            .limit(1)
        ).one_or_none()
    if row is None:
        return None
    checklist = checklists.checklist_of(schedule, row.task_id, row.kind)
    readings = {}
    for r in checklist.readings:
        lo, hi = r.range or (None, None)
        readings[r.id] = (lo + hi) / 2 if lo is not None and hi is not None else (lo or hi or 1)
    result = ledger_tick.tick(
        engine,
        obligation_id=row.id,
        by="林秀英",
        now=datetime.now(UTC),
        readings=readings,
        texts={t.id: "已完成" for t in checklist.texts},
    )
    return result.completion_id


def sums_of(url: str) -> dict[str, TableSum]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sums(conn)
    finally:
        engine.dispose()


def test_a_district_moves_to_postgresql_with_equal_counts_and_checksums_and_runs_there(
    tmp_path: Path, district: Path, new_database: NewDatabase
) -> None:
    source = make_district(district, tmp_path)
    target = new_database(tmp_path / "target")
    env = make_env(tmp_path, database_url=source)

    moved = run_cli(
        env, "migrate-sqlite-to-postgres", "--to", target, "--batch", "100", cwd=tmp_path
    )
    assert moved.returncode == 0, moved.stderr
    assert "MISMATCH" not in moved.stdout
    assert "audit chain ok" in moved.stdout

    # read back independently: every table, same rows in the same order, value for value
    before, after = sums_of(source), sums_of(target)
    assert after == before
    for table in ("obligations", "completions", "events", "problems", "users", "api_tokens"):
        assert after[table].rows > 0, table
        assert f"│ {table}" in moved.stdout
    pg_engine = make_engine(target)
    try:
        with pg_engine.connect() as conn:
            verdict = audit.verify(conn)
            top_completion = conn.execute(sa.select(sa.func.max(Completion.id))).scalar_one()
            top_problem = conn.execute(sa.select(sa.func.max(ProblemRow.id))).scalar_one()
        assert verdict.ok and verdict.checked == before["events"].rows, verdict

        # the daemon carries on: one step of each kind on the new database
        settings = load_settings(
            database_url=target,
            schedules_dir=tmp_path / "schedules",
            exports_dir=tmp_path / "exports",
            web_enabled=False,
        )
        daemon = Daemon(settings=settings, engine=pg_engine)
        daemon.step_reload()
        daemon.step_materialise()
        daemon.step_sweep()
        daemon.step_reports()
        daemon.step_notifications()
        # new rows get ids past the copied ones: the sequences were moved on
        new_id, created = ledger_problems.add(
            pg_engine,
            ledger_problems.NewProblem(
                market_id="lizhong",
                category="sanitation",
                description="排水沟堵塞",
                found_by="区办",
                found_at=datetime.now(UTC),
                deadline=datetime.now(UTC) + timedelta(days=1),
            ),
            now=datetime.now(UTC),
            actor="区办",
        )
        assert created and new_id > top_problem
        assert daemon.schedule is not None
        ticked = tick_an_open_obligation(pg_engine, daemon.schedule)
        if ticked is not None:  # there is one unless the clock is between every window
            assert ticked > top_completion
        with pg_engine.connect() as conn:
            assert audit.verify(conn).ok
    finally:
        pg_engine.dispose()

    status = run_cli(make_env(tmp_path, database_url=target), "status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "鲤中农贸市场" in status.stdout  # the table names markets


def test_a_target_that_already_has_rows_is_refused_and_left_as_it_was(
    tmp_path: Path, district: Path, new_database: NewDatabase
) -> None:
    source = make_district(district, tmp_path)
    target = new_database(tmp_path / "target")
    env = make_env(tmp_path, database_url=source)
    first = run_cli(env, "migrate-sqlite-to-postgres", "--to", target, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the source moves on; the target keeps what it got
    engine = make_engine(source)
    try:
        accounts.add_user(
            engine,
            accounts.NewUser("lin", "林秀英", Role.OFFICE, "correct horse battery"),
            now=datetime.now(UTC),
        )
    finally:
        engine.dispose()
    held = sums_of(target)

    again = run_cli(env, "migrate-sqlite-to-postgres", "--to", target, cwd=tmp_path)
    assert again.returncode == 1
    assert "the target database is not empty" in again.stderr
    assert f"obligations: {held['obligations'].rows}" in again.stderr
    assert "Traceback" not in again.stderr
    assert sums_of(target) == held


def test_the_move_is_refused_while_a_daemon_runs_on_the_source_and_for_wrong_urls(
    tmp_path: Path, district: Path, new_database: NewDatabase
) -> None:
    source = make_district(district, tmp_path)
    target = new_database(tmp_path / "target")
    env = make_env(tmp_path, database_url=source)

    # what a running daemon holds, held here by another process than the command's (the
    # command is a process of its own, as beside a daemon)
    lock = SqliteFileLock(tmp_path / "var" / "marketcare.db")
    assert lock.try_acquire()
    try:
        busy = cli(env, "migrate-sqlite-to-postgres", "--to", target, cwd=tmp_path)
    finally:
        lock.release()
    assert busy.returncode == 1
    assert "a marketcare daemon is running" in busy.stderr and "stop it first" in busy.stderr

    not_pg = run_cli(env, "migrate-sqlite-to-postgres", "--to", source, cwd=tmp_path)
    assert not_pg.returncode == 1
    assert "--to must be a PostgreSQL URL" in not_pg.stderr
    not_sqlite = run_cli(
        env, "migrate-sqlite-to-postgres", "--from", target, "--to", target, cwd=tmp_path
    )
    assert not_sqlite.returncode == 1
    assert "--from must be a SQLite file URL" in not_sqlite.stderr
    for result in (busy, not_pg, not_sqlite):
        assert "Traceback" not in result.stderr

    # nothing reached the target: it is still empty, and the move then works
    moved = run_cli(env, "migrate-sqlite-to-postgres", "--to", target, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
