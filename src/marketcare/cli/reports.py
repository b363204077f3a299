"""Reports and messages: export, the email outbox, notifications."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from marketcare.cli.common import (
    PeriodChoice,
    app,
    cli_settings,
    connect,
    err,
    fmt_local,
    handled,
    ledger_engine,
    local_today,
    out,
    parse_date,
    utcnow,
)
from marketcare.errors import MarketcareError

if TYPE_CHECKING:
    pass


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
        Path | None, typer.Option("--out", help="Write here instead of the exports directory.")
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
    from marketcare.domain.periods import Period
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger.db import migrate
    from marketcare.reports import delivery

    s = cli_settings()
    lang = language or s.language
    if lang not in ("zh_CN", "en"):
        raise typer.BadParameter(f"{lang!r}: use zh_CN or en", param_hint="--language")
    engine = ledger_engine(s)
    migrate(engine)
    day = parse_date(date_, "--date") or local_today(s)
    p = Period.of(period.value, day)
    now = utcnow()
    recipients: list[str] = []
    if email:
        recipients = list(to or [])
        if not recipients:
            schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
            for spec in schedule.reports:
                if spec.period == p.kind and spec.kind == "compliance":
                    recipients.extend(spec.recipients)
        if not recipients:
            raise MarketcareError(
                f"--email: no recipients; give --to ADDRESS or configure a {p.kind} report in the schedules"
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
    err.print(f"revision {result.revision}, sha256 {result.sha256}{note}", markup=False)
    out.print(str(result.path), markup=False)
    if email:
        delivery.enqueue(engine, result.report_id, recipients, now=now, sender=s.smtp_sender)
        sent = delivery.send_due(engine, delivery.smtp_config(s), now=now, language=lang)
        err.print(
            f"email: {sent.sent} sent, {sent.retrying} to retry, {sent.failed} failed "
            "(see marketcare outbox; the daemon keeps retrying)",
            markup=False,
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
    resend: Annotated[int | None, typer.Option(help="Queue message ID again.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show emails waiting, sent and failed (with the reason); re-queue one with --resend."""
    from marketcare.ledger.db import migrate
    from marketcare.reports import delivery

    s, engine = connect()
    migrate(engine)
    if resend is not None:
        delivery.resend(engine, resend, now=utcnow())
        out.print(f"message {resend} queued again", markup=False)
        return
    rows = delivery.outbox(engine, states=state)
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
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "sent_at": r.sent_at.isoformat() if r.sent_at else None,
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return
    if not rows:
        out.print("the outbox is empty", markup=False)
        return
    table = Table(title="outbox", title_justify="left")
    for col in ("id", "period", "recipient", "state", "tries", "next / sent", "reason"):
        table.add_column(col)
    styles = {"sent": "green", "failed": "bold red", "pending": "yellow", "sending": "cyan"}
    for r in rows:
        when = r.sent_at if r.state == "sent" else r.next_attempt_at
        table.add_row(
            str(r.id),
            r.period_key,
            r.recipient,
            f"[{styles.get(r.state, '')}]{r.state}[/]",
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
    resend: Annotated[int | None, typer.Option(help="Queue message ID again.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show reminders and escalations waiting, sent and failed; re-queue one with --resend."""
    from marketcare.ledger.db import migrate
    from marketcare.reports import notify

    s, engine = connect()
    migrate(engine)
    if resend is not None:
        notify.resend(engine, resend, now=utcnow())
        out.print(f"notification {resend} queued again", markup=False)
        return
    rows = notify.messages(engine, states=state)
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
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "sent_at": r.sent_at.isoformat() if r.sent_at else None,
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return
    if not rows:
        out.print("no notifications", markup=False)
        return
    table = Table(title="notifications", title_justify="left")
    for col in ("id", "person", "channel", "subject", "state", "tries", "next / sent", "reason"):
        table.add_column(col)
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
            f"[{styles.get(r.state, '')}]{r.state}[/]",
            str(r.attempts),
            fmt_local(when, s.timezone),
            r.last_error or "",
        )
    out.print(table)
