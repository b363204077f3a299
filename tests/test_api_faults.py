"""The API and the pages under faults: a full disk, a folder that cannot be used, the
database server restarted under a running daemon while ticks arrive.

Every answer is the caller's fault (4xx), a success, or 503 with ``Retry-After`` (docs/web.md,
"Errors"); never a 500, never a traceback in the log. Whatever was acknowledged is in the
ledger exactly once afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from .conftest import utc
from .support.pg import ThrowawayServer
from .support.procs import (
    LIVENESS,
    Proc,
    cli,
    command,
    make_env,
    query,
    start_daemon,
    wait_until,
)
from .support.web import Site, running_site

NOTE = "冲洗后按一千毫克每升有效氯消毒三十分钟" * 100  # ~6 kB: needs pages of its own


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path) as s:
        yield s


def completions(site: Site) -> int:
    with site.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM completions")).scalar_one())


@pytest.mark.sqlite_only("SQLite's max_page_count makes its disk full without filling one")
def test_a_full_database_disk_answers_503_with_retry_after_and_records_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    ob = site.obligation("lizhong", "disinfect", "veg")
    with site.engine.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())

    def full(dbapi: sqlite3.Connection, _record: Any) -> None:
        dbapi.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(site.engine, "connect", full)
    site.engine.dispose()  # every connection from now on sees the full disk
    body = {"token": "full-1", "readings": {"chlorine": 500}, "note": NOTE[:2000]}
    with site.api("mgr_a") as api:
        refused = api.post(f"/api/v1/obligations/{ob}/completions", json=body)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert "disk is full" in refused.json()["detail"]
        event.remove(site.engine, "connect", full)
        site.engine.dispose()
        assert completions(site) == 0
        again = api.post(f"/api/v1/obligations/{ob}/completions", json=body)
        assert again.status_code == 201, again.text
    assert completions(site) == 1
    assert "Traceback" not in caplog.text


def test_an_exports_folder_that_is_a_file_answers_503_on_the_api_and_the_page(
    tmp_path: Path,
) -> None:
    (tmp_path / "exports-file").write_text("not a folder")
    with running_site(tmp_path) as site:
        site.settings.exports_dir = tmp_path / "exports-file"  # the app reads this object
        with site.api("office") as api:
            answer = api.get("/api/v1/exports/day/2026-11-23")
            assert answer.status_code == 503
            assert "is a file, not a folder" in answer.json()["detail"]
            assert int(answer.headers["Retry-After"]) > 0
        page = site.client("office")
        try:
            shown = page.get("/exports/download", params={"period": "day", "date": "2026-11-23"})
        finally:
            page.close()
        assert shown.status_code == 503 and "is a file, not a folder" in shown.text
        assert int(shown.headers["Retry-After"]) > 0


def test_a_database_that_cannot_be_reached_answers_503_not_500(site: Site) -> None:
    ob = site.obligation("lizhong", "disinfect", "veg")

    def unreachable(*_args: Any) -> None:
        if site.engine.dialect.name == "postgresql":
            import psycopg

            raise psycopg.OperationalError("connection failed: Connection refused")
        raise sqlite3.OperationalError("unable to open database file")

    with site.api("mgr_a") as api:
        api.get("/api/v1/me")  # the token is known; what follows needs the database
        event.listen(site.engine, "do_connect", unreachable)
        site.engine.dispose()
        try:
            board = api.get("/api/v1/markets/lizhong/today")
            tick = api.post(
                f"/api/v1/obligations/{ob}/completions",
                json={"token": "x", "readings": {"chlorine": 500}},
            )
        finally:
            event.remove(site.engine, "do_connect", unreachable)
    for answer in (board, tick):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] and answer.json()["detail"]


# ---------------------------------------------------------------- a restart under load

EVENING = utc(2026, 11, 27, 11, 0)  # 19:00 in Quanzhou: the evening's disinfection is open
AREAS = 40


def _schedule() -> str:
    areas = ", ".join(f"{{id: a{i}, kind: vegetables, m2: 50}}" for i in range(AREAS))
    markets = "".join(
        f"""
  - id: m{m}
    name: 市场{m}
    sub_district: 鲤中
    hours: {{mon-sun: "05:30-18:30"}}
    areas: [{areas}]
"""
        for m in range(5)
    )
    return f"""markets:{markets}
tasks:
  - id: disinfect
    kind: disinfection
    name: 休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: +2h
    grace: 1h
    checklist: [{{id: chlorine, reading: 有效氯, unit: mg/L, range: [400, 700]}}]
"""


@pytest.fixture
def server() -> Iterator[ThrowawayServer]:
    """A PostgreSQL server of this test's own: restarting the suite's would hurt others."""
    srv = ThrowawayServer.start()
    try:
        yield srv
    finally:
        srv.stop()


def _listening(daemon: Proc) -> str | None:
    for line in daemon.stderr().splitlines():
        if '"web app listening"' in line:
            return str(json.loads(line)["url"])
    return None


@pytest.mark.slow
@pytest.mark.postgresql_only("it restarts a PostgreSQL server under the daemon")
def test_ticks_across_a_database_restart_are_answered_201_or_503_and_recorded_once(
    tmp_path: Path, server: ThrowawayServer
) -> None:
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE marketcare")
    admin.dispose()
    # the socket URL operations.md recommends: its quoted path once crashed init and run
    url = (
        f"postgresql+psycopg://postgres@/marketcare?host={server.socket_folder}&port={server.port}"
    )
    env = make_env(tmp_path, database_url=url, log_format="json")
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(_schedule(), encoding="utf-8")
    init = cli(env, "init", cwd=tmp_path, at=EVENING)
    assert init.returncode == 0, init.stderr
    markets = [f"--market=m{m}" for m in range(5)]
    add = ["users", "add", "wang", "--role", "manager", *markets, "--password-stdin"]
    subprocess.run(
        command(add, at=EVENING),
        env=env,
        cwd=tmp_path,
        input="a long password\n",
        text=True,
        check=True,
        capture_output=True,
    )
    token = cli(env, "users", "token", "wang", "--name", "phone", cwd=tmp_path, at=EVENING)
    assert token.returncode == 0, token.stderr
    bearer = token.stdout.strip()
    ids = [int(r[0]) for r in query(url, "SELECT id FROM obligations WHERE state = 'open'")]
    assert len(ids) == 5 * AREAS

    daemon = start_daemon(env, cwd=tmp_path, at=EVENING)
    answers: list[tuple[int, int, str | None]] = []
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    pending = list(ids)

    def worker() -> None:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {bearer}"}, timeout=LIVENESS
        ) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    oid = pending.pop(0)
                sent = client.post(
                    f"/api/v1/obligations/{oid}/completions",
                    json={"token": f"t{oid}", "readings": {"chlorine": 500}},
                )
                with lock:
                    answers.append((oid, sent.status_code, sent.headers.get("Retry-After")))
                    if sent.status_code in (200, 201):
                        acknowledged[oid] = f"t{oid}"
                    else:
                        pending.append(oid)  # a 503 recorded nothing: send it again later
                if sent.status_code == 503:
                    time.sleep(min(float(sent.headers.get("Retry-After", "1")), 2.0))
                else:
                    time.sleep(0.05)

    try:
        base = wait_until(lambda: _listening(daemon), what="the web app", proc=daemon)
        workers = [threading.Thread(target=worker) for _ in range(4)]
        for w in workers:
            w.start()
        wait_until(lambda: len(acknowledged) >= 20, what="the first ticks", proc=daemon)
        server.restart(down_for=7.0)  # longer than a tick waits for its connection
        for w in workers:
            w.join(timeout=LIVENESS * 3)
        assert not any(w.is_alive() for w in workers)
        assert daemon.alive(), daemon.stderr()[-3000:]
    finally:
        code = daemon.terminate()
    statuses = {status for _, status, _ in answers}
    assert statuses <= {200, 201, 503}, statuses
    assert 503 in statuses, "the restart was not seen by any tick"
    assert all(retry for _, status, retry in answers if status == 503)
    assert set(acknowledged) == set(ids)
    rows = query(url, "SELECT obligation_id, token FROM completions")
    assert sorted(rows) == sorted((oid, tok) for oid, tok in acknowledged.items())
    assert code == 0, daemon.stderr()[-3000:]
    tracebacks = [
        f"{event.get('logger')}: {event.get('msg')}: {event['exc'].splitlines()[-1]}"
        for event in (json.loads(line) for line in daemon.stderr().splitlines() if line[:1] == "{")
        if "exc" in event
    ]
    assert not tracebacks, tracebacks
