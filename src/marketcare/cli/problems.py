"""Problems found on inspection and pest-control visits: the problems group and pest.

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes and
writes times as ``clock.iso`` does.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    styled,
    utcnow,
    words,
)
from marketcare.domain.inputs import ID_MAX
from marketcare.errors import BadInput

if TYPE_CHECKING:
    import sqlalchemy as sa


# ------------------------------------------------------------------------------ problems

problems_app = typer.Typer(
    help="Problems found on inspection (整改事项): add, list, rectify, verify, reopen, import.",
    no_args_is_help=True,
)
app.add_typer(problems_app, name="problems")


def _parse_when(value: str, what: str, zone: str, *, end_of_day: bool = False) -> datetime:
    """A date or date and time in the market's zone, by the rule spreadsheets use too."""
    from zoneinfo import ZoneInfo

    from marketcare.domain.inputs import check_date
    from marketcare.ledger.problems import parse_when

    try:
        when, error = parse_when(value, ZoneInfo(zone), end_of_day=end_of_day, default=None)
    except (OverflowError, ValueError):
        when, error = None, f"{value!r} is out of range"
    if error is not None or when is None:
        raise BadInput(f"{what}: {error or f'{value!r} is not a date'}", what)
    check_date(when.date(), what)
    return when


def _market_zone(engine: sa.Engine, market_id: str, default: str) -> str:
    import sqlalchemy as sa

    from marketcare.ledger.db import read
    from marketcare.ledger.models import MarketRow

    with read(engine) as conn:
        zone = conn.execute(
            sa.select(MarketRow.timezone).where(MarketRow.id == market_id)
        ).scalar_one_or_none()
    return zone or default


@problems_app.command(
    "add",
    epilog="Example: marketcare problems add --market lizhong --area aquatic --category repair --description 水槽渗漏 --found-by 张伟 --within 3d",
)
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
    from marketcare.domain.timespec import parse_duration
    from marketcare.ledger import problems as problem_ledger

    s, engine = connect()
    now = utcnow()
    zone = _market_zone(engine, market, s.timezone)
    found = _parse_when(found_at, "--found-at", zone) if found_at else now
    if (deadline is None) == (within is None):
        raise BadInput("--deadline: give either --deadline or --within", "deadline")
    if deadline is not None:
        due = _parse_when(deadline, "--deadline", zone, end_of_day=True)
    else:
        try:
            due = found + parse_duration(within)
        except (ValueError, OverflowError) as exc:
            raise BadInput(f"--within: {exc}", "within") from None
    files = [problem_ledger.store_evidence(p, s.evidence_dir) for p in evidence or []]
    pid, created = problem_ledger.add(
        engine,
        problem_ledger.NewProblem(
            market_id=market,
            area_id=area,
            category=category,
            description=description,
            found_by=found_by,
            found_at=found,
            deadline=due,
            evidence=files,
            source_key=problem_ledger.token_key("cli", found_by, token) if token else None,
        ),
        now=now,
    )
    verb = "recorded" if created else "already recorded"
    out.print(f"problem {pid} {verb}; deadline {fmt_local(due, zone)}")


@problems_app.command("list", epilog="Example: marketcare problems list --market lizhong --overdue")
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
    from zoneinfo import ZoneInfo

    from marketcare.clock import iso
    from marketcare.domain.problems import ProblemState
    from marketcare.ledger import problems as problem_ledger
    from marketcare.ledger.readmodel import area_names, markets

    check_choices(state, [p.value for p in ProblemState], "--state")
    s, engine = connect()
    check_choices(market, [m.id for m in markets(engine)], "--market")
    rows = problem_ledger.listing(
        engine, now=utcnow(), markets=market, states=state, overdue=overdue
    )
    zones = {m.id: ZoneInfo(m.zone) for m in markets(engine)}
    if as_json:
        data = [
            {
                "id": r.id,
                "market": r.market_id,
                "area": r.area_id,
                "category": r.category,
                "description": r.description,
                "found_at": iso(r.found_at, zones[r.market_id]),
                "found_by": r.found_by,
                "deadline": iso(r.deadline, zones[r.market_id]),
                "state": r.state,
                "overdue": r.overdue,
                "reopened": r.reopened,
                "rectified_at": iso(r.rectified_at, zones[r.market_id]),
                "verified_at": iso(r.verified_at, zones[r.market_id]),
                "reinspection": r.reinspection_id,
            }
            for r in rows
        ]
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    t = words(s)
    if not rows:
        out.print(t.tr("No problems recorded."))
        return
    names = {m.id: m.name for m in markets(engine)}
    place = area_names(engine, (r.market_id for r in rows))
    table = Table(title=f"{t.tr('Problems')}: {len(rows)}", title_justify="left")
    for header in (
        t.tr("No."),
        t.tr("Market"),
        t.tr("Area"),
        t.tr("Category"),
        t.tr("Problem"),
        t.tr("Deadline"),
        t.tr("State"),
        t.tr("Reopened"),
    ):
        table.add_column(header)
    for r in rows:
        style = (
            "bold red" if r.overdue else {"verified": "green", "rectified": "cyan"}.get(r.state, "")
        )
        shown = t.problem_state(r.state)
        table.add_row(
            str(r.id),
            names.get(r.market_id, r.market_id),
            place.get((r.market_id, r.area_id), r.area_id) if r.area_id else "—",
            t.problem_category(r.category),
            r.description,
            fmt_local(r.deadline, s.timezone),
            styled(f"{shown} ({t.tr('Overdue')})" if r.overdue else shown, style),
            str(r.reopened),
        )
    out.print(table)


@problems_app.command(
    "rectify",
    epilog="Example: marketcare problems rectify 7 --by 林秀英 --note 已更换水管 --evidence after.jpg",
)
@handled
def problems_rectify(
    problem_id: Annotated[int, typer.Argument(min=1, max=ID_MAX, help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who fixed it.")],
    note: Annotated[str, typer.Option(help="What was done.")],
    evidence: Annotated[
        list[Path] | None, typer.Option(help="A photo of the result (repeatable).")
    ] = None,
) -> None:
    """The market reports it fixed; the office's re-inspection is scheduled."""
    from marketcare.ledger import problems as problem_ledger

    s, engine = connect()
    files = [problem_ledger.store_evidence(p, s.evidence_dir) for p in evidence or []]
    ob = problem_ledger.rectify(
        engine, problem_id=problem_id, by=by, note=note, now=utcnow(), evidence=files
    )
    out.print(f"problem {problem_id} rectified; re-inspection is obligation {ob}")


@problems_app.command("verify", epilog="Example: marketcare problems verify 7 --by 张伟")
@handled
def problems_verify(
    problem_id: Annotated[int, typer.Argument(min=1, max=ID_MAX, help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who re-inspected it.")],
    note: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
) -> None:
    """The re-inspection passed: the problem is closed."""
    from marketcare.ledger import problems as problem_ledger

    s, engine = connect()
    problem_ledger.verify(engine, problem_id=problem_id, by=by, now=utcnow(), note=note)
    out.print(f"problem {problem_id} verified")


@problems_app.command(
    "reopen", epilog="Example: marketcare problems reopen 7 --by 张伟 --note 仍有渗漏"
)
@handled
def problems_reopen(
    problem_id: Annotated[int, typer.Argument(min=1, max=ID_MAX, help="The problem's id.")],
    by: Annotated[str, typer.Option(help="Who re-inspected it.")],
    note: Annotated[str, typer.Option(help="Why it did not pass.")],
    deadline: Annotated[
        str | None, typer.Option(help="A new deadline (YYYY-MM-DD [HH:MM]).")
    ] = None,
) -> None:
    """The re-inspection failed: the problem is open again (and counted as reopened)."""
    from marketcare.ledger import problems as problem_ledger
    from marketcare.ledger.readmodel import market_of_problem

    s, engine = connect()
    new = None
    if deadline:
        market = market_of_problem(engine, problem_id)
        new = _parse_when(
            deadline, "--deadline", _market_zone(engine, market or "", s.timezone), end_of_day=True
        )
    problem_ledger.reopen(
        engine, problem_id=problem_id, by=by, note=note, now=utcnow(), deadline=new
    )
    out.print(f"problem {problem_id} reopened")


@problems_app.command("rate", epilog="Example: marketcare problems rate --period month")
@handled
def problems_rate(
    period: Annotated[PeriodChoice, typer.Option(help="The period.")] = PeriodChoice.week,
    date_: Annotated[
        str | None, typer.Option("--date", help="A day in the period (default today).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The rectification rate (整改率) per market and for the district: verified ÷ due."""
    from marketcare.domain.periods import Period
    from marketcare.domain.problems import Rate
    from marketcare.ledger.db import read as read_tx
    from marketcare.reports.figures import Report, problem_rates

    s, engine = connect()
    p = Period.of(period.value, parse_date(date_, "--date") or local_today(s))
    with read_tx(engine) as conn:
        report = Report(conn, p, as_of=utcnow())
        rates = problem_rates(report)
        markets = [(m.id, m.name) for m in report.markets]
    rows = [(mid, name, rates.get(mid, Rate(0, 0))) for mid, name in markets]
    total = sum((r for _, _, r in rows), Rate(0, 0))
    if as_json:
        data = {
            "period": p.key,
            "markets": [
                {"market": mid, "due": r.due, "verified": r.verified, "rate": r.value}
                for mid, _, r in rows
            ],
            "district": {"due": total.due, "verified": total.verified, "rate": total.value},
        }
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return

    from marketcare.domain.compliance import percent

    def pct(r: Rate) -> str:
        return percent(r.value)

    t = words(s)
    table = Table(title=f"{t.tr('Rectification rate')} {p.key}", title_justify="left")
    for header in (t.tr("Market"), t.tr("Due"), t.tr("Verified"), t.tr("Rectification rate")):
        table.add_column(header)
    for mid, name, r in rows:
        table.add_row(f"{name} ({mid})", str(r.due), str(r.verified), pct(r))
    table.add_row(
        styled(t.tr("District total"), "bold"),
        str(total.due),
        str(total.verified),
        styled(pct(total), "bold"),
    )
    out.print(table)


@problems_app.command("import", epilog="Example: marketcare problems import 督查.xlsx --skip-bad")
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
    from marketcare.ledger import problems as problem_ledger

    s, engine = connect()
    result = problem_ledger.import_xlsx(engine, file, now=utcnow(), skip_bad=skip_bad)
    for message in result.skipped:
        err.print(f"skipped {message}")
    out.print(
        f"{result.imported} problems imported"
        + (f", {result.already} already imported before" if result.already else "")
        + (f", {result.bad_rows} bad rows skipped" if result.bad_rows else "")
    )


# ------------------------------------------------------------------------------ pest control


@app.command(epilog="Example: marketcare pest --month 2026-11")
@handled
def pest(
    month: Annotated[
        str | None, typer.Option(help="The month, YYYY-MM (default this month).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Pest-control visits done against each contractor's agreed visits per month (灭四害)."""
    from marketcare.domain.inputs import check_date
    from marketcare.domain.periods import Period, from_key
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger.db import read
    from marketcare.ledger.pestcontrol import contract_status

    s, engine = connect()
    try:
        period = from_key("month", month.strip()) if month else Period.of("month", local_today(s))
    except (ValueError, OverflowError):
        raise BadInput(f"--month: {month!r} is not a month; write YYYY-MM", "month") from None
    check_date(period.start, "--month")
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
        out.print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    t = words(s)
    if not rows:
        out.print(t.tr("No pest-control contracts in the schedules (contracts:)."))
        return
    table = Table(title=f"{t.tr('Pest control')} {period.key}", title_justify="left")
    for header in (
        t.tr("Market"),
        t.tr("Contractor"),
        t.tr("Agreed visits"),
        t.tr("Visits done"),
        t.tr("Short"),
    ):
        table.add_column(header)
    for r in rows:
        short = styled(str(r.short), "bold red") if r.short else "0"
        market = schedule.market_by_id.get(r.market_id)
        name = market.name if market is not None else r.market_id
        table.add_row(name, r.contractor, str(r.agreed), str(r.done), short)
    out.print(table)
