"""The ``marketcare`` command: a stable contract that tests and later tools rely on."""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import audit, demo, ledger, logs
from .db import make_engine, migrate, read
from .errors import MarketcareError, ScheduleError, SettingsError
from .obligations import Planned, State, expand
from .periods import Period
from .schedules import Schedule, load_paths
from .settings import Settings, load_settings

app = typer.Typer(
    name="marketcare",
    help="Sanitation compliance for farmers' markets: schedules, a ledger and a daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="Check the tamper-evident event log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

STATE_STYLE = {
    State.MISSED: "bold red",
    State.FAILED: "red",
    State.OPEN: "cyan",
    State.UPCOMING: "dim",
    State.LATE: "yellow",
    State.DONE: "green",
    State.EXCUSED: "magenta",
}


def handled(fn: F) -> F:
    """Turn every expected failure into a one-line message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ScheduleError as exc:
            for e in exc.errors:
                err.print(str(e), markup=False)
            raise typer.Exit(1) from None
        except SettingsError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
        except MarketcareError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except sa.exc.OperationalError as exc:
            err.print(f"error: database: {exc.orig}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    s = load_settings()
    logs.setup(s.log_level, s.log_format)
    return s


def _engine(s: Settings) -> sa.Engine:
    engine = make_engine(s.database_url)
    return engine


def _now() -> datetime:
    return ledger.now_utc()


def _today(s: Settings) -> date:
    return _now().astimezone(ZoneInfo(s.timezone)).date()


def _parse_date(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date; write YYYY-MM-DD", param_hint=what
        ) from None


# ------------------------------------------------------------------------------ init


@app.command()
@handled
def init(
    operator: Annotated[
        str, typer.Option(help="User name of the first operator, made when there is none")
    ] = "admin",
) -> None:
    """Migrate the database and load the schedules (safe to run again).

    When the database has no operator yet, one is made with a random password that is
    printed once: sign in with it and change it (or use `marketcare users passwd`).
    """
    s = _settings()
    engine = _engine(s)
    migrate(engine)
    _first_operator(engine, operator)
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    now = _now()
    result = ledger.materialise(engine, schedule, now=now, horizon=s.horizon)
    swept = ledger.sweep_all(engine, now=now)
    out.print(
        f"database ready ({engine.url.render_as_string(hide_password=True)}); "
        f"schedule {schedule.digest[:12]}: {len(schedule.markets)} markets, {len(schedule.tasks)} tasks; "
        f"{result.created} obligations created up to {_fmt_local(result.until, s.timezone)}"
        + (f", {swept.missed} missed" if swept.missed else ""),
        markup=False,
    )


# ------------------------------------------------------------------------------ check


@app.command()
@handled
def check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or directories (default: the schedules directory)."),
    ] = None,
) -> None:
    """Validate schedule files: exit 0 when valid, 1 with every error on stderr."""
    s = _settings()
    targets = paths or [s.schedules_dir]
    for p in targets:
        if not p.exists():
            raise MarketcareError(f"{p}: no such file or directory")
    schedule = load_paths(targets, default_timezone=s.timezone)
    areas = sum(len(m.areas) for m in schedule.markets)
    m2 = sum(a.m2 for m in schedule.markets for a in m.areas)
    out.print(
        f"ok: {len(schedule.sources)} file(s), {len(schedule.markets)} markets, {areas} areas "
        f"({m2:,.0f} m²), {len(schedule.tasks)} tasks",
        markup=False,
    )


# ------------------------------------------------------------------------------ plan


def _window(s: Settings, start: str | None, days: int) -> tuple[datetime, datetime]:
    zone = ZoneInfo(s.timezone)
    first = _parse_date(start, "--from") or _today(s)
    lo = datetime.combine(first, datetime.min.time()).replace(tzinfo=zone).astimezone(UTC)
    hi = (
        datetime.combine(first + timedelta(days=days), datetime.min.time())
        .replace(tzinfo=zone)
        .astimezone(UTC)
    )
    return lo, hi


def _planned_json(p: Planned, schedule: Schedule) -> dict[str, Any]:
    zone = schedule.zone(schedule.market_by_id[p.market_id])
    return {
        "market": p.market_id,
        "area": p.area_id,
        "task": p.task_id,
        "kind": p.kind,
        "occurrence": p.occurrence.strftime("%Y-%m-%dT%H:%M"),
        "opens_at": p.opens_at.astimezone(zone).isoformat(),
        "due_at": p.due_at.astimezone(zone).isoformat(),
        "missed_at": p.missed_at.astimezone(zone).isoformat(),
    }


@app.command()
@handled
def plan(
    from_: Annotated[
        str | None, typer.Option("--from", help="First local day (YYYY-MM-DD; default today).")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=366, help="How many days.")] = 1,
    market: Annotated[list[str] | None, typer.Option(help="Only this market (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff", help="Show what the files on disk add and remove against the loaded schedule."
        ),
    ] = False,
) -> None:
    """Show what the schedules produce in a window, without writing anything."""
    s = _settings()
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    if market:
        unknown = [m for m in market if m not in schedule.market_by_id]
        if unknown:
            raise MarketcareError(
                f"--market: unknown market {unknown[0]!r} (known: {', '.join(schedule.market_by_id)})"
            )
    lo, hi = _window(s, from_, days)
    planned = expand(schedule, lo, hi, markets=market)
    if not diff:
        if as_json:
            out.print(
                json.dumps(
                    [_planned_json(p, schedule) for p in planned], ensure_ascii=False, indent=1
                ),
                markup=False,
            )
            return
        _plan_table(planned, schedule, f"{len(planned)} obligations")
        return
    engine = _engine(s)
    with engine.connect() as conn:
        loaded = (
            ledger.active_schedule(conn) if sa.inspect(conn).has_table("ledger_state") else None
        )
    before = expand(loaded, lo, hi, markets=market) if loaded else []
    old = {p.natural_key: p for p in before}
    new = {p.natural_key: p for p in planned}
    added = [p for k, p in new.items() if k not in old]
    removed = [p for k, p in old.items() if k not in new]
    changed = [
        p
        for k, p in new.items()
        if k in old
        and (old[k].opens_at, old[k].due_at, old[k].missed_at)
        != (p.opens_at, p.due_at, p.missed_at)
    ]
    if as_json:
        ref = loaded or schedule
        out.print(
            json.dumps(
                {
                    "added": [_planned_json(p, schedule) for p in added],
                    "removed": [_planned_json(p, ref) for p in removed],
                    "changed": [_planned_json(p, schedule) for p in changed],
                },
                ensure_ascii=False,
                indent=1,
            ),
            markup=False,
        )
        return
    if not (added or removed or changed):
        out.print("no difference against the loaded schedule", markup=False)
        return
    if added:
        _plan_table(added, schedule, f"+ {len(added)} added", style="green")
    if removed:
        _plan_table(removed, loaded or schedule, f"- {len(removed)} removed", style="red")
    if changed:
        _plan_table(changed, schedule, f"~ {len(changed)} with new times", style="yellow")


def _plan_table(planned: list[Planned], schedule: Schedule, title: str, style: str = "") -> None:
    table = Table(title=title, title_style=style, title_justify="left")
    for col in ("market", "area", "task", "opens", "due", "missed after"):
        table.add_column(col)
    for p in planned:
        zone = schedule.zone(schedule.market_by_id[p.market_id])
        table.add_row(
            p.market_id,
            p.area_id or "—",
            p.task_id,
            f"{p.opens_at.astimezone(zone):%m-%d %H:%M}",
            f"{p.due_at.astimezone(zone):%m-%d %H:%M}",
            f"{p.missed_at.astimezone(zone):%m-%d %H:%M}",
        )
    out.print(table)


# ------------------------------------------------------------------------------ status


@app.command()
@handled
def status(
    date_: Annotated[
        str | None, typer.Option("--date", help="Local day (YYYY-MM-DD; default today).")
    ] = None,
    market: Annotated[list[str] | None, typer.Option(help="Only this market (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The board: every obligation of the day and its state, overdue first."""
    s = _settings()
    engine = _engine(s)
    day = _parse_date(date_, "--date") or _today(s)
    now = _now()
    rows = ledger.board(engine, day=day, now=now, markets=market)
    if as_json:
        out.print(
            json.dumps([r.as_json() for r in rows], ensure_ascii=False, indent=1), markup=False
        )
        return
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    table = Table(
        title=f"{day} — " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        title_justify="left",
    )
    for col in ("id", "market", "area", "task", "opens", "due", "state", "completed"):
        table.add_column(col)
    for r in rows:
        completed = r.local(r.completed_at)
        table.add_row(
            str(r.id),
            r.market_id,
            r.area_id or "—",
            r.task_id,
            f"{r.local(r.opens_at):%H:%M}",
            f"{r.local(r.due_at):%H:%M}",
            f"[{STATE_STYLE[r.state]}]{r.state.value}{' !' if r.overdue else ''}[/]",
            f"{completed:%H:%M}" if completed else "",
        )
    out.print(table if rows else f"no obligations on {day}")


# ------------------------------------------------------------------------------ tick


def _readings(pairs: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise MarketcareError(f"--reading {pair!r}: write KEY=VALUE, e.g. chlorine=1000")
        try:
            value = float(raw)
        except ValueError:
            raise MarketcareError(f"--reading {pair!r}: {raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise MarketcareError(f"--reading {pair!r}: {raw!r} is not a finite number")
        values[key.strip()] = value
    return values


def _texts(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MarketcareError(f"--text {pair!r}: write KEY=VALUE, e.g. agents=溴敌隆 50 g")
        values[key.strip()] = value
    return values


@app.command()
@handled
def tick(
    obligation_id: Annotated[
        int, typer.Argument(help="The obligation's id (see marketcare status).")
    ],
    by: Annotated[str, typer.Option("--by", help="Who did the work.")],
    reading: Annotated[
        list[str] | None, typer.Option("--reading", help="A reading, KEY=VALUE (repeatable).")
    ] = None,
    item: Annotated[
        list[str] | None,
        typer.Option("--item", help="A checklist item done (repeatable; default all)."),
    ] = None,
    note: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Client token: the same token records once.")
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text", help="A text item, KEY=VALUE (repeatable), e.g. agents='溴敌隆 50 g'."
        ),
    ] = None,
) -> None:
    """Record a completion: out-of-range readings mark it failed; early ticks are refused."""
    s = _settings()
    engine = _engine(s)
    result = ledger.tick(
        engine,
        obligation_id=obligation_id,
        by=by,
        now=_now(),
        readings=_readings(reading or []),
        items=item,
        note=note,
        token=token,
        texts=_texts(text or []),
    )
    out.print(
        f"obligation {result.obligation_id}: {result.state.value} — {result.message}", markup=False
    )
    if result.state == State.FAILED and result.changed:
        raise typer.Exit(3)


# ------------------------------------------------------------------------------ demo


@app.command(name="demo")
@handled
def demo_cmd(
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of history that end today.")] = 14,
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed gives the same history.")
    ] = 1,
) -> None:
    """Fill a new database with seeded, simulated history (mostly on time; some late, missed, failed)."""
    s = _settings()
    engine = _engine(s)
    migrate(engine)
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("demo", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = demo.fill(
            engine, schedule, days=days, seed=seed, now=_now(), horizon=s.horizon, progress=progress
        )
    out.print(
        f"{days} days of history: {result.obligations} obligations — {result.done} on time, "
        f"{result.late} late, {result.failed} failed readings ({result.redone} redone), "
        f"{result.missed} missed",
        markup=False,
    )


# ------------------------------------------------------------------------------ export


class PeriodChoice(enum.StrEnum):
    day = "day"
    week = "week"
    month = "month"


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
    from . import delivery
    from .periods import Period

    s = _settings()
    lang = language or s.language
    if lang not in ("zh_CN", "en"):
        raise typer.BadParameter(f"{lang!r}: use zh_CN or en", param_hint="--language")
    engine = _engine(s)
    migrate(engine)
    day = _parse_date(date_, "--date") or _today(s)
    p = Period.of(period.value, day)
    now = _now()
    recipients: list[str] = []
    if email:
        recipients = list(to or [])
        if not recipients:
            schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
            for spec in schedule.reports:
                if spec.period == p.kind:
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
    from . import delivery

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    if resend is not None:
        delivery.resend(engine, resend, now=_now())
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
            _fmt_local(when, s.timezone),
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
    from . import notify

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    if resend is not None:
        notify.resend(engine, resend, now=_now())
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
            _fmt_local(when, s.timezone),
            r.last_error or "",
        )
    out.print(table)


# ------------------------------------------------------------------------------ problems

problems_app = typer.Typer(
    help="Problems found on inspection (整改事项): add, list, rectify, verify, reopen, import.",
    no_args_is_help=True,
)
app.add_typer(problems_app, name="problems")


def _parse_when(value: str, what: str, zone: str, *, end_of_day: bool = False) -> datetime:
    """A date or date and time in the market's zone, by the rule spreadsheets use too."""
    from .rectification import parse_when

    when, error = parse_when(value, ZoneInfo(zone), end_of_day=end_of_day, default=None)
    if error is not None or when is None:
        raise typer.BadParameter(error or f"{value!r} is not a date", param_hint=what)
    return when


def _market_zone(engine: sa.Engine, market_id: str, default: str) -> str:
    from .models import MarketRow

    with read(engine) as conn:
        zone = conn.execute(
            sa.select(MarketRow.timezone).where(MarketRow.id == market_id)
        ).scalar_one_or_none()
    return zone or default


@problems_app.command("add")
@handled
def problems_add(
    market: Annotated[str, typer.Option(help="The market's id.")],
    category: Annotated[str, typer.Option(help="sanitation, repair, pest or order.")],
    description: Annotated[str, typer.Option(help="What is wrong.")],
    found_by: Annotated[str, typer.Option("--found-by", help="Who found it.")],
    deadline: Annotated[
        str | None,
        typer.Option(help="Rectify by (YYYY-MM-DD [HH:MM], market time; a date means its end)."),
    ] = None,
    within: Annotated[
        str | None, typer.Option(help="Or: rectify within a duration, e.g. 3d.")
    ] = None,
    area: Annotated[str | None, typer.Option(help="The area's id, if it is in one.")] = None,
    found_at: Annotated[
        str | None, typer.Option("--found-at", help="When it was found (default now).")
    ] = None,
    evidence: Annotated[list[Path] | None, typer.Option(help="A photo (repeatable).")] = None,
    token: Annotated[
        str | None, typer.Option(help="Client token: the same token records once.")
    ] = None,
) -> None:
    """Record a problem with its deadline."""
    from . import rectification
    from .timespec import parse_duration

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    now = _now()
    zone = _market_zone(engine, market, s.timezone)
    found = _parse_when(found_at, "--found-at", zone) if found_at else now
    if (deadline is None) == (within is None):
        raise typer.BadParameter("give either --deadline or --within", param_hint="--deadline")
    if deadline is not None:
        due = _parse_when(deadline, "--deadline", zone, end_of_day=True)
    else:
        try:
            due = found + parse_duration(within)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--within") from None
    files = [rectification.store_evidence(p, s.evidence_dir) for p in evidence or []]
    pid, created = rectification.add(
        engine,
        rectification.NewProblem(
            market_id=market,
            area_id=area,
            category=category,
            description=description,
            found_by=found_by,
            found_at=found,
            deadline=due,
            evidence=files,
            source_key=f"token:{token}" if token else None,
        ),
        now=now,
    )
    verb = "recorded" if created else "already recorded"
    out.print(f"problem {pid} {verb}; deadline {_fmt_local(due, zone)}", markup=False)


@problems_app.command("list")
@handled
def problems_list(
    market: Annotated[list[str] | None, typer.Option(help="Only this market (repeatable).")] = None,
    state: Annotated[
        list[str] | None, typer.Option(help="open, rectified or verified (repeatable).")
    ] = None,
    overdue: Annotated[
        bool, typer.Option("--overdue", help="Only problems past their deadline and not verified.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Problems, overdue first, with their deadlines and how often they were reopened."""
    from . import rectification

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    rows = rectification.listing(engine, now=_now(), markets=market, states=state, overdue=overdue)
    if as_json:
        data = [
            {
                "id": r.id,
                "market": r.market_id,
                "area": r.area_id,
                "category": r.category,
                "description": r.description,
                "found_at": r.found_at.isoformat(),
                "found_by": r.found_by,
                "deadline": r.deadline.isoformat(),
                "state": r.state,
                "overdue": r.overdue,
                "reopened": r.reopened,
                "rectified_at": r.rectified_at.isoformat() if r.rectified_at else None,
                "verified_at": r.verified_at.isoformat() if r.verified_at else None,
                "reinspection": r.reinspection_id,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return
    if not rows:
        out.print("no problems", markup=False)
        return
    table = Table(title=f"{len(rows)} problems", title_justify="left")
    for col in ("id", "market", "area", "category", "description", "deadline", "state", "reopened"):
        table.add_column(col)
    for r in rows:
        style = (
            "bold red" if r.overdue else {"verified": "green", "rectified": "cyan"}.get(r.state, "")
        )
        table.add_row(
            str(r.id),
            r.market_id,
            r.area_id or "—",
            r.category,
            r.description,
            _fmt_local(r.deadline, s.timezone),
            f"[{style}]{r.state}{' (overdue)' if r.overdue else ''}[/]",
            str(r.reopened),
        )
    out.print(table)


@problems_app.command("rectify")
@handled
def problems_rectify(
    problem_id: Annotated[int, typer.Argument(help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who fixed it.")],
    note: Annotated[str, typer.Option(help="What was done.")],
    evidence: Annotated[
        list[Path] | None, typer.Option(help="A photo of the result (repeatable).")
    ] = None,
) -> None:
    """The market reports it fixed; the office's re-inspection is scheduled."""
    from . import rectification

    s = _settings()
    engine = _engine(s)
    files = [rectification.store_evidence(p, s.evidence_dir) for p in evidence or []]
    ob = rectification.rectify(
        engine, problem_id=problem_id, by=by, note=note, now=_now(), evidence=files
    )
    out.print(f"problem {problem_id} rectified; re-inspection is obligation {ob}", markup=False)


@problems_app.command("verify")
@handled
def problems_verify(
    problem_id: Annotated[int, typer.Argument(help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who re-inspected it.")],
    note: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
) -> None:
    """The re-inspection passed: the problem is closed."""
    from . import rectification

    s = _settings()
    engine = _engine(s)
    rectification.verify(engine, problem_id=problem_id, by=by, now=_now(), note=note)
    out.print(f"problem {problem_id} verified", markup=False)


@problems_app.command("reopen")
@handled
def problems_reopen(
    problem_id: Annotated[int, typer.Argument(help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who re-inspected it.")],
    note: Annotated[str, typer.Option(help="Why it did not pass.")],
    deadline: Annotated[
        str | None, typer.Option(help="A new deadline (YYYY-MM-DD [HH:MM]).")
    ] = None,
) -> None:
    """The re-inspection failed: the problem is open again (and counted as reopened)."""
    from . import rectification

    s = _settings()
    engine = _engine(s)
    new = None
    if deadline:
        from .models import ProblemRow

        with read(engine) as conn:
            market = conn.execute(
                sa.select(ProblemRow.market_id).where(ProblemRow.id == problem_id)
            ).scalar_one_or_none()
        new = _parse_when(
            deadline, "--deadline", _market_zone(engine, market or "", s.timezone), end_of_day=True
        )
    rectification.reopen(engine, problem_id=problem_id, by=by, note=note, now=_now(), deadline=new)
    out.print(f"problem {problem_id} reopened", markup=False)


@problems_app.command("rate")
@handled
def problems_rate(
    period: Annotated[PeriodChoice, typer.Option(help="The period.")] = PeriodChoice.week,
    date_: Annotated[
        str | None, typer.Option("--date", help="A day in the period (default today).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The rectification rate (整改率) per market and for the district: verified ÷ due."""
    from .db import read as read_tx
    from .problems import Rate
    from .reports import Report, problem_rates

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    p = Period.of(period.value, _parse_date(date_, "--date") or _today(s))
    with read_tx(engine) as conn:
        report = Report(conn, p, as_of=_now())
        rates = problem_rates(report)
        markets = [(m.id, m.name) for m in report.markets]
    rows = [(mid, name, rates.get(mid, Rate(0, 0))) for mid, name in markets]
    total = Rate(sum(r.verified for _, _, r in rows), sum(r.due for _, _, r in rows))
    if as_json:
        data = {
            "period": p.key,
            "markets": [
                {"market": mid, "due": r.due, "verified": r.verified, "rate": r.value}
                for mid, _, r in rows
            ],
            "district": {"due": total.due, "verified": total.verified, "rate": total.value},
        }
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return

    def pct(r: Rate) -> str:
        return "—" if r.value is None else f"{r.value * 100:.1f}%"

    table = Table(title=f"整改率 {p.key}", title_justify="left")
    for col in ("market", "due", "verified", "rate"):
        table.add_column(col)
    for mid, name, r in rows:
        table.add_row(f"{name} ({mid})", str(r.due), str(r.verified), pct(r))
    table.add_row(
        "[bold]district[/]", str(total.due), str(total.verified), f"[bold]{pct(total)}[/]"
    )
    out.print(table)


@problems_app.command("import")
@handled
def problems_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="An .xlsx whose first sheet has a header row (市场, 区域, 类别, 问题描述, 发现时间, 发现人, 整改期限)."
        ),
    ],
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Import the good rows and report each bad one.")
    ] = False,
) -> None:
    """Import inspection findings from a spreadsheet: every row valid, or nothing imported."""
    from . import rectification

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    result = rectification.import_xlsx(engine, file, now=_now(), skip_bad=skip_bad)
    for message in result.skipped:
        err.print(f"skipped {message}", markup=False)
    out.print(
        f"{result.imported} problems imported"
        + (f", {result.already} already imported before" if result.already else "")
        + (f", {len(result.skipped)} bad rows skipped" if result.skipped else ""),
        markup=False,
    )


# ------------------------------------------------------------------------------ pest control


@app.command()
@handled
def pest(
    month: Annotated[
        str | None, typer.Option(help="The month, YYYY-MM (default this month).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pest-control visits done against each contractor's agreed visits per month (灭四害)."""
    from .periods import from_key
    from .pestcontrol import contract_status

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    try:
        period = from_key("month", month) if month else Period.of("month", _today(s))
    except ValueError:
        raise typer.BadParameter(f"{month!r}: write YYYY-MM", param_hint="--month") from None
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    with read(engine) as conn:
        rows = contract_status(conn, schedule, period)
    if as_json:
        data = [
            {
                "market": r.market_id,
                "contractor": r.contractor,
                "agreed": r.agreed,
                "done": r.done,
                "short": r.short,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False)
        return
    if not rows:
        out.print("no pest-control contracts in the schedules (contracts:)", markup=False)
        return
    table = Table(title=f"灭四害 {period.key}", title_justify="left")
    for col in ("market", "contractor", "agreed", "done", "short"):
        table.add_column(col)
    for r in rows:
        short = f"[bold red]{r.short}[/]" if r.short else "0"
        table.add_row(r.market_id, r.contractor, str(r.agreed), str(r.done), short)
    out.print(table)


# ------------------------------------------------------------------------------ run


@app.command()
@handled
def run(
    host: Annotated[
        str | None, typer.Option(help="Address the web app listens on (setting web_host)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port of the web app (setting web_port; 0 picks a free one)")
    ] = None,
    web: Annotated[
        bool | None, typer.Option("--web/--no-web", help="Serve the web app (setting web_enabled)")
    ] = None,
    role: Annotated[
        str,
        typer.Option(
            help="all: scheduler (when elected leader) and web app; scheduler: no web app; "
            "web: web app and API only (several daemons on one PostgreSQL)"
        ),
    ] = "all",
) -> None:
    """Run the daemon in the foreground until SIGTERM: materialise, sweep, hot-reload,
    reports, mail, and the web app at http://127.0.0.1:8000/ by default."""
    from .daemon import build

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["web_host"] = host
    if port is not None:
        overrides["web_port"] = port
    if web is not None:
        overrides["web_enabled"] = web
    s = load_settings(**overrides) if overrides else _settings()
    if overrides:
        logs.setup(s.log_level, s.log_format)
    build(s, role).run()


# ------------------------------------------------------------------------------ users

users_app = typer.Typer(
    help="People who use the web app and the API: managers, the district office, operators.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")


class RoleName(enum.StrEnum):
    manager = "manager"
    office = "office"
    operator = "operator"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first: str = typer.prompt("Password", hide_input=True)
    again: str = typer.prompt("Repeat the password", hide_input=True)
    if first != again:
        raise MarketcareError("the two passwords differ; nothing changed")
    return first


def _first_operator(engine: sa.Engine, username: str) -> None:
    import secrets

    from . import accounts
    from .access import Role

    if accounts.count_users(engine, Role.OPERATOR):
        return
    password = secrets.token_urlsafe(12)
    accounts.add_user(
        engine,
        accounts.NewUser(username, "Operator", Role.OPERATOR, password),
        now=_now(),
    )
    out.print(
        f"made the first operator {username!r} with password {password} "
        "(shown once: sign in and make the other users, or run `marketcare users add`)",
        markup=False,
    )


@users_app.command("add")
@handled
def users_add(
    username: Annotated[str, typer.Argument(help="Sign-in name: a-z 0-9 . _ -")],
    role: Annotated[RoleName, typer.Option(help="manager, office or operator")],
    market: Annotated[
        list[str] | None, typer.Option(help="A market a manager manages (repeat for more)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name shown on pages (default: the user name)")
    ] = None,
    language: Annotated[str | None, typer.Option(help="zh_CN or en (default: the site's)")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create a user (the password is asked for, or read with --password-stdin)."""
    from . import accounts
    from .access import Role

    s = _settings()
    engine = _engine(s)
    migrate(engine)
    password = _read_password(password_stdin)
    accounts.add_user(
        engine,
        accounts.NewUser(
            username, name or username, Role(role.value), password, tuple(market or ()), language
        ),
        now=_now(),
    )
    where = f" for {', '.join(market)}" if market else ""
    out.print(f"user {username.lower()!r} ({role.value}{where}) created", markup=False)


@users_app.command("passwd")
@handled
def users_passwd(
    username: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Set a user's password; their open sessions are signed out."""
    from . import accounts

    engine = _engine(_settings())
    accounts.set_password(engine, username, _read_password(password_stdin))
    out.print(f"password of {username!r} changed; their sessions are signed out", markup=False)


@users_app.command("disable")
@handled
def users_disable(
    username: str,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again")] = False,
) -> None:
    """Disable a user: sign-in refused, sessions ended, API tokens stop working."""
    from . import accounts

    engine = _engine(_settings())
    accounts.set_disabled(engine, username, not enable)
    out.print(f"user {username!r} {'enabled' if enable else 'disabled'}", markup=False)


@users_app.command("list")
@handled
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every user with role, markets and status."""
    from . import accounts

    users = accounts.list_users(_engine(_settings()))
    if as_json:
        out.print_json(json.dumps(users, ensure_ascii=False))
        return
    table = Table("user", "name", "role", "markets", "language", "status")
    for u in users:
        table.add_row(
            u["username"],
            u["display_name"],
            u["role"],
            ", ".join(u["markets"]) or "—",
            u["language"] or "—",
            "disabled" if u["disabled"] else "active",
        )
    out.print(table)


@users_app.command("token")
@handled
def users_token(
    username: str,
    name: Annotated[str, typer.Option(help="What the token is for, e.g. the system using it")],
) -> None:
    """Make an API token for a user (printed once; only its hash is kept)."""
    from . import accounts

    engine = _engine(_settings())
    who = accounts.list_users(engine)
    if not any(u["username"] == username.lower() for u in who):
        raise MarketcareError(f"no user {username!r}")
    with read(engine) as conn:
        from .models import User

        uid = conn.execute(sa.select(User.id).where(User.username == username.lower())).scalar_one()
    tid, token = accounts.create_token(engine, uid, name, now=_now())
    out.print(token, markup=False, soft_wrap=True)
    err.print(
        f"token {tid} for {username!r}: send it as 'Authorization: Bearer <token>'", markup=False
    )


# ------------------------------------------------------------------------------ audit


@audit_app.command("verify")
@handled
def audit_verify() -> None:
    """Recompute the event chain; name the first event altered or removed."""
    s = _settings()
    engine = _engine(s)
    with read(engine) as conn:
        verdict = audit.verify(conn)
    if verdict.ok:
        out.print(f"ok: {verdict.checked} events, chain intact", markup=False)
        return
    err.print(
        f"TAMPERED: {verdict.reason} (first bad event: {verdict.first_bad_seq}; {verdict.checked} events before it are intact)",
        markup=False,
    )
    raise typer.Exit(1)


# ------------------------------------------------------------------------------ backup


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _counts_table(counts: dict[str, int]) -> Table:
    table = Table("table", "rows", title_justify="left")
    for name, n in counts.items():
        table.add_row(name, str(n))
    return table


@app.command(name="backup")
@handled
def backup_cmd(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Where to write the copy (default var/backups/marketcare-<UTC time>.db; "
            "an existing folder receives a file of that name)."
        ),
    ] = None,
    step_pages: Annotated[
        int, typer.Option(min=1, help="Database pages copied per step of the progress bar.")
    ] = 1024,
) -> None:
    """Copy the SQLite database while the daemon runs: consistent, verified, then renamed.

    PostgreSQL databases are backed up with pg_dump -Fc (see docs/operations.md)."""
    from . import backup as backups

    s = _settings()
    db = backups.sqlite_file(s.database_url)
    now = _now()
    target = path or backups.default_path(db, now)
    if target.is_dir():
        target = target / backups.default_path(db, now).name
    with Progress(
        TextColumn("copying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("backup", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        found = backups.backup(db, target, step_pages=step_pages, progress=progress)
    out.print(
        f"backup written: {found.path} ({_size(found.size)}), schema revision {found.revision}, "
        "integrity ok",
        markup=False,
    )
    out.print(_counts_table(found.counts))
    if not found.chain.ok:
        err.print(
            f"audit chain of the copy: TAMPERED: {found.chain.reason} (first bad event: "
            f"{found.chain.first_bad_seq}); the live database has the same damage: "
            "run marketcare audit verify",
            markup=False,
        )
        raise typer.Exit(1)
    out.print(f"audit chain: ok, {found.chain.checked} events intact", markup=False)


@app.command(name="restore")
@handled
def restore_cmd(
    path: Annotated[Path, typer.Argument(help="A file written by marketcare backup.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option(help="Restore even a backup whose audit chain is broken.")
    ] = False,
) -> None:
    """Put a backup in place of the SQLite database (the daemon must be stopped).

    The database it replaces is kept as <db>.before-restore-<UTC time>; the backup is then
    migrated to this version's schema. PostgreSQL: use pg_restore (docs/operations.md)."""
    from . import backup as backups

    s = _settings()
    db = backups.sqlite_file(s.database_url, restoring=True)

    def confirm(found: backups.Inspection) -> bool:
        out.print(
            f"backup {path} ({_size(found.size)}): schema revision {found.revision}, integrity ok",
            markup=False,
        )
        out.print(_counts_table(found.counts))
        if found.chain.ok:
            out.print(f"audit chain: ok, {found.chain.checked} events intact", markup=False)
        else:
            err.print(f"audit chain: TAMPERED: {found.chain.reason} (--force)", markup=False)
        return yes or typer.confirm(f"Replace {db} with this backup?", default=False)

    result = backups.restore(s, path, now=_now(), force=force, confirm=confirm)
    kept = f"; the database it replaced is kept as {result.kept}" if result.kept else ""
    out.print(f"restored {path} into {db} (schema revision {result.revision}){kept}", markup=False)


# ------------------------------------------------------------------------------ PostgreSQL


@app.command(name="migrate-sqlite-to-postgres")
@handled
def migrate_sqlite_to_postgres(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="The empty PostgreSQL database: postgresql+psycopg://user@host/db"
        ),
    ],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="The SQLite database (default: the configured database_url)."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows per batch.")] = 5000,
) -> None:
    """Move the whole history from SQLite to an empty PostgreSQL database, then prove it:
    row counts and checksums per table, and the audit chain, compared before committing."""
    from . import pgmigrate
    from .leader import SqliteFileLock

    s = _settings()
    source = from_ or s.database_url
    path = pgmigrate.source_file(source)
    target = pgmigrate.target_url(to)
    lock = SqliteFileLock(path)
    if not lock.try_acquire():
        raise MarketcareError(
            f"a marketcare daemon is running on {path}; stop it first, so that nothing it "
            "writes during the move is left behind"
        )
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("copying", total=None)

            def progress(table: str, done: int, total: int) -> None:
                bar.update(task, description=f"copying {table}", completed=done, total=total)

            moved = pgmigrate.move(source, target, batch=batch, progress=progress)
    finally:
        lock.release()
    table = Table(
        "table", "rows (SQLite)", "rows (PostgreSQL)", "checksum", "", title_justify="left"
    )
    for c in moved.comparisons:
        same = c.source.sha256 == c.target.sha256
        table.add_row(
            c.table,
            str(c.source.rows),
            str(c.target.rows),
            c.source.sha256[:12] if same else f"{c.source.sha256[:12]} ≠ {c.target.sha256[:12]}",
            "[green]ok[/]" if c.ok else "[bold red]MISMATCH[/]",
        )
    out.print(table)
    shown = sa.make_url(target).render_as_string(hide_password=True)
    if not moved.chain.ok:
        err.print(
            f"error: the audit chain does not verify on {shown}: {moved.chain.reason}; "
            "the target was rolled back and is empty",
            markup=False,
        )
        raise typer.Exit(1)
    if moved.mismatched:
        err.print(
            f"error: {', '.join(moved.mismatched)} differ between SQLite and PostgreSQL; "
            "the target was rolled back and is empty",
            markup=False,
        )
        raise typer.Exit(1)
    rows = sum(c.target.rows for c in moved.comparisons)
    out.print(
        f"moved {rows} rows in {len(moved.comparisons)} tables to {shown}; audit chain ok "
        f"({moved.chain.checked} events). Point MARKETCARE_DATABASE_URL at it and start "
        "the daemon.",
        markup=False,
    )


def _fmt_local(value: datetime | None, zone: str) -> str:
    return "—" if value is None else f"{value.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M %Z}"


def main() -> None:
    """Entry point: no traceback reaches a user unless MARKETCARE_DEBUG is set."""
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # a bug: say so in one line, keep the details in the log
        if os.environ.get("MARKETCARE_DEBUG"):
            raise
        logging.getLogger("marketcare").error("internal error", exc_info=True)
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc} (set MARKETCARE_DEBUG=1 for details)\n"
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
