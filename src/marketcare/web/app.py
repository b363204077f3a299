"""The web app and JSON API: FastAPI, server-rendered Jinja2 pages, no front-end build.

This module is the edge where HTTP meets the domain: it signs people in, finds out who
is asking (a session cookie or an API token), checks CSRF on every cookie-authenticated
write, picks the language and turns domain errors into HTTP answers. The pages
(``pages``) and the API (``api``) are routers on top; the rules they apply live in
``domain.access`` (who may do what) and ``ledger.readmodel`` (what is shown).

Security decisions, written down once:

* Sessions are rows (``ledger.sessions``): the signed cookie (Starlette's, itsdangerous;
  ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when ``web_secure_cookies`` is set) holds a
  random session key and the CSRF token. Signing out, signing out everywhere, a password
  change or a disable ends the row, so a copied cookie stops working at once; a session
  also ends after ``web_session_days`` unused and ``web_session_max_days`` after sign-in.
* Response headers (CSP, framing, caching, HSTS) and the device cookie of the sign-in
  throttle are ``security``'s.
* CSRF: every write authenticated by the cookie must carry the session's token, as the
  form field ``csrf_token`` or the header ``X-CSRF-Token``; pages carry it masked afresh
  for each answer (``csrf_token``: compressed pages, BREACH). Writes with an API token
  (``Authorization: Bearer …``) carry no cookie and need none.
* A refused market-scoped read or write answers 404, the same as a missing record, so
  ids of other markets reveal nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as FrameworkRefusal
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketcare import logs
from marketcare.clock import now_utc
from marketcare.domain import inputs
from marketcare.domain.access import Action, Principal, may
from marketcare.domain.phonetime import ClockTrust
from marketcare.domain.signin import Lifetime
from marketcare.errors import Kind, MarketcareError, Unavailable
from marketcare.i18n import DEFAULT_LANGUAGE, LANGUAGES, Translator, translator
from marketcare.ledger import accounts, sessions
from marketcare.ledger.db import driver_errors, fault_of
from marketcare.reports.dashboard import Memo as DashboardMemo
from marketcare.settings import Settings
from marketcare.web import security

log = logging.getLogger("marketcare.web")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "marketcare_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Clock = Callable[[], datetime]


class NotSignedIn(Exception):
    """No valid session or token; pages redirect to sign-in, the API answers 401."""


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


# ---------------------------------------------------------------- who is asking


def engine_of(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


def dashboard_memo_of(request: Request) -> DashboardMemo:
    """The office dashboard's figures kept between requests (one per app: the page and
    the API share them)."""
    memo: DashboardMemo = request.app.state.dashboard_memo
    return memo


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def now_of(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock()


def client_of(request: Request) -> str:
    """The caller's address (the proxy's X-Forwarded-For when it is trusted, by uvicorn)."""
    return request.client.host if request.client else "unknown"


def lifetime_of(request: Request) -> Lifetime:
    lifetime: Lifetime = request.app.state.session_lifetime
    return lifetime


def clock_trust_of(request: Request) -> ClockTrust:
    """How far a phone's clock is trusted, from the settings (``domain.phonetime``)."""
    trust: ClockTrust = request.app.state.clock_trust
    return trust


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def current_user(request: Request) -> Principal | None:
    """The principal of this request (cached on it), or None when nobody is signed in."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    who: Principal | None = None
    token = _bearer(request)
    if token is not None:
        who = accounts.principal_for_token(engine_of(request), token, now=now_of(request))
        if who is None:
            logs.security(
                "token_refused",
                level=logging.WARNING,
                client=client_of(request),
                path=request.url.path,
            )
    else:
        key = request.session.get("sid")
        if isinstance(key, str):
            found = sessions.find(
                engine_of(request), key, now=now_of(request), lifetime=lifetime_of(request)
            )
            if found is None:  # signed out, expired, disabled, password changed
                request.session.pop("sid", None)
            else:
                who = found.who
                request.state.session_id = found.session_id
    request.state.principal = who
    return who


def _known_user(request: Request) -> Principal | None:
    """The principal if it is known without the database (cached on the request, or an
    API token this process read a moment ago); None: ``current_user`` must look."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    token = _bearer(request)
    if token is None:
        return None
    who = accounts.cached_principal_for_token(engine_of(request), token, now=now_of(request))
    if who is not None:
        request.state.principal = who
    return who


async def signed_in(request: Request) -> Principal:
    """Dependency: the principal, or 401 / a redirect to the sign-in page.

    Async so that an API client's cached token costs no hand-off to a worker thread
    (two hand-offs per request were a large share of a tick's CPU); whatever needs the
    database still runs in a worker thread, as a sync dependency did.
    """
    who = _known_user(request)
    if who is None:
        who = await run_in_threadpool(current_user, request)
    if who is None:
        raise NotSignedIn()
    return who


#: a route parameter ``who: SignedIn`` is the caller (401 / sign-in redirect when none)
SignedIn = Annotated[Principal, Depends(signed_in)]

#: a record's id in a page's address (``/o/{id}``, ``/p/{id}``, ``/i/{id}``): a number the
#: ledger can hold, as the API's ``RecordId``. A larger one is bad input (400 on a page),
#: never handed to the database, where it overflowed the column's type: a 500.
PageRecordId = Annotated[int, PathParam(ge=1, le=inputs.ID_MAX)]


def authorise(who: Principal, action: Action, market: str | None = None) -> None:
    """Refuse unless ``who`` may take ``action`` (in ``market``).

    Market-scoped refusals are 404 (nothing about the other market is revealed); a
    refusal by role alone is 403.
    """
    if may(who, action, market):
        return
    status = 404 if market is not None and may(who, action) else 403
    logs.security(
        "access_refused",
        level=logging.WARNING,
        user=who.username,
        action=action.value,
        market=market or "",
        status=status,
    )
    if status == 404:
        raise HTTPException(status_code=404, detail="not found")
    raise HTTPException(status_code=403, detail="your role may not do this")


def authorise_market(who: Principal, action: Action, market: str | None) -> str:
    """Like ``authorise`` for a record's market; a missing record (None) is a 404 too."""
    if market is None:
        raise HTTPException(status_code=404, detail="not found")
    authorise(who, action, market)
    return market


# ---------------------------------------------------------------- CSRF


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use) as a page carries it: masked afresh
    for each answer, a random pad followed by the token XORed with it.

    Pages travel gzip-compressed and some echo what their address says (a date, the page
    to go to next). A secret repeated byte for byte in every compressed answer, beside
    text an attacker chooses, can be read off the answers' sizes (BREACH); masked, it is
    never the same bytes twice. ``check_csrf`` takes any masking of it (and the token
    itself, as pages rendered before the masking carried it).
    """
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    plain = token.encode()
    pad = secrets.token_bytes(len(plain))
    masked = pad + bytes(a ^ b for a, b in zip(pad, plain, strict=True))
    return base64.urlsafe_b64encode(masked).decode().rstrip("=")


def _unmasked(given: bytes) -> bytes:
    """The token a page's masked CSRF token holds (``csrf_token``); ``given`` as it is
    when it is no masking (the token itself, or a wrong one)."""
    try:
        data = base64.urlsafe_b64decode(given + b"=" * (-len(given) % 4))
    except (ValueError, binascii.Error):
        return given
    half = len(data) // 2
    if not data or len(data) % 2:
        return given
    return bytes(a ^ b for a, b in zip(data[:half], data[half:], strict=True))


async def check_csrf(request: Request) -> None:
    """Dependency on every route: a cookie-authenticated write must prove it came from
    our own page (the token in the form or header matches the session's)."""
    if request.method in SAFE_METHODS or _bearer(request) is not None:
        return
    expected = request.session.get("csrf")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form(max_part_size=settings_of(request).upload_max_bytes + 1)
            value = form.get(CSRF_FIELD)
            if isinstance(value, UploadFile):
                # some HTTP clients (python-requests' ``files=``) send every field of a
                # multipart form as a file part; the token is the same token
                raw = await value.read(256)
                await value.seek(0)
                value = raw.decode("utf-8", "replace")
            given = value if isinstance(value, str) else None
    # compared as bytes: compare_digest refuses str with non-ASCII characters (a 500 before)
    sent = b"" if given is None else given.encode("utf-8", "replace")
    if (
        not isinstance(expected, str)
        or given is None
        or not (
            hmac.compare_digest(expected.encode(), _unmasked(sent))
            or hmac.compare_digest(expected.encode(), sent)
        )
    ):
        logs.security(
            "csrf_refused",
            level=logging.WARNING,
            client=client_of(request),
            path=request.url.path,
        )
        raise HTTPException(
            status_code=403,
            detail="the form has expired or did not come from this site; reload the page and try again",
        )


# ---------------------------------------------------------------- language and pages


def language_of(request: Request) -> str:
    who = current_user(request)
    if who is not None and who.language in LANGUAGES:
        return str(who.language)
    lang = settings_of(request).language
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def translator_of(request: Request) -> Translator:
    return translator(language_of(request))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with what every page needs: the user, the words, the CSRF token."""
    t = translator_of(request)
    templates: Jinja2Templates = request.app.state.templates
    base = {
        "request": request,
        "who": current_user(request),
        "t": t,
        "_": t.tr,
        "lang": t.language,
        "csrf_token": csrf_token(request),
        "now": now_of(request),
        "Action": Action,
        "may": may,
        # the phone refuses a photo over it at once (static/app.js), not after sending it
        "upload_max_bytes": settings_of(request).upload_max_bytes,
    }
    base.update(context)
    return templates.TemplateResponse(request, template, base, status_code=status_code)


def safe_next(target: str | None) -> str:
    """Only a local path is followed after sign-in (no open redirects)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


# ---------------------------------------------------------------- errors
#
# The one place where a failure becomes an HTTP answer (docs/web.md, "Errors"): the
# error's kind chooses the status, its field goes into the body; no message text is read.

#: the status of each kind of error in the API (a page answers 400 for bad input)
STATUS: dict[Kind, int] = {
    Kind.BAD_INPUT: 422,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.REFUSED: 403,
    Kind.UNAVAILABLE: 503,
}


def status_of(request: Request, exc: MarketcareError) -> int:
    """The status that answers ``exc``: by its kind, 400 instead of 422 on a page."""
    if exc.kind == Kind.BAD_INPUT and not is_api(request):
        return 400
    return STATUS[exc.kind]


def _error_response(
    request: Request, status: int, message: str, field: str | None = None
) -> Response:
    if is_api(request):
        body: dict[str, Any] = {"detail": message}
        if field is not None:
            body["field"] = field
        return JSONResponse(body, status_code=status)
    if not hasattr(request.state, "principal"):
        # the database may be what failed: the page is rendered without asking it who
        # is signed in (the header then shows no user)
        request.state.principal = None
    return render(request, "error.html", status_code=status, status=status, message=message)


def error_response(request: Request, exc: MarketcareError) -> Response:
    """The answer to an expected failure, on a page or in the API."""
    response = _error_response(request, status_of(request, exc), exc.message, exc.field)
    if isinstance(exc, Unavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        if is_api(request):
            return JSONResponse(
                {"detail": "sign in first: send Authorization: Bearer <token> or a session cookie"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    # Starlette's class, FastAPI's is a subclass: the framework's own refusals (an
    # address no route has, a method a route does not take, a body over the bound of
    # ``security.BodyLimit``) are answered like ours, a page to a browser, JSON to the API
    @app.exception_handler(FrameworkRefusal)
    async def http_error(request: Request, exc: FrameworkRefusal) -> Response:
        message = str(exc.detail)
        if exc.status_code == 413:
            message = security.too_large(request.scope)
        response = _error_response(request, exc.status_code, message)
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(accounts.Throttled)
    async def throttled(request: Request, exc: accounts.Throttled) -> Response:
        response = _error_response(request, 429, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(MarketcareError)
    async def expected(request: Request, exc: MarketcareError) -> Response:
        if isinstance(exc, Unavailable):
            log.warning("answered 503: %s", exc.message, extra={"path": request.url.path})
        return error_response(request, exc)

    async def fault(request: Request, exc: Exception) -> Response:
        """A database or a folder that failed under a request: 503 with Retry-After and
        one line in the log (no traceback: nothing is wrong with the code)."""
        meaning = fault_of(exc)
        if meaning is None:  # a bug: the traceback goes to the log, the caller gets JSON
            log.error("internal error", exc_info=exc, extra={"path": request.url.path})
            return _error_response(request, 500, "internal error; the details are logged")
        if isinstance(meaning, Unavailable):
            log.warning("answered 503: %s", meaning.message, extra={"path": request.url.path})
        else:
            log.info("refused: %s (%s)", meaning.message, exc)
        return error_response(request, meaning)

    # registered per class, so Starlette answers them itself and does not log them as
    # unhandled; anything else reaches the last handler (a bug: 500, as JSON in the API)
    for cls in (sa.exc.SQLAlchemyError, OSError, *driver_errors()):
        app.add_exception_handler(cls, fault)
    app.add_exception_handler(Exception, fault)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")),
                "message": str(e["msg"]).removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        if is_api(request):
            first = errors[0] if errors else {"field": "", "message": "invalid request"}
            return JSONResponse(
                {"detail": f"{first['field']}: {first['message']}", "errors": errors},
                status_code=422,
            )
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return render(request, "error.html", status_code=400, status=400, message=message)


# ---------------------------------------------------------------- the app


class HeadAsGet:
    """Answer HEAD as the GET of the same address without its body (RFC 9110 §9.3.2):
    uptime monitors and link checkers ask ``HEAD /healthz``, and FastAPI's routes only
    answer the methods they name, so every page and probe would say 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def create_app(
    settings: Settings,
    engine: sa.Engine,
    *,
    clock: Clock = now_utc,
    secret: str | None = None,
    daemon: Any = None,
) -> FastAPI:
    """The whole web app over ``engine``; ``clock`` is injectable for tests."""
    from marketcare.web import (
        api,
        api_inspections,
        pages,
        pages_account,
        pages_inspections,
        pages_office,
    )
    from marketcare.web import health as ops

    app = FastAPI(
        title="marketcare",
        version="1",
        summary="Market sanitation compliance: obligations, checklists, problems, exports.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        # marketcare exports no OpenTelemetry (its figures are /metrics); with this on,
        # FastAPI asked the global tracer, meter and logger providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.clock = clock
    app.state.dashboard_memo = DashboardMemo()
    #: the daemon serving this app, if any (readiness reads its schedule and role)
    app.state.daemon = daemon
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.feed_secret = accounts.app_secret(engine, "feeds", now=clock())
    app.state.device_secret = accounts.app_secret(engine, "devices", now=clock())
    app.state.session_lifetime = Lifetime(
        idle=timedelta(days=settings.web_session_days),
        absolute=timedelta(days=settings.web_session_max_days),
    )
    app.state.clock_trust = ClockTrust(
        max_delay=timedelta(hours=settings.phone_time_max_delay_hours),
        max_skew=timedelta(minutes=settings.phone_clock_max_skew_minutes),
    )
    session_secret = secret or accounts.app_secret(engine, "sessions", now=clock())
    # the innermost middleware: a tick of a known API token skips routing (api.TickShortcut)
    app.add_middleware(api.TickShortcut)
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret,
        session_cookie=SESSION_COOKIE,
        max_age=int(timedelta(days=settings.web_session_days).total_seconds()),
        same_site="lax",
        https_only=settings.web_secure_cookies,
    )
    app.add_middleware(security.SecurityHeaders, hsts=settings.web_secure_cookies)
    # pages travel compressed (a phone on one bar of signal); small JSON answers do not
    app.add_middleware(GZipMiddleware, minimum_size=1400, compresslevel=6)
    app.add_middleware(HeadAsGet)
    # the outermost: a body too large to hold is refused before anything reads it
    app.add_middleware(security.BodyLimit, form_limit=settings.upload_form_max_bytes)
    _install_error_handlers(app)
    if settings.web_api_docs:
        security.install_docs(app)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # the API first (its tick is the hot path, and routes are tried in order); the
    # probes' paths overlap nothing, so their place changes no answer
    app.include_router(api.router)
    app.include_router(ops.router)
    api.install(app)
    app.include_router(pages_account.router)
    app.include_router(pages.router)
    app.include_router(pages_office.router)
    app.include_router(api_inspections.router)
    app.include_router(pages_inspections.router)
    return app


# ---------------------------------------------------------------- serving


class WebServer:
    """uvicorn in a thread of the daemon; ``stop`` ends it gracefully."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        #: servers that stop with this one (the separate /metrics listener)
        self.companions: list[WebServer] = []

    def start(self, timeout: float = 60.0) -> None:
        """Wait until uvicorn listens. The bound is generous (a loaded machine starts slowly);
        past it the log gets where the server's thread was, so a hang can be told from a
        slow start, and the server is told to stop."""
        self.thread.start()
        deadline = now_utc() + timedelta(seconds=timeout)
        while not self.server.started:
            if not self.thread.is_alive():
                raise MarketcareError(
                    f"the web server could not start on {self.server.config.host}:{self.server.config.port} "
                    "(is the port in use? set web_port or web_host)"
                )
            if now_utc() > deadline:
                frame = sys._current_frames().get(self.thread.ident or 0)
                stack = list(traceback.extract_stack(frame)) if frame is not None else []
                log.error(
                    "the web server's thread after %.0f s of starting:\n%s",
                    timeout,
                    "".join(traceback.format_list(stack)) if stack else "(gone)",
                )
                self.server.should_exit = True
                last = " < ".join(
                    f"{f.name} ({Path(f.filename).name}:{f.lineno})" for f in stack[::-1][:3]
                )
                raise MarketcareError(
                    f"the web server did not start in {timeout:.0f} s; it was in {last or 'nothing'}"
                )
            threading.Event().wait(0.05)

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", [])
        for srv in servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    def stop(self) -> None:
        for other in self.companions:
            other.stop()
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_servers(settings: Settings, engine: sa.Engine, *, daemon: Any = None) -> WebServer:
    """Start the web app on ``web_host:web_port`` and, when ``metrics_listen`` is set,
    the metrics listener beside it; stopping the first stops both."""
    from marketcare.web import health

    server = WebServer(
        create_app(settings, engine, daemon=daemon), settings.web_host, settings.web_port
    )
    server.start()
    address = settings.metrics_address
    if address is not None:
        metrics = WebServer(health.metrics_app(settings, engine, daemon=daemon), *address)
        try:
            metrics.start()
        except MarketcareError:
            server.stop()
            raise MarketcareError(
                f"the metrics listener could not start on {settings.metrics_listen} "
                "(is the port in use? set metrics_listen)"
            ) from None
        server.companions.append(metrics)
        log.info("metrics listening", extra={"url": f"http://{settings.metrics_listen}/metrics"})
    return server
