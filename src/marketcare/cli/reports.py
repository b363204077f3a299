"""Reports and messages: export, the email outbox, notifications.

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes and
writes times as ``clock.iso`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import typer
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
    progress_bar,
    styled,
    utcnow,
    words,
)
from marketcare.clock import iso
from marketcare.domain.inputs import ID_MAX
from marketcare.errors import BadInput

if TYPE_CHECKING:
    from marketcare.i18n import Translator

# ------------------------------------------------------------------------------ export


@app.command(epilog="Example: marketcare export --period week --market lizhong --out 周报.xlsx")
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
                if spec.period == p.kind and spec.kind == "compliance":
                    recipients.extend(spec.recipients)
        if not recipients:
            raise BadInput(
                f"--email: no recipients; give --to ADDRESS or configure a {p.kind} report in the schedules",
                "to",
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
            "(see marketcare outbox; the daemon keeps retrying)"
        )
        if sent.failed:
            raise typer.Exit(1)


@app.command(name="verify-report", epilog="Example: marketcare verify-report 周报.xlsx")
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

    noun: str
    #: the states a message of this queue can be in (``--state`` takes only these)
    states: Callable[[], tuple[str, ...]]
    title: Callable[[Translator], str]
    empty: Callable[[Translator], str]
    #: the JSON fields between ``id`` and ``state``, then between ``attempts`` and the times
    head: Callable[[Any], dict[str, Any]]
    ident: Callable[[Any], dict[str, Any]]
    #: the table's headers between the number and the state, and their cells
    columns: Callable[[Translator], tuple[str, ...]]
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
    t: Translator,
) -> None:
    """Print the messages of one queue as JSON or as a table, in the one shape both share."""
    if as_json:
        zone = ZoneInfo(timezone)
        data = [
            {
                "id": r.id,
                **queue.head(r),
                "state": r.state,
                "attempts": r.attempts,
                **queue.ident(r),
                "next_attempt_at": iso(r.next_attempt_at, zone),
                "sent_at": iso(r.sent_at, zone),
                "error": r.last_error,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    if not rows:
        out.print(queue.empty(t))
        return
    table = Table(title=queue.title(t), title_justify="left")
    headers = (
        t.tr("No."),
        *queue.columns(t),
        t.tr("State"),
        t.tr("Attempts"),
        t.tr("Next attempt / sent at"),
        t.tr("Last error"),
    )
    for header in headers:
        table.add_column(header)
    for r in rows:
        when = r.sent_at if r.state == "sent" else r.next_attempt_at
        table.add_row(
            str(r.id),
            *queue.cells(r),
            styled(r.state, _STATE_STYLES.get(r.state, "")),
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
    check_choices(state, queue.states(), "--state")
    s, engine = connect()
    if resend is not None:
        requeue(engine, resend, now=utcnow())
        out.print(f"{queue.noun} {resend} queued again")
        return
    rows = listed(engine, states=state)
    _show_queue(queue, rows, as_json=as_json, timezone=s.timezone, t=words(s))


def _message_states() -> tuple[str, ...]:
    from marketcare.ledger.outbox import STATES

    return STATES


def _notification_states() -> tuple[str, ...]:
    from marketcare.reports.notify import STATES

    return STATES


_OUTBOX = _Queue(
    noun="message",
    states=_message_states,
    title=lambda t: t.tr("Report emails (outbox)"),
    empty=lambda t: t.tr("No report email has been queued yet."),
    head=lambda r: {"report": r.path, "period": r.period_key, "recipient": r.recipient},
    ident=lambda r: {"message_id": r.message_id},
    columns=lambda t: (t.tr("Period"), t.tr("Recipient")),
    cells=lambda r: (r.period_key, r.recipient),
)

_NOTIFICATIONS = _Queue(
    noun="notification",
    states=_notification_states,
    title=lambda t: t.tr("Notifications"),
    empty=lambda t: t.tr("No notifications."),
    head=lambda r: {
        "person": r.person_id,
        "market": r.market_id,
        "channel": r.channel,
        "address": r.address,
        "subject": r.subject,
    },
    ident=lambda r: {"stable_id": r.stable_id},
    columns=lambda t: (t.tr("Person"), t.tr("Channel"), t.tr("Subject")),
    cells=lambda r: (r.person_id, r.channel, r.subject),
)


@app.command(
    name="outbox",
    epilog="Example: marketcare outbox --state failed --json",
)
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
    from marketcare.reports import delivery

    _queue_command(_OUTBOX, delivery.outbox, delivery.resend, state, resend, as_json)


@app.command(name="notifications", epilog="Example: marketcare notifications --state failed --json")
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

    _queue_command(_NOTIFICATIONS, notify.messages, notify.resend, state, resend, as_json)
