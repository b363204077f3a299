"""HTML rendered from figures the app keeps between requests, kept as long as they are.

A city's dashboard page is 150 kB of HTML, and rendering it was a third of a request's
CPU. After a tick only one market's figures are counted again
(``reports.dashboard.Memo``): the other markets' figures are the very objects they were,
so what was rendered from them is what rendering again would give. Each fragment is kept
under the identity of the object it was rendered from, together with the object (so that
the identity cannot be reused by another), and under the language of the page.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

from fastapi import Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from marketcare.domain.compliance import percent
from marketcare.i18n import Translator
from marketcare.reports.dashboard import MarketFigures, Overdue

T = TypeVar("T")

#: the rows of the dashboard's table, in order (``_office_market.html``'s ``cell``)
ROWS = (
    "compliance_today",
    "open_now",
    "compliance_week",
    "missed_today",
    "missed_week",
    "open_problems",
    "overdue_problems",
    "rectification_rate",
    "links",
)


@dataclass
class Fragments:
    """Rendered fragments by (what, language, the identity of what they show)."""

    size: int = 4096
    _kept: dict[tuple[str, str, int], tuple[object, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, what: str, language: str, source: object, make: Callable[[], T]) -> T:
        """What ``make`` renders from ``source``, once per ``source`` object."""
        key = (what, language, id(source))
        hit = self._kept.get(key)
        if hit is not None and hit[0] is source:
            return cast(T, hit[1])
        done = make()
        with self._lock:
            if len(self._kept) >= self.size:
                self._kept.clear()
            self._kept[key] = (source, done)
        return done


_LOCK = threading.Lock()


def fragments_of(request: Request) -> Fragments:
    """The app's ``Fragments`` (one per app, made on first use)."""
    state = request.app.state
    with _LOCK:
        kept = getattr(state, "fragments", None)
        if kept is None:
            kept = state.fragments = Fragments()
    return cast(Fragments, kept)


@dataclass(frozen=True)
class Column:
    """One market as the dashboard shows it: its card (a phone) and its table cells."""

    card: Markup
    head: Markup
    cells: tuple[Markup, ...]


def macros(request: Request, t: Translator) -> Any:
    """``_office_market.html``'s macros in the page's language (made once per
    translator: ``i18n.translator`` keeps one per language)."""
    templates: Jinja2Templates = request.app.state.templates

    def make() -> Any:
        template = templates.env.get_template("_office_market.html")
        return template.make_module({"_": t.tr, "pct": percent})

    return fragments_of(request).get("macros", t.language, t, make)


def columns(request: Request, t: Translator, figures: list[MarketFigures]) -> list[Column]:
    """Each market's card and cells, rendered once per counted ``MarketFigures``."""
    kept = fragments_of(request)

    def column(f: MarketFigures) -> Column:
        m = macros(request, t)  # autoescaped macros: each call is Markup already
        return Column(m.card(f), m.head(f), tuple(m.cell(f, row) for row in ROWS))

    return [kept.get("column", t.language, f, partial(column, f)) for f in figures]


def rows(shown: list[Column]) -> list[Markup]:
    """The table's rows of cells, one per ``ROWS``, across the markets shown."""
    return [Markup().join(c.cells[i] for c in shown) for i in range(len(ROWS))]


def overdue_list(
    request: Request,
    t: Translator,
    overdue: tuple[Overdue, ...],
    render: Callable[[], Markup],
) -> Markup:
    """The list of problems past their deadline, rendered once per counted list (the
    markets' names and zones it shows are those the list was counted for: another
    schedule version counts it again)."""
    return fragments_of(request).get("overdue", t.language, overdue, render)
