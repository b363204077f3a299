"""Reports as records and their delivery through the outbox, against a real SMTP server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.domain.periods import Period
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read, write
from marketcare.ledger.models import OutboxMessage, ReportRecord, ReportRun
from marketcare.reports import delivery
from marketcare.reports.mail import SmtpConfig

from .conftest import database_url, make_market_yaml, make_schedule, make_schedule_text, utc
from .support.smtp import SmtpServer
from .support.templates import copy_of

NOW = utc(2026, 11, 27, 2, 0)  # Friday 10:00 in Shanghai
WEEK = Period.of("week", date(2026, 11, 23))
OFFICE = ["jianguan@licheng.example.org", "chengguan@licheng.example.org"]


def config(server: SmtpServer, **kw: object) -> SmtpConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "user": None,
        "password": None,
        "sender": "marketcare@licheng.example.org",
        "timeout": 10.0,
    }
    values.update(kw)
    return SmtpConfig(**values)  # type: ignore[arg-type]


def make_history(engine: sa.Engine) -> None:
    """The week of 2026-11-23 with a done, a late and a missed obligation."""
    schedule = make_schedule()
    start = utc(2026, 11, 23, 0, 0)
    ledger_materialise.materialise(engine, schedule, now=start, horizon=timedelta(days=7))
    with read(engine) as conn:
        rows = conn.execute(sa.text("SELECT id, opens_at FROM obligations ORDER BY id")).all()
    first = ledger_tick.tick  # keep the line short below
    first(engine, obligation_id=rows[0].id, by="林秀英", now=utc(2026, 11, 23, 10, 40))
    first(
        engine,
        obligation_id=rows[1].id,
        by="陈建国",
        now=utc(2026, 11, 23, 14, 0),
        readings={"chlorine": 1000},
    )
    ledger_sweep.sweep_all(engine, now=utc(2026, 11, 30, 0, 0))


@pytest.fixture
def week(tmp_path: Path) -> Iterator[sa.Engine]:
    """A ledger of its own holding the week ``make_history`` makes: the week is built once
    per run and copied for each test (tests/support/templates.py), not built again by each."""
    engine, _ = copy_of("test_delivery: the week of 2026-11-23", make_history, tmp_path)
    yield engine
    engine.dispose()


def export_week(engine: sa.Engine, tmp_path: Path, now=NOW) -> delivery.ExportResult:  # type: ignore[no-untyped-def]
    return delivery.export(engine, period=WEEK, exports_dir=tmp_path / "exports", now=now)


def test_an_export_is_recorded_with_its_sha256_and_a_stable_name(
    week: sa.Engine, tmp_path: Path
) -> None:
    engine = week
    result = export_week(engine, tmp_path)
    assert result.path.name == "marketcare_week_2026-W48.xlsx"
    assert result.created and result.revision == 1
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == result.sha256
    assert result.headline["missed"] > 0


def test_exporting_the_same_closed_period_again_reuses_the_recorded_file(
    week: sa.Engine, tmp_path: Path
) -> None:
    engine = week
    first = export_week(engine, tmp_path)
    again = export_week(engine, tmp_path, now=NOW + timedelta(hours=3))
    assert not again.created and again.path == first.path and again.sha256 == first.sha256
    with read(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ReportRecord)).scalar_one() == 1


def test_a_late_correction_becomes_a_new_revision_and_never_overwrites(
    week: sa.Engine, tmp_path: Path
) -> None:
    engine = week
    first = export_week(engine, tmp_path)
    before = first.path.read_bytes()
    with read(engine) as conn:
        missed = conn.execute(
            sa.text("SELECT id FROM obligations WHERE state='missed' LIMIT 1")
        ).scalar_one()
    ledger_tick.tick(engine, obligation_id=missed, by="补录", now=NOW, readings={"chlorine": 1000})
    second = export_week(engine, tmp_path, now=NOW + timedelta(minutes=5))
    assert second.created and second.revision == 2
    assert second.path.name == "marketcare_week_2026-W48_r2.xlsx"
    assert first.path.read_bytes() == before


def test_a_period_with_no_data_still_produces_a_report(engine: sa.Engine, tmp_path: Path) -> None:
    result = delivery.export(
        engine, period=Period.of("day", date(2026, 1, 5)), exports_dir=tmp_path, now=NOW
    )
    assert result.path.exists() and result.headline["due"] == 0
    assert result.headline["compliance"] is None


def test_the_email_carries_the_file_byte_for_byte_with_a_chinese_name(
    week: sa.Engine, tmp_path: Path, smtp: SmtpServer
) -> None:
    engine = week
    result = export_week(engine, tmp_path)
    delivery.enqueue(
        engine, result.report_id, OFFICE, now=NOW, sender="marketcare@licheng.example.org"
    )
    sent = delivery.send_due(engine, config(smtp), now=NOW)
    assert sent.sent == 2 and len(smtp.received) == 2
    msg = smtp.received[0].message
    assert msg["Subject"] == "农贸市场环境卫生工作周报 2026-W48"
    body = msg.get_body(("plain",))
    assert body is not None and result.sha256 in body.get_content()
    (attachment,) = list(msg.iter_attachments())
    assert (
        attachment.get_content_type()
        == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert attachment.get_filename() == "农贸市场环境卫生工作周报_2026-W48.xlsx"
    assert attachment.get_content() == result.path.read_bytes()
    assert {r.rcpt_tos[0] for r in smtp.received} == set(OFFICE)


def test_every_report_arrives_exactly_once_per_recipient_after_the_server_comes_back(
    week: sa.Engine, tmp_path: Path, smtp: SmtpServer
) -> None:
    engine = week
    result = export_week(engine, tmp_path)
    delivery.enqueue(
        engine, result.report_id, OFFICE, now=NOW, sender="marketcare@licheng.example.org"
    )
    smtp.stop()
    down = delivery.send_due(engine, config(smtp), now=NOW)
    assert down.sent == 0 and down.retrying == 1  # it stops at the first failure
    assert delivery.send_due(engine, config(smtp), now=NOW + timedelta(seconds=1)).retrying == 1
    # a retry before the backoff has passed does nothing
    assert delivery.send_due(engine, config(smtp), now=NOW + timedelta(seconds=30)).retrying == 0
    smtp.start()
    later = NOW + timedelta(hours=2)
    for _ in range(3):  # the daemon keeps calling; nothing is sent twice
        delivery.send_due(engine, config(smtp), now=later)
    recipients = sorted(r.rcpt_tos[0] for r in smtp.received)
    assert recipients == sorted(OFFICE)
    ids = {r.message["Message-ID"] for r in smtp.received}
    assert len(ids) == 2


def test_a_refused_login_is_a_clear_permanent_failure_and_loses_nothing(
    week: sa.Engine, tmp_path: Path
) -> None:
    server = SmtpServer(user="office", password="right")
    server.start()
    try:
        engine = week
        result = export_week(engine, tmp_path)
        delivery.enqueue(
            engine, result.report_id, OFFICE[:1], now=NOW, sender="marketcare@licheng.example.org"
        )
        outcome = delivery.send_due(
            engine, config(server, user="office", password="wrong"), now=NOW
        )
        assert outcome.failed == 1 and server.received == []
        (row,) = delivery.outbox(engine)
        assert (
            row.state == "failed"
            and "login refused" in row.last_error
            and "smtp_password" in row.last_error
        )
        delivery.resend(engine, row.id, now=NOW)
        fixed = delivery.send_due(engine, config(server, user="office", password="right"), now=NOW)
        assert fixed.sent == 1 and len(server.received) == 1
    finally:
        server.stop()


def test_a_crash_between_sending_and_recording_resends_with_the_same_message_id(
    week: sa.Engine, tmp_path: Path, smtp: SmtpServer
) -> None:
    engine = week
    result = export_week(engine, tmp_path)
    delivery.enqueue(
        engine, result.report_id, OFFICE[:1], now=NOW, sender="marketcare@licheng.example.org"
    )
    delivery.send_due(engine, config(smtp), now=NOW)
    with write(engine) as conn:  # as if the process died before recording "sent"
        conn.execute(
            sa.update(OutboxMessage).values(state="sending", lease_until=NOW, sent_at=None)
        )
    delivery.send_due(engine, config(smtp), now=NOW + timedelta(minutes=10))
    assert len(smtp.received) == 2
    assert smtp.received[0].message["Message-ID"] == smtp.received[1].message["Message-ID"]


SCHEDULE_WITH_REPORTS = (
    make_schedule_text(make_market_yaml())
    + """
reports:
  - id: weekly
    period: week
    weekday: mon
    at: "08:00"
    recipients: [jianguan@licheng.example.org]
"""
)


def test_a_report_due_while_the_daemon_was_down_is_produced_once_on_start(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from marketcare.domain.schedules import load_texts

    schedule = load_texts({"s.yaml": SCHEDULE_WITH_REPORTS}, default_timezone="Asia/Shanghai")
    delivery.plan_runs(engine, schedule, now=utc(2026, 11, 20, 0, 0))  # first sight: watermark only
    # down from 2026-11-20 to 2026-12-02: two Mondays 08:00 passed (11-23 and 11-30)
    later = utc(2026, 12, 2, 0, 0)
    assert delivery.plan_runs(engine, schedule, now=later) == 2
    assert delivery.plan_runs(engine, schedule, now=later) == 0
    produced = delivery.run_pending(
        engine,
        schedule,
        now=later,
        exports_dir=tmp_path,
        default_language="zh_CN",
        sender="marketcare@licheng.example.org",
    )
    assert produced == 2
    with read(engine) as conn:
        keys = sorted(conn.execute(sa.select(ReportRun.period_key)).scalars())
        queued = conn.execute(sa.select(sa.func.count()).select_from(OutboxMessage)).scalar_one()
    assert keys == ["2026-W47", "2026-W48"] and queued == 2


def test_the_daemon_produces_and_emails_a_scheduled_report_once_after_downtime(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    import time_machine

    from marketcare.ledger.db import make_engine
    from marketcare.ops.daemon import Daemon
    from marketcare.settings import Settings

    (tmp_path / "schedules").mkdir()
    text = (
        make_schedule_text(make_market_yaml())
        + """
reports:
  - id: daily
    period: day
    at: "22:30"
    recipients: [jianguan@licheng.example.org]
"""
    )
    (tmp_path / "schedules" / "s.yaml").write_text(text, encoding="utf-8")
    # written an hour before the moved clock's start: read at once, as at any start on files
    # nobody is writing (at the real time, in that clock's future, they waited a second)
    written = utc(2026, 11, 23, 11, 0).timestamp()
    for path in (tmp_path / "schedules" / "s.yaml", tmp_path / "schedules"):
        os.utime(path, (written, written))
    settings = Settings(
        database_url=database_url(tmp_path, migrated=True),
        schedules_dir=tmp_path / "schedules",
        exports_dir=tmp_path / "exports",
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_security="none",
        smtp_sender="marketcare@licheng.example.org",
    )
    engine = make_engine(settings.database_url)
    daemon = Daemon(settings=settings, engine=engine)
    with time_machine.travel(utc(2026, 11, 23, 12, 0), tick=False) as clock:  # Monday 20:00 CST
        daemon.step_reload()
        daemon.step_reports()
        # down until Thursday morning: Monday's, Tuesday's and Wednesday's reports are due
        clock.move_to(utc(2026, 11, 26, 1, 0))
        daemon.step_materialise()
        assert daemon.step_reports() == 3
        for _ in range(3):
            daemon.step_outbox()
        assert daemon.step_reports() == 0
    subjects = sorted(r.message["Subject"] for r in smtp.received)
    assert subjects == [f"农贸市场环境卫生工作日报 2026-11-{d}" for d in (23, 24, 25)]
    (own,) = (tmp_path / "exports").iterdir()  # this ledger's own folder
    assert sorted(p.name for p in own.iterdir()) == [
        f"marketcare_day_2026-11-{d}.xlsx" for d in (23, 24, 25)
    ]


def test_the_outbox_command_lists_a_failed_email_with_its_reason_and_queues_it_again(
    week: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from marketcare.cli import app

    server = SmtpServer(user="office", password="right")
    server.start()
    try:
        engine = week
        result = export_week(engine, tmp_path)
        delivery.enqueue(engine, result.report_id, OFFICE[:1], now=NOW, sender="mc@example.org")
        delivery.send_due(engine, config(server, user="office", password="wrong"), now=NOW)
    finally:
        server.stop()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MARKETCARE_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    root = logging.getLogger()  # the command points logging at the runner's stderr: restore it
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    runner = CliRunner()

    listed = runner.invoke(app, ["outbox", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert list(row) == [
        "id", "report", "period", "recipient", "state", "attempts", "message_id",
        "next_attempt_at", "sent_at", "error",
    ]  # fmt: skip
    assert row["recipient"] == OFFICE[0] and row["state"] == "failed"
    assert "login refused" in row["error"]
    english = {"COLUMNS": "200", "MARKETCARE_LANGUAGE": "en"}  # tables speak the setting's
    table = runner.invoke(app, ["outbox", "--state", "failed"], env=english)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "Recipient" in line)
    assert re.findall(r"[A-Z][A-Za-z /.]*[a-z.]", header) == [
        "No.", "Period", "Recipient", "State", "Attempts", "Next attempt / sent at", "Last error",
    ]  # fmt: skip
    empty = runner.invoke(app, ["outbox", "--state", "sent"], env=english)
    assert empty.stdout.strip() == "No report email has been queued yet."
    again = runner.invoke(app, ["outbox", "--resend", str(row["id"])])
    assert again.exit_code == 0 and again.stdout.strip() == f"message {row['id']} queued again"
