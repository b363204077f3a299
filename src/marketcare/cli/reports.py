"""Reports and messages: export, the email outbox, notifications."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
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
    progress_bar,
    utcnow,
)
from marketcare.errors import MarketcareError

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
    with progress_bar(f"writing {p.kind} {p.key}") as progress:
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
    for line in result.damaged:
        err.print(f"warning: {line}", markup=False)
    note = "" if result.created else " (unchanged; the recorded file)"
    err.print(f"revision {result.revision}, sha256 {result.sha256}{note}", markup=False)
    if result.anchor is not None:
        err.print(f"audit anchor: event {result.anchor.text()}", markup=False)
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


@app.command(name="verify-report")
@handled
def verify_report(
    path: Annotated[Path, typer.Argument(help="A report workbook (.xlsx) as received.")],
) -> None:
    """Check a received workbook: its revision and SHA-256 against the ledger's record,
    its audit anchor against the chain, and its figures against the ledger now.

    Exit 0: genuine, and the ledger gives the same figures today; 3: genuine, but the
    ledger's figures changed since (the differences are listed); 1: not genuine.
    """
    from marketcare.reports.verify_report import check

    _s, engine = connect()
    result = check(engine, path, now=utcnow())
    for line in result.holds:
        out.print(f"ok: {line}", markup=False)
    for line in result.refusals:
        err.print(f"NOT GENUINE: {line}", markup=False)
    if not result.genuine:
        raise typer.Exit(1)
    if result.differences:
        out.print(
            f"changed since: the ledger now gives {len(result.differences)} different "
            "figure(s) in the summary:",
            markup=False,
        )
        for line in result.differences:
            out.print(f"  {line}", markup=False)
        raise typer.Exit(3)
    out.print("ok: the ledger gives the same figures today", markup=False)


@dataclass(frozen=True)
class _Queue:
    """What differs between the two queues of outgoing messages: the report emails and the
    notifications share their states, retries and output, not their subject columns."""

    title: str
    noun: str
    empty: str
    #: the JSON fields between ``id`` and ``state``, then between ``attempts`` and the times
    head: Callable[[Any], dict[str, Any]]
    ident: Callable[[Any], dict[str, Any]]
    #: the table's columns between ``id`` and ``state``, and their cells
    columns: tuple[str, ...]
    cells: Callable[[Any], tuple[str, ...]]


_STATE_STYLES = {
    "sent": "green",
    "failed": "bold red",
    "pending": "yellow",
    "sending": "cyan",
    "cancelled": "dim",
}


def _show_queue(
    queue: _Queue,
    rows: list[Any],
    *,
    as_json: bool,
    timezone: str,
) -> None:
    """Print the messages of one queue as JSON or as a table, in the one shape both share."""
    if as_json:
        data = [
            {
                "id": r.id,
                **queue.head(r),
                "state": r.state,
                "attempts": r.attempts,
                **queue.ident(r),
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "sent_at": r.sent_at.isoformat() if r.sent_at else None,
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return
    if not rows:
        out.print(queue.empty, markup=False)
        return
    table = Table(title=queue.title, title_justify="left")
    for col in ("id", *queue.columns, "state", "tries", "next / sent", "reason"):
        table.add_column(col)
    for r in rows:
        when = r.sent_at if r.state == "sent" else r.next_attempt_at
        table.add_row(
            str(r.id),
            *queue.cells(r),
            f"[{_STATE_STYLES.get(r.state, '')}]{r.state}[/]",
            str(r.attempts),
            fmt_local(when, timezone),
            r.last_error or "",
        )
    out.print(table)


def _queue_command(
    queue: _Queue,
    listed: Callable[..., list[Any]],
    requeue: Callable[..., None],
    state: list[str] | None,
    resend: int | None,
    as_json: bool,
) -> None:
    """List one queue, or queue one of its messages again."""
    from marketcare.ledger.db import migrate

    s, engine = connect()
    migrate(engine)
    if resend is not None:
        requeue(engine, resend, now=utcnow())
        out.print(f"{queue.noun} {resend} queued again", markup=False)
        return
    _show_queue(queue, listed(engine, states=state), as_json=as_json, timezone=s.timezone)


_OUTBOX = _Queue(
    title="outbox",
    noun="message",
    empty="the outbox is empty",
    head=lambda r: {"report": r.path, "period": r.period_key, "recipient": r.recipient},
    ident=lambda r: {"message_id": r.message_id},
    columns=("period", "recipient"),
    cells=lambda r: (r.period_key, r.recipient),
)

_NOTIFICATIONS = _Queue(
    title="notifications",
    noun="notification",
    empty="no notifications",
    head=lambda r: {
        "person": r.person_id,
        "market": r.market_id,
        "channel": r.channel,
        "address": r.address,
        "subject": r.subject,
    },
    ident=lambda r: {"stable_id": r.stable_id},
    columns=("person", "channel", "subject"),
    cells=lambda r: (r.person_id, r.channel, r.subject),
)


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
    from marketcare.reports import delivery

    _queue_command(_OUTBOX, delivery.outbox, delivery.resend, state, resend, as_json)


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
    from marketcare.reports import notify

    _queue_command(_NOTIFICATIONS, notify.messages, notify.resend, state, resend, as_json)
