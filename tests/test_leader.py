"""Several daemons on one PostgreSQL: exactly one runs the scheduler, a SIGKILLed leader is
replaced within seconds, and nothing is produced twice or lost.

Three real ``marketcare run`` processes share one database and one moved clock: every
process maps real time to the same fake time (``T0 + (now - R0)``), so they agree on
what is due. Over about two and a half minutes of that clock, obligations open, fall due and are
missed, the escalation ladder emails the office about each miss, and two daily report
specs come due and are mailed, while the test kills the current leader with SIGKILL
every ten seconds and starts a replacement. At the end every obligation, notification
and report exists exactly once and every email arrived exactly once.

On SQLite one scheduler per file is the rule (tests/test_daemon_processes.py proves the
second is refused); this test needs PostgreSQL and is collected only there.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from marketcare.domain.obligations import expand
from marketcare.domain.schedules import load_texts

from .support.procs import (
    LIVENESS,
    Proc,
    cli,
    database,
    make_env,
    query,
    start_daemon,
    wait_until,
)
from .support.smtp import SmtpServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgresql_only("several daemons share one database only on PostgreSQL"),
]

OFFICE = "jianguan@licheng.example.org"
SENDER = "marketcare@licheng.example.org"
#: 22:29:40 in Quanzhou: the first task opens 20 s after the daemons start
T0 = datetime(2026, 11, 23, 14, 29, 40, tzinfo=UTC)
MINUTES = (30, 31)


def schedule_text() -> str:
    tasks = "".join(
        f"""
  - id: round-{m}
    kind: facility_inspection
    name: 夜间巡查 {m}
    scope: market
    recurrence: daily
    opens: "22:{m}"
    due: +1m
    grace: 0
    checklist: [{{id: checked, tick: 已巡查}}]"""
        for m in MINUTES
    )
    reports = "".join(
        f"""
  - id: daily-{m}
    period: day
    at: "22:{m}"
    recipients: [{OFFICE}]"""
        for m in MINUTES
    )
    return f"""
markets:
  - id: lizhong
    name: 鲤中农贸市场
    sub_district: 鲤中
    timezone: Asia/Shanghai
    hours: {{mon-sun: "05:30-18:30"}}
    areas: [{{id: aisles, kind: aisles, m2: 300}}]
tasks:{tasks}
reports:{reports}
people:
  - id: office
    name: 区监管科
    role: office
    email: {OFFICE}
escalation:
  - id: missed
    steps:
      - {{at: due, notify: [office]}}
"""


def leader_pid(db: str) -> int | None:
    rows = query(db, "SELECT holder, heartbeat_at FROM scheduler_leader WHERE id = 1")
    if not rows:
        return None
    return int(str(rows[0][0]).rsplit(":", 1)[1])


def test_three_daemons_one_scheduler_leader_killed_repeatedly_nothing_twice_nothing_lost(
    tmp_path: Path, procs: list[Proc], smtp: SmtpServer
) -> None:
    (tmp_path / "schedules").mkdir()
    text = schedule_text()
    (tmp_path / "schedules" / "city.yaml").write_text(text, encoding="utf-8")
    env = make_env(
        tmp_path,
        exports_dir=str(tmp_path / "exports"),
        horizon="1d",
        smtp_host="127.0.0.1",
        smtp_port=str(smtp.port),
        smtp_security="none",
        smtp_sender=SENDER,
        sweep_interval_seconds="1",
        materialise_interval_seconds="5",
        report_interval_seconds="1",
        outbox_interval_seconds="1",
        notify_interval_seconds="1",
        timezone="Asia/Shanghai",
    )
    db = database(env)
    real0 = time.time()

    def fake_now() -> datetime:
        return T0 + timedelta(seconds=time.time() - real0)

    def daemon(name: str) -> Proc:
        proc = start_daemon(env, cwd=tmp_path, at=fake_now(), name=name)
        procs.append(proc)
        return proc

    for i in range(3):
        daemon(f"d{i}")
    first = wait_until(lambda: leader_pid(db), what="a leader", timeout=LIVENESS)
    assert first in {p.pid for p in procs}

    kills = 0
    takeovers: list[float] = []
    end_of_action = T0 + timedelta(minutes=2, seconds=30)
    while fake_now() < end_of_action:
        time.sleep(10)
        pid = leader_pid(db)
        victim = next((p for p in procs if p.pid == pid and p.alive()), None)
        if victim is None:
            continue
        victim.kill()
        kills += 1
        killed_at = time.monotonic()
        wait_until(
            lambda pid=pid: (new := leader_pid(db)) is not None and new != pid,
            what="another daemon to take the lead",
        )
        takeovers.append(time.monotonic() - killed_at)
        daemon(f"replacement-{kills}")

    # let the last leader finish: every miss notified, every report mailed
    expected_reports = len(MINUTES)
    expected_notifications = len(MINUTES)
    wait_until(
        lambda: (
            len(smtp.received) >= expected_reports + expected_notifications
            and query(db, "SELECT count(*) FROM outbox WHERE state <> 'sent'") == [(0,)]
            and query(db, "SELECT count(*) FROM notify_outbox WHERE state <> 'sent'") == [(0,)]
        ),
        what="every email to be sent",
    )
    time.sleep(3)  # a few more rounds: nothing more may come
    for p in procs:
        if p.alive():
            assert p.terminate() == 0, p.stderr()[-3000:]

    assert kills >= 5, f"only {kills} leader kills happened"
    assert max(takeovers) < LIVENESS
    # obligations: exactly the ones the schedule plans, each once
    schedule = load_texts({"city.yaml": text}, default_timezone="Asia/Shanghai")
    rows = query(db, "SELECT natural_key, state FROM obligations WHERE local_date = '2026-11-23'")
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys))
    day_start = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
    planned = {
        p.natural_key
        for p in expand(schedule, day_start, day_start + timedelta(days=1))
        if p.local_date.isoformat() == "2026-11-23"
    }
    assert set(keys) == planned
    assert {s for _, s in rows} == {"missed"}
    # notifications: one per missed obligation, one email each
    notes = query(db, "SELECT subject_id, step, person_id FROM notifications")
    assert len(notes) == len(set(notes)) == len(MINUTES)
    # reports: one run per spec and day, one email each
    runs = query(db, "SELECT spec_id, period_key, state FROM report_runs ORDER BY spec_id")
    assert runs == [(f"daily-{m}", "2026-11-23", "done") for m in MINUTES]
    ids = Counter(str(m.message["Message-ID"]) for m in smtp.received)
    assert all(n == 1 for n in ids.values()), ids
    assert len(ids) == expected_reports + expected_notifications
    # the audit chain: every event of every leader linked once, in one order, intact
    verify = cli(env, "audit", "verify", "--no-files", cwd=tmp_path, at=fake_now())
    assert verify.returncode == 0, verify.stderr
    assert "chain intact" in verify.stdout and "pending" not in verify.stdout
    print(json.dumps({"kills": kills, "takeover_seconds": [round(t, 2) for t in takeovers]}))
