"""The JSON API (``/api/v1``), documented by its OpenAPI schema at ``/api/openapi.json``.

Every endpoint checks ``access`` on the server: for reads and writes of one market's
records, a record of a market the caller may not see answers 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from . import views
from .access import Action, visible_markets
from .web import SignedIn, authorise, check_csrf, engine_of, now_of

router = APIRouter(prefix="/api/v1", tags=["api"], dependencies=[Depends(check_csrf)])


class Me(BaseModel):
    username: str
    display_name: str
    role: str
    markets: list[str]
    language: str | None


@router.get("/me", response_model=Me, summary="Who the caller is")
def me(request: Request, who: SignedIn) -> Me:
    every = [m.id for m in views.markets(engine_of(request))]
    return Me(
        username=who.username,
        display_name=who.display_name,
        role=who.role.value,
        markets=visible_markets(who, every),
        language=who.language,
    )


@router.get("/markets/{market_id}/today", summary="A market's board for its local today")
def market_today(market_id: str, request: Request, who: SignedIn) -> dict[str, Any]:
    authorise(who, Action.VIEW_MARKET, market_id)
    return views.today(engine_of(request), market_id, now=now_of(request)).as_json()
