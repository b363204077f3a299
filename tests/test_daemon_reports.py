"""Scheduled reports from a real ``marketcare run`` process: due while down, mailed once.

The daemon runs under a moved clock (tests/support/clockrun.py) and mails a real SMTP
server in this process (aiosmtpd). Timeouts are liveness bounds, never performance checks.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import make_market_yaml, make_schedule_text
from .support.procs import Proc, database, make_env, query, scalar, start_daemon, wait_until
from .support.smtp import SmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.heavy(10)]

DAY = timedelta(days=1)
OFFICE = ["jianguan@licheng.example.org", "chengguan@licheng.example.org"]
SENDER = "marketcare@licheng.example.org"
#: Monday 20:00 in Quanzhou, before that day's 22:30 report
T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

SCHEDULE = (
    make_schedule_text(make_market_yaml())
    + f"""
reports:
  - id: daily
    period: day
    at: "22:30"
    recipients: [{", ".join(OFFICE)}]
"""
)


def logged(proc: Proc, msg: str) -> bool:
    for line in proc.stderr().splitlines():
        try:
            if json.loads(line).get("msg") == msg:
                return True
        except ValueError:
            continue
    return False


def test_reports_due_while_down_are_queued_while_smtp_is_down_and_mailed_once(
    tmp_path: Path, procs: list[Proc], smtp_down: SmtpServer
) -> None:
    smtp = smtp_down  # not listening yet: the mail server "comes back" later in the test
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "test.yaml").write_text(SCHEDULE, encoding="utf-8")
    exports = tmp_path / "exports"
    env = make_env(
        tmp_path,
        exports_dir=str(exports),
        horizon="1d",
        smtp_host="127.0.0.1",
        smtp_port=str(smtp.port),
        smtp_security="none",
        smtp_sender=SENDER,
        smtp_timeout_seconds="10",
        report_interval_seconds="0.25",
        outbox_interval_seconds="0.25",
        web_enabled="false",  # reports and mail are the scheduler's; four starts sooner
    )
    db = database(env)

    def daemon(at: datetime, name: str) -> Proc:
        proc = start_daemon(env, cwd=tmp_path, at=at, name=name)
        procs.append(proc)
        return proc

    def outbox() -> list[tuple[str, str, int]]:
        return query(db, "SELECT recipient, state, attempts FROM outbox ORDER BY id")

    # first sight of the report: its watermark is set at T, nothing is produced
    first = daemon(T, "first")
    wait_until(
        lambda: (
            logged(first, "daemon running")
            and query(db, "SELECT checked_until FROM report_watermarks WHERE spec_id = 'daily'")
        ),
        proc=first,
        what="the report watermark",
    )
    assert first.terminate() == 0, first.stderr()[-3000:]
    assert query(db, "SELECT count(*) FROM report_runs") == [(0,)]

    # two days later, the mail server down: Monday's and Tuesday's reports are produced
    # and their four emails wait in the outbox after a failed attempt each
    down = daemon(T + 2 * DAY, "smtp-down")
    wait_until(
        lambda: (
            len(rows := outbox()) == 4
            and all(state == "pending" and attempts >= 1 for _, state, attempts in rows)
            and len(list(exports.glob("*/*.xlsx"))) == 2
        ),
        proc=down,
        what="four emails to fail once and wait",
    )
    assert down.terminate() == 0, down.stderr()[-3000:]
    assert sorted(r for r, _, _ in outbox()) == sorted(OFFICE * 2)
    assert query(db, "SELECT period_key, state FROM report_runs ORDER BY period_key") == [
        ("2026-11-23", "done"),
        ("2026-11-24", "done"),
    ]
    errors = [r[0] for r in query(db, "SELECT last_error FROM outbox")]
    assert all(e and "cannot reach 127.0.0.1" in e for e in errors), errors

    # the mail server is back; ten minutes later the retries are due
    smtp.start()
    back = daemon(T + 2 * DAY + timedelta(minutes=10), "smtp-back")
    wait_until(
        lambda: len(smtp.received) >= 4 and [s for _, s, _ in outbox()] == ["sent"] * 4,
        proc=back,
        what="the four emails to be sent",
    )
    assert back.terminate() == 0, back.stderr()[-3000:]
    assert len(smtp.received) == 4
    subjects: dict[str, list[str]] = defaultdict(list)
    for got in smtp.received:
        assert got.mail_from == SENDER
        assert len(got.rcpt_tos) == 1
        subjects[got.rcpt_tos[0]].append(str(got.message["Subject"]))
    assert sorted(subjects) == sorted(OFFICE)
    for rcpt in OFFICE:
        assert len(set(subjects[rcpt])) == 2, subjects
    assert set(subjects[OFFICE[0]]) == set(subjects[OFFICE[1]])
    assert len({got.message["Message-ID"] for got in smtp.received}) == 4

    # one more start: nothing is produced or sent again
    again = daemon(T + 2 * DAY + timedelta(minutes=20), "again")
    wait_until(lambda: logged(again, "daemon running"), proc=again, what="the daemon to start")
    # each report round moves the report's watermark to its now (the outbox runs on the
    # same interval): wait for two rounds after the first, sending nothing
    rounds: set[object] = set()

    def two_more_rounds() -> bool:
        assert len(smtp.received) == 4
        rounds.add(scalar(db, "SELECT checked_until FROM report_watermarks"))
        return len(rounds) >= 3

    wait_until(two_more_rounds, proc=again, what="two more report rounds")
    assert again.terminate() == 0, again.stderr()[-3000:]
    assert len(smtp.received) == 4
    assert [s for _, s, _ in outbox()] == ["sent"] * 4
    assert query(db, "SELECT count(*) FROM report_runs") == [(2,)]
    assert len(list(exports.glob("*/*.xlsx"))) == 2
    assert not [p for p in exports.glob("*/*") if p.name.endswith(".part")]
