"""Inspections (督查): scoring sheets, planned rounds, scores and the red and black list.

Plain Python, like every rule: the ledger records an inspection by these rules, the
pages, the API, the CLI and the weekly bulletin show what they compute.

* A **template** (评分表) is sections of items. Each item is worth points (``weight``:
  the score is the share of applicable points passed, scaled to ``total``) or costs
  points when it fails (``deduct``: 扣分制, ``total`` minus the deductions, never below
  0). One template uses one of the two. Items may apply only to markets with certain
  area kinds (live-poultry separation needs a poultry area); elsewhere they are not
  asked. A **critical** item that fails either **caps** the score at the template's
  ``cap`` or **fails** the inspection outright (一票否决: the score is 0).
* An inspection **passes** when its score reaches ``pass_mark`` and no ``fail`` item
  failed.
* Each failed item becomes a problem with the item's category and deadline ("24h",
  "3d", as in ``timespec``).
* **Plans** put inspections in the schedules like any task: the same recurrence, and a
  window (``within``) in which the officer picks the day, unannounced.
* **Ranking** (红黑榜): markets and sub-districts by inspection score (not inspected:
  last), then daily-work compliance, then rectification rate (nothing due counts as
  100 %: nothing was missed), then fewer problems past their deadline; equal figures
  share a place; the movement is the places gained since the previous period.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from marketcare.domain.compliance import compliance
from marketcare.domain.problems import Category, Rate
from marketcare.domain.schedules import (
    Duration,
    Id,
    Recurrence,
    _recurrence_shorthand,
    _Strict,
)
from marketcare.domain.timespec import format_duration
from marketcare.domain.vocabulary import AreaKind
from marketcare.errors import SourceError

#: the top-level keys of a schedule file that this module validates
KEYS = ("inspection_templates", "inspections")

CategoryName = Literal["sanitation", "repair", "pest", "order"]
assert set(CategoryName.__args__) == {c.value for c in Category}  # type: ignore[attr-defined]


#: points are positive and finite (a weight of 1e400 is a typing slip, not infinity)
Points = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]


class Outcome(StrEnum):
    """An item's result on one inspection."""

    #: an outcome, not a password (bandit B105 accepted)
    PASS = "pass"  # nosec B105
    FAIL = "fail"
    NA = "na"


class Critical(StrEnum):
    CAP = "cap"  # a failure caps the score at the template's ``cap``
    FAIL = "fail"  # a failure fails the inspection (一票否决): the score is 0


# ---------------------------------------------------------------- templates


class InspectionItem(_Strict):
    """One line of the scoring sheet."""

    id: Id
    name: str = Field(min_length=1, max_length=200)
    guide: str | None = None
    weight: Points | None = None
    deduct: Points | None = None
    area_kinds: list[AreaKind] | None = None
    photo_on_fail: bool | None = None
    category: CategoryName | None = None
    deadline: Duration | None = None
    critical: Critical | None = None

    @model_validator(mode="after")
    def _points(self) -> InspectionItem:
        if (self.weight is None) == (self.deduct is None):
            raise ValueError("give an item either weight (points earned) or deduct (扣分)")
        if self.deadline is not None and self.deadline <= timedelta(0):
            raise ValueError("deadline: a rectification deadline is longer than 0")
        if self.area_kinds is not None and not self.area_kinds:
            raise ValueError("area_kinds is empty; leave it out for every market")
        return self

    @property
    def points(self) -> float:
        return float(self.weight if self.weight is not None else self.deduct or 0)


class InspectionSection(_Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    category: CategoryName | None = None
    deadline: Duration | None = None
    photo_on_fail: bool | None = None
    items: list[InspectionItem] = Field(min_length=1)


class InspectionTemplate(_Strict):
    """A scoring sheet (督查评分表) as operators write it in ``schedules/``."""

    id: Id
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(default="1", min_length=1, max_length=40)
    total: Points = 100.0
    pass_mark: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    cap: float = Field(default=59.0, ge=0, allow_inf_nan=False)
    category: CategoryName = "sanitation"
    deadline: Duration = timedelta(days=1)
    photo_on_fail: bool = False
    sources: list[str] = Field(default_factory=list)
    sections: list[InspectionSection] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> InspectionTemplate:
        ids = [s.id for s in self.sections]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"section id {dupes[0]!r} is used twice")
        items = [i.id for s in self.sections for i in s.items]
        dupes = sorted({i for i in items if items.count(i) > 1})
        if dupes:
            raise ValueError(
                f"item id {dupes[0]!r} is used twice (item ids are unique per template)"
            )
        modes = {"weight" if i.weight is not None else "deduct" for _, i in self.items()}
        if len(modes) > 1:
            raise ValueError(
                "mix of weight and deduct items: a template scores by points earned (weight) "
                "or by deductions (deduct), not both"
            )
        if self.deadline <= timedelta(0):
            raise ValueError("deadline: a rectification deadline is longer than 0")
        problems = self._points_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _points_problems(self) -> list[str]:
        """Marks that cannot mean what was written: above the total, a cap that fails
        nothing, deductions that cannot fail anyone. Said all at once, each with the
        default named when it was not written (a sheet out of 10 keeps 60 and 59 unless
        told otherwise)."""

        def shown(name: str) -> str:
            value: float = getattr(self, name)
            if name in self.model_fields_set:
                return f"{name} {value:g}"
            return f"{name} {value:g} (by default)"

        problems: list[str] = []
        cap_items = [i.id for _, i in self.items() if i.critical == Critical.CAP]
        if self.pass_mark > self.total:
            problems.append(
                f"{shown('pass_mark')} is above total {self.total:g}; write a pass_mark "
                f"of at most {self.total:g}"
            )
        if self.cap > self.total and (cap_items or "cap" in self.model_fields_set):
            problems.append(
                f"{shown('cap')} is above total {self.total:g}; write a cap below pass_mark"
            )
        if cap_items and self.pass_mark <= self.total and self.cap >= self.pass_mark:
            problems.append(
                f"{shown('cap')} is not below {shown('pass_mark')}: a failed critical: cap "
                f"item ({cap_items[0]!r}) would still pass; write a cap below pass_mark"
            )
        critical = any(i.critical is not None for _, i in self.items())
        if self.scoring == "deduct" and not critical and self.pass_mark <= self.total:
            deductions = sum(i.points for _, i in self.items())
            if self.total - deductions >= self.pass_mark:
                problems.append(
                    f"the deductions of all items add up to {deductions:g}, so a market "
                    f"failing every item still scores {self.total - deductions:g} of "
                    f"{self.total:g} and passes ({shown('pass_mark')}); raise the deductions "
                    "or pass_mark"
                )
        return problems

    @property
    def scoring(self) -> Literal["weight", "deduct"]:
        return "weight" if self.sections[0].items[0].weight is not None else "deduct"

    def items(self) -> list[tuple[InspectionSection, InspectionItem]]:
        return [(s, i) for s in self.sections for i in s.items]

    def item(self, item_id: str) -> tuple[InspectionSection, InspectionItem]:
        for section, item in self.items():
            if item.id == item_id:
                return section, item
        raise KeyError(item_id)

    def applies(self, item: InspectionItem, area_kinds: Iterable[str]) -> bool:
        """Is ``item`` asked in a market with these area kinds?"""
        return item.area_kinds is None or bool({k.value for k in item.area_kinds} & set(area_kinds))

    def rule_of(self, section: InspectionSection, item: InspectionItem) -> ItemRule:
        """What a failure of ``item`` means, with the section's and template's defaults."""
        return ItemRule(
            item_id=item.id,
            section=section.name,
            name=item.name,
            scoring=self.scoring,
            points=item.points,
            critical=item.critical,
            photo_on_fail=_first(item.photo_on_fail, section.photo_on_fail, self.photo_on_fail),
            category=_first(item.category, section.category, self.category),
            deadline=_first(item.deadline, section.deadline, self.deadline),
            guide=item.guide,
        )

    def rules(self, area_kinds: Iterable[str] | None = None) -> list[ItemRule]:
        """The rules of the items asked in a market with ``area_kinds`` (None: every item)."""
        kinds = None if area_kinds is None else set(area_kinds)
        return [
            self.rule_of(s, i) for s, i in self.items() if kinds is None or self.applies(i, kinds)
        ]

    def snapshot(self) -> dict[str, Any]:
        """The template as plain JSON (deadlines written back as ``24h``), kept with every
        inspection so it can be read as it was scored."""
        data: dict[str, Any] = _plain(self.model_dump(mode="python", exclude_none=True))
        return data

    @property
    def digest(self) -> str:
        """SHA-256 of the snapshot: two inspections with the same digest used the same sheet."""
        text = json.dumps(self.snapshot(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


@dataclass(frozen=True)
class ItemRule:
    """One item as an inspection records it: enough to score and to raise its problem."""

    item_id: str
    section: str
    name: str
    scoring: Literal["weight", "deduct"]
    points: float
    critical: Critical | None
    photo_on_fail: bool
    category: str
    deadline: timedelta
    guide: str | None = None


# ---------------------------------------------------------------- plans


class InspectionPlan(_Strict):
    """Planned rounds: each market on each recurrence date, some day within ``within``."""

    id: Id
    template: Id
    name: str | None = None
    markets: Literal["all"] | list[Id] = "all"
    recurrence: Annotated[Recurrence, BeforeValidator(_recurrence_shorthand)]
    within: Duration = timedelta(days=7)

    @model_validator(mode="after")
    def _window(self) -> InspectionPlan:
        if self.within < timedelta(days=1):
            raise ValueError("within: the window of an unannounced inspection is a day or more")
        if self.recurrence.rest_days:
            # it has no days of its own: the plan would never have a window
            raise ValueError(
                "recurrence: rest_days follows an area's rest, and a plan is for whole "
                "markets; give the days its windows start, e.g. {monthly_days: [1, 16]}"
            )
        if self.recurrence.timed or self.recurrence.every_hours is not None:
            raise ValueError(
                "recurrence: a window starts on a day; give days, not times of day "
                "(every_hours, BYHOUR, FREQ=HOURLY)"
            )
        return self


class InspectionFile(_Strict):
    """The part of a schedule file this module owns."""

    inspection_templates: list[InspectionTemplate] = Field(default_factory=list)
    inspections: list[InspectionPlan] = Field(default_factory=list)


#: error hints: which model a key of an inspection path belongs to
MODEL_AT: dict[str, type[_Strict]] = {
    "inspection_templates": InspectionTemplate,
    "sections": InspectionSection,
    "items": InspectionItem,
    "inspections": InspectionPlan,
}


@dataclass(frozen=True, order=True)
class PlannedWindow:
    """One planned inspection of one market: any day from ``start`` to ``end`` (local)."""

    start: date
    end: date  # exclusive
    market_id: str
    plan_id: str
    template_id: str

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)


def plan_windows(
    plan: InspectionPlan, market_ids: Sequence[str], *, start: date, end: date
) -> list[PlannedWindow]:
    """The windows of ``plan`` that overlap ``[start, end)``, per market."""
    days = max(1, round(plan.within / timedelta(days=1)))
    first = datetime.combine(start - timedelta(days=days), datetime.min.time())
    last = datetime.combine(end, datetime.min.time())
    # the recurrence with its season, except and extra, as a task's (not the bare rule)
    found = plan.recurrence.occurrences(first, last)
    dates = sorted({d.date() for d in found if first < d and d.date() < end})
    chosen = market_ids if plan.markets == "all" else [m for m in market_ids if m in plan.markets]
    out: list[PlannedWindow] = []
    for d in dates:
        w_end = d + timedelta(days=days)
        if w_end <= start:
            continue
        out.extend(PlannedWindow(d, w_end, m, plan.id, plan.template) for m in chosen)
    return sorted(out)


@dataclass(frozen=True)
class WindowStatus:
    window: PlannedWindow
    state: Literal["done", "open", "upcoming", "missed"]
    inspection_id: int | None


def window_states(
    windows: Sequence[PlannedWindow],
    inspections: Sequence[tuple[int, str, str, date]],
    *,
    today: date,
) -> list[WindowStatus]:
    """Match planned windows to inspections (id, market, template, local date): each
    inspection fulfils at most one window of its market and template."""
    used: set[int] = set()
    out = []
    for w in sorted(windows):
        found = next(
            (
                i
                for i, market, template, day in sorted(inspections, key=lambda x: (x[3], x[0]))
                if i not in used
                and market == w.market_id
                and template == w.template_id
                and w.start <= day < w.end
            ),
            None,
        )
        if found is not None:
            used.add(found)
            out.append(WindowStatus(w, "done", found))
        elif today >= w.end:
            out.append(WindowStatus(w, "missed", None))
        elif today >= w.start:
            out.append(WindowStatus(w, "open", None))
        else:
            out.append(WindowStatus(w, "upcoming", None))
    return out


# ---------------------------------------------------------------- validation across files


def cross_check(files: Sequence[Any], market_ids: Iterable[str]) -> list[SourceError]:
    """Ids unique across files; a plan names a known template and known markets.

    ``files`` are ``yamlsource.Located`` of every schedule file (raw data, so a file with
    other errors still gets these checked).
    """
    import difflib

    errors: list[SourceError] = []
    templates: dict[str, str] = {}
    plans: dict[str, str] = {}
    markets = sorted(market_ids)
    for located in files:
        for key, seen, what in (
            ("inspection_templates", templates, "inspection template"),
            ("inspections", plans, "inspection plan"),
        ):
            entries = located.data.get(key)
            for i, entry in enumerate(entries if isinstance(entries, list) else []):
                ident = entry.get("id") if isinstance(entry, dict) else None
                if not isinstance(ident, str):
                    continue
                if ident in seen:
                    errors.append(
                        located.error(
                            (key, i, "id"),
                            f"{what} id {ident!r} is already defined in {seen[ident]}",
                        )
                    )
                seen.setdefault(ident, located.file)
    for located in files:
        entries = located.data.get("inspections")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict):
                continue
            ref = entry.get("template")
            if isinstance(ref, str) and ref not in templates:
                close = difflib.get_close_matches(ref, sorted(templates), n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f" (known: {', '.join(sorted(templates)) or 'none'})"
                )
                errors.append(
                    located.error(("inspections", i, "template"), f"unknown template {ref!r}{hint}")
                )
            refs = entry.get("markets")
            for j, m in enumerate(refs if isinstance(refs, list) else []):
                if isinstance(m, str) and m not in markets:
                    close = difflib.get_close_matches(m, markets, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    errors.append(
                        located.error(
                            ("inspections", i, "markets", j), f"unknown market {m!r}{hint}"
                        )
                    )
    return errors


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    """The result of one inspection."""

    value: float | None  # 0..total; None when no item applied
    total: float
    passed: bool
    failed: tuple[str, ...]  # item ids
    capped_by: str | None = None  # the critical item that capped the score
    failed_by: str | None = None  # the critical item that failed the inspection


def score(
    rules: Sequence[ItemRule],
    outcomes: Mapping[str, Outcome | str],
    *,
    total: float = 100.0,
    pass_mark: float = 60.0,
    cap: float = 59.0,
) -> Score:
    """Score one inspection: see the module docstring for the rules."""
    failed: list[str] = []
    earned = possible = deducted = 0.0
    capped_by = failed_by = None
    scoring = rules[0].scoring if rules else "deduct"
    for rule in rules:
        outcome = Outcome(outcomes.get(rule.item_id, Outcome.NA))
        if outcome == Outcome.NA:
            continue
        possible += rule.points
        if outcome == Outcome.PASS:
            earned += rule.points
            continue
        failed.append(rule.item_id)
        deducted += rule.points
        if rule.critical == Critical.CAP and capped_by is None:
            capped_by = rule.item_id
        if rule.critical == Critical.FAIL and failed_by is None:
            failed_by = rule.item_id
    value: float | None
    if possible == 0:
        value = None
    elif scoring == "weight":
        value = total * earned / possible
    else:
        value = max(0.0, total - deducted)
    if value is not None and capped_by is not None:
        value = min(value, cap)
    if value is not None and failed_by is not None:
        value = 0.0
    if value is not None:
        value = round(value, 2)
    passed = value is not None and value >= pass_mark and failed_by is None
    return Score(value, total, passed, tuple(failed), capped_by, failed_by)


def template_score(
    template: InspectionTemplate,
    outcomes: Mapping[str, Outcome | str],
    *,
    area_kinds: Iterable[str] | None = None,
) -> Score:
    """``score`` with a template's rules and marks."""
    return score(
        template.rules(area_kinds),
        outcomes,
        total=template.total,
        pass_mark=template.pass_mark,
        cap=template.cap,
    )


def check_answers(
    rules: Sequence[ItemRule],
    outcomes: Mapping[str, str],
    photos: Iterable[str],
) -> list[tuple[str, str]]:
    """Field errors of a submission as (field, message): every item answered with pass,
    fail or na; a photo for each failure that needs one; no unknown item."""
    errors: list[tuple[str, str]] = []
    known = {r.item_id for r in rules}
    with_photo = set(photos)
    valid = ", ".join(o.value for o in Outcome)
    for item_id in sorted(set(outcomes) - known):
        errors.append((f"item.{item_id}", f"{item_id!r} is not an item of this sheet"))
    for rule in rules:
        given = outcomes.get(rule.item_id)
        where = f"item.{rule.item_id}"
        if given is None or given == "":
            errors.append((where, f"{rule.name}: answer pass, fail or na"))
            continue
        if given not in {o.value for o in Outcome}:
            errors.append((where, f"{rule.name}: {given!r} is not one of {valid}"))
            continue
        if given == Outcome.FAIL and rule.photo_on_fail and rule.item_id not in with_photo:
            errors.append((f"photo.{rule.item_id}", f"{rule.name}: a failure needs a photo"))
    return errors


# ---------------------------------------------------------------- ranking


@dataclass(frozen=True)
class Figures:
    """What a market or sub-district did in one period (the ranking's inputs)."""

    key: str  # a market id or a sub-district name
    scores: tuple[float, ...] = ()  # inspection scores in the period
    on_time: int = 0
    due: int = 0
    verified: int = 0
    rectification_due: int = 0
    past_deadline: int = 0

    @property
    def inspection_score(self) -> float | None:
        """The mean inspection score, None without an inspection."""
        return None if not self.scores else round(sum(self.scores) / len(self.scores), 2)

    @property
    def compliance(self) -> float | None:
        return compliance(self.on_time, self.due)

    @property
    def rectification(self) -> float | None:
        return Rate(self.verified, self.rectification_due).value


def combine(key: str, parts: Sequence[Figures]) -> Figures:
    """A sub-district's figures from its markets': each market's mean score counts once;
    counts are added (the compliance and the rate are pooled, as the district total is)."""
    return Figures(
        key=key,
        scores=tuple(s for p in parts if (s := p.inspection_score) is not None),
        on_time=sum(p.on_time for p in parts),
        due=sum(p.due for p in parts),
        verified=sum(p.verified for p in parts),
        rectification_due=sum(p.rectification_due for p in parts),
        past_deadline=sum(p.past_deadline for p in parts),
    )


@dataclass(frozen=True)
class Standing:
    """One line of the ranking."""

    rank: int
    figures: Figures
    previous_rank: int | None

    @property
    def key(self) -> str:
        return self.figures.key

    @property
    def movement(self) -> int | None:
        """Places gained since the previous period (negative: lost); None if new."""
        return None if self.previous_rank is None else self.previous_rank - self.rank


def _order(f: Figures) -> tuple[Any, ...]:
    """Higher score first (not inspected: last); then compliance and rectification rate,
    where "nothing was due" counts as 100 % (nothing was missed); then fewer past deadline."""
    score = f.inspection_score
    return (
        (1, 0.0) if score is None else (0, -score),
        -(1.0 if f.compliance is None else f.compliance),
        -(1.0 if f.rectification is None else f.rectification),
        f.past_deadline,
    )


def rank(
    current: Sequence[Figures],
    previous: Sequence[Figures] = (),
    *,
    places_before: Mapping[str, int] | None = None,
) -> list[Standing]:
    """Rank by score, compliance, rectification rate, then fewer problems past deadline;
    equal figures share a place (1, 2, 2, 4). The movement is against the places of
    ``previous`` ranked the same way, or against ``places_before`` where the period
    before's places were kept."""
    before = dict(places_before) if places_before is not None else _places(_ordered(previous))
    ordered = _ordered(current)
    places = _places(ordered)
    return [Standing(places[f.key], f, before.get(f.key)) for _, f in ordered]


def _ordered(figures: Sequence[Figures]) -> list[tuple[tuple[Any, ...], Figures]]:
    """The figures best first, each with its order, worked out once (a city ranks a
    thousand markets on every dashboard request)."""
    return sorted((((_order(f), f.key), f) for f in figures), key=lambda pair: pair[0])


def _places(ordered: Sequence[tuple[tuple[Any, ...], Figures]]) -> dict[str, int]:
    places: dict[str, int] = {}
    last: tuple[Any, ...] | None = None
    place = 0
    for i, ((key, _), f) in enumerate(ordered, start=1):
        if key != last:
            place, last = i, key
        places[f.key] = place
    return places


def red_and_black(standings: Sequence[Standing], *, size: int = 3) -> tuple[list[str], list[str]]:
    """The red list (best ``size``) and the black list (worst ``size``) of a ranking,
    leaving out whoever had no inspection; nobody is on both."""
    scored = [s for s in standings if s.figures.inspection_score is not None]
    red = [s.key for s in scored[:size]]
    black = [s.key for s in reversed(scored[-size:]) if s.key not in red]
    return red, black
