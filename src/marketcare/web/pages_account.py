"""Signing in and out, and the user's own account: language, signed-in devices, API
tokens and calendar feed addresses; and the operator's review of everyone's tokens.

The throttle's rules are ``domain.signin``'s; sessions are ``ledger.sessions``' rows;
tokens, feeds and users are ``ledger.accounts``'. Creating a token asks for the password
again, through the same throttle as the sign-in form.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from marketcare import logs
from marketcare.domain.access import Action, Principal, Role
from marketcare.errors import NotFound
from marketcare.i18n import LANGUAGES
from marketcare.ledger import accounts, readmodel, sessions
from marketcare.web import security
from marketcare.web.app import (
    SignedIn,
    authorise,
    check_csrf,
    client_of,
    current_user,
    engine_of,
    lifetime_of,
    now_of,
    render,
    safe_next,
    translator_of,
)
from marketcare.web.pages import _flash, _flashes, _page

router = APIRouter(dependencies=[Depends(check_csrf)], include_in_schema=False)

TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]
SessionId = Annotated[int, Path(ge=1, le=2**62)]


# ---------------------------------------------------------------- signing in and out


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    if current_user(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
async def login(
    request: Request,
    username: str = Form(""),
    password: str = Form(""),
    next: str = Form("/"),
) -> Response:
    """Check the password under the throttle; a correct one starts a session row.

    Async so that the slow-down of a name under attack (``domain.signin``) waits
    without holding a worker thread.
    """
    engine = engine_of(request)
    device = security.device_for(request, username)
    try:
        attempt = await run_in_threadpool(
            accounts.attempt_sign_in,
            engine,
            username,
            password,
            client=client_of(request),
            device=device,
            now=now_of(request),
        )
    except accounts.Throttled as exc:
        response = await run_in_threadpool(
            render,
            request,
            "login.html",
            status_code=429,
            next=safe_next(next),
            error=str(exc),
            username=username,
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if attempt.delay:
        await asyncio.sleep(attempt.delay)
    who = attempt.who
    if who is None:
        t = translator_of(request)
        return await run_in_threadpool(
            render,
            request,
            "login.html",
            status_code=401,
            next=safe_next(next),
            error=t.tr("Wrong user name or password."),
            username=username,
        )
    # a fresh session on sign-in: nothing from before (a planted cookie) carries over
    request.session.clear()
    key = await run_in_threadpool(
        sessions.start,
        engine,
        who.user_id,
        device=security.device_label(request.headers.get("user-agent", "")),
        client=client_of(request),
        now=now_of(request),
    )
    request.session["sid"] = key
    request.state.principal = who
    logs.security("signin", user=who.username, client=client_of(request), device=device or "")
    signed_in = RedirectResponse(safe_next(next), status_code=303)
    security.set_device_cookie(signed_in, request, who.username, device or accounts.device_id())
    return signed_in


@router.post("/logout")
def logout(request: Request) -> Response:
    """Sign out: the session row ends, so a copy of the cookie is worth nothing."""
    key = request.session.get("sid")
    if isinstance(key, str):
        sessions.end(engine_of(request), key, now=now_of(request))
        logs.security("signout", client=client_of(request))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# ---------------------------------------------------------------- the user's account


def _account_context(request: Request, who: Principal) -> dict[str, Any]:
    engine = engine_of(request)
    feeds: list[tuple[readmodel.MarketInfo, str]] = []
    if who.role == Role.MANAGER:
        secret: str = request.app.state.feed_secret
        base = str(request.base_url)
        keys = accounts.feed_keys(engine, secret, who, sorted(who.markets))
        for m in readmodel.markets(engine, sorted(keys)):
            feeds.append((m, f"{base}calendar/{m.id}/{keys[m.id]}.ics"))
    t = translator_of(request)
    current = getattr(request.state, "session_id", None)
    return {
        "tokens": [tk for tk in accounts.tokens_of(engine, who.user_id) if not tk["revoked"]],
        "feeds": feeds,
        "devices": sessions.live(
            engine, who.user_id, now=now_of(request), lifetime=lifetime_of(request)
        ),
        "current_session": current,
        "roles": {
            Role.MANAGER: t.tr("Market manager"),
            Role.OFFICE: t.tr("District office"),
            Role.OPERATOR: t.tr("Operator"),
        },
        "errors": {},
    }


def _account(request: Request, who: Principal, status_code: int = 200, **extra: Any) -> Response:
    ctx = _account_context(request, who)
    ctx.update(extra)
    return _page(request, "account.html", status_code=status_code, **ctx)


@router.get("/account")
def account_page(request: Request, who: SignedIn) -> Response:
    return _account(request, who)


@router.post("/account/language")
def choose_language(request: Request, who: SignedIn, language: str = Form("")) -> Response:
    t = translator_of(request)
    if language not in ("", *LANGUAGES):
        return _account(
            request, who, 400, errors={"language": t.tr("Choose a language from the list.")}
        )
    accounts.set_language(engine_of(request), who.user_id, language or None)
    request.state.principal = replace(who, language=language or None)
    _flash(request, "ok", translator_of(request).tr("Language saved."))
    return RedirectResponse("/account", status_code=303)


@router.post("/account/tokens")
async def create_token(
    request: Request, who: SignedIn, name: str = Form(""), password: str = Form("")
) -> Response:
    """Make an API token and show it this once (only its hash is kept).

    The password is asked again: a session left open on a shared computer must not be
    enough to mint a credential that outlives it. Wrong guesses count as failed
    sign-ins (the same throttle).
    """
    t = translator_of(request)
    if not name.strip() or len(name.strip()) > 100:
        return await run_in_threadpool(
            _account,
            request,
            who,
            400,
            errors={
                "name": t.tr("Name the token (1–100 characters), e.g. the system that uses it.")
            },
        )
    try:
        attempt = await run_in_threadpool(
            accounts.attempt_sign_in,
            engine_of(request),
            who.username,
            password,
            client=client_of(request),
            device=security.device_for(request, who.username),
            now=now_of(request),
        )
    except accounts.Throttled as exc:
        response = await run_in_threadpool(
            _account, request, who, 429, errors={"password": str(exc)}
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if attempt.delay:
        await asyncio.sleep(attempt.delay)
    if attempt.who is None or attempt.who.user_id != who.user_id:
        logs.security("reauth_failed", level=logging.WARNING, user=who.username)
        return await run_in_threadpool(
            _account,
            request,
            who,
            403,
            errors={"password": t.tr("The password is not right; the token was not made.")},
        )
    _tid, token = await run_in_threadpool(
        lambda: accounts.create_token(
            engine_of(request), who.user_id, name, now=now_of(request), by=who.username
        )
    )
    return await run_in_threadpool(_account, request, who, 200, new_token=token)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: TokenId, who: SignedIn) -> Response:
    accounts.revoke_token(
        engine_of(request), who.user_id, token_id, now=now_of(request), by=who.username
    )
    _flash(request, "ok", translator_of(request).tr("Token revoked."))
    return RedirectResponse("/account", status_code=303)


@router.post("/account/sessions/{session_id}/end")
def end_session(request: Request, session_id: SessionId, who: SignedIn) -> Response:
    """Sign out one of the user's other devices (a lost phone)."""
    if not sessions.end_one(engine_of(request), who.user_id, session_id, now=now_of(request)):
        raise NotFound("no such session")
    if session_id == getattr(request.state, "session_id", None):
        request.session.clear()
        return RedirectResponse("/login", status_code=303)
    _flash(request, "ok", translator_of(request).tr("That device is signed out."))
    return RedirectResponse("/account", status_code=303)


@router.post("/account/sessions/end-all")
def end_all_sessions(request: Request, who: SignedIn) -> Response:
    """Sign out everywhere, this browser included."""
    sessions.end_all(
        engine_of(request), who.user_id, why=sessions.Why.EVERYWHERE, now=now_of(request)
    )
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.post("/account/calendar/rotate")
def rotate_calendar(request: Request, who: SignedIn) -> Response:
    """New calendar feed addresses for the user; the old ones answer 404 from now on."""
    authorise(who, Action.VIEW_MARKET)
    accounts.rotate_feed(engine_of(request), who.username, now=now_of(request), by=who.username)
    _flash(
        request,
        "ok",
        translator_of(request).tr(
            "New calendar addresses made; subscribe again with the new one on each phone."
        ),
    )
    return RedirectResponse("/account", status_code=303)


# ---------------------------------------------------------------- everyone's tokens


@router.get("/admin/tokens")
def all_tokens(request: Request, who: SignedIn) -> Response:
    """The operator's review: every user's tokens that still work, to revoke any."""
    authorise(who, Action.MANAGE_USERS)
    return render(
        request,
        "tokens.html",
        tokens=accounts.active_tokens(engine_of(request)),
        flashes=_flashes(request),
    )


@router.post("/admin/tokens/{token_id}/revoke")
def revoke_any_token(
    request: Request, token_id: TokenId, who: SignedIn, username: str = Form("")
) -> Response:
    authorise(who, Action.MANAGE_USERS)
    accounts.revoke_token(
        engine_of(request),
        accounts.user_id_of(engine_of(request), username),
        token_id,
        now=now_of(request),
        by=who.username,
    )
    _flash(request, "ok", translator_of(request).tr("Token revoked."))
    return RedirectResponse("/admin/tokens", status_code=303)


__all__ = ["router"]
