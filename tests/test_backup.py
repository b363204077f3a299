"""``marketcare backup`` and ``restore`` as an operator runs them: real files, a real daemon.

The backup is taken, by a real process, while a real daemon materialises and ticks are
written at the same time; restore is checked to bring the ledger back row for row (counts
and checksums of every table), and to refuse, leaving the live database alone, whatever
should not be put in its place, a running daemon's database included. A restore whose
standard input ends (a script, cron) is a real process too; the other commands run in
this process (``run_cli``): what they answer and do is the point there, not their
process. Timeouts are liveness bounds (tests/support/procs.py), never performance checks.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.domain.schedules import load_paths
from marketcare.ledger import audit, demo
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import make_engine, migrate
from marketcare.ops.pgmigrate import TableSum, sums

from .conftest import make_market_yaml, make_schedule_text
from .support.procs import Proc, cli, make_env, run_cli, start_daemon, wait_until
from .support.tamper import sqlite_unguarded

pytestmark = pytest.mark.heavy(8)


DAY = timedelta(days=1)
#: a pause between the ticks written during a backup: they keep arriving throughout it,
#: without a thread of this process taking a core to write them back to back
TICK_PACE = 0.02
AREAS = (
    "["
    + ", ".join(
        f"{{id: {kind.replace('_', '-')}, kind: {kind}, m2: 100}}"
        for kind in ("aquatic", "meat", "poultry", "vegetables", "dry_goods", "aisles")
    )
    + "]"
)
#: open all day, every day: whatever the real time, today's windows are open for ticks
ALL_DAY_TASKS = """
  - id: wash
    kind: disinfection
    name: 全天清洗
    scope: area
    recurrence: daily
    opens: "00:00"
    due: +23h
    grace: 2h
    checklist: [{id: washed, tick: 已冲洗}]
  - id: waste
    kind: waste_clearance
    name: 垃圾日产日清
    scope: market
    recurrence: daily
    opens: "00:00"
    due: +23h
    grace: 2h
    checklist: [{id: cleared, tick: 已清运}]
"""


@dataclass
class Ledger:
    """A test's installation: its folder, its environment and its SQLite file."""

    folder: Path
    env: dict[str, str]
    db: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``marketcare ARGS`` in this installation, in this process (``run_cli``)."""
        return run_cli(self.env, *args, cwd=self.folder)

    def process(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``marketcare ARGS`` in this installation, as a process of its own."""
        return cli(self.env, *args, cwd=self.folder)


def make_ledger(folder: Path, *, markets: int = 1, **settings: str) -> Ledger:
    """A SQLite installation in ``folder`` with all-day schedules (SQLite whatever the
    suite's database: backup and restore are the SQLite default's tools)."""
    db = folder / "var" / "marketcare.db"
    env = make_env(folder, database_url=f"sqlite:///{db}", **settings)
    text = make_schedule_text(
        "".join(
            make_market_yaml(f"m{i:02d}", hours='{daily: "05:30-18:30"}', areas=AREAS)
            for i in range(markets)
        ),
        ALL_DAY_TASKS,
    )
    (folder / "schedules").mkdir(parents=True, exist_ok=True)
    (folder / "schedules" / "markets.yaml").write_text(text, encoding="utf-8")
    return Ledger(folder, env, db)


def fill_history(ledger_: Ledger, *, days: int = 3) -> None:
    """Simulated history (completions, failures, missed ones, events) ending now."""
    engine = make_engine(f"sqlite:///{ledger_.db}")
    try:
        migrate(engine)
        schedule = load_paths([ledger_.folder / "schedules"], default_timezone="Asia/Shanghai")
        demo.fill(engine, schedule, days=days, seed=7, now=datetime.now(UTC), horizon=DAY)
    finally:
        engine.dispose()  # the last connection checkpoints the WAL into the file


def reader(path: Path) -> sa.Engine:
    """Reads a file without switching its journal mode or creating it."""
    return sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30),
        poolclass=sa.pool.NullPool,
    )


def table_sums(path: Path) -> dict[str, TableSum]:
    engine = reader(path)
    try:
        with engine.connect() as conn:
            return sums(conn)
    finally:
        engine.dispose()


def chain_of(path: Path) -> audit.Verdict:
    engine = reader(path)
    try:
        with engine.connect() as conn:
            return audit.verify(conn)
    finally:
        engine.dispose()


def integrity(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def kept_files(ledger_: Ledger) -> list[Path]:
    return sorted(ledger_.db.parent.glob("*.before-restore-*"))


def logged(proc: Proc, msg: str) -> bool:
    for line in proc.stderr().splitlines():
        try:
            if json.loads(line).get("msg") == msg:
                return True
        except ValueError:
            continue
    return False


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, Path]:
    """One ledger with a few days of history and a backup of it, copied by the tests."""
    folder = tmp_path_factory.mktemp("history")
    source = make_ledger(folder, markets=2)
    fill_history(source)
    target = folder / "good-backup.db"
    made = source.cli("backup", str(target))
    assert made.returncode == 0, made.stderr
    return source, target


def copy_of(history: tuple[Ledger, Path], folder: Path, **settings: str) -> tuple[Ledger, Path]:
    """The module's ledger and backup, copied into a test's own folder (its processes
    run with ``settings``, MARKETCARE_* names without the prefix)."""
    source, backup = history
    mine = make_ledger(folder, markets=2, **settings)
    mine.db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.db, mine.db)
    own_backup = folder / "backup.db"
    shutil.copyfile(backup, own_backup)
    return mine, own_backup


def change(ledger_: Ledger) -> None:
    """Write something the backup does not have: a completion and its events."""
    engine = make_engine(f"sqlite:///{ledger_.db}")
    try:
        with engine.connect() as conn:
            oid = conn.execute(
                sa.text("SELECT id FROM obligations WHERE state = 'open' LIMIT 1")
            ).scalar_one()
        result = ledger_tick.tick(
            engine, obligation_id=oid, by="林秀英", now=datetime.now(UTC), token="after-backup"
        )
        assert result.changed, result.message
    finally:
        engine.dispose()


# ---------------------------------------------------------------- backup


def test_a_backup_taken_while_the_daemon_materialises_and_ticks_arrive_is_consistent(
    tmp_path: Path, procs: list[Proc]
) -> None:
    site = make_ledger(
        tmp_path,
        markets=60,
        horizon="366d",  # 60 markets × 7 obligations × 366 one-day chunks: seconds of writing
        sweep_interval_seconds="1",
        materialise_interval_seconds="2",
        web_enabled="false",  # the daemon writes; nothing here asks its web app
    )
    schedule = load_paths([tmp_path / "schedules"], default_timezone="Asia/Shanghai")
    engine = make_engine(f"sqlite:///{site.db}")
    migrate(engine)
    # a ledger that starts a day ago, so today's windows are open at the real now
    ago = datetime.now(UTC) - DAY
    ledger_materialise.materialise(engine, schedule, now=ago, horizon=DAY, start=ago)
    with engine.connect() as conn:
        open_ids = list(
            conn.execute(
                sa.text("SELECT id FROM obligations WHERE opens_at <= :now ORDER BY id"),
                {"now": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"},
            ).scalars()
        )
    assert len(open_ids) == 60 * 7

    daemon = start_daemon(site.env, cwd=tmp_path)
    procs.append(daemon)
    initial = _watermark(site.db)
    wait_until(lambda: _watermark(site.db) > initial, proc=daemon, what="the daemon to materialise")

    returned: list[tuple[str, float]] = []  # (token, when its tick returned)
    stop = threading.Event()
    failures: list[BaseException] = []

    def ticker() -> None:
        try:
            for i, oid in enumerate(open_ids):
                if stop.wait(TICK_PACE):
                    return
                token = f"during-backup-{i}"
                ledger_tick.tick(
                    engine, obligation_id=oid, by="林秀英", now=datetime.now(UTC), token=token
                )
                returned.append((token, time.monotonic()))
        except BaseException as exc:  # surfaced by the test below
            failures.append(exc)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(returned) >= 3, what="ticks to be written", proc=daemon)
        watermark_before = _watermark(site.db)
        started = time.monotonic()
        target = tmp_path / "backups" / "during.db"
        made = site.process("backup", str(target), "--step-pages", "16")
        finished = time.monotonic()
        watermark_after = _watermark(site.db)
        # the ticker kept going through the backup (each tick waits its turn to write)
        wait_until(
            lambda: sum(at > started for _, at in returned) >= 3,
            what="ticks after the backup began",
            proc=daemon,
        )
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not failures, failures
    assert daemon.terminate() == 0, daemon.stderr()[-3000:]
    engine.dispose()

    assert made.returncode == 0, made.stderr
    assert "integrity ok" in made.stdout and "events intact" in made.stdout, made.stdout
    assert str(target) in made.stdout
    # the database really was being written while the copy was taken: by the daemon's
    # materialiser (its watermark moved) or by ticks that returned while the copy ran (on a
    # loaded machine the materialiser may have reached its horizon before the copy began)
    ticked_during = sum(started < at < finished for _, at in returned)
    assert watermark_after > watermark_before or ticked_during > 0, (
        "nothing was written during the backup"
    )

    assert integrity(target) == ["ok"]
    verdict = chain_of(target)
    assert verdict.ok, verdict
    copy = reader(target)
    try:
        with copy.connect() as conn:
            tokens = list(conn.execute(sa.text("SELECT token FROM completions")).scalars())
            logged_tokens = list(
                conn.execute(
                    sa.text(
                        "SELECT json_extract(details, '$.token') FROM events "
                        "WHERE action = 'completed'"
                    )
                ).scalars()
            )
            not_done = conn.execute(
                sa.text(
                    "SELECT count(*) FROM completions c JOIN obligations o "
                    "ON o.id = c.obligation_id WHERE o.state NOT IN ('done', 'late')"
                )
            ).scalar_one()
            obligations = conn.execute(sa.text("SELECT count(*) FROM obligations")).scalar_one()
            created, last_to = conn.execute(
                sa.text(
                    "SELECT sum(json_extract(details, '$.created')), "
                    "max(json_extract(details, '$.to')) FROM events WHERE action = 'materialised'"
                )
            ).one()
            until = conn.execute(
                sa.text("SELECT materialised_until FROM ledger_state")
            ).scalar_one()
    finally:
        copy.dispose()
    before_backup = {t for t, at in returned if at < started}
    assert before_backup <= set(tokens), sorted(before_backup - set(tokens))[:5]
    # one instant: each completion with its event and its obligation's new state, no half
    assert sorted(tokens) == sorted(logged_tokens)
    assert not_done == 0
    assert created == obligations  # each chunk's obligations with its event and watermark
    assert datetime.fromisoformat(last_to) == datetime.fromisoformat(until).replace(tzinfo=UTC)
    assert not list(target.parent.glob(".*partial")), "the temporary file was left behind"


def _watermark(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return str(conn.execute("SELECT materialised_until FROM ledger_state").fetchone()[0])
    finally:
        conn.close()


def test_a_backup_goes_to_var_backups_by_default_and_reports_what_it_holds(
    history: tuple[Ledger, Path], tmp_path: Path
) -> None:
    mine, _ = copy_of(history, tmp_path)
    made = mine.cli("backup")
    assert made.returncode == 0, made.stderr
    written = list((mine.db.parent / "backups").glob("marketcare-*Z.db"))
    assert len(written) == 1 and str(written[0]) in made.stdout
    live = table_sums(mine.db)
    assert table_sums(written[0]) == live
    for table in ("obligations", "completions", "events", "problems", "reports"):
        assert f"{table}" in made.stdout
    assert f"│ {live['obligations'].rows}" in made.stdout
    assert f"ok, {live['events'].rows} events intact" in made.stdout


def test_a_backup_never_overwrites_an_existing_file(
    history: tuple[Ledger, Path], tmp_path: Path
) -> None:
    mine, backup = copy_of(history, tmp_path)
    before = backup.read_bytes()
    made = mine.cli("backup", str(backup))
    assert made.returncode == 1
    assert f"{backup} exists already" in made.stderr
    assert backup.read_bytes() == before


# ---------------------------------------------------------------- restore


def test_restore_brings_the_ledger_back_exactly(
    history: tuple[Ledger, Path], tmp_path: Path
) -> None:
    mine, backup = copy_of(history, tmp_path)
    at_backup = table_sums(backup)
    assert table_sums(mine.db) == at_backup
    change(mine)
    changed = table_sums(mine.db)
    assert changed["completions"] != at_backup["completions"]

    done = mine.cli("restore", str(backup), "--yes")
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout and "events intact" in done.stdout

    assert table_sums(mine.db) == at_backup  # every table: row counts and checksums
    assert chain_of(mine.db).ok
    [kept] = kept_files(mine)
    assert str(kept) in done.stdout
    assert table_sums(kept) == changed  # the replaced database, with what only it had
    assert not list(mine.db.parent.glob(f".{mine.db.name}.restore-*"))
    # the daemon's tools work on it at once
    verify = mine.cli("audit", "verify")
    assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "no-answer"])
def test_restore_asks_first_and_a_no_changes_nothing(
    history: tuple[Ledger, Path], tmp_path: Path, answer: str
) -> None:
    mine, backup = copy_of(history, tmp_path)
    change(mine)
    live = table_sums(mine.db)
    if answer:  # someone at the prompt says no
        answered = run_cli(mine.env, "restore", str(backup), cwd=tmp_path, input=answer)
    else:  # a script or cron: the process's standard input ends with no answer
        answered = cli(mine.env, "restore", str(backup), cwd=tmp_path, input=answer)
    assert answered.returncode == 1
    assert "Replace" in answered.stdout
    assert "Traceback" not in answered.stderr and "Aborted" not in answered.stderr
    assert "error: restore cancelled; nothing was changed" in answered.stderr
    if not answer:  # a script or cron without --yes: say what it lacks
        assert "give --yes to restore without asking" in answered.stderr
    assert table_sums(mine.db) == live
    assert kept_files(mine) == []


def test_restore_is_refused_while_the_daemon_runs(
    history: tuple[Ledger, Path], tmp_path: Path, procs: list[Proc]
) -> None:
    # the refusal is the scheduler's lock: the daemon needs no web app to hold it; its
    # horizon is further than the backup's, so that it writes what the backup lacks
    site, backup = copy_of(history, tmp_path, horizon="3d", web_enabled="false")
    daemon = start_daemon(site.env, cwd=tmp_path)
    procs.append(daemon)
    wait_until(lambda: logged(daemon, "daemon running"), proc=daemon, what="the daemon to run")
    # the daemon has materialised past what the backup holds
    wait_until(lambda: _watermark(site.db) > _watermark(backup), proc=daemon, what="materialising")
    mark = _watermark(site.db)

    refused = site.cli("restore", str(backup), "--yes")
    assert refused.returncode == 1
    assert "a marketcare daemon is running" in refused.stderr
    assert "stop it first" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert kept_files(site) == []
    assert _watermark(site.db) >= mark  # the live database is still the daemon's
    assert daemon.alive()
    assert daemon.terminate() == 0, daemon.stderr()[-3000:]


def _garbage(path: Path) -> str:
    path.write_bytes(os.urandom(64 * 1024))
    return "is not a readable SQLite database"


def _plain_sqlite(path: Path) -> str:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE stalls (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO stalls (name) VALUES ('鱼档')")
    conn.commit()
    conn.close()
    return "is a SQLite database but not a marketcare one (no alembic_version table)"


def _truncated(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return "damaged"


def _from_the_future(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    return "schema revision 9999, which this marketcare does not know"


def _tampered(path: Path) -> str:
    conn = sqlite3.connect(path)
    sqlite_unguarded(conn, "UPDATE events SET actor = 'someone else' WHERE seq = 3")
    conn.close()
    return "its audit chain is broken (event 3 was altered); refusing to restore a tampered ledger"


@pytest.mark.parametrize(
    "spoil", [_garbage, _plain_sqlite, _truncated, _from_the_future, _tampered]
)
def test_a_file_that_is_not_a_sound_marketcare_backup_is_refused_and_nothing_changes(
    history: tuple[Ledger, Path], tmp_path: Path, spoil: object
) -> None:
    mine, backup = copy_of(history, tmp_path)
    change(mine)
    live = table_sums(mine.db)
    assert callable(spoil)
    expected = spoil(backup)

    refused = mine.cli("restore", str(backup), "--yes")
    assert refused.returncode == 1, refused.stdout
    assert str(backup) in refused.stderr
    if expected == "damaged":  # SQLite says either, depending on where the cut fell
        assert "damaged" in refused.stderr or "not a readable" in refused.stderr
    else:
        assert expected in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert table_sums(mine.db) == live
    assert kept_files(mine) == []
    assert not list(mine.db.parent.glob(f".{mine.db.name}.restore-*"))


def test_a_tampered_backup_is_restored_with_force_and_the_damage_is_shown(
    history: tuple[Ledger, Path], tmp_path: Path
) -> None:
    mine, backup = copy_of(history, tmp_path)
    _tampered(backup)
    done = mine.cli("restore", str(backup), "--yes", "--force")
    assert done.returncode == 0, done.stderr
    assert "audit chain: TAMPERED: event 3 was altered" in done.stderr
    assert table_sums(mine.db) == table_sums(backup)
    verify = mine.cli("audit", "verify")
    assert verify.returncode == 1 and "event 3 was altered" in verify.stderr


# ---------------------------------------------------------------- PostgreSQL


def test_on_postgresql_backup_and_restore_point_to_pg_dump_and_pg_restore(tmp_path: Path) -> None:
    env = make_env(tmp_path, database_url="postgresql+psycopg://marketcare@db.example/marketcare")
    backup = run_cli(env, "backup", cwd=tmp_path)
    assert backup.returncode == 1
    assert "the database is PostgreSQL" in backup.stderr
    assert "pg_dump -Fc" in backup.stderr and "docs/operations.md" in backup.stderr
    restore = run_cli(env, "restore", str(tmp_path / "marketcare.dump"), "--yes", cwd=tmp_path)
    assert restore.returncode == 1
    assert "pg_restore" in restore.stderr and "docs/operations.md" in restore.stderr
    assert "Traceback" not in backup.stderr + restore.stderr
