"""The officer's phone flow (督查) and the scores: inspect a market, read an inspection,
the market's trend, the ranking and the bulletin.

Plain server-rendered forms, like every page: one tap per item (pass / fail / not
applicable as radio buttons), a photo straight from the camera for a failure
(``capture``), one submit. A refused submission changes nothing and re-renders the
form with the answers kept and each wrong item named. The sheet, the score and the
problems a failure raises are ``domain/inspections`` and ``ledger/inspections``.
"""

from __future__ import annotations

import secrets
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from marketcare.domain import inputs
from marketcare.domain.access import Action, Principal, may
from marketcare.domain.inspections import (
    InspectionTemplate,
    PlannedWindow,
    plan_windows,
    window_states,
)
from marketcare.domain.periods import Period
from marketcare.domain.schedules import Schedule
from marketcare.errors import MarketcareError
from marketcare.i18n import Translator
from marketcare.ledger import evidence, readmodel
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger.db import read
from marketcare.ledger.versions import active_schedule
from marketcare.reports import bulletin as bulletins
from marketcare.reports import scores
from marketcare.reports.dashboard import Counted
from marketcare.web.app import (
    PageRecordId,
    SignedIn,
    authorise,
    check_csrf,
    engine_of,
    now_of,
    render,
    settings_of,
    translator_of,
)
from marketcare.web.charts import Series, bar_chart, line_chart

router = APIRouter(dependencies=[Depends(check_csrf)], include_in_schema=False)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TREND_WEEKS = 8
#: markets the office dashboard shows at once; a larger district is paged, most urgent
#: first, and its score chart shows sub-districts (the markets are on the ranking page)
MARKETS_PER_PAGE = 50


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def score_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def may_rank(request: Request, who: Principal) -> bool:
    """The ranking of every market: the office, and managers if the setting says so."""
    return may(who, Action.RANKING, managers_see_ranking=settings_of(request).managers_see_ranking)


def authorise_ranking(request: Request, who: Principal) -> None:
    if not may_rank(request, who):
        raise HTTPException(status_code=403, detail="your role may not do this")


def templates_of(request: Request) -> dict[str, InspectionTemplate]:
    with read(engine_of(request)) as conn:
        schedule = active_schedule(conn)
    return {} if schedule is None else {t.id: t for t in schedule.inspection_templates}


def template_for(request: Request, template_id: str | None) -> InspectionTemplate:
    sheets = templates_of(request)
    if not sheets:
        raise HTTPException(status_code=404, detail="no inspection template in the schedules")
    if template_id is None:
        return next(iter(sheets.values()))
    if template_id not in sheets:
        raise HTTPException(status_code=404, detail=f"no inspection template {template_id!r}")
    return sheets[template_id]


def _zone_today(request: Request, zone: str) -> date:
    return now_of(request).astimezone(ZoneInfo(zone)).date()


# ---------------------------------------------------------------- the officer's flow


def planned_this_week(request: Request, markets: list[readmodel.MarketInfo]) -> list[Any]:
    """This week's planned rounds (``plan_windows``) and whether each was done."""
    engine = engine_of(request)
    with read(engine) as conn:
        schedule = active_schedule(conn)
        zone = markets[0].zone if markets else "UTC"
        today = _zone_today(request, zone)
        week = Period.of("week", today)
        done = inspection_ledger.done_in(
            conn, start=week.start - timedelta(days=31), end=week.end + timedelta(days=1)
        )
    windows = _windows(schedule, [m.id for m in markets], week) if schedule else ()
    return window_states(windows, done, today=today)


_WINDOWS_LOCK = threading.Lock()
#: the plans' windows by (the schedule's identity, the week, the markets), with the
#: schedule (``versions.schedule_of_version`` keeps one object per version)
_WINDOWS: dict[tuple[int, date, tuple[str, ...]], tuple[Schedule, tuple[PlannedWindow, ...]]] = {}


def _windows(schedule: Schedule, ids: list[str], week: Period) -> tuple[PlannedWindow, ...]:
    """The week's planned windows of ``ids`` (``plan_windows``), expanded once per
    schedule version and week: the dashboard asks on every request."""
    key = (id(schedule), week.start, tuple(ids))
    hit = _WINDOWS.get(key)
    if hit is not None and hit[0] is schedule:
        return hit[1]
    windows: list[PlannedWindow] = []
    for plan in schedule.inspection_plans:
        windows += plan_windows(plan, ids, start=week.start, end=week.end)
    with _WINDOWS_LOCK:
        if len(_WINDOWS) >= 16:
            _WINDOWS.clear()
        _WINDOWS[key] = (schedule, tuple(windows))
    return tuple(windows)


@router.get("/inspect")
def choose_market(request: Request, who: SignedIn) -> Response:
    """The markets to inspect, with this week's planned (unannounced) rounds."""
    authorise(who, Action.INSPECT)
    engine = engine_of(request)
    markets = readmodel.markets(engine)
    states = planned_this_week(request, markets)
    due = {s.window.market_id: s for s in states if s.state in ("open", "missed")}
    last: dict[str, Any] = {}
    for row in inspection_ledger.listing(engine, limit=500):
        last.setdefault(row.market_id, row)
    return render(
        request,
        "inspect_markets.html",
        markets=markets,
        due=due,
        planned=states,
        last=last,
        score_text=score_text,
        sheets=list(templates_of(request).values()),
    )


def _form(
    request: Request,
    market: readmodel.MarketInfo,
    sheet: InspectionTemplate,
    *,
    values: dict[str, str],
    notes: dict[str, str],
    errors: dict[str, str],
    token: str,
    status_code: int = 200,
) -> Response:
    items = inspection_ledger.applicable(engine_of(request), sheet, market.id)
    sections: list[tuple[str, list[Any]]] = []
    for rule in items:
        if not sections or sections[-1][0] != rule.section:
            sections.append((rule.section, []))
        sections[-1][1].append(rule)
    return render(
        request,
        "inspect_form.html",
        status_code=status_code,
        market=market,
        sheet=sheet,
        sections=sections,
        values=values,
        notes=notes,
        errors=errors,
        token=token,
    )


@router.get("/inspect/{market}")
def inspect_form(
    request: Request, market: str, who: SignedIn, template: str | None = None
) -> Response:
    """The scoring sheet as it applies to this market, one section after another."""
    authorise(who, Action.INSPECT, market)
    info = readmodel.market(engine_of(request), market)
    sheet = template_for(request, template)
    return _form(
        request, info, sheet, values={}, notes={}, errors={}, token=secrets.token_urlsafe(16)
    )


async def _store_photo(request: Request, upload: UploadFile, t: Translator) -> dict[str, Any]:
    limit = settings_of(request).upload_max_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise MarketcareError(
            t.tr("The photo is larger than {limit} MB; take it again at a lower size.").format(
                limit=f"{limit / 1e6:g}"
            )
        )
    if evidence.sniff(data[:16]) is None:
        raise MarketcareError(
            t.tr("This file is not a photo: choose a JPEG, PNG, WebP or HEIC image.")
        )
    record: dict[str, Any] = await run_in_threadpool(
        evidence.store_bytes,
        upload.filename or "photo",
        data,
        settings_of(request).evidence_dir,
        max_bytes=limit,
    )
    return record


@router.post("/inspect/{market}")
async def submit(request: Request, market: str, who: SignedIn) -> Response:
    """Record the inspection; each failure becomes a problem (see ``ledger/inspections``)."""
    authorise(who, Action.INSPECT, market)
    t = translator_of(request)
    info = await run_in_threadpool(readmodel.market, engine_of(request), market)
    form = await request.form(max_part_size=settings_of(request).upload_max_bytes + 1)
    template_id = str(form.get("template") or "") or None
    sheet = await run_in_threadpool(template_for, request, template_id)
    token = str(form.get("token") or "") or secrets.token_urlsafe(16)
    values = {
        k.removeprefix("item."): str(v)
        for k, v in form.multi_items()
        if k.startswith("item.") and isinstance(v, str)
    }
    notes = {
        k.removeprefix("note."): str(v).strip()
        for k, v in form.multi_items()
        if k.startswith("note.") and isinstance(v, str) and v.strip()
    }
    errors: dict[str, str] = {}
    photos: dict[str, list[dict[str, Any]]] = {}
    for key, upload in form.multi_items():
        if not key.startswith("photo.") or not isinstance(upload, UploadFile):
            continue
        if not upload.filename:
            continue
        item = key.removeprefix("photo.")
        if values.get(item) != "fail":
            continue  # a photo of a passed item is not kept
        try:
            photos.setdefault(item, []).append(await _store_photo(request, upload, t))
        except MarketcareError as exc:
            errors[f"photo.{item}"] = str(exc)
    submission = inspection_ledger.Submission(
        market_id=market,
        by=who.display_name or who.username,
        outcomes=values,
        notes=notes,
        photos=photos,
        note=str(form.get("note") or "").strip() or None,
        plan_id=str(form.get("plan") or "") or None,
        token=token,
    )
    if not errors:
        try:
            done = await run_in_threadpool(
                inspection_ledger.record,
                engine_of(request),
                sheet,
                submission,
                now=now_of(request),
            )
        except inspection_ledger.InspectionRefused as exc:
            errors = dict(exc.errors)
        else:
            request.session["flash"] = [
                "ok",
                t.tr("Inspection recorded: score {score}, {problems} problems raised.").format(
                    score=score_text(done.score), problems=len(done.raised)
                ),
            ]
            return RedirectResponse(f"/i/{done.inspection_id}", status_code=303)
    return await run_in_threadpool(
        lambda: _form(
            request,
            info,
            sheet,
            values=values,
            notes=notes,
            errors=errors,
            token=token,
            status_code=400,
        )
    )


# ---------------------------------------------------------------- reading


@router.get("/i/{inspection_id}")
def inspection_page(request: Request, inspection_id: PageRecordId, who: SignedIn) -> Response:
    """One inspection: the score, each item, the problems its failures raised."""
    view = inspection_ledger.one(engine_of(request), inspection_id)
    authorise(who, Action.VIEW_INSPECTIONS, view.row.market_id)
    flash = request.session.pop("flash", None)
    return render(
        request,
        "inspection.html",
        view=view,
        score_text=score_text,
        flashes=[tuple(flash)] if isinstance(flash, list) and len(flash) == 2 else [],
        zone=readmodel.market(engine_of(request), view.row.market_id).zone,
        ZoneInfo=ZoneInfo,
    )


def trend_chart(t: Translator, points: list[scores.TrendPoint], *, title: str) -> Any:
    labels = [f"W{p.period.start.isocalendar()[1]:02d}" for p in points]
    return line_chart(
        labels,
        [
            Series(t.tr("Inspection score"), [p.figures.inspection_score for p in points], "s1"),
            Series(
                t.tr("Daily-work compliance"),
                [
                    None if p.figures.compliance is None else p.figures.compliance * 100
                    for p in points
                ],
                "s2",
            ),
            Series(
                t.tr("Rectification rate"),
                [
                    None if p.figures.rectification is None else p.figures.rectification * 100
                    for p in points
                ],
                "s3",
            ),
        ],
        title=title,
    )


@router.get("/m/{market}/inspections")
def market_inspections(request: Request, market: str, who: SignedIn) -> Response:
    """A market's inspections and its own trend (weeks on the x-axis)."""
    authorise(who, Action.VIEW_INSPECTIONS, market)
    engine = engine_of(request)
    info = readmodel.market(engine, market)
    t = translator_of(request)
    with read(engine) as conn:
        points = scores.trend(
            conn, as_of=now_of(request), zone=info.zone, weeks=TREND_WEEKS, markets=[market]
        ).get(market, [])
    return render(
        request,
        "market_inspections.html",
        market=info,
        rows=inspection_ledger.listing(engine, markets=[market], limit=100),
        chart=trend_chart(t, points, title=t.tr("Trend")),
        points=points,
        pct=pct,
        score_text=score_text,
    )


def memo_of(request: Request) -> scores.Memo:
    """The app's ``scores.Memo``: the closed weeks' figures the dashboard's panel keeps
    between requests (one per app, made on first use)."""
    state = request.app.state
    with _MEMO_LOCK:
        memo = getattr(state, "scores_memo", None)
        if memo is None:
            memo = state.scores_memo = scores.Memo()
    return memo


_MEMO_LOCK = threading.Lock()


def ranking_panel(
    request: Request,
    who: Principal,
    *,
    now: datetime | None = None,
    markets: list[readmodel.MarketInfo] | None = None,
    week_totals: scores.Totals | None = None,
    counted: Counted | None = None,
) -> dict[str, Any] | None:
    """The ranking and the district's trend for the office dashboard (None: not allowed).

    ``markets``: the active markets, when the page has just read them; ``week_totals``:
    each market's (on time, due) this week as of ``now``, when the dashboard has just
    counted them (``scores.figures_of``); ``counted``: the dashboard's figures these
    came from, kept between requests: this week's scores are kept as long as they hold,
    and after a write only the markets written to are counted again
    (``scores.Memo.open_period``)."""
    if not may_rank(request, who):
        return None
    engine = engine_of(request)
    markets = readmodel.markets(engine) if markets is None else markets
    if not markets:
        return None
    t = translator_of(request)
    zone = markets[0].zone
    now = now_of(request) if now is None else now
    week = Period.of("week", _zone_today(request, zone))
    memo = memo_of(request)
    with read(engine) as conn:
        # this week once for both; closed weeks kept
        state, shared = memo.shared(conn, known=None if counted is None else counted.written)
        same = counted is not None and counted.state == state and counted.holds(now)
        if same:
            memo.open_period(conn, state, shared, week, as_of=now, totals=week_totals)
        ranked = scores.ranking(
            conn,
            week,
            as_of=now,
            shared=shared,
            totals=week_totals,
            markets_up_to=MARKETS_PER_PAGE,  # beyond, the panel shows the sub-districts
        )
        points = scores.trend(
            conn, as_of=now, zone=zone, weeks=TREND_WEEKS, shared=shared, per_market=False
        )[""]
    memo.keep(state, shared, as_of=now)
    if same and counted is not None:
        memo.keep_open(state, shared, week, as_of=now, holds=counted.holds)
    names = {m.id: m.name for m in markets}
    return {
        "planned": [
            (names.get(s.window.market_id, s.window.market_id), s)
            for s in planned_this_week(request, markets)
        ],
        "ranking": ranked,
        "bars": bar_chart(
            [(ranked.info[s.key].name, s.figures.inspection_score) for s in ranked.markets],
            title=t.tr("Inspection score"),
        )
        if len(ranked.info) <= MARKETS_PER_PAGE
        else bar_chart(
            [(s.key, s.figures.inspection_score) for s in ranked.sub_districts],
            title=t.tr("Inspection score by sub-district"),
        ),
        "trend": trend_chart(t, points, title=t.tr("Trend")),
        "week": week,
    }


@router.get("/office/ranking")
def ranking_page(
    request: Request, who: SignedIn, period: str = "week", day: str = Query("", alias="date")
) -> Response:
    """Markets and sub-districts ranked for a week or a month, with the movement."""
    authorise_ranking(request, who)
    engine = engine_of(request)
    markets = readmodel.markets(engine)
    zone = markets[0].zone if markets else "UTC"
    try:
        when = date.fromisoformat(day) if day else _zone_today(request, zone)
    except ValueError:
        raise HTTPException(status_code=400, detail="date: write it as 2026-11-23") from None
    inputs.check_date(when, "date")
    chosen = Period.of("month" if period == "month" else "week", when)
    with read(engine) as conn:
        ranked = scores.ranking(conn, chosen, as_of=now_of(request))
    return render(
        request,
        "ranking.html",
        ranked=ranked,
        period=chosen,
        pct=pct,
        score_text=score_text,
        movement=bulletins.movement,
        day=when.isoformat(),
        panel=ranking_panel(request, who),
    )


@router.get("/bulletin/download")
def bulletin_download(
    request: Request,
    who: SignedIn,
    period: str = "week",
    day: str = Query("", alias="date"),
    fmt: str = Query("pdf", alias="format"),
) -> Response:
    """Write (or reuse) the recorded bulletin and send one of its two files."""
    authorise_ranking(request, who)
    markets = readmodel.markets(engine_of(request))
    zone = markets[0].zone if markets else "UTC"
    try:
        when = date.fromisoformat(day) if day else _zone_today(request, zone)
    except ValueError:
        raise HTTPException(status_code=400, detail="date: write it as 2026-11-23") from None
    inputs.check_date(when, "date")
    if fmt not in ("pdf", "xlsx"):
        raise HTTPException(status_code=400, detail="format: pdf or xlsx")
    result = bulletins.produce(
        engine_of(request),
        period=Period.of("month" if period == "month" else "week", when),
        exports_dir=Path(settings_of(request).exports_dir),
        now=now_of(request),
        language=translator_of(request).language,
    )
    path = result.pdf if fmt == "pdf" else result.xlsx
    return FileResponse(
        path,
        media_type="application/pdf" if fmt == "pdf" else XLSX,
        filename=path.name,
        headers={"X-Report-Revision": str(result.revision)},
    )


__all__ = ["ranking_panel", "router"]
