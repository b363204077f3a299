"""The server-rendered pages: mobile-first, every action a plain form post.

A page handler reads the request, asks ``access`` whether the user may, calls the
ledger (``ledger.readmodel`` to show; ``ledger.tick``, ``ledger.problems`` … to change) and
renders a
template, or redirects after a write (post/redirect/get, so a reload never resubmits).
"""

from __future__ import annotations

import functools
import json
import math
import unicodedata
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from marketcare.domain import inputs
from marketcare.domain.access import Action, Principal, Role, may, visible_markets
from marketcare.domain.obligations import (
    State,
    can_tick,
    format_range,
    in_range,
    minutes_late,
    next_to_do,
)
from marketcare.domain.problems import (
    Category,
    ProblemState,
    can_assign,
    is_overdue,
    moves_from,
)
from marketcare.errors import MarketcareError, NotFound, Unavailable
from marketcare.i18n import Translator
from marketcare.ledger import accounts, evidence, readmodel
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import read
from marketcare.ledger.models import Event, ProblemRow
from marketcare.ledger.tick import tick as record_tick
from marketcare.ledger.versions import active_schedule
from marketcare.web.app import (
    HERE,
    PageRecordId,
    SignedIn,
    authorise,
    authorise_market,
    check_csrf,
    engine_of,
    now_of,
    render,
    safe_next,
    settings_of,
    status_of,
    translator_of,
)

router = APIRouter(dependencies=[Depends(check_csrf)], include_in_schema=False)


@router.get("/")
def home(request: Request, who: SignedIn) -> Response:
    """Where each role starts: a manager's market board, the office dashboard, users."""
    if who.role == Role.OFFICE:
        return RedirectResponse("/office", status_code=303)
    if who.role == Role.OPERATOR:
        return RedirectResponse("/admin/users", status_code=303)
    mine = visible_markets(who, [m.id for m in readmodel.markets(engine_of(request))])
    if len(mine) == 1:
        return RedirectResponse(f"/m/{mine[0]}", status_code=303)
    return render(request, "home.html", markets=readmodel.markets(engine_of(request), mine))


# ---------------------------------------------------------------- shared helpers


def _flashes(request: Request) -> list[tuple[str, str]]:
    """The message left by the last write (post/redirect/get), shown once."""
    value = request.session.pop("flash", None)
    if isinstance(value, list) and len(value) == 2:
        return [(str(value[0]), str(value[1]))]
    return []


def _flash(request: Request, kind: str, text: str) -> None:
    request.session["flash"] = [kind, text]


def _page(request: Request, template: str, status_code: int = 200, **ctx: Any) -> Response:
    ctx.setdefault("flashes", _flashes(request))
    return render(request, template, status_code=status_code, **ctx)


def _names(engine: sa.Engine, market_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Task names (from the active schedule) and area names of a market, by id."""
    with read(engine) as conn:
        schedule = active_schedule(conn)
    tasks = {} if schedule is None else {k: t.name for k, t in schedule.task_by_id.items()}
    areas = {a["id"]: str(a["name"]) for a in readmodel.areas(engine, market_id)}
    return tasks, areas


def _people(request: Request, names: Any) -> dict[str, str]:
    """Display names of the people records name by user name; ``system`` in words."""
    found = accounts.display_names(engine_of(request), [str(n) for n in names if n])
    found.setdefault("system", translator_of(request).tr("System (automatic)"))
    return found


def _markets_of(request: Request, who: Principal) -> list[readmodel.MarketInfo]:
    engine = engine_of(request)
    every = readmodel.markets(engine)
    mine = set(visible_markets(who, [m.id for m in every]))
    return [m for m in every if m.id in mine]


def _local(moment: datetime | None, zone: str) -> datetime | None:
    return None if moment is None else moment.astimezone(ZoneInfo(zone))


async def _form(request: Request) -> FormData:
    return await request.form(max_part_size=settings_of(request).upload_max_bytes + 1)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _token(form: FormData) -> str:
    """The form's one-time token (rendered into the page), or a fresh one."""
    token = _text(form, "token")
    if not token or len(token) > 64 or not token.isalnum():
        token = uuid.uuid4().hex
    return token


class PhotoRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def _photo(request: Request, form: FormData, t: Translator) -> dict[str, Any] | None:
    """Keep the form's photo as evidence; None when none was chosen."""
    upload = form.get("photo")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    limit = settings_of(request).upload_max_bytes
    data = await upload.read(limit + 1)
    if not data:
        return None
    if len(data) > limit:
        raise PhotoRefused(
            t.tr("The photo is larger than {limit} MB; take it again at a lower size.").format(
                limit=f"{limit / 1e6:g}"
            ),
            413,
        )
    if evidence.sniff(data[:16]) is None:
        raise PhotoRefused(
            t.tr("This file is not a photo: choose a JPEG, PNG, WebP or HEIC image."), 400
        )
    try:
        return await run_in_threadpool(
            evidence.store_bytes,
            upload.filename,
            data,
            settings_of(request).evidence_dir,
            max_bytes=limit,
        )
    except evidence.EvidenceRejected as exc:
        raise PhotoRefused(str(exc), 400) from None


# ---------------------------------------------------------------- a manager's today


@router.get("/m/{market}")
def today_page(request: Request, market: str, who: SignedIn, open: int | None = None) -> Response:
    """The board a manager works from: overdue first; a task with nothing to enter is
    ticked from its row with one tap, one with readings opens its form on the board."""
    authorise(who, Action.VIEW_MARKET, market)
    engine = engine_of(request)
    board = readmodel.today(engine, market, now=now_of(request))
    tasks, areas = _names(engine, market)
    t = translator_of(request)
    sections = [
        ("overdue", t.tr("Overdue"), board.overdue),
        ("open", t.tr("Open now"), board.open_now),
        ("soon", t.tr("Due soon"), board.due_soon),
        ("later", t.tr("Later today"), board.later),
        ("finished", t.tr("Finished"), board.finished),
    ]
    may_tick = may(who, Action.TICK, market)
    todo = [
        r
        for r in board.overdue + board.open_now
        if may_tick and can_tick(r.state, opens_at=r.opens_at, now=board.now)
    ]
    return _page(
        request,
        "today.html",
        board=board,
        market=board.market,
        sections=sections,
        tasks=tasks,
        areas=areas,
        markets=_markets_of(request, who),
        checklists=readmodel.checklists(engine, todo),
        tokens={r.id: uuid.uuid4().hex for r in todo},
        open_id=open,
        rendered=board.now.astimezone(ZoneInfo(board.market.zone)).strftime("%H:%M"),
    )


# ---------------------------------------------------------------- one obligation


def _obligation_context(
    request: Request, who: Principal, obligation_id: int, done: int | None = None
) -> dict[str, Any]:
    engine = engine_of(request)
    market = authorise_market(
        who, Action.VIEW_MARKET, readmodel.market_of_obligation(engine, obligation_id)
    )
    view = readmodel.obligation(engine, obligation_id, now=now_of(request))
    info = readmodel.market(engine, market)
    return {
        "view": view,
        "market": info,
        "can_tick": may(who, Action.TICK, market) and view.tickable,
        "labels": {r.id: r.label for r in view.readings},
        "result": _result(request, view, done) if done is not None else None,
        "next_task": _next_task(request, market, view.row) if done is not None else None,
        "people": _people(request, [c["by"] for c in view.completions]),
        "token": uuid.uuid4().hex,
        "errors": {},
        "values": {},
        "confirm": [],
        "next": "",
        "error": None,
    }


def _next_task(
    request: Request, market: str, after: readmodel.BoardRow
) -> tuple[readmodel.BoardRow, str] | None:
    """The next open task of the same kind on today's board, with its name to offer."""
    engine = engine_of(request)
    board = readmodel.today(engine, market, now=now_of(request))
    found = next_to_do(after, board.overdue + board.open_now)
    if found is None:
        return None
    tasks, areas = _names(engine, market)
    name = translator_of(request).task_name(found.task_id, tasks.get(found.task_id))
    if found.area_id:
        name += f" · {areas.get(found.area_id, found.area_id)}"
    return found, name


def _result(request: Request, view: readmodel.ObligationView, done: int) -> tuple[str, str] | None:
    """What a completion came to, said plainly: on time, late, or failed and why."""
    t = translator_of(request)
    found = next((c for c in view.completions if c["id"] == done), None)
    if found is None:
        return None
    if found["outcome"] == State.FAILED.value:
        labels = {r.id: r.label for r in view.readings}
        parts = [
            t.tr("{label} {value} is outside the required range {range}.").format(
                label=labels.get(key, key),
                value=f"{failure['value']:g}",
                range=format_range(
                    None if failure.get("range") is None else tuple(failure["range"]),
                    failure.get("unit"),
                ),
            )
            for key, failure in found["failures"].items()
        ]
        return (
            "error",
            ("" if t.language == "zh_CN" else " ").join(
                [t.tr("Recorded, but FAILED:")]
                + parts
                + [t.tr("Redo the work and record the reading again.")]
            ),
        )
    if found["outcome"] == State.LATE.value:
        late = minutes_late(
            due_at=view.row.due_at, completed_at=datetime.fromisoformat(found["at"])
        )
        return ("warn", t.tr("Recorded, late by {minutes} min.").format(minutes=late))
    return ("ok", t.tr("Recorded, on time."))


@router.get("/o/{obligation_id}")
def obligation_page(
    request: Request, obligation_id: PageRecordId, who: SignedIn, done: int | None = None
) -> Response:
    return _page(
        request, "obligation.html", **_obligation_context(request, who, obligation_id, done)
    )


def _parse_number(raw: str) -> float | None:
    text = unicodedata.normalize("NFKC", raw).strip().replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@router.post("/o/{obligation_id}")
async def tick_form(request: Request, obligation_id: PageRecordId, who: SignedIn) -> Response:
    """Record a checklist filled in on the phone; the form's token makes a resubmit harmless."""
    ctx = await run_in_threadpool(_obligation_context, request, who, obligation_id)
    authorise(who, Action.TICK, ctx["market"].id)
    t = translator_of(request)
    view: readmodel.ObligationView = ctx["view"]
    form = await _form(request)
    token = _token(form)
    items = [v for v in form.getlist("item") if isinstance(v, str)]
    errors: dict[str, str] = {}
    readings: dict[str, float] = {}
    for r in view.readings:
        raw = _text(form, f"reading_{r.id}")
        if not raw:
            errors[f"reading_{r.id}"] = t.tr("Enter the reading.")
            continue
        value = _parse_number(raw)
        if value is None:
            errors[f"reading_{r.id}"] = t.tr("{value} is not a number; enter digits only.").format(
                value=repr(raw)
            )
        else:
            readings[r.id] = value
    for c in view.checklist.ticks:
        if c.id not in items:
            errors[f"item_{c.id}"] = t.tr("Tick this once it is done.")
    texts = {c.id: _text(form, f"text_{c.id}") for c in view.checklist.texts}
    for c in view.checklist.texts:
        if c.required and not texts[c.id]:
            errors[f"text_{c.id}"] = t.tr("Fill this in.")
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    values["items"] = items  # type: ignore[assignment]
    next_page = safe_next(_text(form, "next")) if _text(form, "next") else ""
    ctx.update(values=values, errors=errors, token=token, next=next_page)
    if errors:
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "obligation.html", status_code=400, **ctx)
    outside = [r for r in view.readings if not in_range(readings[r.id], r.range)]
    if outside and _text(form, "confirm_failed") != "1":
        # only the confirmation step is new: what is recorded after it stays as it was
        ctx["confirm"] = [
            t.tr("{value} is outside {range}: record it as failed, or correct it?").format(
                value=f"{readings[r.id]:g}", range=r.range_text
            )
            for r in outside
        ]
        ctx["errors"] = {f"reading_{r.id}": ctx["confirm"][i] for i, r in enumerate(outside)}
        return _page(request, "obligation.html", status_code=409, **ctx)
    try:
        photo = await _photo(request, form, t)
    except PhotoRefused as exc:
        ctx["errors"] = {"photo": exc.message}
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "obligation.html", status_code=exc.status, **ctx)
    note = _text(form, "note") or None
    try:
        result = await run_in_threadpool(
            functools.partial(
                record_tick,
                engine_of(request),
                obligation_id=obligation_id,
                by=who.username,
                now=now_of(request),
                readings=readings,
                items=items,
                note=note,
                token=f"web:{token}",
                texts={k: v for k, v in texts.items() if v},
                evidence=[photo] if photo else [],
            )
        )
    except MarketcareError as exc:
        if isinstance(exc, (NotFound, Unavailable)):
            raise
        ctx["error"] = t.tr("Not recorded: {reason}").format(reason=str(exc))
        return _page(request, "obligation.html", status_code=status_of(request, exc), **ctx)
    if result.completion_id is None:
        _flash(request, "warn", t.tr("This was already done; nothing changed."))
        return RedirectResponse(next_page or f"/o/{obligation_id}", status_code=303)
    if next_page:
        # ticked from the board: back to it, with the result and the next task open
        after = await run_in_threadpool(_obligation_context, request, who, obligation_id)
        view = after["view"]
        said = _result(request, view, result.completion_id)
        name = t.task_name(view.row.task_id, view.task_name) + (
            f" · {view.area_name}" if view.area_name else ""
        )
        if said is not None:
            _flash(request, said[0], f"{name}: {said[1]}")
        found = await run_in_threadpool(_next_task, request, ctx["market"].id, view.row)
        board = f"/m/{ctx['market'].id}"
        if found is not None and next_page == board and not view.checklist.nothing_to_enter:
            return RedirectResponse(
                f"{next_page}?open={found[0].id}#ob-{found[0].id}", status_code=303
            )
        return RedirectResponse(next_page, status_code=303)
    return RedirectResponse(f"/o/{obligation_id}?done={result.completion_id}", status_code=303)


# ---------------------------------------------------------------- history


@router.get("/m/{market}/history")
def history_page(
    request: Request,
    market: str,
    who: SignedIn,
    area: str = "",
    days: Annotated[int, Query(ge=1, le=62)] = 14,
) -> Response:
    authorise(who, Action.VIEW_MARKET, market)
    engine = engine_of(request)
    info = readmodel.market(engine, market)
    tasks, areas = _names(engine, market)
    chosen = area if area in areas else None
    rows = readmodel.history(engine, market, now=now_of(request), days=days, area=chosen)
    summaries = readmodel.history_days(engine, rows)
    return _page(
        request,
        "history.html",
        market=info,
        summaries=summaries,
        people=_people(request, [p for d in summaries for p in d.people]),
        tasks=tasks,
        areas=areas,
        area=chosen or "",
        days=days,
        State=State,
    )


# ---------------------------------------------------------------- problems


def _category_labels(t: Translator) -> dict[str, str]:
    return {c.value: t.problem_category(c) for c in Category}


def _problem_state_labels(t: Translator) -> dict[str, str]:
    return {s.value: t.problem_state(s) for s in ProblemState}


def _problems_context(request: Request, market: str) -> dict[str, Any]:
    engine = engine_of(request)
    info = readmodel.market(engine, market)
    t = translator_of(request)
    now = now_of(request)
    default_deadline = (info.today(now) + timedelta(days=7)).isoformat()
    return {
        "market": info,
        "problems": problem_ledger.listing(engine, now=now, markets=[market]),
        "areas": readmodel.areas(engine, market),
        "area_names": _names(engine, market)[1],
        "categories": _category_labels(t),
        "states": _problem_state_labels(t),
        "tz": ZoneInfo(info.zone),
        "token": uuid.uuid4().hex,
        "values": {"deadline": default_deadline},
        "errors": {},
        "error": None,
        "reported": None,
    }


@router.get("/m/{market}/problems")
def problems_page(
    request: Request, market: str, who: SignedIn, reported: int | None = None
) -> Response:
    """The market's problems; after a report, its confirmation first and the form folded
    away, so the page does not invite the same report twice."""
    authorise(who, Action.VIEW_MARKET, market)
    ctx = _problems_context(request, market)
    ctx["reported"] = next((p for p in ctx["problems"] if p.id == reported), None)
    return _page(request, "problems.html", **ctx)


@router.post("/m/{market}/problems")
async def report_problem(request: Request, market: str, who: SignedIn) -> Response:
    """Report a problem found in the market; the form's token makes a resubmit harmless."""
    authorise(who, Action.REPORT_PROBLEM, market)
    ctx = await run_in_threadpool(_problems_context, request, market)
    t = translator_of(request)
    form = await _form(request)
    info: readmodel.MarketInfo = ctx["market"]
    now = now_of(request)
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    errors: dict[str, str] = {}
    category = _text(form, "category")
    if category not in ctx["categories"]:
        errors["category"] = t.tr("Choose a category.")
    area = _text(form, "area") or None
    if area is not None and area not in ctx["area_names"]:
        errors["area"] = t.tr("Choose an area of this market.")
    description = _text(form, "description")
    if not description:
        errors["description"] = t.tr("Describe the problem.")
    deadline, problem = problem_ledger.parse_when(
        _text(form, "deadline"), ZoneInfo(info.zone), end_of_day=True, default=None
    )
    if (
        problem is not None
        or deadline is None
        or not inputs.FIRST_YEAR <= deadline.year <= inputs.LAST_YEAR  # as the API
    ):
        errors["deadline"] = t.tr("Give the deadline as a date, such as 2026-12-05.")
    elif deadline <= now:
        errors["deadline"] = t.tr("The deadline must be in the future.")
    token = _token(form)
    ctx.update(values=values, errors=errors, token=token)
    if errors:
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "problems.html", status_code=400, **ctx)
    try:
        photo = await _photo(request, form, t)
    except PhotoRefused as exc:
        ctx["errors"] = {"photo": exc.message}
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "problems.html", status_code=exc.status, **ctx)
    assert deadline is not None
    new = problem_ledger.NewProblem(
        market_id=market,
        category=category,
        description=description,
        found_by=who.username,
        found_at=now,
        deadline=deadline,
        area_id=area,
        source_key=problem_ledger.token_key("web", who.username, token),
        evidence=[photo] if photo else [],
    )
    try:
        pid, _created = await run_in_threadpool(
            functools.partial(
                problem_ledger.add, engine_of(request), new, now=now, actor=who.username
            )
        )
    except MarketcareError as exc:
        if isinstance(exc, (NotFound, Unavailable)):
            raise
        ctx["error"] = t.tr("Not recorded: {reason}").format(reason=str(exc))
        return _page(request, "problems.html", status_code=status_of(request, exc), **ctx)
    return RedirectResponse(f"/m/{market}/problems?reported={pid}", status_code=303)


def _problem_context(request: Request, who: Principal, problem_id: int) -> dict[str, Any]:
    engine = engine_of(request)
    market = authorise_market(
        who, Action.VIEW_MARKET, readmodel.market_of_problem(engine, problem_id)
    )
    info = readmodel.market(engine, market)
    t = translator_of(request)
    with read(engine) as conn:
        row = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == problem_id)).one()
        events = conn.execute(
            sa.select(Event).where(Event.problem_id == problem_id).order_by(Event.seq)
        ).all()
    now = now_of(request)
    return {
        "p": row,
        "market": info,
        "tz": ZoneInfo(info.zone),
        "overdue": is_overdue(row.state, deadline=row.deadline, now=now),
        "photos": list((row.evidence or {}).get("items", [])),
        "events": events,
        "actions": {
            "problem_raised": t.tr("Reported"),
            "problem_assigned": t.tr("Assigned"),
            "problem_rectified": t.tr("Rectified"),
            "problem_verified": t.tr("Verified"),
            "problem_reopened": t.tr("Reopened"),
        },
        "categories": _category_labels(t),
        "states": _problem_state_labels(t),
        "area_names": _names(engine, market)[1],
        "people": _people(
            request,
            [row.found_by, row.assigned_to, row.rectified_by, row.verified_by]
            + [e.actor for e in events],
        ),
        "can_rectify": may(who, Action.RECTIFY, market) and "rectify" in moves_from(row.state),
        "can_assign": may(who, Action.ASSIGN, market) and can_assign(row.state),
        "can_verify": may(who, Action.VERIFY, market) and "verify" in moves_from(row.state),
        "values": {},
        "errors": {},
        "error": None,
    }


@router.get("/p/{problem_id}")
def problem_page(request: Request, problem_id: PageRecordId, who: SignedIn) -> Response:
    return _page(request, "problem.html", **_problem_context(request, who, problem_id))


@router.post("/p/{problem_id}/rectify")
async def rectify_form(request: Request, problem_id: PageRecordId, who: SignedIn) -> Response:
    """The market says the problem is fixed, with what was done and (ideally) a photo."""
    ctx = await run_in_threadpool(_problem_context, request, who, problem_id)
    authorise(who, Action.RECTIFY, ctx["market"].id)
    t = translator_of(request)
    form = await _form(request)
    note = _text(form, "note")
    ctx["values"] = {"note": note}
    row = ctx["p"]
    if row.state == ProblemState.RECTIFIED and row.rectified_by == who.username:
        _flash(request, "warn", t.tr("This was already done; nothing changed."))
        return RedirectResponse(f"/p/{problem_id}", status_code=303)
    if not note:
        ctx["errors"] = {"note": t.tr("Say what was done.")}
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "problem.html", status_code=400, **ctx)
    try:
        photo = await _photo(request, form, t)
    except PhotoRefused as exc:
        ctx["errors"] = {"photo": exc.message}
        ctx["error"] = t.tr("Nothing was recorded: correct the marked fields.")
        return _page(request, "problem.html", status_code=exc.status, **ctx)
    try:
        await run_in_threadpool(
            functools.partial(
                problem_ledger.rectify,
                engine_of(request),
                problem_id=problem_id,
                by=who.username,
                note=note,
                now=now_of(request),
                evidence=[photo] if photo else [],
            )
        )
    except MarketcareError as exc:
        if isinstance(exc, (NotFound, Unavailable)):
            raise
        ctx["error"] = t.tr("Not recorded: {reason}").format(reason=str(exc))
        return _page(request, "problem.html", status_code=status_of(request, exc), **ctx)
    _flash(request, "ok", t.tr("Rectification recorded; the office will re-inspect."))
    return RedirectResponse(f"/p/{problem_id}", status_code=303)


# ---------------------------------------------------------------- the installable app


@router.get("/sw.js")
def service_worker() -> Response:
    """The service worker, served from the root so that its scope is the whole app;
    never cached by HTTP, so a new version is picked up on the next visit."""
    return FileResponse(
        HERE / "static" / "sw.js",
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"},
    )


@router.get("/manifest.webmanifest")
def manifest(request: Request) -> Response:
    """The web app manifest (install to the home screen), in the user's language."""
    t = translator_of(request)
    body = {
        "name": t.tr("marketcare: market sanitation"),
        "short_name": "marketcare",
        "start_url": "/",
        "scope": "/",
        "display": "standalone",
        "background_color": "#f6f7f9",
        "theme_color": "#0b5cad",
        "lang": "zh-CN" if t.language == "zh_CN" else "en",
        "icons": [
            {"src": "/static/icon-192.png", "sizes": "192x192", "type": "image/png"},
            {"src": "/static/icon-512.png", "sizes": "512x512", "type": "image/png"},
            {
                "src": "/static/icon-maskable-512.png",
                "sizes": "512x512",
                "type": "image/png",
                "purpose": "maskable",
            },
        ],
    }
    return PlainTextResponse(
        json.dumps(body, ensure_ascii=False), media_type="application/manifest+json"
    )


@router.get("/offline")
def offline_page(request: Request) -> Response:
    """What the service worker shows for a page it has no copy of while offline."""
    return _page(request, "offline.html")


# ---------------------------------------------------------------- photos


@router.get("/evidence/{sha256}")
def evidence_file(request: Request, sha256: str, who: SignedIn) -> Response:
    """A photo, only to someone who may see a record that keeps it (else 404)."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HTTPException(status_code=404, detail="not found")
    with read(engine_of(request)) as conn:
        found = evidence.markets_holding(conn, sha256)
    if not any(may(who, Action.VIEW_MARKET, m) for m in found):
        raise HTTPException(status_code=404, detail="not found")
    path = evidence.path_of({"sha256": sha256}, settings_of(request).evidence_dir)
    if path is None:
        raise HTTPException(status_code=404, detail="not found")
    media = {
        ".jpg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
        ".heic": "image/heic",
        ".pdf": "application/pdf",
    }.get(path.suffix, "application/octet-stream")
    return FileResponse(
        path,
        media_type=media,
        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


__all__ = ["router", "Action", "may"]
