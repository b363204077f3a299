"""The JSON API of inspections, scores and the bulletin (``/api/v1``, same rules as ``api``).

* the office inspects (``inspect``); managers and the office read a market's
  inspections and scores (``view_inspections``, own markets for a manager);
* the ranking of every market and the bulletin are the office's (``ranking``), and the
  managers' too when the setting ``managers_see_ranking`` is on.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from marketcare.domain import inputs
from marketcare.domain.access import Action
from marketcare.domain.periods import Period
from marketcare.errors import BadInput, NotFound, Refused
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger import readmodel
from marketcare.ledger.db import read
from marketcare.reports import bulletin as bulletins
from marketcare.reports import scores
from marketcare.web.api import XLSX, RecordId, Sha256, _records
from marketcare.web.app import (
    SignedIn,
    authorise,
    authorise_market,
    check_csrf,
    engine_of,
    now_of,
    settings_of,
    signed_in,
)
from marketcare.web.pages_inspections import may_rank, templates_of

router = APIRouter(
    prefix="/api/v1", tags=["inspections"], dependencies=[Depends(signed_in), Depends(check_csrf)]
)

ItemId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Outcome = Literal["pass", "fail", "na"]


class InspectionIn(BaseModel):
    """An inspection as the officer's phone sends it."""

    model_config = ConfigDict(extra="forbid")

    template: ItemId | None = Field(default=None, description="the sheet; default: the first")
    token: str | None = Field(default=None, min_length=8, max_length=100)
    outcomes: dict[ItemId, Outcome] = Field(max_length=500)
    notes: dict[ItemId, Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=dict, max_length=500
    )
    photos: dict[ItemId, list[Sha256]] = Field(default_factory=dict, max_length=500)
    note: str | None = Field(default=None, max_length=2000)
    plan: ItemId | None = None


def _sheet(request: Request, template: str | None) -> Any:
    sheets = templates_of(request)
    if template is None and sheets:
        return next(iter(sheets.values()))
    if template not in sheets:
        known = ", ".join(sheets) or "none"
        raise BadInput(
            f"template: no inspection template {template!r} (known: {known})", "template"
        )
    return sheets[template]


def _period(kind: str, day: date) -> Period:
    inputs.check_date(day, "date")
    return Period.of("month" if kind == "month" else "week", day)


def _ranking_allowed(request: Request, who: Any) -> None:
    if not may_rank(request, who):
        raise Refused("your role may not do this")


@router.get("/inspection-templates", summary="The scoring sheets in the schedules")
def list_templates(request: Request, who: SignedIn) -> list[dict[str, Any]]:
    authorise(who, Action.VIEW_INSPECTIONS)
    return [
        {"id": t.id, "name": t.name, "version": t.version, "digest": t.digest, **t.snapshot()}
        for t in templates_of(request).values()
    ]


@router.get(
    "/markets/{market_id}/inspection-sheet", summary="The items a sheet asks in this market"
)
def market_sheet(
    market_id: str, request: Request, who: SignedIn, template: str | None = None
) -> dict[str, Any]:
    authorise(who, Action.INSPECT, market_id)
    readmodel.market(engine_of(request), market_id)
    sheet = _sheet(request, template)
    return {
        "template": sheet.id,
        "version": sheet.version,
        "total": sheet.total,
        "pass_mark": sheet.pass_mark,
        "items": [
            {
                "item": r.item_id,
                "section": r.section,
                "name": r.name,
                "scoring": r.scoring,
                "points": r.points,
                "critical": r.critical.value if r.critical else None,
                "photo_on_fail": r.photo_on_fail,
                "category": r.category,
                "deadline_hours": r.deadline.total_seconds() / 3600,
            }
            for r in inspection_ledger.applicable(engine_of(request), sheet, market_id)
        ],
    }


@router.post(
    "/markets/{market_id}/inspections",
    status_code=201,
    summary="Record an inspection; each failed item becomes a problem",
)
def record_inspection(
    market_id: str, body: InspectionIn, request: Request, response: Response, who: SignedIn
) -> dict[str, Any]:
    authorise(who, Action.INSPECT, market_id)
    engine = engine_of(request)
    readmodel.market(engine, market_id)
    sheet = _sheet(request, body.template)
    photos = {
        item: _records(request, who, market_id, shas) for item, shas in body.photos.items() if shas
    }
    submission = inspection_ledger.Submission(
        market_id=market_id,
        by=who.display_name or who.username,
        outcomes=dict(body.outcomes),
        notes=dict(body.notes),
        photos=photos,
        note=body.note,
        plan_id=body.plan,
        **({"token": f"api:{who.user_id}:{body.token}"} if body.token else {}),
    )
    done = inspection_ledger.record(engine, sheet, submission, now=now_of(request))
    if not done.created:
        response.status_code = 200
    return {
        "inspection_id": done.inspection_id,
        "created": done.created,
        "score": done.score,
        "passed": done.passed,
        "problems": list(done.raised),
        "verified": list(done.verified),
        "reopened": list(done.reopened),
        "still_open": list(done.still_open),
    }


@router.get("/markets/{market_id}/inspections", summary="A market's inspections, newest first")
def market_inspections(
    market_id: str,
    request: Request,
    who: SignedIn,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    authorise(who, Action.VIEW_INSPECTIONS, market_id)
    readmodel.market(engine_of(request), market_id)
    return [
        {
            "id": r.id,
            "market": r.market_id,
            "template": r.template_id,
            "by": r.by,
            "at": r.at.isoformat(),
            "local_date": r.local_date,
            "score": r.score,
            "passed": r.passed,
            "failed": r.failed,
        }
        for r in inspection_ledger.listing(engine_of(request), markets=[market_id], limit=limit)
    ]


@router.get("/inspections/{inspection_id}", summary="One inspection with its items")
def one_inspection(inspection_id: RecordId, request: Request, who: SignedIn) -> dict[str, Any]:
    try:
        view = inspection_ledger.one(engine_of(request), inspection_id)
    except NotFound:
        view = None
    authorise_market(who, Action.VIEW_INSPECTIONS, None if view is None else view.row.market_id)
    assert view is not None
    return view.as_json()


@router.get("/markets/{market_id}/scores", summary="A market's figures and its weekly trend")
def market_scores(
    market_id: str,
    request: Request,
    who: SignedIn,
    period: Literal["week", "month"] = "week",
    day: Annotated[date | None, Query(alias="date")] = None,
    weeks: Annotated[int, Query(ge=1, le=52)] = 8,
) -> dict[str, Any]:
    authorise(who, Action.VIEW_INSPECTIONS, market_id)
    info = readmodel.market(engine_of(request), market_id)
    now = now_of(request)
    chosen = _period(period, day or info.today(now))
    with read(engine_of(request)) as conn:
        ranked = scores.ranking(conn, chosen, as_of=now, markets=[market_id])
        points = scores.trend(
            conn, as_of=now, zone=info.zone, weeks=weeks, markets=[market_id]
        ).get(market_id, [])
    (own,) = ranked.markets
    mine = ranked.market_json(own)
    for key in ("rank", "previous_rank", "movement"):
        mine.pop(key)  # a ranking of one market says nothing
    return {
        "period": chosen.key,
        "figures": mine,
        "trend": [
            {
                "week": p.period.key,
                "inspection_score": p.figures.inspection_score,
                "compliance": p.figures.compliance,
                "rectification_rate": p.figures.rectification,
                "past_deadline": p.figures.past_deadline,
            }
            for p in points
        ],
    }


@router.get("/ranking", summary="Every market and sub-district ranked, with the movement")
def ranking(
    request: Request,
    who: SignedIn,
    period: Literal["week", "month"] = "week",
    day: Annotated[date | None, Query(alias="date")] = None,
) -> dict[str, Any]:
    _ranking_allowed(request, who)
    markets = readmodel.markets(engine_of(request))
    now = now_of(request)
    chosen = _period(period, day or (markets[0].today(now) if markets else now.date()))
    with read(engine_of(request)) as conn:
        return scores.ranking(conn, chosen, as_of=now).as_json()


@router.get(
    "/bulletins/{period}/{day}",
    summary="The weekly (or monthly) double report, as PDF or Excel",
    response_class=FileResponse,
)
def bulletin(
    period: Literal["week", "month"],
    day: date,
    request: Request,
    who: SignedIn,
    fmt: Annotated[Literal["pdf", "xlsx"], Query(alias="format")] = "pdf",
    language: Literal["zh_CN", "en"] | None = None,
) -> FileResponse:
    _ranking_allowed(request, who)
    result = bulletins.produce(
        engine_of(request),
        period=_period(period, day),
        exports_dir=FsPath(settings_of(request).exports_dir),
        now=now_of(request),
        language=language or who.language or settings_of(request).language,
    )
    path = result.pdf if fmt == "pdf" else result.xlsx
    return FileResponse(
        path,
        media_type="application/pdf" if fmt == "pdf" else XLSX,
        filename=path.name,
        headers={"X-Report-Revision": str(result.revision)},
    )


__all__ = ["router"]
