"""Translations of the words marketcare prints into workbooks: gettext catalogs read by Babel.

The catalogs are the ``.po`` files under ``locale/<language>/LC_MESSAGES/marketcare.po``,
read as text with ``babel.messages.pofile.read_po`` (no compiled ``.mo`` files to keep in
step). Message ids are English. Code marks every id it uses as a literal, either
``tr("...")`` or ``N_("...")`` for tables built at import time, so Babel's extractor finds
them all; a test checks that each one is translated in every catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Final

from babel import Locale
from babel.dates import format_date, format_interval, format_skeleton
from babel.messages.pofile import read_po

from marketcare.domain.compliance import Category
from marketcare.domain.obligations import State
from marketcare.domain.periods import Period
from marketcare.domain.problems import Category as ProblemCategory
from marketcare.domain.problems import ProblemState, reinspection_of
from marketcare.domain.vocabulary import REINSPECTION, AreaKind, TaskKind
from marketcare.errors import MarketcareError

log = logging.getLogger(__name__)

DOMAIN: Final = "marketcare"
LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
#: languages with a catalog, the default first
LANGUAGES: Final = ("zh_CN", "en")
DEFAULT_LANGUAGE: Final = "zh_CN"


def N_(msgid: str) -> str:
    """Mark a message id for extraction without translating it (translate it later)."""
    return msgid


# Every table is keyed by the domain's enum, and a test checks each member has a label.

CATEGORY_LABELS: Final[dict[Category, str]] = {
    Category.ON_TIME: N_("On time"),
    Category.LATE: N_("Done late"),
    Category.MISSED: N_("Missed"),
    Category.FAILED: N_("Failed reading"),
    Category.EXCUSED: N_("Excused"),
    Category.PENDING: N_("Pending"),
}

STATE_LABELS: Final[dict[State, str]] = {
    State.UPCOMING: N_("Not open yet"),
    State.OPEN: N_("Open"),
    State.DONE: N_("On time"),
    State.LATE: N_("Done late"),
    State.MISSED: N_("Missed"),
    State.FAILED: N_("Failed reading"),
    State.EXCUSED: N_("Excused"),
}

TASK_KIND_LABELS: Final[dict[TaskKind, str]] = {
    TaskKind.WASTE_CLEARANCE: N_("Garbage cleared the same day"),
    TaskKind.DISINFECTION: N_("Daily disinfection after closing"),
    TaskKind.DEEP_CLEANING: N_("Deep cleaning"),
    TaskKind.PEST_CONTROL: N_("Pest control (four pests)"),
    TaskKind.FACILITY_INSPECTION: N_("Facility inspection"),
    TaskKind.CIVILITY_DUTY: N_("Civility persuader on duty"),
}

#: the office's re-inspection of a rectified problem (not a schedule task kind)
REINSPECTION_LABEL: Final = N_("Re-inspection")
#: how a re-inspection's task is named: the problem and which round of re-inspection
REINSPECTION_TASK: Final = N_("Re-inspection of problem {problem} (round {round})")

PROBLEM_CATEGORY_LABELS: Final[dict[ProblemCategory, str]] = {
    ProblemCategory.SANITATION: N_("Sanitation"),
    ProblemCategory.REPAIR: N_("Facility repair"),
    ProblemCategory.PEST: N_("Pests"),
    ProblemCategory.ORDER: N_("Market order"),
}

PROBLEM_STATE_LABELS: Final[dict[ProblemState, str]] = {
    ProblemState.OPEN: N_("Not rectified"),
    ProblemState.RECTIFIED: N_("Rectified, awaiting re-inspection"),
    ProblemState.VERIFIED: N_("Verified"),
}

AREA_KIND_LABELS: Final[dict[AreaKind, str]] = {
    AreaKind.AQUATIC: N_("Aquatic products"),
    AreaKind.MEAT: N_("Meat"),
    AreaKind.POULTRY: N_("Poultry"),
    AreaKind.VEGETABLES: N_("Vegetables"),
    AreaKind.DRY_GOODS: N_("Dry goods"),
    AreaKind.COOKED_FOOD: N_("Cooked food"),
    AreaKind.AISLES: N_("Public aisles"),
    AreaKind.TOILETS: N_("Public toilets"),
    AreaKind.REFUSE_ROOM: N_("Refuse room"),
}

PERIOD_TITLES: Final[dict[str, str]] = {
    "day": N_("Farmers' markets sanitation compliance: daily report"),
    "week": N_("Farmers' markets sanitation compliance: weekly report"),
    "month": N_("Farmers' markets sanitation compliance: monthly report"),
}


def catalog_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def read_catalog(language: str) -> dict[str, str]:
    """Message id → translation of one catalog; untranslated and fuzzy entries left out."""
    with catalog_path(language).open("rb") as f:
        catalog = read_po(f, locale=language, domain=DOMAIN)
    out: dict[str, str] = {}
    for message in catalog:
        if not message.id or message.fuzzy or not isinstance(message.id, str):
            continue
        if isinstance(message.string, str) and message.string:
            out[message.id] = message.string
    return out


@dataclass(frozen=True)
class Translator:
    """The words of one language; ``tr`` falls back to the English id (and logs it)."""

    language: str
    messages: dict[str, str]
    locale: Locale
    _missing: set[str] = field(default_factory=set, compare=False, repr=False)

    def tr(self, msgid: str) -> str:
        text = self.messages.get(msgid)
        if text is None:
            if msgid not in self._missing:
                self._missing.add(msgid)
                log.warning("no %s translation for %r", self.language, msgid)
            return msgid
        return text

    def category(self, category: Category | str) -> str:
        """The label of a compliance category (``compliance.Category``)."""
        return self.tr(CATEGORY_LABELS[Category(category)])

    def state(self, state: State | str) -> str:
        return self.tr(STATE_LABELS[State(state)])

    def task_kind(self, kind: str) -> str:
        """The label of an obligation's kind (a task kind, or the office's re-inspection);
        an unknown kind (a newer schedule) shows as its id."""
        if kind == REINSPECTION:
            return self.tr(REINSPECTION_LABEL)
        try:
            return self.tr(TASK_KIND_LABELS[TaskKind(kind)])
        except ValueError:
            return kind

    def problem_category(self, category: ProblemCategory | str) -> str:
        try:
            return self.tr(PROBLEM_CATEGORY_LABELS[ProblemCategory(category)])
        except ValueError:
            return str(category)

    def problem_state(self, state: ProblemState | str) -> str:
        return self.tr(PROBLEM_STATE_LABELS[ProblemState(state)])

    def task_name(self, task_id: str, name: str | None = None) -> str:
        """A task as people read it: its ``name`` in the schedule; a re-inspection (which
        no schedule names) for its problem and round; else its id (a task a newer schedule
        dropped). Every page, table and sheet names tasks through here."""
        if name and name != task_id:
            return name
        of = reinspection_of(task_id)
        return self.reinspection_task(*of) if of else (name or task_id)

    def reinspection_task(self, problem_id: int, round_: int) -> str:
        """``复查：第 7 号问题（第 1 次）``: a re-inspection's task, named for people."""
        return self.tr(REINSPECTION_TASK).format(problem=problem_id, round=round_)

    def area_kind(self, kind: str) -> str:
        try:
            return self.tr(AREA_KIND_LABELS[AreaKind(kind)])
        except ValueError:
            return kind

    # -- dates ---------------------------------------------------------------------------

    def long_date(self, day: date) -> str:
        """``2026年11月23日``, ``November 23, 2026``."""
        return format_date(day, "long", locale=self.locale)

    def long_datetime(self, moment: datetime) -> str:
        """A naive local date and time to the minute: ``2026年11月23日 20:00``."""
        return f"{format_date(moment, 'long', locale=self.locale)} {moment:%H:%M}"

    def period(self, period: Period) -> str:
        """``2026年第48周（2026年11月23日 – 29日）``, ``Week 48 of 2026 (Nov 23 – 29, 2026)``."""
        if period.kind == "day":
            return format_date(period.start, "full", locale=self.locale)
        if period.kind == "month":
            return format_skeleton("yMMMM", period.start, locale=self.locale)
        year, week, _ = period.start.isocalendar()
        days = format_interval(period.start, period.last_day, "yMMMd", locale=self.locale)
        return self.tr("Week {week} of {year} ({dates})").format(week=week, year=year, dates=days)

    def report_title(self, period: Period) -> str:
        return self.tr(PERIOD_TITLES[period.kind])


@lru_cache(maxsize=len(LANGUAGES))
def translator(language: str = DEFAULT_LANGUAGE) -> Translator:
    """The translator of a language in ``LANGUAGES`` (catalogs are read once per process)."""
    if language not in LANGUAGES:
        raise MarketcareError(f"unknown language {language!r}: use one of {', '.join(LANGUAGES)}")
    return Translator(language, read_catalog(language), Locale.parse(language))
