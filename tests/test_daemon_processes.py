"""The daemon as operators run it: real processes, a real database, SIGKILL and SIGTERM.

Timeouts are liveness bounds (see tests/support/procs.py), never performance checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from marketcare.domain.obligations import expand
from marketcare.domain.schedules import Schedule, load_paths
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger.db import make_engine, migrate
from marketcare.ledger.models import Obligation
from marketcare.ops.validation import START_BOUND_SECONDS

from .conftest import DISINFECTION, WASTE, make_market_yaml, make_schedule_text
from .support.procs import (
    LIVENESS,
    Proc,
    cli,
    database,
    make_env,
    parse_utc,
    query,
    run_cli,
    scalar,
    start,
    start_daemon,
    start_ticker,
    wait_until,
    watermark,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy(70)]

DAY = timedelta(days=1)
#: the SIGKILL test's ticks: one every TICK_PACE seconds, every COMMAND_EVERY-th a command
TICK_PACE = 0.2
COMMAND_EVERY = 50
SIX_AREAS = (
    "["
    + ", ".join(
        f"{{id: {kind.replace('_', '-')}, kind: {kind}, m2: 100}}"
        for kind in ("aquatic", "meat", "poultry", "vegetables", "dry_goods", "aisles")
    )
    + "]"
)
#: open all day, every day: whatever the real time, today's window is open
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


def write(path: Path, text: str) -> None:
    """Replace a file atomically, as an editor or a git checkout would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load(env: dict[str, str]) -> Schedule:
    return load_paths([Path(env["MARKETCARE_SCHEDULES_DIR"])], default_timezone="Asia/Shanghai")


def natural_keys(db: str) -> list[str]:
    return [r[0] for r in query(db, "SELECT natural_key FROM obligations")]


def first_watermark(db: str) -> datetime:
    """Where the ledger started: the ``from`` of the first materialised chunk."""
    raw = scalar(
        db, "SELECT details FROM events WHERE action = 'materialised' ORDER BY seq LIMIT 1"
    )
    details = raw if isinstance(raw, dict) else json.loads(raw)  # PostgreSQL decodes JSON
    return datetime.fromisoformat(details["from"])


def log_records(proc: Proc) -> list[dict[str, object]]:
    records = []
    for line in proc.stderr().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def logged(proc: Proc, msg: str) -> bool:
    return any(r.get("msg") == msg for r in log_records(proc))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One HTTP client for a test's requests: ``httpx.get`` builds a client, and its TLS
    context, per request (about 10 ms of CPU), hundreds of times while /readyz is polled."""
    with httpx.Client(timeout=30) as client:
        yield client


# ---------------------------------------------------------------- crashes


def test_sigkill_at_random_moments_while_materialising_and_ticking_loses_and_doubles_nothing(
    tmp_path: Path, procs: list[Proc]
) -> None:
    rng = random.Random(20261127)
    markets = "".join(
        make_market_yaml(f"m{i:02d}", hours='{daily: "05:30-18:30"}', areas=SIX_AREAS)
        for i in range(40)
    )
    write(tmp_path / "schedules" / "markets.yaml", make_schedule_text(markets, ALL_DAY_TASKS))
    horizon = 180 * DAY  # 40 markets × 7 obligations × 180 one-day chunks: seconds of work
    # no web app: the ticks come through the CLI, and a daemon that need not import the web
    # app first starts materialising seconds sooner, so more of the kills land in its work
    env = make_env(
        tmp_path,
        horizon="180d",
        sweep_interval_seconds="1",
        materialise_interval_seconds="2",
        web_enabled="false",
    )
    db = database(env)
    schedule = load(env)

    # a ledger that starts a day ago, so today's windows are open at the real now
    init = run_cli(
        {**env, "MARKETCARE_HORIZON": "1d"},
        "init",
        cwd=tmp_path,
        at=datetime.now(UTC) - DAY,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    start_mark = first_watermark(db)
    now = datetime.now(UTC)
    open_ids = [
        r[0]
        for r in query(
            db, "SELECT id FROM obligations WHERE opens_at <= ? ORDER BY id", (f"{now:%F %T}",)
        )
    ]
    # today's windows and those of the day the ledger began (a new ledger starts at the
    # local midnight of its first day, with the work of that day still open)
    assert len(open_ids) == 2 * 40 * 7
    rng.shuffle(open_ids)

    # the concurrent writer: one process ticking through the ledger's own code (what the
    # command calls), and every COMMAND_EVERY-th tick a `marketcare tick` command, so the
    # command's path is crossed too; paced, so that ticks land throughout the kills
    # without a tick process after another keeping a core busy
    writer = start_ticker(env, cwd=tmp_path)
    procs.append(writer)
    commands: list[tuple[int, str, int, str, str]] = []
    sent: dict[str, int] = {}  # token: obligation, of the ticks handed to the writer
    stop_ticking = threading.Event()

    def ticker() -> None:
        pipe = writer.popen.stdin
        assert pipe is not None
        for i, oid in enumerate(open_ids):
            if stop_ticking.wait(TICK_PACE):
                return
            token = f"crash-test-{i}"
            if i % COMMAND_EVERY == 0:
                r = cli(env, "tick", str(oid), "--by", "林秀英", "--token", token, cwd=tmp_path)
                commands.append((oid, token, r.returncode, r.stdout, r.stderr))
            else:
                sent[token] = oid
                pipe.write(f"{oid} {token}\n".encode())
                pipe.flush()

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    kills, interrupted = 22, 0
    try:
        for i in range(kills):
            before = watermark(db)
            proc = start_daemon(env, cwd=tmp_path, name=f"daemon-{i}")
            procs.append(proc)
            if i % 5 == 4:  # now and then during start-up (imports, migrations, locking)
                time.sleep(rng.uniform(0.05, 0.8))
            elif i % 4 == 1:  # surely while materialising, however loaded the machine is
                wait_until(
                    lambda b=before: (watermark(db) or b) > b,
                    proc=proc,
                    what="the daemon to materialise a chunk",
                )
                time.sleep(rng.uniform(0.0, 0.2))
            else:  # otherwise somewhere in materialising, sweeping, idling
                wait_until(
                    lambda p=proc: logged(p, "schedule loaded"),
                    proc=proc,
                    what="the daemon to start",
                )
                time.sleep(rng.uniform(0.0, 1.0))
            killed_at = datetime.now(UTC)
            assert proc.alive(), proc.stderr()[-3000:]
            assert proc.kill() == -signal.SIGKILL
            after = watermark(db)
            assert after is not None and before is not None
            if before < after < killed_at + horizon - timedelta(minutes=1):
                interrupted += 1
    finally:
        stop_ticking.set()
        thread.join(timeout=120)
        with contextlib.suppress(BrokenPipeError):  # a writer that died is reported below
            assert writer.popen.stdin is not None
            writer.popen.stdin.close()
    assert writer.wait() == 0, writer.stderr()[-3000:]
    # the kills did hit the materialiser half-way through its chunks
    assert interrupted >= 3, f"only {interrupted} kills interrupted materialising"

    final_start = datetime.now(UTC)
    final = start_daemon(env, cwd=tmp_path, name="daemon-final")
    procs.append(final)
    wait_until(
        lambda: logged(final, "daemon running") and watermark(db) >= final_start + horizon,
        proc=final,
        what="the last daemon to catch up",
    )
    assert final.terminate() == 0, final.stderr()[-3000:]
    end_mark = watermark(db)
    assert end_mark is not None

    keys = natural_keys(db)
    expected = {p.natural_key for p in expand(schedule, start_mark, end_mark)}
    assert len(keys) == len(set(keys)), "an obligation exists twice"
    assert not expected - set(keys), f"missing: {sorted(expected - set(keys))[:5]}"
    assert not set(keys) - expected, f"extra: {sorted(set(keys) - expected)[:5]}"

    answers = [json.loads(line) for line in writer.stdout().splitlines()]
    assert len(answers) == len(sent)
    assert {a["token"]: a["obligation"] for a in answers} == sent, "a tick went unanswered"
    for answer in answers:
        assert answer["changed"] and "recorded" in answer["message"], answer
    assert len(commands) >= 2, "too few `marketcare tick` commands among the ticks"
    for oid, _token, rc, out, err in commands:
        assert rc == 0 and "recorded" in out, (oid, rc, out, err)
        assert "Traceback" not in err
    acknowledged = {token: oid for oid, token, rc, out, _ in commands if rc == 0}
    acknowledged.update(sent)
    assert len(acknowledged) >= 10, "too few ticks arrived while the daemon was being killed"
    per_token = dict(query(db, "SELECT token, count(*) FROM completions GROUP BY token"))
    assert {t: per_token.get(t, 0) for t in acknowledged} == dict.fromkeys(acknowledged, 1)
    assert set(per_token) == set(acknowledged)
    rows = dict(query(db, "SELECT token, obligation_id FROM completions"))
    assert rows == acknowledged

    verify = run_cli(env, "audit", "verify", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---------------------------------------------------------------- downtime


def test_three_days_of_downtime_are_replayed_once_and_marked_missed(
    tmp_path: Path, procs: list[Proc]
) -> None:
    write(tmp_path / "schedules" / "test.yaml", make_schedule_text())
    # no web app: the replay is the scheduler's, and each daemon starts sooner without it
    env = make_env(tmp_path, horizon="1d", sweep_interval_seconds="1", web_enabled="false")
    db = database(env)
    schedule = load(env)
    t = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)  # Monday 10:00 in Quanzhou; closing 18:30

    before = start_daemon(env, cwd=tmp_path, at=t, name="before")
    procs.append(before)
    wait_until(
        lambda: logged(before, "daemon running") and watermark(db) >= t + DAY,
        proc=before,
        what="the first day to be materialised",
    )
    assert before.terminate(timeout=30) == 0, before.stderr()[-3000:]
    assert logged(before, "daemon stopped")
    assert scalar(db, "SELECT count(*) FROM obligations WHERE state = 'missed'") == 0

    start_mark = first_watermark(db)
    down_until = t + 3 * DAY
    planned = expand(schedule, start_mark, down_until + DAY)
    should_miss = {p.natural_key for p in planned if p.missed_at <= down_until}
    assert len(should_miss) == 9  # three days × (two areas + one market-wide task)

    after = start_daemon(env, cwd=tmp_path, at=down_until, name="after")
    procs.append(after)
    wait_until(
        lambda: (
            logged(after, "daemon running")
            and watermark(db) >= down_until + DAY
            and scalar(db, "SELECT count(*) FROM obligations WHERE state = 'missed'")
            == len(should_miss)
        ),
        proc=after,
        what="the downtime to be replayed and swept",
    )
    assert after.terminate(timeout=30) == 0, after.stderr()[-3000:]

    rows = query(db, "SELECT id, natural_key, state FROM obligations")
    keys = [k for _, k, _ in rows]
    assert len(keys) == len(set(keys))
    expected = {p.natural_key for p in expand(schedule, start_mark, watermark(db))}
    assert set(keys) == expected
    assert {k for _, k, s in rows if s == "missed"} == should_miss
    missed_events = query(
        db,
        "SELECT obligation_id, count(*) FROM events WHERE action = 'missed' GROUP BY obligation_id",
    )
    by_key = {oid: k for oid, k, _ in rows}
    assert {by_key[oid]: n for oid, n in missed_events} == dict.fromkeys(should_miss, 1)
    assert scalar(db, "SELECT count(*) FROM events WHERE action = 'schedule_applied'") == 1


# ---------------------------------------------------------------- hot reload


def test_schedule_edits_are_applied_and_a_broken_file_keeps_the_daemon_running(
    tmp_path: Path, procs: list[Proc]
) -> None:
    schedules = tmp_path / "schedules"
    markets_file = schedules / "markets.yaml"
    write(schedules / "tasks.yaml", f"tasks:{DISINFECTION}{WASTE}")
    write(markets_file, f"markets:{make_market_yaml('lizhong')}")
    # no web app: the reload is the scheduler's, and nothing here asks the web app
    env = make_env(
        tmp_path,
        horizon="2d",
        sweep_interval_seconds="1",
        materialise_interval_seconds="3600",
        web_enabled="false",
    )
    db = database(env)

    def count(market: str) -> int:
        return scalar(db, "SELECT count(*) FROM obligations WHERE market_id = ?", (market,)) or 0

    def opening_from_last_edit(market: str) -> int:
        # an added market starts with the first window opening after the edit is applied
        # (docs/design.md): the first market's windows already open that day are not its
        applied = parse_utc(
            scalar(
                db,
                "SELECT at FROM events WHERE action = 'schedule_applied' ORDER BY seq DESC LIMIT 1",
            )
        )
        rows = query(db, "SELECT opens_at FROM obligations WHERE market_id = ?", (market,))
        return sum(1 for (opens_at,) in rows if parse_utc(opens_at) >= applied)

    def snapshot() -> set[tuple[object, ...]]:
        return set(
            query(db, "SELECT id, natural_key, opens_at, due_at, missed_at FROM obligations")
        )

    def errors() -> list[str]:
        return [str(r["msg"]) for r in log_records(daemon) if r.get("level") == "error"]

    daemon = start_daemon(env, cwd=tmp_path)
    procs.append(daemon)
    wait_until(
        lambda: logged(daemon, "daemon running") and count("lizhong"),
        proc=daemon,
        what="the daemon to start",
    )

    # an added market: its obligations appear
    two_markets = f"markets:{make_market_yaml('lizhong')}{make_market_yaml('haibin')}"
    edited_at = datetime.now(UTC)
    write(markets_file, two_markets)
    wait_until(  # its obligations, and the chunk that extends the horizon, committed
        lambda: count("haibin") and watermark(db) >= edited_at + 2 * DAY,
        proc=daemon,
        what="haibin's obligations",
    )
    assert count("haibin") == opening_from_last_edit("lizhong") == opening_from_last_edit("haibin")
    good = snapshot()

    # a broken file: an error with file:line:column, and nothing changes
    broken_cases = [
        # bad indentation: 'name' is indented deeper than 'id'
        two_markets.replace("    name: haibin", "      name: haibin"),
        # an unknown key in haibin (the second market)
        "    aeras:".join(two_markets.rsplit("    areas:", 1)),
    ]
    for broken in broken_cases:
        assert broken != two_markets
        seen = len(errors())
        write(markets_file, broken)
        messages = wait_until(
            lambda n=seen: errors()[n:], proc=daemon, what="the error to be logged"
        )
        located = [
            line
            for m in messages
            for line in m.splitlines()
            if line.startswith(f"{markets_file}:") and line.split(":")[1].isdigit()
        ]
        assert located, messages
        file_line_col = located[0].removeprefix(f"{markets_file}:").split(":")
        line, col = int(file_line_col[0]), int(file_line_col[1])
        bad_line = broken.splitlines()[line - 1]
        assert 1 <= col <= len(bad_line) + 1
        if "aeras" in broken:
            assert "unknown key 'aeras'" in located[0]
            assert bad_line[col - 1 :].startswith("aeras")
        assert daemon.alive()
        status = run_cli(env, "status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert isinstance(json.loads(status.stdout), list)
        assert snapshot() == good

    # the fix: applied like any edit
    fixed_at = datetime.now(UTC)
    write(markets_file, two_markets + make_market_yaml("linjiang"))
    wait_until(
        lambda: count("linjiang") and watermark(db) >= fixed_at + 2 * DAY,
        proc=daemon,
        what="the fix to be applied",
    )
    assert count("linjiang") == opening_from_last_edit("lizhong")
    assert daemon.terminate(timeout=30) == 0


def heavy_markets(prefix: str) -> str:
    """About 1 MB of valid markets: many such files take seconds to check."""
    parts = ["markets:\n"]
    size, i = 0, 0
    while size < 950_000:
        areas = "".join(f"      - {{ id: a{j}, kind: vegetables, m2: 100 }}\n" for j in range(12))
        item = (
            f"  - id: {prefix}-{i}\n    name: 市场{i}\n    sub_district: 鲤中\n"
            f'    hours: {{ daily: "06:00-18:00" }}\n    areas:\n{areas}'
        )
        parts.append(item)
        size += len(item.encode())
        i += 1
    return "".join(parts)


def test_an_edit_that_would_hang_or_take_too_long_never_stops_the_daemon(
    tmp_path: Path, procs: list[Proc], http: httpx.Client
) -> None:
    schedules = tmp_path / "schedules"
    tasks_file = schedules / "tasks.yaml"
    write(tasks_file, f"tasks:{ALL_DAY_TASKS}")
    write(schedules / "markets.yaml", f"markets:{make_market_yaml('lizhong')}")
    env = make_env(
        tmp_path,
        horizon="1d",
        sweep_interval_seconds="1",
        materialise_interval_seconds="3600",
        reload_timeout_seconds="3",
    )
    db = database(env)
    daemon = start_daemon(env, cwd=tmp_path)
    procs.append(daemon)
    url = wait_until(
        lambda: next(
            (str(r["url"]) for r in log_records(daemon) if r.get("msg") == "web app listening"),
            None,
        ),
        proc=daemon,
        what="the web app",
    )

    def readyz() -> dict[str, Any]:
        answer = http.get(f"{url}readyz")
        body: dict[str, Any] = answer.json()
        body["code"] = answer.status_code
        return body

    wait_until(lambda: readyz()["code"] == 200, proc=daemon, what="the daemon to be ready")
    good = set(query(db, "SELECT natural_key, opens_at, due_at FROM obligations"))

    # the rule that used to loop for ever: refused at once, with its place in the file
    write(
        tasks_file,
        f"tasks:{ALL_DAY_TASKS}".replace(
            "recurrence: daily", 'recurrence: "FREQ=DAILY;INTERVAL=0"', 1
        ),
    )
    broken = wait_until(
        lambda: (
            (b := readyz())["code"] == 503
            and "tasks.yaml" in b["checks"].get("schedule_files", "")
            and b
        ),
        proc=daemon,
        what="/readyz to name the broken file",
        # the check runs in a child at a low priority: on a busy machine it may take up to
        # the product's own bound to start, and the verdict comes after
        timeout=START_BOUND_SECONDS + LIVENESS,
    )
    assert "INTERVAL=0" in broken["checks"]["schedule_files"]
    assert "keeping the last good schedule" in broken["checks"]["schedule_files"]
    assert broken["checks"]["steps"]["sweep"] == "ok"
    errors = [str(r["msg"]) for r in log_records(daemon) if r.get("level") == "error"]
    assert any(
        f"{tasks_file}:" in m and "INTERVAL=0: the interval is how many days" in m for m in errors
    )

    # an edit too big to check within reload_timeout_seconds: the child is stopped, the
    # changed files are named, and the steps go on meanwhile
    for k in range(8):
        write(schedules / f"zz-{k}.yaml", heavy_markets(f"z{k}"))
    slow = wait_until(
        lambda: (
            (b := readyz())["code"] == 503
            and "took longer than 3 s" in b["checks"].get("schedule_files", "")
            and b
        ),
        proc=daemon,
        what="the slow check to be given up",
        timeout=300,  # 3 s of the child's processor time, at a low priority on a busy machine
    )
    assert "zz-0.yaml" in slow["checks"]["schedule_files"]
    assert slow["checks"]["steps"]["sweep"] == "ok"
    assert slow["checks"]["writes"] == "ok"
    assert daemon.alive()
    status = run_cli(env, "status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert set(query(db, "SELECT natural_key, opens_at, due_at FROM obligations")) == good

    # a stop while such a check runs: the daemon ends at once, with the child
    checks = sum(1 for r in log_records(daemon) if r.get("msg") == "checking the schedule files")
    write(schedules / "zz-0.yaml", heavy_markets("again"))
    wait_until(
        lambda: (
            sum(1 for r in log_records(daemon) if r.get("msg") == "checking the schedule files")
            > checks
        ),
        proc=daemon,
        what="the check to start",
    )
    assert daemon.terminate(timeout=30) == 0
    assert logged(daemon, "daemon stopped")


# ---------------------------------------------------------------- concurrent ticks


def test_two_ticks_on_one_obligation_at_the_same_moment_record_it_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    areas = "[" + ", ".join(f"{{id: a{i}, kind: vegetables, m2: 100}}" for i in range(4)) + "]"
    tasks = ALL_DAY_TASKS.split("  - id: waste")[0]
    write(
        tmp_path / "schedules" / "test.yaml",
        make_schedule_text(make_market_yaml(areas=areas), tasks),
    )
    env = make_env(tmp_path)
    db = database(env)
    engine = make_engine(env["MARKETCARE_DATABASE_URL"])
    try:
        migrate(engine)
        now = datetime.now(UTC)
        ledger_materialise.materialise(engine, load(env), now=now, horizon=DAY, start=now - DAY)
    finally:
        engine.dispose()
    ids = [r[0] for r in query(db, sa.select(Obligation.id).where(Obligation.opens_at <= now))]
    assert len(ids) == 4

    for oid in ids:
        both = [
            start(
                env,
                "tick",
                str(oid),
                "--by",
                who,
                "--token",
                f"{who}-{oid}",
                cwd=tmp_path,
                name=f"tick-{oid}-{n}",
            )
            for n, who in enumerate(("chen", "lin"))
        ]
        procs.extend(both)
        codes = [p.wait() for p in both]
        outs = sorted(p.stdout() for p in both)
        assert codes == [0, 0], [p.stderr() for p in both]
        assert sum("recorded" in o for o in outs) == 1, outs
        assert sum("already " in o for o in outs) == 1, outs  # "done", or "late" after 23:00
        assert scalar(db, "SELECT count(*) FROM completions WHERE obligation_id = ?", (oid,)) == 1


# ---------------------------------------------------------------- one daemon per file


@pytest.mark.sqlite_only(
    "the lock is SQLite's own: one daemon per SQLite file; on PostgreSQL several daemons "
    "share one database and elect a scheduler leader (issue 6, several daemons)"
)
def test_a_second_daemon_on_the_same_database_refuses_to_start(
    tmp_path: Path, procs: list[Proc]
) -> None:
    write(tmp_path / "schedules" / "test.yaml", make_schedule_text())
    # the lock is the scheduler's: neither daemon needs the web app to prove it
    env = make_env(tmp_path, web_enabled="false")
    first = start_daemon(env, cwd=tmp_path)
    procs.append(first)
    wait_until(lambda: logged(first, "daemon running"), proc=first, what="the daemon to start")

    second = cli(env, "run", cwd=tmp_path)
    assert second.returncode == 1
    assert "another marketcare daemon is running" in second.stderr
    assert "Traceback" not in second.stderr + second.stdout
    assert first.alive()
    assert first.terminate(timeout=30) == 0
    assert not [r for r in log_records(first) if r.get("level") == "error"]
