"""Inspections in the ledger: one submission is one transaction.

Recording an inspection, by the rules of ``domain/inspections.py``:

* the answers are checked against the sheet as it applies to the market (its area
  kinds); a bad answer changes nothing and names the item;
* the sheet's snapshot is kept once per digest, the inspection and its items are
  written, the score is the domain's;
* each failed item becomes a problem of the market with the item's category and
  deadline, linked back to the item (``problems.inspection_result_id``), raised once per
  item (``source_key``);
* an earlier problem of the same item still waiting (open or rectified) is re-inspected
  instead (再督查): rectified and now passing → verified; rectified and failing again →
  reopened; still open → it stays open and no second problem is raised;
* the same submission (client token) sent twice records once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import inspections as rules
from marketcare.domain.inspections import InspectionTemplate, Outcome, Score
from marketcare.domain.problems import ProblemState
from marketcare.errors import BadInput, NotFound
from marketcare.ledger import audit
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import (
    AreaRow,
    InspectionResult,
    InspectionRow,
    InspectionTemplateRow,
    MarketRow,
    ProblemRow,
)

log = logging.getLogger(__name__)

MAX_NOTE = 2000


class InspectionRefused(BadInput):
    """A submission was not recorded; ``errors`` are (field, message) pairs, the first
    one's field is the error's ``field``."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__(
            "; ".join(f"{f}: {m}" for f, m in self.errors),
            self.errors[0][0] if self.errors else None,
            by_field=self.errors,
        )


@dataclass(frozen=True)
class Submission:
    """What the officer sends: an answer per item, notes and photos of failures."""

    market_id: str
    by: str
    outcomes: Mapping[str, str]
    notes: Mapping[str, str] = field(default_factory=dict)
    photos: Mapping[str, Sequence[dict[str, Any]]] = field(default_factory=dict)
    note: str | None = None
    plan_id: str | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Recorded:
    inspection_id: int
    created: bool
    score: float | None
    passed: bool
    raised: tuple[int, ...] = ()  # problems raised by this inspection
    verified: tuple[int, ...] = ()  # earlier problems it verified
    reopened: tuple[int, ...] = ()  # earlier problems it reopened
    still_open: tuple[int, ...] = ()  # earlier open problems it found still failing


def area_kinds(conn: sa.Connection, market_id: str) -> set[str]:
    return set(
        conn.execute(
            sa.select(AreaRow.kind).where(AreaRow.market_id == market_id, AreaRow.active)
        ).scalars()
    )


def applicable(
    engine: sa.Engine, template: InspectionTemplate, market_id: str
) -> list[rules.ItemRule]:
    """The items of ``template`` asked in ``market_id`` (by its area kinds)."""
    with read(engine) as conn:
        if conn.execute(sa.select(MarketRow.id).where(MarketRow.id == market_id)).first() is None:
            raise NotFound(f"market {market_id!r} does not exist")
        return template.rules(area_kinds(conn, market_id))


def record(
    engine: sa.Engine,
    template: InspectionTemplate,
    submission: Submission,
    *,
    now: datetime,
) -> Recorded:
    """Record one inspection and everything it raises or re-inspects (see the module)."""

    def step() -> Recorded:
        with write(engine) as conn:
            return record_in(conn, template, submission, now=now)

    return retrying(step, what="record inspection")


def record_in(
    conn: sa.Connection,
    template: InspectionTemplate,
    sub: Submission,
    *,
    now: datetime,
) -> Recorded:
    existing = conn.execute(
        sa.select(InspectionRow).where(InspectionRow.token == sub.token)
    ).one_or_none()
    if existing is not None:
        return _recorded_again(conn, existing)
    market = conn.execute(sa.select(MarketRow).where(MarketRow.id == sub.market_id)).one_or_none()
    if market is None:
        raise InspectionRefused([("market", f"unknown market {sub.market_id!r}")])
    kinds = area_kinds(conn, sub.market_id)
    items = template.rules(kinds)
    errors = rules.check_answers(items, sub.outcomes, [k for k, v in sub.photos.items() if v])
    if not sub.by.strip():
        errors.append(("by", "say who inspected"))
    for key, text in [*sub.notes.items(), ("note", sub.note or "")]:
        if len(text) > MAX_NOTE:
            errors.append((key, f"at most {MAX_NOTE} characters"))
    if errors:
        raise InspectionRefused(errors)
    result = rules.template_score(template, sub.outcomes, area_kinds=kinds)
    digest = template.digest
    conn.execute(
        dialect_insert(conn, InspectionTemplateRow)
        .values(
            digest=digest,
            template_id=template.id,
            version=template.version,
            name=template.name,
            body=template.snapshot(),
            first_used_at=now,
        )
        .on_conflict_do_nothing(index_elements=["digest"])
    )
    local = now.astimezone(ZoneInfo(market.timezone)).date()
    inspection_id = int(
        conn.execute(
            sa.insert(InspectionRow)
            .values(
                token=sub.token,
                market_id=sub.market_id,
                template_id=template.id,
                template_digest=digest,
                plan_id=sub.plan_id,
                by=sub.by.strip(),
                at=now,
                local_date=local.isoformat(),
                score=result.value,
                total=template.total,
                passed=result.passed,
                failed=len(result.failed),
                note=(sub.note or "").strip() or None,
                created_at=now,
            )
            .returning(InspectionRow.id)
        ).scalar_one()
    )
    waiting = _waiting_problems(conn, sub.market_id, template.id)
    raised: list[int] = []
    verified: list[int] = []
    reopened: list[int] = []
    still_open: list[int] = []
    for rule in items:
        outcome = Outcome(sub.outcomes[rule.item_id])
        note = (sub.notes.get(rule.item_id) or "").strip() or None
        photos = list(sub.photos.get(rule.item_id) or [])
        earlier = waiting.get(rule.item_id)
        result_id = int(
            conn.execute(
                sa.insert(InspectionResult)
                .values(
                    inspection_id=inspection_id,
                    item_id=rule.item_id,
                    section=rule.section,
                    name=rule.name,
                    outcome=outcome.value,
                    points=rule.points,
                    critical=rule.critical.value if rule.critical else None,
                    note=note,
                    evidence={"items": photos} if photos else None,
                    rechecked_problem_id=(
                        earlier.id if earlier is not None and outcome != Outcome.NA else None
                    ),
                )
                .returning(InspectionResult.id)
            ).scalar_one()
        )
        if earlier is not None and outcome != Outcome.NA:
            what = f"再督查 #{inspection_id}" + (f"：{note}" if note else "")
            if earlier.state == ProblemState.RECTIFIED.value and outcome == Outcome.PASS:
                problem_ledger.verify_in(conn, earlier, by=sub.by, now=now, note=what)
                verified.append(earlier.id)
            elif earlier.state == ProblemState.RECTIFIED.value:
                problem_ledger.reopen_in(conn, earlier, by=sub.by, note=what, now=now)
                reopened.append(earlier.id)
            elif outcome == Outcome.FAIL:
                still_open.append(earlier.id)
            continue
        if outcome != Outcome.FAIL:
            continue
        pid, _created = problem_ledger.add_in(
            conn,
            problem_ledger.NewProblem(
                market_id=sub.market_id,
                category=rule.category,
                description=f"{rule.section}：{rule.name}" + (f"（{note}）" if note else ""),
                found_by=sub.by.strip(),
                found_at=now,
                deadline=now + rule.deadline,
                source_key=f"inspection:{inspection_id}:{rule.item_id}",
                evidence=photos,
                inspection_result_id=result_id,
            ),
            now=now,
        )
        raised.append(pid)
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=sub.by,
                action="inspection_recorded",
                details={
                    "inspection": inspection_id,
                    "market": sub.market_id,
                    "template": template.id,
                    "template_digest": digest,
                    "score": result.value,
                    "passed": result.passed,
                    "failed": list(result.failed),
                    "raised": raised,
                    "verified": verified,
                    "reopened": reopened,
                },
            )
        ],
    )
    log.info(
        "inspection recorded",
        extra={"inspection": inspection_id, "market": sub.market_id, "score": result.value},
    )
    return Recorded(
        inspection_id,
        True,
        result.value,
        result.passed,
        tuple(raised),
        tuple(verified),
        tuple(reopened),
        tuple(still_open),
    )


def _waiting_problems(conn: sa.Connection, market_id: str, template_id: str) -> dict[str, Any]:
    """The latest problem per item of this sheet in this market that is not verified."""
    rows = conn.execute(
        sa.select(ProblemRow, InspectionResult.item_id)
        .join(InspectionResult, InspectionResult.id == ProblemRow.inspection_result_id)
        .join(InspectionRow, InspectionRow.id == InspectionResult.inspection_id)
        .where(
            ProblemRow.market_id == market_id,
            InspectionRow.template_id == template_id,
            ProblemRow.state != ProblemState.VERIFIED.value,
        )
        .order_by(ProblemRow.id)
    ).all()
    out: dict[str, Any] = {}
    for r in rows:
        problem = conn.execute(
            sa.select(ProblemRow).where(ProblemRow.id == r.id).with_for_update()
        ).one()
        out[r.item_id] = problem
    return out


def _recorded_again(conn: sa.Connection, row: Any) -> Recorded:
    raised = conn.execute(
        sa.select(ProblemRow.id)
        .join(InspectionResult, InspectionResult.id == ProblemRow.inspection_result_id)
        .where(InspectionResult.inspection_id == row.id)
        .order_by(ProblemRow.id)
    ).scalars()
    return Recorded(row.id, False, row.score, row.passed, tuple(int(p) for p in raised))


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class InspectionView:
    """One inspection with its items and the problems they raised or re-inspected."""

    row: Any
    market_name: str
    sub_district: str
    template_name: str
    template_version: str
    results: list[Any]
    raised: dict[int, int]  # result id -> problem id

    def as_json(self) -> dict[str, Any]:
        r = self.row
        return {
            "id": r.id,
            "market": r.market_id,
            "market_name": self.market_name,
            "sub_district": self.sub_district,
            "template": r.template_id,
            "template_version": self.template_version,
            "template_digest": r.template_digest,
            "plan": r.plan_id,
            "by": r.by,
            "at": r.at.isoformat(),
            "local_date": r.local_date,
            "score": r.score,
            "total": r.total,
            "passed": r.passed,
            "failed": r.failed,
            "note": r.note,
            "items": [
                {
                    "item": x.item_id,
                    "section": x.section,
                    "name": x.name,
                    "outcome": x.outcome,
                    "points": x.points,
                    "critical": x.critical,
                    "note": x.note,
                    "photos": [p.get("sha256") for p in (x.evidence or {}).get("items", [])],
                    "problem": self.raised.get(x.id),
                    "rechecked_problem": x.rechecked_problem_id,
                }
                for x in self.results
            ],
        }


def one(engine: sa.Engine, inspection_id: int) -> InspectionView:
    with read(engine) as conn:
        row = conn.execute(
            sa.select(InspectionRow).where(InspectionRow.id == inspection_id)
        ).one_or_none()
        if row is None:
            raise NotFound(f"inspection {inspection_id} does not exist")
        market = conn.execute(sa.select(MarketRow).where(MarketRow.id == row.market_id)).one()
        sheet = conn.execute(
            sa.select(InspectionTemplateRow).where(
                InspectionTemplateRow.digest == row.template_digest
            )
        ).one()
        results = list(
            conn.execute(
                sa.select(InspectionResult)
                .where(InspectionResult.inspection_id == inspection_id)
                .order_by(InspectionResult.id)
            ).all()
        )
        raised = {
            int(r.inspection_result_id): int(r.id)
            for r in conn.execute(
                sa.select(ProblemRow.id, ProblemRow.inspection_result_id).where(
                    ProblemRow.inspection_result_id.in_([x.id for x in results])
                )
            ).all()
        }
    return InspectionView(
        row, market.name, market.sub_district, sheet.name, sheet.version, results, raised
    )


def listing(
    engine: sa.Engine,
    *,
    markets: Sequence[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    limit: int = 200,
) -> list[Any]:
    """Inspections, newest first (local dates ``[start, end)``)."""
    with read(engine) as conn:
        stmt = (
            sa.select(InspectionRow, MarketRow.name.label("market_name"))
            .join(MarketRow, MarketRow.id == InspectionRow.market_id)
            .order_by(InspectionRow.at.desc(), InspectionRow.id.desc())
            .limit(limit)
        )
        if markets is not None:
            stmt = stmt.where(InspectionRow.market_id.in_(list(markets)))
        if start is not None:
            stmt = stmt.where(InspectionRow.local_date >= start.isoformat())
        if end is not None:
            stmt = stmt.where(InspectionRow.local_date < end.isoformat())
        return list(conn.execute(stmt).all())


def scores(
    conn: sa.Connection,
    *,
    start: date,
    end: date,
    markets: Sequence[str] | None = None,
) -> dict[str, list[float]]:
    """The inspection scores per market with a local date in ``[start, end)``."""
    stmt = (
        sa.select(InspectionRow.market_id, InspectionRow.score)
        .where(
            InspectionRow.local_date >= start.isoformat(),
            InspectionRow.local_date < end.isoformat(),
            InspectionRow.score.is_not(None),
        )
        .order_by(InspectionRow.at, InspectionRow.id)
    )
    if markets is not None:
        stmt = stmt.where(InspectionRow.market_id.in_(list(markets)))
    out: dict[str, list[float]] = {}
    for market_id, value in conn.execute(stmt).all():
        out.setdefault(market_id, []).append(float(value or 0))
    return out


def done_in(conn: sa.Connection, *, start: date, end: date) -> list[tuple[int, str, str, date]]:
    """(id, market, template, local date) of the inspections in ``[start, end)``, for
    matching against the planned windows."""
    rows = conn.execute(
        sa.select(
            InspectionRow.id,
            InspectionRow.market_id,
            InspectionRow.template_id,
            InspectionRow.local_date,
        ).where(
            InspectionRow.local_date >= start.isoformat(),
            InspectionRow.local_date < end.isoformat(),
        )
    ).all()
    return [(int(i), m, t, date.fromisoformat(d)) for i, m, t, d in rows]


def past_deadline(
    conn: sa.Connection, *, as_of: datetime, markets: Sequence[str] | None = None
) -> dict[str, int]:
    """Problems past their deadline per market as of ``as_of`` (``problems.is_overdue``,
    with the state they had then: verified only if verified by ``as_of``)."""
    from marketcare.domain.problems import past_deadline_at

    stmt = sa.select(
        ProblemRow.market_id, ProblemRow.state, ProblemRow.deadline, ProblemRow.verified_at
    ).where(ProblemRow.deadline < as_of)
    if markets is not None:
        stmt = stmt.where(ProblemRow.market_id.in_(list(markets)))
    out: dict[str, int] = {}
    for market_id, state, deadline, verified_at in conn.execute(stmt).all():
        if past_deadline_at(state, deadline=deadline, verified_at=verified_at, moment=as_of):
            out[market_id] = out.get(market_id, 0) + 1
    return out


__all__ = [
    "InspectionRefused",
    "InspectionView",
    "Recorded",
    "Score",
    "Submission",
    "applicable",
    "done_in",
    "listing",
    "one",
    "past_deadline",
    "record",
    "record_in",
    "scores",
]
