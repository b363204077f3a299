"""Security at the HTTP edge: response headers, the device cookie, the API's docs page.

Kept out of ``app`` so the error mapping there and these rules change independently.

* **Headers** on every answer: a strict Content-Security-Policy (scripts, styles,
  images, workers only from this origin; no inline script or style, no framing),
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``, a
  ``Permissions-Policy`` that grants only the camera to this origin, and
  ``Cache-Control: no-store`` on everything that is not a static file and did not choose
  its own caching (pages and API answers carry names, tokens and feed addresses).
  ``Strict-Transport-Security`` when ``web_secure_cookies`` says the site is on HTTPS.
* **Device cookie** (``marketcare_device``): after a correct password the browser gets a
  signed id bound to that user name. A sign-in that presents it is counted as that
  device, not as its address, so a guesser behind the same NAT cannot keep the owner out
  (``domain.signin``).
* **API docs**: Swagger UI 5 (it reads OpenAPI 3.1) from the files the
  ``fastapi-offline`` package ships, served by the daemon itself with an initialiser
  script file, so ``/api/docs`` works offline and under the CSP (no third-party script
  on this origin). ``web_api_docs = false`` turns it off.
* **Bodies held in memory** (JSON, URL-encoded forms) are refused above ``HELD_BODY_MAX``
  with 413 before more of them is read (``BodyLimit``): FastAPI reads such a body whole
  before it asks who is calling, so without a bound anyone could make the daemon hold
  gigabytes. Multipart bodies (photos, spreadsheets) are not held: Starlette spools
  each part to disk and the routes bound each part by ``upload_max_bytes``; the whole
  body is bounded by ``upload_form_max_bytes`` (else a thousand parts could fill the
  disk), refused the same way.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PERMISSIONS = (
    "accelerometer=(), camera=(self), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=()"
)
HSTS = "max-age=31536000"
#: paths whose answers may be cached as they say (files that never hold a secret)
CACHEABLE = ("/static/", "/api/docs/static/")


def _raw(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs)


#: the headers every answer gets, in the order they are added (an answer's own
#: ``Content-Security-Policy`` is kept; the others replace the answer's)
ALWAYS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Permissions-Policy", PERMISSIONS),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
#: what an answer not under ``CACHEABLE`` gets unless it set its own ``Cache-Control``
NO_STORE = (("Cache-Control", "no-store"),)
HSTS_HEADER = (("Strict-Transport-Security", HSTS),)
#: the headers an answer may set itself and keep
_ANSWERS_OWN = frozenset({"Content-Security-Policy", "Cache-Control"})


#: the largest body kept in memory whole; a tick with its note and readings is under
#: 10 kB, the largest JSON the API takes (a checklist, a problem) a few kB
HELD_BODY_MAX = 1_000_000


class _Responder(RequestBodyLimitResponder):
    """Starlette's limiter, except that the app's answer goes out as the app made it.
    Starlette replaces any answer to a body *declared* too large with a line of plain
    text: no page for a browser, no JSON ``detail``, none of the security headers (added
    inside this middleware). Here a body over the bound is still refused as soon as the
    app reads it (``receive_with_limit``, which the app's error handler answers 413 in its
    own way); an answer given without reading it (a redirect to sign in, a route's own
    refusal) holds nothing of it and stands."""

    async def send_with_limit(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
        await self.send(message)


class BodyLimit:
    """ASGI middleware, the outermost: a body to be held in memory that declares or
    sends more than ``HELD_BODY_MAX`` bytes, or a multipart body (streamed to disk, see
    above) of more than ``form_limit``, is answered 413 as soon as that is known (by the
    app's error handler: a page to a browser, JSON to the API, naming the bound). Starlette's own limiter does the counting; this only chooses the
    bound by the kind of body."""

    def __init__(self, app: ASGIApp, limit: int = HELD_BODY_MAX, *, form_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.form_limit = form_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        multipart = Headers(scope=scope).get("content-type", "").startswith("multipart/form-data")
        bound = self.form_limit if multipart else self.limit
        await _Responder(self.app, bound)(scope, receive, send)


def too_large(scope: Scope) -> str:
    """What a refused body is told: the bound it passed (the one ``BodyLimit`` chose for
    its kind), so that a manager whose photo form was refused knows what would pass."""
    bound = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    if not isinstance(bound, int):
        return "the request is larger than this site accepts"
    return f"the request is larger than this site accepts ({bound / 1_000_000:g} MB at most)"


class SecurityHeaders:
    """ASGI middleware adding the headers above to every response it sees.

    An answer that set none of these headers itself (nearly all of them) gets them
    appended as bytes encoded once; one that did goes through ``MutableHeaders``, which
    keeps its own ``Content-Security-Policy`` and ``Cache-Control`` and replaces the
    others. Both give the same headers in the same order: the first way only skips
    re-encoding and searching them on every answer (a tick's answer is small and the
    API's hot path).
    """

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self._cacheable = (*ALWAYS, *(HSTS_HEADER if hsts else ()))
        self._not_cacheable = (*ALWAYS, *NO_STORE, *(HSTS_HEADER if hsts else ()))
        self._raw_cacheable = _raw(self._cacheable)
        self._raw_not_cacheable = _raw(self._not_cacheable)
        self._ours = frozenset(k for k, _ in self._raw_not_cacheable)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        cacheable = path.startswith(CACHEABLE)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers") or ())
                message["headers"] = raw
                if self._ours.isdisjoint(k for k, _ in raw):
                    raw.extend(self._raw_cacheable if cacheable else self._raw_not_cacheable)
                else:
                    headers = MutableHeaders(scope=message)
                    for name, value in self._cacheable if cacheable else self._not_cacheable:
                        if name in _ANSWERS_OWN:
                            headers.setdefault(name, value)
                        else:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, sending)


# ---------------------------------------------------------------- the device cookie

DEVICE_COOKIE = "marketcare_device"
DEVICE_DAYS = 365


def _device_signature(secret: str, username: str, device: str) -> str:
    message = f"device:{username.strip().lower()}:{device}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def device_for(request: Request, username: str) -> str | None:
    """The id of the request's device cookie when it was issued to ``username``."""
    value = request.cookies.get(DEVICE_COOKIE, "")
    device, _, signature = value.partition(".")
    if not (value.isascii() and len(device) == 16 and len(signature) == 32 and device.isalnum()):
        return None
    secret: str = request.app.state.device_secret
    if not hmac.compare_digest(_device_signature(secret, username, device), signature):
        return None
    return device


def set_device_cookie(response: Response, request: Request, username: str, device: str) -> None:
    """Remember this browser as a device of ``username`` (after a correct password)."""
    secret: str = request.app.state.device_secret
    response.set_cookie(
        DEVICE_COOKIE,
        f"{device}.{_device_signature(secret, username, device)}",
        max_age=DEVICE_DAYS * 86400,
        httponly=True,
        samesite="lax",
        secure=bool(request.app.state.settings.web_secure_cookies),
        path="/",
    )


def device_label(user_agent: str) -> str:
    """A short name for a browser from its User-Agent, to tell sessions apart."""
    ua = user_agent or ""
    system = next(
        (
            name
            for marker, name in (
                ("iPhone", "iPhone"),
                ("iPad", "iPad"),
                ("Android", "Android"),
                ("HarmonyOS", "HarmonyOS"),
                ("Windows", "Windows"),
                ("Mac OS X", "macOS"),
                ("CrOS", "ChromeOS"),
                ("Linux", "Linux"),
            )
            if marker in ua
        ),
        "",
    )
    browser = next(
        (
            name
            for marker, name in (
                ("MicroMessenger", "WeChat"),
                ("Edg/", "Edge"),
                ("Firefox/", "Firefox"),
                ("HeadlessChrome/", "Chromium"),
                ("Chrome/", "Chrome"),
                ("Safari/", "Safari"),
                ("python-httpx", "httpx"),
                ("curl/", "curl"),
            )
            if marker in ua
        ),
        "",
    )
    label = " · ".join(p for p in (browser, system) if p)
    return label or (ua[:60] if ua else "?")


# ---------------------------------------------------------------- the API's docs

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>marketcare API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script src="/static/api-docs.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/api/docs`` from the package's files (no CDN, no inline
    script: the initialiser is ``static/api-docs.js``)."""
    import fastapi_offline

    files = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount("/api/docs/static", StaticFiles(directory=str(files)), name="swagger-ui")

    @app.get("/api/docs", include_in_schema=False)
    def docs(_request: Request) -> Any:
        return HTMLResponse(DOCS_PAGE)
