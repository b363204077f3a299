"""Commands for the schedules and the daemon: init, check, plan, demo, run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from marketcare.cli.common import (
    EXIT_INTERRUPTED,
    app,
    cli_settings,
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
from marketcare.errors import BadInput

if TYPE_CHECKING:
    from marketcare.domain.changes import Moved
    from marketcare.domain.obligations import Planned
    from marketcare.domain.schedules import Schedule


# ------------------------------------------------------------------------------ init


@app.command(epilog="Example: marketcare init --operator admin")
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

    s = cli_settings()
    # the files first: a refused schedule leaves no database behind, nor a changed one
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    engine = ledger_engine(s, create=True)
    migrate(engine)
    first_operator(engine, operator)
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


@app.command(epilog="Example: marketcare check schedules/tasks.yaml")
@handled
def check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or directories (default: the schedules directory)."),
    ] = None,
) -> None:
    """Validate schedule files: exit 0 when valid, 1 with every error on stderr."""
    from marketcare.domain.obligations import expand
    from marketcare.domain.schedules import load_paths

    s = cli_settings()
    targets = paths or [s.schedules_dir]
    for p in targets:
        if not p.exists():
            raise BadInput(f"{p}: no such file or directory", "paths")
    schedule = load_paths(targets, default_timezone=s.timezone)
    # what the daemon then does with the files: expand its horizon within the processor
    # time it allows an edit (reload_timeout_seconds), so that `check` refuses, naming
    # the task, what the daemon would refuse as too slow, instead of saying ok to it
    now = utcnow()
    expand(schedule, now, now + s.horizon, seconds=s.reload_timeout_seconds)
    areas = sum(len(m.areas) for m in schedule.markets)
    m2 = sum(a.m2 for m in schedule.markets for a in m.areas)
    out.print(
        f"ok: {len(schedule.sources)} file(s), {len(schedule.markets)} markets, {areas} areas "
        f"({m2:,.0f} m²), {len(schedule.tasks)} tasks",
        markup=False,
    )


# ------------------------------------------------------------------------------ plan


#: the most obligations ``plan`` lists at once (about 150 bytes each in memory, and a
#: line each: a million is more than anyone reads, and still fits a small machine)
PLAN_MOST = 1_000_000


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
        "excused": p.excused,
    }


@app.command(epilog="Example: marketcare plan --from 2026-12-01 --days 7 --market lizhong")
@handled
def plan(
    from_: Annotated[
        str | None, typer.Option("--from", help="First trading day (YYYY-MM-DD; default today).")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=366, help="How many days.")] = 1,
    market: Annotated[list[str] | None, typer.Option(help="Only this market (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff",
            help="Show what the files change against the schedule the ledger runs: "
            "obligations added, removed and changed (old → new), checklists and ranges.",
        ),
    ] = False,
    schedules: Annotated[
        list[Path] | None,
        typer.Option(
            "--schedules",
            help="Plan from these files or folders instead of the schedules directory "
            "(e.g. an edit not yet live; repeatable).",
        ),
    ] = None,
) -> None:
    """Show what the schedules produce on some trading days, without writing anything.

    An obligation belongs to the trading day it opened for: a night market's clean-up
    after midnight is listed under the evening it follows.
    """
    import sqlalchemy as sa

    from marketcare.domain.changes import compare
    from marketcare.domain.obligations import expand_days
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger.db import make_engine
    from marketcare.ledger.versions import active_schedule

    s = cli_settings()
    paths = schedules or [s.schedules_dir]
    for p in paths:
        if not p.exists():
            raise BadInput(f"--schedules: {p}: no such file or directory", "schedules")
    schedule = load_paths(paths, default_timezone=s.timezone)
    if market:
        unknown = [m for m in market if m not in schedule.market_by_id]
        if unknown:
            raise BadInput(
                f"--market: unknown market {unknown[0]!r} (known: {', '.join(schedule.market_by_id)})",
                "market",
            )
    first = parse_date(from_, "--from") or local_today(s)
    bounds: dict[str, Any] = {
        # what the daemon allows an edit, and no more than a table or a file can hold
        "seconds": s.reload_timeout_seconds,
        "most": PLAN_MOST,
        "advice": "plan fewer --days or --market",
    }
    planned = expand_days(schedule, first, days, markets=market, **bounds)
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
    loaded = None
    if s.sqlite_path is None or s.sqlite_path.is_file():  # never make a database to compare
        with make_engine(s.database_url).connect() as conn:
            if sa.inspect(conn).has_table("ledger_state"):
                loaded = active_schedule(conn)
    if loaded is None and schedules:  # nothing applied yet: compare with the live files
        loaded = load_paths([s.schedules_dir], default_timezone=s.timezone)
    before = expand_days(loaded, first, days, markets=market, **bounds) if loaded else []
    changes = compare(before, planned, loaded, schedule)
    ref = loaded or schedule
    if as_json:
        out.print(
            json.dumps(
                {
                    "added": [_planned_json(p, schedule) for p in changes.added],
                    "removed": [_planned_json(p, ref) for p in changes.withdrawn],
                    "changed": [
                        {**_planned_json(m.new, schedule), "was": _planned_json(m.old, ref)}
                        for m in changes.moved
                    ],
                    "tasks": [
                        {"task": c.task_id, "change": c.what, "old": c.old, "new": c.new}
                        for c in changes.tasks
                    ],
                },
                ensure_ascii=False,
                indent=1,
            ),
            markup=False,
        )
        return
    if changes.empty:
        out.print("no difference against the loaded schedule", markup=False)
        return
    if changes.added:
        _plan_table(changes.added, schedule, f"+ {len(changes.added)} added", style="green")
    if changes.withdrawn:
        _plan_table(changes.withdrawn, ref, f"- {len(changes.withdrawn)} removed", style="red")
    if changes.moved:
        _moved_table(changes.moved, schedule)
    if changes.tasks:
        table = Table(
            title=f"~ {len(changes.tasks)} task changes", title_style="yellow", title_justify="left"
        )
        for col in ("task", "change", "old", "new"):
            table.add_column(col)
        for c in changes.tasks:
            table.add_row(c.task_id, c.what, c.old or "—", c.new or "—")
        out.print(table)


def _plan_table(planned: list[Planned], schedule: Schedule, title: str, style: str = "") -> None:
    table = Table(title=title, title_style=style, title_justify="left")
    for col in ("day", "market", "area", "task", "opens", "due", "missed after"):
        table.add_column(col)
    for p in planned:
        zone = schedule.zone(schedule.market_by_id[p.market_id])
        table.add_row(
            f"{p.local_date:%m-%d}",
            p.market_id,
            p.area_id or "—",
            p.task_id,
            f"{p.opens_at.astimezone(zone):%m-%d %H:%M}",
            f"{p.due_at.astimezone(zone):%m-%d %H:%M}",
            f"{p.missed_at.astimezone(zone):%m-%d %H:%M}"
            + (f" (excused: {p.excused})" if p.excused else ""),
        )
    out.print(table)


def _moved_table(moved: list[Moved], schedule: Schedule) -> None:
    table = Table(title=f"~ {len(moved)} changed", title_style="yellow", title_justify="left")
    for col in ("day", "market", "area", "task", "opens", "due", "missed after", "state"):
        table.add_column(col)

    def pair(a: datetime, b: datetime, zone: Any) -> str:
        old, new = f"{a.astimezone(zone):%m-%d %H:%M}", f"{b.astimezone(zone):%m-%d %H:%M}"
        return new if old == new else f"{old} → {new}"

    for m in moved:
        zone = schedule.zone(schedule.market_by_id[m.new.market_id])
        state = ""
        if m.old.excused != m.new.excused:
            state = f"excused ({m.new.excused})" if m.new.excused else "no longer excused"
        table.add_row(
            f"{m.new.local_date:%m-%d}",
            m.new.market_id,
            m.new.area_id or "—",
            m.new.task_id,
            pair(m.old.opens_at, m.new.opens_at, zone),
            pair(m.old.due_at, m.new.due_at, zone),
            pair(m.old.missed_at, m.new.missed_at, zone),
            state,
        )
    out.print(table)


# ------------------------------------------------------------------------------ demo


@app.command(
    name="demo",
    epilog="Example: MARKETCARE_DATABASE_URL=sqlite:///var/demo.db marketcare demo --days 14",
)
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

    s = cli_settings()
    schedule = load_paths([s.schedules_dir], default_timezone=s.timezone)
    path = s.sqlite_path
    made_here = path is not None and not path.exists()
    engine = ledger_engine(s, create=True)
    try:
        migrate(engine)
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
    except KeyboardInterrupt:
        # half a history would be refused by the next demo ("already has obligations")
        engine.dispose()
        if made_here and path is not None:
            for made in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                made.unlink(missing_ok=True)
            err.print(f"interrupted: the unfinished demo database {path} was removed")
        else:
            err.print(
                "interrupted: the database holds part of the demo history; empty it, or "
                "use a new database, before running demo again"
            )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    out.print(
        f"{days} days of history: {result.obligations} obligations — {result.done} on time, "
        f"{result.late} late, {result.failed} failed readings ({result.redone} redone), "
        f"{result.missed} missed; {result.inspections} inspections in the last month, "
        f"{result.problems} problems raised",
        markup=False,
    )


# ------------------------------------------------------------------------------ run


@app.command(epilog="Example: marketcare run --port 8000")
@handled
def run(
    host: Annotated[
        str | None, typer.Option(help="Address the web app listens on (setting web_host)")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Port of the web app (setting web_port; 0 picks a free one)"
        ),
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
