"""Reports and messages: export, the email outbox, notifications.

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes and
writes times as ``clock.iso`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from marketcare.cli.common import (
    PeriodChoice,
    app,
    check_choices,
    connect,
    err,
    fmt_local,
    handled,
    local_today,
    out,
    parse_date,
    styled,
    utcnow,
    words,
)
from marketcare.clock import iso
from marketcare.domain.inputs import ID_MAX
from marketcare.errors import BadInput

# ------------------------------------------------------------------------------ export


@app.command()
@handled
def export(
    period: Annotated[PeriodChoice, typer.Option(help="The period the report covers.")],
    date_: Annotated[
        str | None, typer.Option("--date", help="A day in the period (YYYY-MM-DD; default today).")
    ] = None,
    market: Annotated[
        list[str] | None, typer.Option(help="Only this market (repeatable; default all).")
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also copy the report here: a .xlsx file, or a folder (the recorded file "
            "stays in the exports directory).",
        ),
    ] = None,
    email: Annotated[
        bool,
        typer.Option(
            "--email",
            help="Also email it (to --to, or the recipients of the configured reports of this period).",
        ),
    ] = False,
    to: Annotated[
        list[str] | None, typer.Option("--to", help="A recipient for --email (repeatable).")
    ] = None,
    language: Annotated[str | None, typer.Option(help="zh_CN (default setting) or en.")] = None,
) -> None:
    """Write the Excel compliance report of a period and print its path."""
    from marketcare.domain.inputs import check_email
    from marketcare.domain.periods import Period
    from marketcare.domain.schedules import load_paths
    from marketcare.i18n import LANGUAGES
    from marketcare.ledger.readmodel import markets
    from marketcare.reports import delivery

    s, engine = connect()
    lang = language or s.language
    check_choices([lang], LANGUAGES, "--language")
    day = parse_date(date_, "--date") or local_today(s)
    check_choices(market, [m.id for m in markets(engine)], "--market")
    p = Period.of(period.value, day)
    now = utcnow()
    if to and not email:
        raise BadInput("--to: give --email as well to send the report", "to")
    recipients: list[str] = []
    if email:
        recipients = [check_email(a, "--to") for a in to or []]
        if not recipients:
            schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
            for spec in schedule.reports:
                if spec.period == p.kind:
                    recipients.extend(spec.recipients)
        if not recipients:
            raise BadInput(
                f"--email: no recipients; give --to ADDRESS or configure a {p.kind} report in the schedules",
                "to",
            )
    with Progress(
        TextColumn(f"writing {p.kind} {p.key}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("export", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = delivery.export(
            engine,
            period=p,
            exports_dir=s.exports_dir,
            now=now,
            markets=market,
            language=lang,
            out=out_path,
            progress=progress,
        )
    note = "" if result.created else " (unchanged; the recorded file)"
    err.print(f"revision {result.revision}, sha256 {result.sha256}{note}")
    out.print(str(result.path))
    if email:
        delivery.enqueue(engine, result.report_id, recipients, now=now, sender=s.smtp_sender)
        sent = delivery.send_due(engine, delivery.smtp_config(s), now=now, language=lang)
        err.print(
            f"email: {sent.sent} sent, {sent.retrying} to retry, {sent.failed} failed "
            "(see marketcare outbox; the daemon keeps retrying)"
        )
        if sent.failed:
            raise typer.Exit(1)


@app.command(name="outbox")
@handled
def outbox_cmd(
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only messages in this state: pending, sending, sent, failed."),
    ] = None,
    resend: Annotated[
        int | None, typer.Option(min=1, max=ID_MAX, help="Queue message ID again.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show emails waiting, sent and failed (with the reason); re-queue one with --resend."""
    from marketcare.ledger.outbox import STATES
    from marketcare.reports import delivery

    check_choices(state, STATES, "--state")
    s, engine = connect()
    if resend is not None:
        delivery.resend(engine, resend, now=utcnow())
        out.print(f"message {resend} queued again")
        return
    rows = delivery.outbox(engine, states=state)
    zone = ZoneInfo(s.timezone)
    if as_json:
        data = [
            {
                "id": r.id,
                "report": r.path,
                "period": r.period_key,
                "recipient": r.recipient,
                "state": r.state,
                "attempts": r.attempts,
                "message_id": r.message_id,
                "next_attempt_at": iso(r.next_attempt_at, zone),
                "sent_at": iso(r.sent_at, zone),
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    t = words(s)
    if not rows:
        out.print(t.tr("No report email has been queued yet."))
        return
    table = Table(title=t.tr("Report emails (outbox)"), title_justify="left")
    for header in (
        t.tr("No."),
        t.tr("Period"),
        t.tr("Recipient"),
        t.tr("State"),
        t.tr("Attempts"),
        t.tr("Next attempt / sent at"),
        t.tr("Last error"),
    ):
        table.add_column(header)
    styles = {"sent": "green", "failed": "bold red", "pending": "yellow", "sending": "cyan"}
    for r in rows:
        when = r.sent_at if r.state == "sent" else r.next_attempt_at
        table.add_row(
            str(r.id),
            r.period_key,
            r.recipient,
            styled(r.state, styles.get(r.state, "")),
            str(r.attempts),
            fmt_local(when, s.timezone),
            r.last_error or "",
        )
    out.print(table)


@app.command(name="notifications")
@handled
def notifications_cmd(
    state: Annotated[
        list[str] | None,
        typer.Option(
            help="Only messages in this state: pending, sending, sent, failed, cancelled."
        ),
    ] = None,
    resend: Annotated[
        int | None, typer.Option(min=1, max=ID_MAX, help="Queue message ID again.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show reminders and escalations waiting, sent and failed; re-queue one with --resend."""
    from marketcare.reports import notify

    check_choices(state, notify.STATES, "--state")
    s, engine = connect()
    if resend is not None:
        notify.resend(engine, resend, now=utcnow())
        out.print(f"notification {resend} queued again")
        return
    rows = notify.messages(engine, states=state)
    zone = ZoneInfo(s.timezone)
    if as_json:
        data = [
            {
                "id": r.id,
                "person": r.person_id,
                "market": r.market_id,
                "channel": r.channel,
                "address": r.address,
                "subject": r.subject,
                "state": r.state,
                "attempts": r.attempts,
                "stable_id": r.stable_id,
                "next_attempt_at": iso(r.next_attempt_at, zone),
                "sent_at": iso(r.sent_at, zone),
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    t = words(s)
    if not rows:
        out.print(t.tr("No notifications."))
        return
    table = Table(title=t.tr("Notifications"), title_justify="left")
    for header in (
        t.tr("No."),
        t.tr("Person"),
        t.tr("Channel"),
        t.tr("Subject"),
        t.tr("State"),
        t.tr("Attempts"),
        t.tr("Next attempt / sent at"),
        t.tr("Last error"),
    ):
        table.add_column(header)
    styles = {
        "sent": "green",
        "failed": "bold red",
        "pending": "yellow",
        "sending": "cyan",
        "cancelled": "dim",
    }
    for r in rows:
        when = r.sent_at if r.state == "sent" else r.next_attempt_at
        table.add_row(
            str(r.id),
            r.person_id,
            r.channel,
            r.subject,
            styled(r.state, styles.get(r.state, "")),
            str(r.attempts),
            fmt_local(when, s.timezone),
            r.last_error or "",
        )
    out.print(table)
