"""Commands for the schedules and the daemon: init, check, plan, demo, run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from marketcare.cli.common import (
    app,
    cli_settings,
    connect,
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

if TYPE_CHECKING:
    from marketcare.domain.obligations import Planned
    from marketcare.domain.schedules import Schedule
    from marketcare.settings import Settings


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
    from marketcare.cli.users import first_operator
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger.db import migrate
    from marketcare.ledger.materialise import materialise
    from marketcare.ledger.sweep import sweep_all

    s, engine = connect()
    migrate(engine)
    first_operator(engine, operator)
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    now = utcnow()
    result = materialise(engine, schedule, now=now, horizon=s.horizon)
    swept = sweep_all(engine, now=now)
    out.print(
        f"database ready ({engine.url.render_as_string(hide_password=True)}); "
        f"schedule {schedule.digest[:12]}: {len(schedule.markets)} markets, {len(schedule.tasks)} tasks; "
        f"{result.created} obligations created up to {fmt_local(result.until, s.timezone)}"
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
    from marketcare.domain.schedules import load_paths

    s = cli_settings()
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
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(s.timezone)
    first = parse_date(start, "--from") or local_today(s)
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
    import sqlalchemy as sa

    from marketcare.domain.obligations import expand
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger.versions import active_schedule

    s = cli_settings()
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
    engine = ledger_engine(s)
    with engine.connect() as conn:
        loaded = active_schedule(conn) if sa.inspect(conn).has_table("ledger_state") else None
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
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger import demo
    from marketcare.ledger.db import migrate

    s, engine = connect()
    migrate(engine)
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    with progress_bar("simulating") as progress:
        result = demo.fill(
            engine,
            schedule,
            days=days,
            seed=seed,
            now=utcnow(),
            horizon=s.horizon,
            progress=progress,
            evidence_dir=s.evidence_dir,
        )
    out.print(
        f"{days} days of history: {result.obligations} obligations — {result.done} on time, "
        f"{result.late} late, {result.failed} failed readings ({result.redone} redone), "
        f"{result.missed} missed; {result.inspections} inspections in the last month, "
        f"{result.problems} problems raised",
        markup=False,
    )


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
    from marketcare import logs
    from marketcare.ops.daemon import build
    from marketcare.settings import load_settings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["web_host"] = host
    if port is not None:
        overrides["web_port"] = port
    if web is not None:
        overrides["web_enabled"] = web
    s = load_settings(**overrides) if overrides else cli_settings()
    if overrides:
        logs.setup(s.log_level, s.log_format)
    build(s, role).run()
