"""Reminders and escalation, delivered by email and webhook against real local servers."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from marketcare.domain.schedules import (
    EscalationPolicy,
    EscalationStep,
    Person,
    ProblemStep,
    Schedule,
    load_texts,
)
from marketcare.errors import ScheduleError
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.models import Notification, NotifyMessage, Obligation
from marketcare.reports import notify
from marketcare.reports.mail import SmtpConfig

from .conftest import DISINFECTION, WASTE, make_market_yaml, make_schedule_text, utc
from .support.smtp import SmtpServer, free_port

NOW = utc(2026, 11, 27, 2, 0)  # Friday 10:00 in Shanghai
OPENS = utc(2026, 11, 27, 10, 30)  # closing, 18:30 local
DUE = utc(2026, 11, 27, 12, 30)  # +2h
SHANGHAI = ZoneInfo("Asia/Shanghai")
ONE_AREA = "[{id: aquatic, kind: aquatic, m2: 600}]"
SENDER = "marketcare@licheng.example.org"
DOCS = Path(__file__).resolve().parent.parent / "docs"


# ---------------------------------------------------------------- real servers


class Hook:
    """A real HTTP server on 127.0.0.1 that answers ``status`` and records what it accepted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.accepted: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_header_key"] = self.headers["Idempotency-Key"]
                hook.attempts.append(body)
                if 200 <= hook.status < 300:
                    hook.accepted.append(body)
                self.send_response(hook.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errcode": 0}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # ``stop`` waits until the loop looks at its flag: every half second by default,
        # which each test using the hook waited at its end, and the ladder test mid-way too
        serve = self.server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    server.start()
    yield server
    server.stop()


def smtp_config(server: SmtpServer) -> SmtpConfig:
    return SmtpConfig("127.0.0.1", server.port, "none", None, None, SENDER, 5.0)


# ---------------------------------------------------------------- factories


def make_people_yaml(hook_url: str = "http://127.0.0.1:9/hook", quiet: str = "") -> str:
    return f"""
people:
  - {{id: lin, name: 林秀英, role: manager, markets: [lizhong], email: lin@example.org{quiet}}}
  - {{id: zhang, name: 张伟, role: supervisor, webhook: "{hook_url}", webhook_format: wecom}}
  - id: office
    name: 区市场监管
    role: office
    email: office@example.org
    webhook: "{hook_url}"
"""


LADDER = """
escalation:
  - id: hygiene
    task_kinds: [disinfection, waste_clearance]
    steps:
      - {at: opens, notify: [manager]}
      - {at: due, notify: [manager]}
      - {at: due+1h, notify: [supervisor]}
      - {at: due+3h, notify: [office]}
    problem_steps:
      - {at: deadline, notify: [lin]}
"""


def make_notify_schedule(
    people: str | None = None, escalation: str = LADDER, tasks: str = DISINFECTION
) -> Schedule:
    text = make_schedule_text(make_market_yaml(areas=ONE_AREA), tasks)
    return load_texts(
        {"test.yaml": text + (people or make_people_yaml()) + escalation},
        default_timezone="Asia/Shanghai",
    )


def start_ledger(engine: sa.Engine, schedule: Schedule) -> None:
    """Obligations for the day, and the notification watermark set at NOW."""
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=timedelta(days=1))
    notify.materialise(engine, schedule, now=NOW, sender=SENDER)


def run(engine: sa.Engine, schedule: Schedule, smtp: SmtpServer, at: datetime) -> notify.SendResult:
    """One daemon step at ``at``: materialise, then send what is due."""
    notify.materialise(engine, schedule, now=at, sender=SENDER)
    return notify.send_due(engine, smtp_config(smtp), now=at, timezone="Asia/Shanghai")


def messages(engine: sa.Engine) -> list[Any]:
    with read(engine) as conn:
        return list(conn.execute(sa.select(NotifyMessage).order_by(NotifyMessage.id)).all())


def obligation_id(engine: sa.Engine) -> int:
    with read(engine) as conn:
        return int(conn.execute(sa.select(Obligation.id).order_by(Obligation.id)).scalars().first())


def mail_to(smtp: SmtpServer, address: str) -> list[Any]:
    return [r.message for r in smtp.received if address in r.rcpt_tos]


# ---------------------------------------------------------------- the ladder


def test_it_reminds_escalates_and_delivers_each_step_exactly_once_despite_outages(
    engine: sa.Engine, smtp: SmtpServer, hook: Hook
) -> None:
    schedule = make_notify_schedule(make_people_yaml(hook.url))
    start_ledger(engine, schedule)

    run(engine, schedule, smtp, OPENS + timedelta(minutes=1))
    (reminder,) = mail_to(smtp, "lin@example.org")
    assert "提醒" in str(reminder["Subject"]) and "lizhong" in reminder.get_content()

    run(engine, schedule, smtp, DUE + timedelta(minutes=1))
    assert len(mail_to(smtp, "lin@example.org")) == 2

    hook.status = 500  # the supervisor's robot is down at due+1h
    first = run(engine, schedule, smtp, DUE + timedelta(hours=1, minutes=1))
    assert first.retrying == 1 and not hook.accepted
    hook.stop()  # then unreachable altogether
    again = run(engine, schedule, smtp, DUE + timedelta(hours=1, minutes=3))
    assert again.retrying == 1
    hook.status = 200
    hook.start()
    for minutes in (4, 10, 30):  # the backoff: the retry waits, then goes out once
        run(engine, schedule, smtp, DUE + timedelta(hours=1, minutes=minutes))
    (robot,) = hook.accepted
    assert robot["msgtype"] == "text" and "逾期未完成" in robot["text"]["content"]
    assert {a["_header_key"] for a in hook.attempts} == {robot["idempotency_key"]}

    run(engine, schedule, smtp, DUE + timedelta(hours=3, minutes=1))
    run(engine, schedule, smtp, DUE + timedelta(hours=6))
    assert len(mail_to(smtp, "lin@example.org")) == 2
    assert len(mail_to(smtp, "office@example.org")) == 1
    generic = [a for a in hook.accepted if "msgtype" not in a]
    assert len(generic) == 1 and generic[0]["market"] == "lizhong"
    assert generic[0]["id"] == generic[0]["_header_key"]
    ids = [r.message["Message-ID"] for r in smtp.received]
    assert len(ids) == len(set(ids)) == 3
    assert {m.state for m in messages(engine)} == {"sent"}


def test_a_reminder_names_the_area_and_the_state_in_words_not_ids(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    named = "[{id: aquatic, name: 水产区, kind: aquatic, m2: 600}]"
    text = make_schedule_text(make_market_yaml(areas=named), DISINFECTION)
    schedule = load_texts(
        {"t.yaml": text + make_people_yaml() + LADDER}, default_timezone="Asia/Shanghai"
    )
    start_ledger(engine, schedule)
    run(engine, schedule, smtp, OPENS + timedelta(minutes=1))
    (reminder,) = mail_to(smtp, "lin@example.org")
    body = reminder.get_content()
    assert "水产区 休市清洗消毒" in body and "aquatic" not in body
    assert "状态 未开始" in body and "upcoming" not in body


def test_a_completed_obligation_gets_no_further_escalation(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    schedule = make_notify_schedule()
    start_ledger(engine, schedule)
    run(engine, schedule, smtp, OPENS + timedelta(minutes=1))
    done_at = OPENS + timedelta(minutes=50)
    ob = obligation_id(engine)
    ledger_tick.tick(
        engine, obligation_id=ob, by="林秀英", now=done_at, readings={"chlorine": 1000}
    )
    run(engine, schedule, smtp, DUE + timedelta(hours=6))
    assert len(smtp.received) == 1
    with read(engine) as conn:
        steps = conn.execute(sa.select(Notification.step)).scalars().all()
    assert steps == ["hygiene:0"]


def test_quiet_hours_delay_a_message_until_they_end(engine: sa.Engine, smtp: SmtpServer) -> None:
    # 18:00-23:00 local is 10:00-15:00 UTC: the 18:30 opening reminder waits until 23:00
    schedule = make_notify_schedule(make_people_yaml(quiet=', quiet_hours: "18:00-23:00"'))
    start_ledger(engine, schedule)
    run(engine, schedule, smtp, OPENS + timedelta(minutes=1))
    run(engine, schedule, smtp, utc(2026, 11, 27, 14, 59))
    assert not smtp.received
    first, second = (m for m in messages(engine) if m.person_id == "lin")
    assert first.next_attempt_at == second.next_attempt_at == utc(2026, 11, 27, 15, 0)
    run(engine, schedule, smtp, utc(2026, 11, 27, 15, 0))
    assert len(mail_to(smtp, "lin@example.org")) == 2


def test_a_message_held_by_quiet_hours_is_cancelled_once_the_work_is_done(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    schedule = make_notify_schedule(make_people_yaml(quiet=', quiet_hours: "18:00-23:00"'))
    start_ledger(engine, schedule)
    run(engine, schedule, smtp, OPENS + timedelta(minutes=1))
    done_at = OPENS + timedelta(minutes=40)
    ob = obligation_id(engine)
    ledger_tick.tick(
        engine, obligation_id=ob, by="林秀英", now=done_at, readings={"chlorine": 1000}
    )
    result = run(engine, schedule, smtp, utc(2026, 11, 27, 15, 0))
    assert result.cancelled == 1 and not smtp.received
    assert [m.state for m in messages(engine)] == ["cancelled"]


def test_the_digest_batches_a_days_items_into_one_message_per_market(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    digest = LADDER.replace("task_kinds:", 'digest: "22:00"\n    task_kinds:')
    two_areas = "[{id: aquatic, kind: aquatic, m2: 600}, {id: veg, kind: vegetables, m2: 900}]"
    text = make_schedule_text(make_market_yaml(areas=two_areas), DISINFECTION + WASTE)
    schedule = load_texts(
        {"t.yaml": text + make_people_yaml() + digest}, default_timezone="Asia/Shanghai"
    )
    start_ledger(engine, schedule)
    for at in (OPENS + timedelta(minutes=1), DUE + timedelta(minutes=1), utc(2026, 11, 27, 13, 59)):
        run(engine, schedule, smtp, at)
    assert not smtp.received  # nothing before 22:00 local (14:00 UTC)
    veg = next(o for o in _obligations(engine) if o.area_id == "veg")  # done: left out
    ledger_tick.tick(engine, obligation_id=veg.id, by="陈建国", now=DUE, readings={"chlorine": 500})
    run(engine, schedule, smtp, utc(2026, 11, 27, 14, 0))
    (mail,) = mail_to(smtp, "lin@example.org")
    body = mail.get_content()
    assert "汇总" in str(mail["Subject"])
    assert body.count("· ") == 4  # aquatic and waste, each at opens and at due
    assert "veg" not in body
    run(engine, schedule, smtp, utc(2026, 11, 27, 14, 30))
    assert len(mail_to(smtp, "lin@example.org")) == 1


def _obligations(engine: sa.Engine) -> list[Any]:
    with read(engine) as conn:
        return list(conn.execute(sa.select(Obligation)).all())


def test_downtime_catch_up_produces_each_due_notification_once(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    schedule = make_notify_schedule()
    start_ledger(engine, schedule)
    back = DUE + timedelta(hours=5)  # the daemon was down all evening
    ledger_sweep.sweep_all(engine, now=back)
    first = notify.materialise(engine, schedule, now=back, sender=SENDER)
    again = notify.materialise(engine, schedule, now=back + timedelta(minutes=1), sender=SENDER)
    assert first.created == 4 and again.created == 0
    with read(engine) as conn:
        steps = sorted(conn.execute(sa.select(Notification.step)).scalars())
    assert steps == ["hygiene:0", "hygiene:1", "hygiene:2", "hygiene:3"]


def test_a_permanent_webhook_failure_is_kept_with_its_reason_until_resent(
    engine: sa.Engine, smtp: SmtpServer, hook: Hook
) -> None:
    schedule = make_notify_schedule(make_people_yaml(hook.url))
    start_ledger(engine, schedule)
    hook.status = 400
    result = run(engine, schedule, smtp, DUE + timedelta(hours=1, minutes=1))
    assert result.failed == 1
    (failed,) = [m for m in messages(engine) if m.channel == "webhook"]
    assert failed.state == "failed" and "HTTP 400" in (failed.last_error or "")
    run(engine, schedule, smtp, DUE + timedelta(hours=2))
    assert len(hook.attempts) == 1  # not retried
    hook.status = 200
    notify.resend(engine, failed.id, now=DUE + timedelta(hours=2))
    run(engine, schedule, smtp, DUE + timedelta(hours=2))
    assert len(hook.accepted) == 1


def test_a_problem_past_its_deadline_notifies_until_it_is_verified(
    engine: sa.Engine, smtp: SmtpServer
) -> None:
    schedule = make_notify_schedule()
    start_ledger(engine, schedule)
    problem = ledger_problems.NewProblem(
        market_id="lizhong",
        category="repair",
        description="水产区排水沟堵塞",
        found_by="张伟",
        found_at=NOW,
        deadline=NOW + timedelta(hours=3),
    )
    pid, _ = ledger_problems.add(engine, problem, now=NOW)
    other, _ = ledger_problems.add(engine, problem, now=NOW)
    ledger_problems.rectify(engine, problem_id=other, by="林秀英", note="已疏通", now=NOW)
    ledger_problems.verify(engine, problem_id=other, by="张伟", now=NOW + timedelta(hours=1))
    run(engine, schedule, smtp, NOW + timedelta(hours=3, minutes=1))
    (mail,) = smtp.received
    assert f"#{pid}" in mail.message.get_content() and f"#{other}" not in str(mail.message)


# ---------------------------------------------------------------- the rules


def test_quiet_hours_over_midnight_end_the_next_morning() -> None:
    quiet = (time(22, 0), time(7, 0))
    late = datetime(2026, 11, 27, 23, 15, tzinfo=SHANGHAI)
    early = datetime(2026, 11, 28, 6, 0, tzinfo=SHANGHAI)
    day = datetime(2026, 11, 28, 12, 0, tzinfo=SHANGHAI)
    assert notify.after_quiet_hours(late, quiet, SHANGHAI) == datetime(
        2026, 11, 28, 7, 0, tzinfo=SHANGHAI
    )
    assert notify.after_quiet_hours(early, quiet, SHANGHAI) == datetime(
        2026, 11, 28, 7, 0, tzinfo=SHANGHAI
    )
    assert notify.after_quiet_hours(day, quiet, SHANGHAI) == day


def test_a_digest_after_its_time_goes_to_the_next_day() -> None:
    at = datetime(2026, 11, 27, 21, 30, tzinfo=SHANGHAI)
    assert notify.next_digest(at, time(21, 0), SHANGHAI) == datetime(
        2026, 11, 28, 21, 0, tzinfo=SHANGHAI
    )


def test_escalation_references_are_checked_with_file_line_and_column() -> None:
    bad = LADDER.replace("[supervisor]", "[supervsor]").replace("[lin]", "[nobody]")
    people = make_people_yaml().replace("[lizhong]", "[lizong]")
    with pytest.raises(ScheduleError) as caught:
        make_notify_schedule(people, bad)
    text = "\n".join(str(e) for e in caught.value.errors)
    assert re.search(r"test\.yaml:\d+:\d+: unknown market 'lizong'; did you mean 'lizhong'", text)
    assert "unknown person or role 'supervsor'; did you mean 'supervisor'?" in text
    assert "unknown person or role 'nobody'" in text


def test_a_person_without_email_or_webhook_is_refused() -> None:
    people = "\npeople:\n  - {id: lin, name: 林秀英, role: manager}\n"
    with pytest.raises(ScheduleError, match="needs an email or a webhook"):
        make_notify_schedule(people)


def test_the_docs_describe_every_key_of_people_and_escalation() -> None:
    text = (DOCS / "schedules.md").read_text(encoding="utf-8")
    assert "## 13. People and escalation" in text
    for model in (Person, EscalationPolicy, EscalationStep, ProblemStep):
        for name, field in model.model_fields.items():
            key = field.alias or name  # the key as the YAML spells it
            assert f"`{key}" in text, f"{model.__name__}.{key} is not documented"


def test_the_notifications_command_lists_and_resends(
    engine: sa.Engine, smtp: SmtpServer, hook: Hook, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from marketcare.cli import app

    schedule = make_notify_schedule(make_people_yaml(hook.url))
    start_ledger(engine, schedule)
    hook.status = 404
    run(engine, schedule, smtp, DUE + timedelta(hours=1, minutes=1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MARKETCARE_DATABASE_URL", str(engine.url))
    root = logging.getLogger()  # the command points logging at the runner's stderr: restore it
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    runner = CliRunner()
    listed = runner.invoke(app, ["notifications", "--state", "failed", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert list(row) == [
        "id", "person", "market", "channel", "address", "subject", "state", "attempts",
        "stable_id", "next_attempt_at", "sent_at", "error",
    ]  # fmt: skip
    assert row["channel"] == "webhook" and "HTTP 404" in row["error"]
    english = {"COLUMNS": "250", "MARKETCARE_LANGUAGE": "en"}  # tables speak the setting's
    table = runner.invoke(app, ["notifications"], env=english)
    header = next(line for line in table.stdout.splitlines() if "Channel" in line)
    assert re.findall(r"[A-Z][A-Za-z /.]*[a-z.]", header) == [
        "No.", "Person", "Channel", "Subject", "State", "Attempts", "Next attempt / sent at",
        "Last error",
    ]  # fmt: skip
    cancelled = runner.invoke(app, ["notifications", "--state", "cancelled"], env=english)
    assert cancelled.stdout.strip() == "No notifications."
    again = runner.invoke(app, ["notifications", "--resend", str(row["id"])])
    assert again.exit_code == 0 and "queued again" in again.stdout
    assert [m.state for m in messages(engine) if m.id == row["id"]] == ["pending"]
