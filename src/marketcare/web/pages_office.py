"""The district office's and the operator's pages: the dashboard, the problem decisions,
exports, the outbox and the users.

Same pattern as ``pages``: check ``access`` on the server, call the domain, render or
redirect after a write. A refused move or a bad field never changes anything and says
which field was wrong; the office sees the market's figures by the exports' rules
(``reports.dashboard``), so the page and the workbook never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import quote
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from markupsafe import Markup

from marketcare.domain import inputs
from marketcare.domain.access import Action, Principal, Role, may
from marketcare.domain.compliance import percent
from marketcare.domain.periods import KINDS, Period, PeriodKind
from marketcare.domain.problems import can_assign, moves_from
from marketcare.errors import BadInput, MarketcareError, NotFound, Unavailable
from marketcare.i18n import LANGUAGES
from marketcare.ledger import accounts, readmodel
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import read
from marketcare.ledger.models import ProblemRow
from marketcare.reports import delivery
from marketcare.reports.dashboard import MarketFigures
from marketcare.reports.dashboard import counted as dashboard_counted
from marketcare.web import fragments
from marketcare.web.app import (
    PageRecordId,
    SignedIn,
    authorise,
    authorise_market,
    check_csrf,
    dashboard_memo_of,
    engine_of,
    now_of,
    render,
    settings_of,
    status_of,
    translator_of,
)
from marketcare.web.pages_inspections import MARKETS_PER_PAGE, ranking_panel

router = APIRouter(dependencies=[Depends(check_csrf)], include_in_schema=False)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


#: a share as every text prints it (one decimal), "—" when nothing was due
pct = percent


def _flash(request: Request, text: str) -> None:
    """Leave a message for the page the redirect leads to (the session's ``flash``, the
    same one the manager pages show)."""
    request.session["flash"] = ["ok", text]


def _flashes(request: Request) -> list[tuple[str, str]]:
    value = request.session.pop("flash", None)
    if isinstance(value, list) and len(value) == 2:
        return [(str(value[0]), str(value[1]))]
    return []


def _local(moment: datetime | None, zone: str) -> str:
    return "" if moment is None else moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------- the dashboard


@dataclass(frozen=True)
class Pager:
    """Which of a large district's markets a dashboard page shows."""

    page: int
    pages: int
    first: int  # 1-based, for "markets 51–100 of 1,000"
    last: int
    total: int


def page_of(
    figures: list[MarketFigures], page: str, *, per_page: int = MARKETS_PER_PAGE
) -> tuple[list[MarketFigures], Pager | None]:
    """The markets of ``page`` (``?page=``) and where it is among the pages.

    A district of up to ``per_page`` markets sees them all, in their own order (no
    pager). A city of a thousand would get a page of megabytes that nobody reads across:
    it gets its markets most urgent first (``compliance.attention``), ``per_page`` at a
    time."""
    pages = max(1, -(-len(figures) // per_page))
    try:
        number = int(page) if page.strip() else 1
    except ValueError:
        number = 0
    if not 1 <= number <= pages:
        raise BadInput(f"page: a page number from 1 to {pages}", "page")
    if len(figures) <= per_page:
        return figures, None
    ordered = sorted(figures, key=lambda f: (f.attention, f.market.id))
    start = (number - 1) * per_page
    shown = ordered[start : start + per_page]
    return shown, Pager(number, pages, start + 1, start + len(shown), len(figures))


@router.get("/office")
def dashboard(request: Request, who: SignedIn, page: str = "") -> Response:
    """All markets side by side (a large district's most urgent first, a page at a
    time), and the problems past their deadline across them."""
    authorise(who, Action.DASHBOARD)
    engine, now = engine_of(request), now_of(request)
    # every active market, read again only when another schedule version is applied
    counted = dashboard_counted(engine, now=now, market_ids=None, memo=dashboard_memo_of(request))
    every = list(counted.figures)
    markets = [f.market for f in every]
    figures, pager = page_of(every, page)
    weeks = {Period.of("week", day) for _, day in counted.days}
    week_totals = {f.market.id: (f.week_on_time, f.week_due) for f in every}
    t = translator_of(request)

    def overdue() -> Markup:
        zones = {m.id: m.zone for m in markets}
        names = {m.id: m.name for m in markets}
        return cast(  # an autoescaped macro's answer is Markup already
            Markup,
            fragments.macros(request, t).overdue(
                [
                    {
                        "id": p.id,
                        "market": p.market_id,
                        "market_name": names.get(p.market_id, p.market_id),
                        "area": p.area_id,
                        "category": p.category,
                        "description": p.description,
                        "deadline": _local(p.deadline, zones.get(p.market_id, "UTC")),
                        "state": p.state,
                        "assigned_to": p.assigned_to,
                    }
                    for p in counted.overdue
                ]
            ),
        )

    shown = fragments.columns(request, t, figures)
    return render(
        request,
        "office.html",
        columns=shown,
        rows=fragments.rows(shown),
        pager=pager,
        overdue=fragments.overdue_list(request, t, counted.overdue, overdue),
        flashes=_flashes(request),
        inspections=ranking_panel(
            request,
            who,
            now=now,
            markets=markets,
            week_totals=week_totals if len(weeks) == 1 else None,
            counted=counted,
        ),
    )


# ---------------------------------------------------------------- problem decisions


def _problem_market(request: Request, who: Principal, action: Action, problem_id: int) -> str:
    market = readmodel.market_of_problem(engine_of(request), problem_id)
    return authorise_market(who, action, market)


def _refused(
    request: Request,
    problem_id: int,
    exc: MarketcareError,
    *,
    form_name: str,
    values: dict[str, str],
) -> Response:
    """A bad field is the user's to fix (400); a move the problem's state refuses is a
    conflict with what someone else did (409). Either way nothing changed, and the forms
    come back with what was typed."""
    message, field = exc.message, exc.field
    status = status_of(request, exc)
    with read(engine_of(request)) as conn:
        problem = conn.execute(
            sa.select(ProblemRow).where(ProblemRow.id == problem_id)
        ).one_or_none()
    return render(
        request,
        "office_refused.html",
        status_code=status,
        status=status,
        message=message,
        field=field,
        back=f"/p/{problem_id}",
        problem=problem,
        moves=_moves(problem),
        form_name=form_name,
        values=values,
        errors={field: message} if field else {},
    )


def _moves(problem: Any) -> set[str]:
    """What can be done to a problem in its state (assigning included), by the domain."""
    if problem is None:
        return set()
    moves = set(moves_from(problem.state))
    if can_assign(problem.state):
        moves.add("assign")
    return moves


def _deadline(value: str, market: str, request: Request) -> datetime | None:
    """An optional YYYY-MM-DD as the end of that day in the market's zone."""
    if not value.strip():
        return None
    zone = ZoneInfo(readmodel.market(engine_of(request), market).zone)
    when, error = problem_ledger.parse_when(value, zone, end_of_day=True, default=None)
    if when is None:
        raise BadInput(f"deadline: {error}", "deadline")
    inputs.check_date(when.date(), "deadline")  # as the API
    return when


def _done(request: Request, problem_id: int, what: str, text: str) -> Response:
    _flash(request, text)
    return RedirectResponse(f"/p/{problem_id}?done={what}", status_code=303)


def _move(
    request: Request,
    problem_id: int,
    step: Callable[[], None],
    *,
    form_name: str,
    values: dict[str, str],
    done: str,
    text: str,
) -> Response:
    """Run one of the office's moves; a refusal re-shows the form with what was typed."""
    try:
        step()
    except (NotFound, Unavailable):
        raise
    except MarketcareError as exc:
        return _refused(request, problem_id, exc, form_name=form_name, values=values)
    return _done(request, problem_id, done, text)


@router.post("/p/{problem_id}/assign")
def assign(
    request: Request,
    problem_id: PageRecordId,
    who: SignedIn,
    assigned_to: str = Form(""),
    deadline: str = Form(""),
) -> Response:
    market = _problem_market(request, who, Action.ASSIGN, problem_id)
    t = translator_of(request)

    def step() -> None:
        problem_ledger.assign(
            engine_of(request),
            problem_id=problem_id,
            by=who.username,
            to=assigned_to,
            now=now_of(request),
            deadline=_deadline(deadline, market, request),
        )

    return _move(
        request,
        problem_id,
        step,
        form_name="assign",
        values={"assigned_to": assigned_to, "deadline": deadline},
        done="assigned",
        text=t.tr("The problem is assigned."),
    )


@router.post("/p/{problem_id}/verify")
def verify(
    request: Request, problem_id: PageRecordId, who: SignedIn, note: str = Form("")
) -> Response:
    _problem_market(request, who, Action.VERIFY, problem_id)
    t = translator_of(request)

    def step() -> None:
        problem_ledger.verify(
            engine_of(request),
            problem_id=problem_id,
            by=who.username,
            now=now_of(request),
            note=note.strip() or None,
        )

    return _move(
        request,
        problem_id,
        step,
        form_name="verify",
        values={"verify_note": note},
        done="verified",
        text=t.tr("The problem is verified and closed."),
    )


@router.post("/p/{problem_id}/reopen")
def reopen(
    request: Request,
    problem_id: PageRecordId,
    who: SignedIn,
    note: str = Form(""),
    deadline: str = Form(""),
) -> Response:
    market = _problem_market(request, who, Action.VERIFY, problem_id)
    t = translator_of(request)

    def step() -> None:
        if not note.strip():
            raise BadInput(
                "note: " + t.tr("say why the rectification did not pass (a note is required)"),
                "note",
            )
        problem_ledger.reopen(
            engine_of(request),
            problem_id=problem_id,
            by=who.username,
            note=note.strip(),
            now=now_of(request),
            deadline=_deadline(deadline, market, request),
        )

    return _move(
        request,
        problem_id,
        step,
        form_name="reopen",
        values={"note": note, "deadline": deadline},
        done="reopened",
        text=t.tr("The problem is reopened."),
    )


# ---------------------------------------------------------------- exports


def _export_markets(request: Request, who: Principal) -> list[readmodel.MarketInfo]:
    every = readmodel.markets(engine_of(request))
    return [m for m in every if may(who, Action.EXPORT, m.id)]


def _export_form(
    request: Request,
    who: Principal,
    *,
    values: dict[str, str],
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "exports.html",
        status_code=status_code,
        markets=_export_markets(request, who),
        all_markets=who.all_markets,
        kinds=KINDS,
        values=values,
        errors=errors or {},
    )


def _local_today(request: Request) -> date:
    markets = readmodel.markets(engine_of(request))
    zone = ZoneInfo(markets[0].zone) if markets else ZoneInfo("Asia/Shanghai")
    return now_of(request).astimezone(zone).date()


@router.get("/exports")
def exports_page(request: Request, who: SignedIn) -> Response:
    """Pick a period, a day in it and a market (the office may take all of them)."""
    authorise(who, Action.EXPORT)
    return _export_form(
        request,
        who,
        values={
            "period": "week",
            "date": _local_today(request).isoformat(),
            "market": "all" if who.all_markets else "",
        },
    )


@router.get("/exports/download")
def download(
    request: Request,
    who: SignedIn,
    period: str = "week",
    day_text: str = Query("", alias="date"),
    market: str = "all",
) -> Response:
    """Write (or reuse) the workbook and send it; a manager only of their own markets."""
    authorise(who, Action.EXPORT)
    t = translator_of(request)
    values = {"period": period, "date": day_text, "market": market}
    errors: dict[str, str] = {}
    if period not in KINDS:
        errors["period"] = t.tr("period: choose day, week or month")
    day: date | None = None
    try:
        day = _parse_day(day_text)
    except ValueError:
        errors["date"] = t.tr("date: {value} is not a date; write it as 2026-11-23").format(
            value=repr(day_text)
        )
    scope: list[str] | None
    if market in ("", "all"):
        scope = None if who.all_markets else sorted(who.markets)
    else:
        authorise(who, Action.EXPORT, market)
        readmodel.market(engine_of(request), market)  # an unknown market is a 404
        scope = [market]
    if errors or day is None:
        return _export_form(request, who, values=values, errors=errors, status_code=400)
    kind: PeriodKind = "day" if period == "day" else "week" if period == "week" else "month"
    result = delivery.export(
        engine_of(request),
        period=Period.of(kind, day),
        exports_dir=Path(settings_of(request).exports_dir),
        now=now_of(request),
        markets=scope,
        language=t.language,
    )
    return FileResponse(result.path, media_type=XLSX, filename=result.path.name)


def _parse_day(value: str) -> date:
    text = value.strip().replace("/", "-")
    if not text:
        raise ValueError("empty")
    # a day of year 1 or 9999 overflowed the period's arithmetic (a 500): bad input
    return inputs.check_date(date.fromisoformat(text), "date")


# ---------------------------------------------------------------- the outbox


@router.get("/office/outbox")
def outbox(request: Request, who: SignedIn) -> Response:
    """Every report email: to whom, whether it went, and why not when it did not."""
    authorise(who, Action.OUTBOX)
    zone = settings_of(request).timezone
    rows = [
        {
            "id": r.id,
            "recipient": r.recipient,
            "state": r.state,
            "attempts": r.attempts,
            "last_error": r.last_error,
            "report": Path(r.path).name,
            "period": f"{r.period_kind} {r.period_key}",
            "created_at": _local(r.created_at, zone),
            "sent_at": _local(r.sent_at, zone),
        }
        for r in delivery.outbox(engine_of(request))
    ]
    return render(request, "outbox.html", messages=rows)


# ---------------------------------------------------------------- users


def _users_page(
    request: Request,
    *,
    form: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    row_errors: dict[str, str] | None = None,
    row_fields: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    markets = readmodel.markets(engine_of(request))
    return render(
        request,
        "users.html",
        status_code=status_code,
        users=accounts.list_users(engine_of(request)),
        markets=markets,
        market_names={m.id: m.name for m in markets},
        roles=[r.value for r in Role],
        languages=LANGUAGES,
        form=form or {"role": Role.MANAGER.value, "markets": [], "language": ""},
        errors=errors or {},
        row_errors=row_errors or {},
        row_fields=row_fields or {},
        flashes=_flashes(request),
    )


@router.get("/admin/users")
def users(request: Request, who: SignedIn) -> Response:
    authorise(who, Action.MANAGE_USERS)
    return _users_page(request)


@router.post("/admin/users")
def add_user(
    request: Request,
    who: SignedIn,
    username: str = Form(""),
    display_name: str = Form(""),
    role: str = Form(""),
    markets: Annotated[list[str] | None, Form()] = None,
    password: str = Form(""),
    language: str = Form(""),
) -> Response:
    """Add a user from the form; a refusal shows at the field it is about."""
    authorise(who, Action.MANAGE_USERS)
    form: dict[str, Any] = {
        "username": username,
        "display_name": display_name,
        "role": role,
        "markets": markets or [],
        "language": language,
    }
    try:
        try:
            as_role = Role(role)
        except ValueError:
            raise accounts.AccountError(
                f"role must be one of {', '.join(r.value for r in Role)}", "role"
            ) from None
        accounts.add_user(
            engine_of(request),
            accounts.NewUser(
                username=username,
                display_name=display_name,
                role=as_role,
                password=password,
                markets=tuple(markets or ()),
                language=language or None,
            ),
            now=now_of(request),
            by=who.username,
        )
    except accounts.AccountError as exc:
        return _users_page(
            request, form=form, errors={exc.field or "form": str(exc)}, status_code=400
        )
    _flash(request, translator_of(request).tr("The user is added."))
    return RedirectResponse(
        f"/admin/users?done=added#user-{quote(username.strip().lower())}", status_code=303
    )


def _user_exists(request: Request, username: str) -> None:
    if not any(u["username"] == username for u in accounts.list_users(engine_of(request))):
        raise HTTPException(status_code=404, detail=f"no user {username!r}")


@router.post("/admin/users/{username}/disable")
def disable_user(request: Request, username: str, who: SignedIn) -> Response:
    authorise(who, Action.MANAGE_USERS)
    _user_exists(request, username)
    t = translator_of(request)
    refusal = None
    if username == who.username:
        refusal = t.tr("You cannot disable your own account.")
    else:
        try:
            accounts.set_disabled(
                engine_of(request), username, True, by=who.username, now=now_of(request)
            )
        except accounts.AccountError:
            # the last active operator (see access.leaves_no_operator)
            refusal = t.tr("This is the last active operator; add or enable another first.")
    if refusal is not None:
        return _users_page(
            request,
            row_errors={username: refusal},
            row_fields={username: "username"},
            status_code=400,
        )
    _flash(request, translator_of(request).tr("The user is disabled and signed out."))
    return RedirectResponse("/admin/users?done=disabled", status_code=303)


@router.post("/admin/users/{username}/enable")
def enable_user(request: Request, username: str, who: SignedIn) -> Response:
    authorise(who, Action.MANAGE_USERS)
    _user_exists(request, username)
    accounts.set_disabled(engine_of(request), username, False, by=who.username, now=now_of(request))
    _flash(request, translator_of(request).tr("The user is enabled."))
    return RedirectResponse("/admin/users?done=enabled", status_code=303)


@router.post("/admin/users/{username}/password")
def set_password(
    request: Request,
    username: str,
    who: SignedIn,
    password: str = Form(""),
    keep_tokens: str = Form(""),
) -> Response:
    """Set a user's password: their sessions end and, unless the operator ticks "keep
    the user's API tokens", their tokens are revoked."""
    authorise(who, Action.MANAGE_USERS)
    _user_exists(request, username)
    try:
        accounts.set_password(
            engine_of(request),
            username,
            password,
            keep_tokens=bool(keep_tokens),
            by=who.username,
            now=now_of(request),
        )
    except accounts.AccountError as exc:
        return _users_page(request, row_errors={username: str(exc)}, status_code=400)
    _flash(
        request,
        translator_of(request).tr("The password is changed; the user's sessions have ended."),
    )
    return RedirectResponse("/admin/users?done=password", status_code=303)
