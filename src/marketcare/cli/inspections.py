"""``marketcare bulletin`` and ``marketcare ranking``: the weekly double report and the
ranking it starts with, from the command line (docs/inspections.md).

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer
from rich.table import Table

from marketcare.cli.common import (
    app,
    check_choices,
    connect,
    handled,
    local_today,
    out,
    parse_date,
    utcnow,
    words,
)


class BulletinPeriod(enum.StrEnum):
    """A bulletin covers a week or a month."""

    week = "week"
    month = "month"


@app.command(epilog="Example: marketcare bulletin --period week --date 2026-11-27")
@handled
def bulletin(
    period: Annotated[
        BulletinPeriod, typer.Option(help="The period it covers.")
    ] = BulletinPeriod.week,
    date_: Annotated[
        str | None, typer.Option("--date", help="A day in the period (YYYY-MM-DD; default today).")
    ] = None,
    language: Annotated[str | None, typer.Option(help="zh_CN (default setting) or en.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write the double report (双通报) as Excel and PDF, record both, print their paths."""
    from marketcare.domain.periods import Period
    from marketcare.i18n import LANGUAGES
    from marketcare.reports.bulletin import produce

    s, engine = connect()
    lang = language or s.language
    check_choices([lang], LANGUAGES, "--language")
    day = parse_date(date_, "--date") or local_today(s)
    p = Period.of(period.value, day)
    result = produce(engine, period=p, exports_dir=s.exports_dir, now=utcnow(), language=lang)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "period": p.key,
                    "xlsx": str(result.xlsx),
                    "pdf": str(result.pdf),
                    "revision": result.revision,
                    "created": result.created,
                    **result.headline,
                },
                ensure_ascii=False,
            )
        )
        return
    out.print(str(result.xlsx))
    out.print(str(result.pdf))


@app.command(epilog="Example: marketcare ranking --period month --json")
@handled
def ranking(
    period: Annotated[
        BulletinPeriod, typer.Option(help="The period ranked.")
    ] = BulletinPeriod.week,
    date_: Annotated[
        str | None, typer.Option("--date", help="A day in the period (YYYY-MM-DD; default today).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Markets ranked by inspection score, compliance, rectification rate (红黑榜)."""
    from marketcare.domain.periods import Period
    from marketcare.ledger.db import read
    from marketcare.reports import bulletin as shown
    from marketcare.reports.scores import ranking as rank

    s, engine = connect()
    p = Period.of(period.value, parse_date(date_, "--date") or local_today(s))
    with read(engine) as conn:
        ranked = rank(conn, p, as_of=utcnow())
    if as_json:
        out.print_json(json.dumps(ranked.as_json(), ensure_ascii=False))
        return
    t = words(s)
    table = Table(title=f"{t.tr('Ranking')} {p.key}", title_justify="left")
    for header in (
        t.tr("Rank"),
        t.tr("Change"),
        t.tr("Market"),
        t.tr("Sub-district"),
        t.tr("Inspection score"),
        t.tr("Compliance"),
        t.tr("Rectification rate"),
        t.tr("Past deadline"),
    ):
        table.add_column(header)
    for st in ranked.markets:
        f = st.figures
        m = ranked.info[st.key]
        table.add_row(
            str(st.rank),
            shown.movement(st.movement),
            m.name,
            m.sub_district,
            "—" if f.inspection_score is None else f"{f.inspection_score:.1f}",
            shown.pct(f.compliance),
            shown.pct(f.rectification),
            str(f.past_deadline),
        )
    out.print(table)
