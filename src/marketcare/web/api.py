"""The JSON API (``/api/v1``), documented by its OpenAPI schema at ``/api/openapi.json``.

Every endpoint checks ``access`` on the server: for reads and writes of one market's
records, a record of a market the caller may not see answers 404. Messages are English:
the API's readers are other systems and the people who program them.

Bodies are pydantic models that refuse unknown fields, so a misspelt field is a 422
naming it instead of being silently ignored. Bounds on ids, dates and lengths keep
odd input (a 20-digit id, the year 9999) a clear 422 rather than a database error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.datastructures import UploadFile
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketcare import clock, heap, logs
from marketcare.domain import inputs
from marketcare.domain.access import Action, Principal, Role, may, visible_markets
from marketcare.domain.periods import Period
from marketcare.errors import BadInput, Conflict, MarketcareError, NotFound, Refused
from marketcare.ledger import accounts, evidence, readmodel
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import read
from marketcare.ledger.models import ProblemRow
from marketcare.ledger.readmodel import completions_of
from marketcare.ledger.tick import TickRequest, TickWriter
from marketcare.ledger.versions import active_schedule
from marketcare.reports import delivery
from marketcare.reports.dashboard import figures as dashboard_figures
from marketcare.web.app import (
    SignedIn,
    _bearer,
    authorise,
    authorise_market,
    check_csrf,
    client_of,
    clock_trust_of,
    dashboard_memo_of,
    engine_of,
    now_of,
    settings_of,
    signed_in,
)

#: signing in is checked before CSRF, so an anonymous write is told to sign in (401)
router = APIRouter(
    prefix="/api/v1", tags=["api"], dependencies=[Depends(signed_in), Depends(check_csrf)]
)

#: ids are 64-bit integers; a larger number cannot name a record (and cannot be bound)
RecordId = Annotated[int, Path(ge=1, le=inputs.ID_MAX, description="the record's id")]
#: users and tokens have 32-bit ids (INTEGER on PostgreSQL)
SmallId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the record's id")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of an uploaded file")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Language = Literal["zh_CN", "en"]

#: multipart framing around an upload's bytes that Content-Length also counts
UPLOAD_OVERHEAD = 64 * 1024
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heic": "image/heic",
    "pdf": "application/pdf",
}


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo cannot be ignored silently
    (and text that cannot be UTF-8, a JSON ``"\\udc80"``, is refused naming its field)."""

    model_config = ConfigDict(extra="forbid")


def _refused(status: int, message: str, field: str | None = None) -> JSONResponse:
    """An upload refused before it is read (413, 415): statuses of their own, not a kind."""
    body: dict[str, Any] = {"detail": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def install(app: FastAPI) -> None:
    """Add what the API needs besides its router: the calendar feeds (outside ``/api``,
    reached without signing in)."""
    from marketcare.web import calendar_feed

    app.include_router(calendar_feed.router)


def _all_markets(request: Request) -> list[str]:
    return [m.id for m in readmodel.markets(engine_of(request))]


def _zone(request: Request, market_id: str) -> ZoneInfo:
    return ZoneInfo(readmodel.market(engine_of(request), market_id).zone)


def _when(request: Request, value: str | None, market_id: str, field: str) -> datetime | None:
    """A deadline as the API takes it: a date means the end of that day in the market."""
    if value is None:
        return None
    try:
        when, error = problem_ledger.parse_when(
            value, _zone(request, market_id), end_of_day=True, default=None
        )
    except (OverflowError, ValueError):
        when, error = None, f"{value!r} is out of range"
    if error is not None or when is None:
        raise BadInput(f"{field}: {error}", field)
    inputs.check_date(when.date(), field)
    return when


def _records(
    request: Request, who: Principal, market_id: str, photos: Sequence[str]
) -> list[dict[str, Any]]:
    """The evidence records of uploaded photos named by their SHA-256, to attach to a
    record of ``market_id``: each must have been uploaded by the caller or be kept by
    that market already. An unknown hash and another's hash get the same answer."""
    wanted = list(dict.fromkeys(photos))
    if not wanted:
        return []
    folder = settings_of(request).evidence_dir
    allowed = evidence.attachable(
        engine_of(request), wanted, user_id=who.user_id, market_id=market_id
    )
    out: list[dict[str, Any]] = []
    for digest in wanted:
        found = evidence.path_of({"sha256": digest}, folder) if digest in allowed else None
        if found is None:
            if digest not in allowed:
                logs.security(
                    "evidence_refused",
                    level=logging.WARNING,
                    user=who.username,
                    market=market_id,
                    sha256=digest,
                )
            raise BadInput(
                f"photos: no uploaded file {digest}; upload it first with POST /api/v1/evidence",
                "photos",
            )
        kind = next((k for k, ext in evidence.KINDS.items() if ext == found.suffix), "jpeg")
        out.append(
            {
                "name": found.name,
                "sha256": digest,
                "path": str(found),
                "bytes": found.stat().st_size,
                "kind": kind,
            }
        )
    return out


def _photo(request: Request, digest: str, recorded: Sequence[dict[str, Any]]) -> FileResponse:
    """A photo kept on a record the caller may see; one answer (404) for a hash the
    record does not keep and for a file no longer there."""
    kept = any(p.get("sha256") == digest for p in recorded)
    found = (
        evidence.path_of({"sha256": digest}, settings_of(request).evidence_dir) if kept else None
    )
    if found is None:
        raise HTTPException(status_code=404, detail="not found")
    kind = next((k for k, ext in evidence.KINDS.items() if ext == found.suffix), None)
    return FileResponse(
        found,
        media_type=MEDIA_TYPES.get(kind or "", "application/octet-stream"),
        filename=found.name,
    )


# ---------------------------------------------------------------- who and where


class Me(BaseModel):
    username: str
    display_name: str
    role: str
    markets: list[str]
    language: str | None


def _me(request: Request, who: Principal) -> Me:
    return Me(
        username=who.username,
        display_name=who.display_name,
        role=who.role.value,
        markets=visible_markets(who, _all_markets(request)),
        language=who.language,
    )


@router.get("/me", response_model=Me, summary="Who the caller is")
def me(request: Request, who: SignedIn) -> Me:
    return _me(request, who)


class LanguageChange(Body):
    language: Language | None = Field(description="zh_CN, en, or null for the site's default")


@router.put("/me/language", response_model=Me, summary="Choose the caller's language")
def set_language(body: LanguageChange, request: Request, who: SignedIn) -> Me:
    accounts.set_language(engine_of(request), who.user_id, body.language)
    who = accounts.principal(engine_of(request), who.user_id) or who
    return _me(request, who)


class MarketOut(BaseModel):
    id: str
    name: str
    sub_district: str
    timezone: str


@router.get("/markets", response_model=list[MarketOut], summary="Markets the caller may view")
def markets(request: Request, who: SignedIn) -> list[MarketOut]:
    """An operator sees no market, and gets an empty list rather than a refusal."""
    return [
        MarketOut(id=m.id, name=m.name, sub_district=m.sub_district, timezone=m.zone)
        for m in readmodel.markets(engine_of(request))
        if may(who, Action.VIEW_MARKET, m.id)
    ]


@router.get("/markets/{market_id}/today", summary="A market's board for its local today")
def market_today(market_id: str, request: Request, who: SignedIn) -> dict[str, Any]:
    authorise(who, Action.VIEW_MARKET, market_id)
    return readmodel.today(engine_of(request), market_id, now=now_of(request)).as_json()


@router.get("/markets/{market_id}/history", summary="A market's obligations of recent days")
def market_history(
    market_id: str,
    request: Request,
    who: SignedIn,
    days: Annotated[int, Query(ge=1, le=92, description="local days back, today included")] = 14,
    area: Annotated[str | None, Query(max_length=64, description="only this area")] = None,
) -> list[dict[str, Any]]:
    authorise(who, Action.VIEW_MARKET, market_id)
    engine = engine_of(request)
    if area is not None and area not in {a["id"] for a in readmodel.areas(engine, market_id)}:
        readmodel.market(engine, market_id)  # an unknown market is a 404 before the area
        raise BadInput(f"area: market {market_id!r} has no area {area!r}", "area")
    rows = readmodel.history(engine, market_id, now=now_of(request), days=days, area=area)
    return [r.as_json() for r in rows]


@router.get("/markets/{market_id}/areas", summary="A market's areas")
def market_areas(market_id: str, request: Request, who: SignedIn) -> list[dict[str, Any]]:
    authorise(who, Action.VIEW_MARKET, market_id)
    readmodel.market(engine_of(request), market_id)
    return readmodel.areas(engine_of(request), market_id)


class CalendarOut(BaseModel):
    url: str


@router.get(
    "/markets/{market_id}/calendar",
    response_model=CalendarOut,
    summary="The secret address of a market's iCalendar feed",
)
def market_calendar(market_id: str, request: Request, who: SignedIn) -> CalendarOut:
    authorise(who, Action.VIEW_MARKET, market_id)
    readmodel.market(engine_of(request), market_id)
    keys = accounts.feed_keys(engine_of(request), request.app.state.feed_secret, who, [market_id])
    return CalendarOut(url=f"/calendar/{market_id}/{keys[market_id]}.ics")


# ---------------------------------------------------------------- obligations


@router.get("/obligations/{obligation_id}", summary="One obligation with its checklist")
def obligation(obligation_id: RecordId, request: Request, who: SignedIn) -> dict[str, Any]:
    engine = engine_of(request)
    authorise_market(who, Action.VIEW_MARKET, readmodel.market_of_obligation(engine, obligation_id))
    return readmodel.obligation(engine, obligation_id, now=now_of(request)).as_json()


class CompletionIn(Body):
    token: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="idempotency key: the same token again records once",
    )
    items: list[Annotated[str, Field(max_length=100)]] | None = Field(
        None, max_length=100, description="checklist items ticked (none given: all of them)"
    )
    readings: dict[str, Finite] = Field(default_factory=dict, description="reading id → value")
    texts: dict[str, Annotated[str, Field(max_length=2000)]] = Field(default_factory=dict)
    note: str | None = Field(None, max_length=2000)
    photos: list[Sha256] = Field(default_factory=list, max_length=20)
    phone_at: AwareDatetime | None = Field(
        None,
        description="the phone's clock when the checklist was recorded (offline queue); "
        "it counts at this time if the clock is trusted (docs/web.md)",
    )
    phone_sent_at: AwareDatetime | None = Field(
        None, description="the phone's clock when this request was sent"
    )


class TickOut(BaseModel):
    obligation_id: int
    state: str
    changed: bool
    completion_id: int | None
    message: str
    failures: dict[str, Any]
    counted_at: str | None = Field(None, description="when the completion counts as done")
    arrived_at: str | None = Field(None, description="when the server received it")
    phone_at: str | None = None
    time_basis: str | None = Field(
        None, description="arrival, phone, clock_off, arrived_too_late or inconsistent"
    )
    done_by: str | None = Field(None, description="already done: by whom (user name)")
    done_by_name: str | None = Field(None, description="already done: by whom (display name)")
    done_at: str | None = Field(None, description="already done: when")


def _authorised_records(
    request: Request, who: Principal, obligation_id: int, photos: Sequence[str]
) -> list[dict[str, Any]]:
    """The old order of checks, for the rare requests that need it: the record's market
    (404, or 403 for a role that may not tick), then the photos (422)."""
    market_id = authorise_market(
        who, Action.TICK, readmodel.market_of_obligation(engine_of(request), obligation_id)
    )
    return _records(request, who, market_id, photos)


_writer_lock = threading.Lock()


def _tick_writer(request: Request) -> TickWriter:
    """The app's group-commit writer (made on the first tick, closed with the app)."""
    state = request.app.state
    writer: TickWriter | None = getattr(state, "tick_writer", None)
    if writer is None:
        with _writer_lock:
            writer = getattr(state, "tick_writer", None)
            if writer is None:
                writer = TickWriter(engine_of(request))
                state.tick_writer = writer
    return writer


def _settle(engine: sa.Engine) -> None:
    """Parse the active schedule now, then take everything alive out of the collector's way.

    A city's parsed schedule is some million long-lived objects. Python's full garbage
    collection walks every tracked object, and under load one ran every few hundred
    requests and took 60–145 ms at 2,000 markets: every request caught in one waited for
    it, and that was the tick endpoint's p99. ``gc.freeze()`` moves what is alive after
    start-up (the schedule, the app, the modules) to a generation the collector skips;
    reference counting still frees those objects, only cycles among them wait for
    ``heap.unsettle()`` at shutdown. Parsing here also spares the first tick the parse.
    """
    try:
        with read(engine) as conn:
            active_schedule(conn)
    except (sa.exc.SQLAlchemyError, MarketcareError):  # a ledger not set up yet: no schedule
        pass
    heap.settle()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up settles the heap (``_settle``); on shutdown the tick writer stops taking
    ticks and writes those it has."""
    await run_in_threadpool(_settle, app.state.engine)
    try:
        yield
    finally:
        writer: TickWriter | None = getattr(app.state, "tick_writer", None)
        if writer is not None:
            app.state.tick_writer = None
            await run_in_threadpool(writer.close)
        heap.unsettle()


router.lifespan_context = _lifespan


@router.post(
    "/obligations/{obligation_id}/completions",
    response_model=TickOut,
    status_code=201,
    summary="Record a completion (201 when recorded, 200 when nothing changed)",
    responses={200: {"description": "already recorded or already done; nothing changed"}},
)
async def complete(
    obligation_id: RecordId,
    body: CompletionIn,
    request: Request,
) -> Response:
    """Ticks are the API's hot write (every manager, every checklist): the endpoint runs
    on the event loop and hands the tick to the app's ``TickWriter``, which authorises
    the market and records it in one transaction with the other ticks waiting, so a
    tick costs no worker thread and no transaction of its own."""
    # the caller the router's ``signed_in`` found, read back from the request: a
    # ``SignedIn`` parameter would have FastAPI solve that dependency a second time
    who = await signed_in(request)
    records: list[dict[str, Any]] = []
    if body.photos or not may(who, Action.TICK):
        records = await run_in_threadpool(
            _authorised_records, request, who, obligation_id, body.photos
        )
    try:
        tick = TickRequest.of(
            obligation_id=obligation_id,
            by=who.username,
            now=now_of(request),
            readings=body.readings,
            items=body.items,
            note=body.note.strip() if body.note and body.note.strip() else None,
            token=body.token,
            texts=body.texts,
            evidence=records,
            allowed_markets=None if who.all_markets else who.markets,
            phone_at=body.phone_at,
            phone_sent_at=body.phone_sent_at,
            trust=clock_trust_of(request),
        )
        result = await _tick_writer(request).submit_awaitable(tick)
    except NotFound:  # missing, or another market's: the same answer as authorise_market's
        raise HTTPException(status_code=404, detail="not found") from None
    timing = result.timing
    done_by_name = None
    if result.done_by is not None:
        names = await run_in_threadpool(
            accounts.display_names, engine_of(request), [result.done_by]
        )
        done_by_name = names.get(result.done_by, result.done_by)
    out = TickOut(
        obligation_id=result.obligation_id,
        state=result.state.value,
        changed=result.changed,
        completion_id=result.completion_id,
        message=result.message,
        failures=dict(result.failures),
        counted_at=None if timing is None else timing.at.isoformat(),
        arrived_at=None if timing is None else timing.arrived_at.isoformat(),
        phone_at=None if timing is None or timing.phone_at is None else timing.phone_at.isoformat(),
        time_basis=None if timing is None else timing.basis.value,
        done_by=result.done_by,
        done_by_name=done_by_name,
        done_at=None if result.done_at is None else result.done_at.isoformat(),
    )
    # the ``TickOut`` that ``response_model`` documents, serialised once (the bytes
    # FastAPI wrote), so FastAPI neither validates it again nor merges a sub-response
    return Response(
        out.model_dump_json(),
        status_code=201 if result.changed else 200,
        media_type="application/json",
    )


#: the tick's path as its route declares it, an id of digits (anything else takes the route)
_TICK_PATH = re.compile(r"/api/v1/obligations/([0-9]{1,19})/completions")


class _Replay:
    """The request's messages as ``receive`` gave them, to be given again: read once by
    ``TickShortcut``, then either kept (the shortcut) or replayed to the app (the route),
    an error of ``receive`` included, so the route sees exactly what it would have."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._taken: list[Message] = []
        self._failed: Exception | None = None
        self._next = 0

    async def body(self) -> bytes | None:
        """The whole body, or None when the messages were anything else (or failed)."""
        chunks: list[bytes] = []
        try:
            while True:
                message = await self._receive()
                self._taken.append(message)
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except Exception as exc:
            self._failed = exc
            return None

    async def __call__(self) -> Message:
        if self._next < len(self._taken):
            self._next += 1
            return self._taken[self._next - 1]
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        return await self._receive()


class TickShortcut:
    """ASGI middleware, the innermost: a tick of an API token this process knows goes
    straight to ``complete``, past FastAPI's routing and dependency solving.

    A served tick spent about a third of the event loop's time choosing its route and
    solving four dependencies whose answers are plain for such a request (no CSRF check
    for a bearer token, an id of digits, a JSON body; the caller is the first thing the
    endpoint asks ``signed_in`` anyway). Here the same checks answer the same way, by
    the same model (``CompletionIn``), then the same endpoint answers through the same
    middleware outside this one, with the app's own exception handlers (a refused token
    is the same 401). Any other request — another path or method, no bearer token,
    another content type, a body that does not validate, a body over
    ``security.BodyLimit``'s bound (its refusal, raised while the body is read, is given
    to the route again) — goes to the app with its body given again, so every refusal and
    error is the route's own, byte for byte (``tests/test_api.py`` compares both ways).
    """

    #: ticks answered here, in this process (the tests read it to know which way went)
    taken = 0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the handlers ``ExceptionMiddleware`` (inside this) gives the routes; without
        # it where expected, the shortcut stays off
        self._handlers = (
            (app._exception_handlers, app._status_handlers)
            if isinstance(app, ExceptionMiddleware)
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            _TICK_PATH.fullmatch(scope["path"])
            if scope["type"] == "http"
            and scope["method"] == "POST"
            and self._handlers is not None
            and not scope.get("root_path")
            else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        replay = _Replay(receive)
        raw = await replay.body()
        request = Request(scope, replay)
        body = None if raw is None else _shortcut_body(request, raw, int(found[1]))
        if body is None:
            await self.app(scope, replay, send)
            return
        scope["starlette.exception_handlers"] = self._handlers
        TickShortcut.taken += 1
        try:
            response = await complete(int(found[1]), body, request)
        except Exception as exc:
            refusal = exc

            async def refused(_scope: Scope, _receive: Receive, _send: Send) -> None:
                raise refusal

            await wrap_app_handling_exceptions(refused, request)(scope, replay, send)
            return
        await response(scope, replay, send)


def _shortcut_body(request: Request, raw: bytes, obligation_id: int) -> CompletionIn | None:
    """The body if the route would take this request as it is (None: let the route
    answer): a JSON body that ``CompletionIn`` accepts, with a bearer token (the router's
    ``check_csrf`` passes it; its ``signed_in`` is the first thing ``complete`` asks, and
    a token it refuses is the same 401 here), for an id that ``RecordId`` accepts."""
    if not 1 <= obligation_id <= inputs.ID_MAX:
        return None
    if request.headers.get("content-type") != "application/json":
        return None
    if _bearer(request) is None:  # a session's request: the route checks its CSRF token
        return None
    try:
        return CompletionIn.model_validate(json.loads(raw))
    except Exception:  # whatever the route would refuse, the route refuses
        return None


@router.get(
    "/obligations/{obligation_id}/photos/{sha256}",
    summary="A photo recorded on one of the obligation's completions",
    response_class=FileResponse,
)
def obligation_photo(
    obligation_id: RecordId, sha256: str, request: Request, who: SignedIn
) -> FileResponse:
    engine = engine_of(request)
    authorise_market(who, Action.VIEW_MARKET, readmodel.market_of_obligation(engine, obligation_id))
    recorded = [e for c in completions_of(engine, obligation_id) for e in _items(c.evidence)]
    return _photo(request, sha256, recorded)


def _items(kept: Any) -> list[dict[str, Any]]:
    items = (kept or {}).get("items", []) if isinstance(kept, dict) else []
    return [e for e in items if isinstance(e, dict)]


# ---------------------------------------------------------------- evidence


class EvidenceOut(BaseModel):
    sha256: str
    name: str
    bytes: int
    kind: str


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "/evidence",
    response_model=EvidenceOut,
    status_code=201,
    summary="Upload a photo (or PDF) to attach to a completion or a problem",
    openapi_extra=_UPLOAD_BODY,
    responses={413: {"description": "too large"}, 415: {"description": "not a photo"}},
)
async def upload(request: Request, who: SignedIn) -> Any:
    """The body is read here, not by FastAPI, so an oversized upload is refused by its
    Content-Length before any of it is stored."""
    if not any(may(who, a) for a in (Action.TICK, Action.RECTIFY, Action.REPORT_PROBLEM)):
        raise HTTPException(status_code=403, detail="your role may not do this")
    limit = settings_of(request).upload_max_bytes
    too_big = f"file: the upload is larger than the {limit / 1e6:.0f} MB allowed"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + UPLOAD_OVERHEAD:
        return _refused(413, too_big, "file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _refused(422, "file: send the file as multipart/form-data field 'file'", "file")
    async with request.form(max_files=1, max_fields=10, max_part_size=limit + 1) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _refused(422, "file: send the file as multipart/form-data field 'file'", "file")
        data = await upload.read(limit + 1)
        name = upload.filename or "photo"
    if len(data) > limit:
        return _refused(413, too_big, "file")
    try:
        record = await run_in_threadpool(
            evidence.store_bytes,
            name,
            data,
            settings_of(request).evidence_dir,
            max_bytes=limit,
        )
    except evidence.EvidenceRejected as exc:
        status = 413 if len(data) > limit else (422 if not data else 415)
        return _refused(status, str(exc), "file")
    await run_in_threadpool(
        evidence.record_upload,
        engine_of(request),
        record["sha256"],
        who.user_id,
        now=now_of(request),
    )
    return JSONResponse(
        EvidenceOut(
            sha256=record["sha256"], name=record["name"], bytes=record["bytes"], kind=record["kind"]
        ).model_dump(),
        status_code=201,
    )


# ---------------------------------------------------------------- problems


def _problem_row(request: Request, problem_id: int) -> Any:
    with read(engine_of(request)) as conn:
        row = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == problem_id)).one_or_none()
    if row is None:
        raise NotFound(f"problem {problem_id} does not exist")
    return row


def _problem_json(request: Request, problem_id: int) -> dict[str, Any]:
    row = _problem_row(request, problem_id)
    return readmodel.problem_json(row, _zone(request, row.market_id), now=now_of(request))


def _problem_market(request: Request, who: Principal, action: Action, problem_id: int) -> str:
    found = readmodel.market_of_problem(engine_of(request), problem_id)
    return authorise_market(who, action, found)


ProblemStateName = Literal["open", "rectified", "verified"]


@router.get("/markets/{market_id}/problems", summary="A market's problems, overdue first")
def market_problems(
    market_id: str,
    request: Request,
    who: SignedIn,
    state: Annotated[list[ProblemStateName] | None, Query(description="only these states")] = None,
    overdue: Annotated[bool, Query(description="only those past their deadline")] = False,
) -> list[dict[str, Any]]:
    authorise(who, Action.VIEW_MARKET, market_id)
    zone = _zone(request, market_id)
    now = now_of(request)
    rows = problem_ledger.listing(
        engine_of(request), now=now, markets=[market_id], states=state, overdue=overdue
    )
    return [readmodel.problem_json(r, zone, now=now) for r in rows]


class NewProblemIn(Body):
    category: Literal["sanitation", "repair", "pest", "order"]
    description: str = Field(min_length=1, max_length=4000)
    area: str | None = Field(None, max_length=64)
    deadline: str = Field(
        max_length=40,
        description="YYYY-MM-DD (the end of that day in the market's time) or an ISO date-time",
        examples=["2026-12-05", "2026-12-05T17:00"],
    )
    token: str | None = Field(
        None, min_length=1, max_length=100, description="idempotency key: sent twice, raised once"
    )
    photos: list[Sha256] = Field(default_factory=list, max_length=20)


class ProblemCreated(BaseModel):
    id: int
    created: bool


@router.post(
    "/markets/{market_id}/problems",
    response_model=ProblemCreated,
    status_code=201,
    summary="Report a problem (201 when raised, 200 when the token was seen before)",
    responses={200: {"description": "the same token was sent before; nothing changed"}},
)
def report_problem(
    market_id: str, body: NewProblemIn, request: Request, response: Response, who: SignedIn
) -> ProblemCreated:
    authorise(who, Action.REPORT_PROBLEM, market_id)
    engine = engine_of(request)
    readmodel.market(engine, market_id)
    now = now_of(request)
    deadline = _when(request, body.deadline, market_id, "deadline")
    assert deadline is not None
    problem = problem_ledger.NewProblem(
        market_id=market_id,
        category=body.category,
        description=body.description,
        found_by=who.username,
        found_at=now,
        deadline=deadline,
        area_id=body.area or None,
        source_key=None
        if body.token is None
        else problem_ledger.token_key("web", who.username, body.token),
        evidence=_records(request, who, market_id, body.photos),
    )
    pid, created = problem_ledger.add(engine, problem, now=now, actor=who.username)
    if not created:
        response.status_code = 200
    return ProblemCreated(id=pid, created=created)


@router.get("/problems/{problem_id}", summary="One problem")
def problem(problem_id: RecordId, request: Request, who: SignedIn) -> dict[str, Any]:
    _problem_market(request, who, Action.VIEW_MARKET, problem_id)
    return _problem_json(request, problem_id)


@router.get(
    "/problems/{problem_id}/photos/{sha256}",
    summary="A photo recorded on a problem",
    response_class=FileResponse,
)
def problem_photo(
    problem_id: RecordId, sha256: str, request: Request, who: SignedIn
) -> FileResponse:
    _problem_market(request, who, Action.VIEW_MARKET, problem_id)
    return _photo(request, sha256, _items(_problem_row(request, problem_id).evidence))


class RectifyIn(Body):
    note: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="what was done")
    photos: list[Sha256] = Field(default_factory=list, max_length=20)


@router.post("/problems/{problem_id}/rectify", summary="The market reports the problem fixed")
def rectify(
    problem_id: RecordId, body: RectifyIn, request: Request, who: SignedIn
) -> dict[str, Any]:
    market_id = _problem_market(request, who, Action.RECTIFY, problem_id)
    records = _records(request, who, market_id, body.photos)
    problem_ledger.rectify(
        engine_of(request),
        problem_id=problem_id,
        by=who.username,
        note=body.note.strip(),
        now=now_of(request),
        evidence=records,
    )
    return _problem_json(request, problem_id)


class AssignIn(Body):
    assigned_to: str = Field(min_length=1, max_length=200, pattern=r"\S")
    deadline: str | None = Field(
        None,
        max_length=40,
        description="a new deadline: YYYY-MM-DD (end of that day) or an ISO date-time",
    )


@router.post("/problems/{problem_id}/assign", summary="The office names who must rectify it")
def assign(problem_id: RecordId, body: AssignIn, request: Request, who: SignedIn) -> dict[str, Any]:
    market_id = _problem_market(request, who, Action.ASSIGN, problem_id)
    deadline = _when(request, body.deadline, market_id, "deadline")
    problem_ledger.assign(
        engine_of(request),
        problem_id=problem_id,
        by=who.username,
        to=body.assigned_to,
        now=now_of(request),
        deadline=deadline,
    )
    return _problem_json(request, problem_id)


class VerifyIn(Body):
    note: str | None = Field(None, max_length=2000)


@router.post("/problems/{problem_id}/verify", summary="The office confirms the rectification")
def verify(problem_id: RecordId, body: VerifyIn, request: Request, who: SignedIn) -> dict[str, Any]:
    _problem_market(request, who, Action.VERIFY, problem_id)
    problem_ledger.verify(
        engine_of(request),
        problem_id=problem_id,
        by=who.username,
        now=now_of(request),
        note=body.note,
    )
    return _problem_json(request, problem_id)


class ReopenIn(Body):
    note: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="why it failed")
    deadline: str | None = Field(
        None,
        max_length=40,
        description="a new deadline: YYYY-MM-DD (end of that day) or an ISO date-time",
    )


@router.post("/problems/{problem_id}/reopen", summary="The re-inspection failed: open again")
def reopen(problem_id: RecordId, body: ReopenIn, request: Request, who: SignedIn) -> dict[str, Any]:
    market_id = _problem_market(request, who, Action.VERIFY, problem_id)
    deadline = _when(request, body.deadline, market_id, "deadline")
    problem_ledger.reopen(
        engine_of(request),
        problem_id=problem_id,
        by=who.username,
        note=body.note.strip(),
        now=now_of(request),
        deadline=deadline,
    )
    return _problem_json(request, problem_id)


# ---------------------------------------------------------------- the office


@router.get("/dashboard", summary="Every market's figures side by side")
def dashboard(request: Request, who: SignedIn) -> list[dict[str, Any]]:
    authorise(who, Action.DASHBOARD)
    figures = dashboard_figures(
        engine_of(request),
        now=now_of(request),
        market_ids=None,  # every active market, as the office page (read once per version)
        memo=dashboard_memo_of(request),
    )
    return [f.as_json() for f in figures]


@router.get(
    "/exports/{period}/{day}",
    summary="The compliance workbook (.xlsx) of the period containing a day",
    response_class=FileResponse,
    responses={200: {"content": {XLSX: {}}, "description": "the workbook"}},
)
def export(
    period: Literal["day", "week", "month"],
    day: date,
    request: Request,
    who: SignedIn,
    market: Annotated[
        list[Annotated[str, Field(max_length=64)]] | None,
        Query(max_length=50, description="only these markets (default: all the caller's)"),
    ] = None,
    language: Annotated[Language | None, Query(description="default: the caller's")] = None,
) -> FileResponse:
    inputs.check_date(day, "day")
    authorise(who, Action.EXPORT)
    chosen: list[str] | None = sorted(set(market)) if market else None
    if chosen is None and not who.all_markets:
        chosen = sorted(who.markets)
    for m in chosen or []:
        authorise(who, Action.EXPORT, m)
    lang = language or who.language or settings_of(request).language
    result = delivery.export(
        engine_of(request),
        period=Period.of(period, day),
        exports_dir=settings_of(request).exports_dir,
        now=now_of(request),
        markets=chosen,
        language=lang,
    )
    return FileResponse(result.path, media_type=XLSX, filename=result.path.name)


@router.get("/outbox", summary="Mail deliveries, newest first")
def outbox(
    request: Request,
    who: SignedIn,
    state: Annotated[
        list[Literal["pending", "sending", "sent", "failed"]] | None,
        Query(description="only these states"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    authorise(who, Action.OUTBOX)

    zone = ZoneInfo(settings_of(request).timezone)

    def iso(v: datetime | None) -> str | None:
        return clock.iso(v, zone)

    rows = delivery.outbox(engine_of(request), states=state, limit=limit)
    return [
        {
            "id": r.OutboxMessage.id,
            "report_id": r.OutboxMessage.report_id,
            "recipient": r.OutboxMessage.recipient,
            "state": r.OutboxMessage.state,
            "attempts": r.OutboxMessage.attempts,
            "next_attempt_at": iso(r.OutboxMessage.next_attempt_at),
            "last_error": r.OutboxMessage.last_error,
            "created_at": iso(r.OutboxMessage.created_at),
            "sent_at": iso(r.OutboxMessage.sent_at),
            "period": r.period_kind,
            "period_key": r.period_key,
            "file": FsPath(r.path).name if r.path else None,
        }
        for r in rows
    ]


# ---------------------------------------------------------------- users


class NewUserIn(Body):
    username: str = Field(min_length=1, max_length=64)
    display_name: str = Field(min_length=1, max_length=200)
    role: Role
    markets: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=100
    )
    password: str = Field(max_length=1024)
    language: Language | None = None


class PasswordIn(Body):
    password: str = Field(max_length=1024)
    keep_tokens: bool = Field(
        False,
        description="keep the user's API tokens (by default a new password revokes them)",
    )


def _user(request: Request, username: str) -> dict[str, Any]:
    wanted = username.strip().lower()
    for u in accounts.list_users(engine_of(request)):
        if u["username"] == wanted:
            return u
    raise NotFound(f"no user {username!r}")


@router.get("/users", summary="Every user")
def users(request: Request, who: SignedIn) -> list[dict[str, Any]]:
    authorise(who, Action.MANAGE_USERS)
    return accounts.list_users(engine_of(request))


@router.post("/users", status_code=201, summary="Add a user")
def add_user(body: NewUserIn, request: Request, who: SignedIn) -> dict[str, Any]:
    authorise(who, Action.MANAGE_USERS)
    accounts.add_user(
        engine_of(request),
        accounts.NewUser(
            username=body.username,
            display_name=body.display_name,
            role=body.role,
            password=body.password,
            markets=tuple(body.markets),
            language=body.language,
        ),
        now=now_of(request),
        by=who.username,
    )
    return _user(request, body.username)


def _set_disabled(request: Request, who: Principal, username: str, disabled: bool) -> None:
    _user(request, username)
    try:
        accounts.set_disabled(
            engine_of(request), username, disabled, by=who.username, now=now_of(request)
        )
    except accounts.AccountError as exc:  # one's own account, or the last operator
        raise Conflict(f"username: {exc}", "username") from None


@router.post(
    "/users/{username}/disable",
    summary="Disable a user: sessions and tokens stop",
    responses={409: {"description": "the caller's own account, or the last active operator"}},
)
def disable_user(username: str, request: Request, who: SignedIn) -> dict[str, Any]:
    authorise(who, Action.MANAGE_USERS)
    _set_disabled(request, who, username, True)
    return _user(request, username)


@router.post("/users/{username}/enable", summary="Enable a disabled user")
def enable_user(username: str, request: Request, who: SignedIn) -> dict[str, Any]:
    authorise(who, Action.MANAGE_USERS)
    _set_disabled(request, who, username, False)
    return _user(request, username)


@router.post(
    "/users/{username}/password",
    summary="Set a user's password: their sessions end and their tokens are revoked",
)
def set_password(
    username: str, body: PasswordIn, request: Request, who: SignedIn
) -> dict[str, Any]:
    authorise(who, Action.MANAGE_USERS)
    accounts.set_password(
        engine_of(request),
        username,
        body.password,
        keep_tokens=body.keep_tokens,
        by=who.username,
        now=now_of(request),
    )
    return _user(request, username)


@router.get("/users/{username}/tokens", summary="A user's API tokens (operator)")
def user_tokens(username: str, request: Request, who: SignedIn) -> list[dict[str, Any]]:
    authorise(who, Action.MANAGE_USERS)
    return accounts.tokens_of(engine_of(request), accounts.user_id_of(engine_of(request), username))


@router.delete("/users/{username}/tokens/{token_id}", summary="Revoke a user's token (operator)")
def revoke_user_token(
    username: str, token_id: SmallId, request: Request, who: SignedIn
) -> dict[str, Any]:
    authorise(who, Action.MANAGE_USERS)
    accounts.revoke_token(
        engine_of(request),
        accounts.user_id_of(engine_of(request), username),
        token_id,
        now=now_of(request),
        by=who.username,
    )
    return {"id": token_id, "revoked": True}


# ---------------------------------------------------------------- API tokens


class TokenIn(Body):
    name: str = Field(min_length=1, max_length=100, description="what the token is for")
    password: str = Field(
        min_length=1, max_length=1024, description="the caller's password, asked again"
    )


class TokenCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="shown once; only its hash is kept")


@router.get("/tokens", summary="The caller's API tokens (never their values)")
def tokens(request: Request, who: SignedIn) -> list[dict[str, Any]]:
    return accounts.tokens_of(engine_of(request), who.user_id)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    summary="Make an API token (the caller's password is asked again)",
    responses={
        403: {"description": "the password is not right"},
        429: {"description": "too many wrong passwords"},
    },
)
async def create_token(body: TokenIn, request: Request, who: SignedIn) -> TokenCreated:
    """Re-authentication goes through the sign-in throttle: wrong passwords here count as
    failed sign-ins of the caller from this address."""
    engine = engine_of(request)
    attempt = await run_in_threadpool(
        accounts.attempt_sign_in,
        engine,
        who.username,
        body.password,
        client=client_of(request),
        now=now_of(request),
    )
    if attempt.delay:
        await asyncio.sleep(attempt.delay)
    if attempt.who is None:
        logs.security("reauth_failed", level=logging.WARNING, user=who.username)
        raise Refused("password: the password is not right; no token was made", "password")
    tid, token = await run_in_threadpool(
        lambda: accounts.create_token(
            engine, who.user_id, body.name, now=now_of(request), by=who.username
        )
    )
    return TokenCreated(id=tid, name=body.name.strip(), token=token)


@router.delete("/tokens/{token_id}", summary="Revoke one of the caller's tokens")
def revoke_token(token_id: SmallId, request: Request, who: SignedIn) -> dict[str, Any]:
    accounts.revoke_token(
        engine_of(request), who.user_id, token_id, now=now_of(request), by=who.username
    )
    return {"id": token_id, "revoked": True}


# The hot write is matched first. A request's path is tried against the routes in order,
# once to choose the router and again inside it, and each try is a regular expression
# and some bookkeeping of FastAPI's: behind eight other routes the tick paid for
# eighteen of them. No other route's path can match the tick's, so only the order of
# the paths in the OpenAPI document moves (the tick's comes first).
router.routes.sort(key=lambda route: getattr(route, "endpoint", None) is not complete)

__all__ = ["install", "router"]
