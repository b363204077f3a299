"""The daily work from a terminal: the board (status) and ticking an obligation.

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from marketcare.cli.common import (
    EXIT_FAILED_READING,
    STATE_STYLE,
    app,
    check_choices,
    connect,
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

# ------------------------------------------------------------------------------ status


@app.command(epilog="Example: marketcare status --market lizhong --date 2026-11-27")
@handled
def status(
    date_: Annotated[
        str | None, typer.Option("--date", help="Local day (YYYY-MM-DD; default today).")
    ] = None,
    market: Annotated[list[str] | None, typer.Option(help="Only this market (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The board: every obligation of the day and its state, overdue first."""
    from marketcare.ledger.db import read
    from marketcare.ledger.readmodel import area_names, board, markets
    from marketcare.ledger.versions import active_schedule

    s, engine = connect()
    day = parse_date(date_, "--date") or local_today(s)
    check_choices(market, [m.id for m in markets(engine)], "--market")
    now = utcnow()
    rows = board(engine, day=day, now=now, markets=market)
    if as_json:
        out.print(json.dumps([r.as_json() for r in rows], ensure_ascii=False, indent=1))
        return
    t = words(s)
    if not rows:
        out.print(t.tr("No obligations on {day}.").format(day=day))
        return
    with read(engine) as conn:
        schedule = active_schedule(conn)
    tasks = {} if schedule is None else {k: v.name for k, v in schedule.task_by_id.items()}
    place = area_names(engine, (r.market_id for r in rows))
    counts: dict[str, int] = {}
    for r in rows:
        label = t.state(r.state)
        counts[label] = counts.get(label, 0) + 1
    table = Table(
        title=f"{day}: " + ", ".join(f"{label} {n}" for label, n in counts.items()),
        title_justify="left",
    )
    for header in (
        t.tr("No."),
        t.tr("Market"),
        t.tr("Area"),
        t.tr("Task"),
        t.tr("Opens"),
        t.tr("Due by"),
        t.tr("State"),
        t.tr("Completed at"),
    ):
        table.add_column(header)
    for r in rows:
        completed = r.local(r.completed_at)
        table.add_row(
            str(r.id),
            r.market_name,
            place.get((r.market_id, r.area_id), r.area_id) if r.area_id else "—",
            t.task_name(r.task_id, tasks.get(r.task_id)),
            f"{r.local(r.opens_at):%H:%M}",
            f"{r.local(r.due_at):%H:%M}",
            styled(t.state(r.state) + (" !" if r.overdue else ""), STATE_STYLE[r.state]),
            f"{completed:%H:%M}" if completed else "",
        )
    out.print(table)


# ------------------------------------------------------------------------------ tick


def _readings(pairs: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--reading {pair!r}: write KEY=VALUE, e.g. chlorine=1000", "readings")
        try:
            value = float(raw)
        except ValueError:
            raise BadInput(f"--reading {pair!r}: {raw!r} is not a number", "readings") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise BadInput(f"--reading {pair!r}: {raw!r} is not a finite number", "readings")
        values[key.strip()] = value
    return values


def _texts(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--text {pair!r}: write KEY=VALUE, e.g. agents=溴敌隆 50 g", "texts")
        values[key.strip()] = value
    return values


@app.command(epilog="Example: marketcare tick 42 --by 林秀英 --reading chlorine=500")
@handled
def tick(
    obligation_id: Annotated[
        int,
        typer.Argument(min=1, max=ID_MAX, help="The obligation's id (see marketcare status)."),
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
    from marketcare.domain.obligations import State
    from marketcare.ledger.tick import tick as record_tick

    s, engine = connect()
    result = record_tick(
        engine,
        obligation_id=obligation_id,
        by=by,
        now=utcnow(),
        readings=_readings(reading or []),
        items=item,
        note=note,
        token=token,
        texts=_texts(text or []),
    )
    out.print(f"obligation {result.obligation_id}: {result.state.value} — {result.message}")
    if result.state == State.FAILED and result.changed:
        raise typer.Exit(EXIT_FAILED_READING)
