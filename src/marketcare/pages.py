"""The server-rendered pages: mobile-first, every action a plain form post.

A page handler reads the request, asks ``access`` whether the user may, calls the
domain (``views`` to show, ``ledger``/``rectification`` to change) and renders a
template, or redirects after a write (post/redirect/get, so a reload never resubmits).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from . import accounts, views
from .access import Action, Role, may, visible_markets
from .web import (
    SignedIn,
    check_csrf,
    current_user,
    engine_of,
    now_of,
    render,
    safe_next,
    translator_of,
)

router = APIRouter(dependencies=[Depends(check_csrf)], include_in_schema=False)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    if current_user(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request,
    username: str = Form(""),
    password: str = Form(""),
    next: str = Form("/"),
) -> Response:
    try:
        who = accounts.authenticate(
            engine_of(request), username, password, client=_client(request), now=now_of(request)
        )
    except accounts.Throttled as exc:
        response = render(
            request,
            "login.html",
            status_code=429,
            next=safe_next(next),
            error=str(exc),
            username=username,
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if who is None:
        t = translator_of(request)
        return render(
            request,
            "login.html",
            status_code=401,
            next=safe_next(next),
            error=t.tr("Wrong user name or password."),
            username=username,
        )
    # a fresh session on sign-in: nothing from before (a planted cookie) carries over
    request.session.clear()
    request.session["uid"] = who.user_id
    request.session["epoch"] = accounts.session_epoch(engine_of(request), who.user_id)
    request.state.principal = who
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def home(request: Request, who: SignedIn) -> Response:
    """Where each role starts: a manager's market board, the office dashboard, users."""
    if who.role == Role.OFFICE:
        return RedirectResponse("/office", status_code=303)
    if who.role == Role.OPERATOR:
        return RedirectResponse("/admin/users", status_code=303)
    mine = visible_markets(who, [m.id for m in views.markets(engine_of(request))])
    if len(mine) == 1:
        return RedirectResponse(f"/m/{mine[0]}", status_code=303)
    return render(request, "home.html", markets=views.markets(engine_of(request), mine))


__all__ = ["router", "Action", "may"]
