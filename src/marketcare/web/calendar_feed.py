"""A read-only iCalendar feed per market, so a manager's phone calendar shows the schedule.

Phone calendars subscribe to a URL and cannot sign in, so the feed is reached by a secret
in its address instead of a session. The secret is per user and market
(``accounts.feed_key``): it stops working when the user is disabled, loses the market,
or rotates their addresses (account page, ``marketcare users rotate-feed``). A wrong key
is a plain 404, the same as an unknown market. Times are UTC, so the feed needs no
VTIMEZONE.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from marketcare import logs
from marketcare.domain.obligations import State, state_by_clock
from marketcare.domain.schedules import Schedule
from marketcare.ledger import accounts, readmodel
from marketcare.ledger.db import read
from marketcare.ledger.models import AreaRow, Obligation
from marketcare.ledger.versions import schedule_of_version
from marketcare.web.app import engine_of, now_of

if TYPE_CHECKING:
    from icalendar import Event

router = APIRouter(include_in_schema=False)

#: the window a feed shows, in local days around today
DAYS_BEFORE = 7
DAYS_AFTER = 30


def feed(engine: sa.Engine, market_id: str, *, now: datetime) -> bytes:
    """The market's obligations from a week ago to a month ahead as an iCalendar file."""
    info = readmodel.market(engine, market_id)
    today = info.today(now)
    first = (today - timedelta(days=DAYS_BEFORE)).isoformat()
    last = (today + timedelta(days=DAYS_AFTER)).isoformat()
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(Obligation)
            .where(
                Obligation.market_id == market_id,
                Obligation.local_date >= first,
                Obligation.local_date <= last,
            )
            .order_by(Obligation.opens_at, Obligation.id)
        ).all()
        area_names = {
            a.id: a.name or a.id
            for a in conn.execute(sa.select(AreaRow).where(AreaRow.market_id == market_id))
        }
        schedules: dict[int, Schedule] = {
            v: schedule_of_version(conn, v) for v in {r.version_id for r in rows}
        }
    # imported here: icalendar costs every web app's start 0.1 s of CPU, for a feed that
    # phones fetch now and then
    from icalendar import Calendar

    cal = Calendar()
    cal.add("prodid", "-//marketcare//calendar feed//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", info.name)
    cal.add("x-published-ttl", "PT1H")
    stamp = now.astimezone(UTC)
    for r in rows:
        cal.add_component(_event(r, schedules[r.version_id], area_names, now=now, stamp=stamp))
    return bytes(cal.to_ical())


def _event(
    r: Any, schedule: Schedule, area_names: dict[str, str], *, now: datetime, stamp: datetime
) -> Event:
    task = schedule.task_by_id.get(r.task_id)
    name = task.name if task is not None else r.task_id
    area = area_names.get(r.area_id, r.area_id) if r.area_id else None
    from icalendar import Event

    state = state_by_clock(State(r.state), opens_at=r.opens_at, missed_at=r.missed_at, now=now)
    ev = Event()
    ev.add("uid", f"obligation-{r.id}@marketcare")
    ev.add("dtstamp", stamp)
    ev.add("dtstart", r.opens_at.astimezone(UTC))
    ev.add("dtend", max(r.due_at, r.opens_at + timedelta(minutes=1)).astimezone(UTC))
    ev.add("summary", f"{name} · {area}" if area else name)
    ev.add("description", f"state: {state.value}" + (f"\n{r.note}" if r.note else ""))
    ev.add("categories", [r.kind])
    ev.add("status", "CANCELLED" if state == State.EXCUSED else "CONFIRMED")
    ev.add("x-marketcare-state", state.value)
    return ev


@router.get("/calendar/{market_id}/{key}.ics")
def calendar(market_id: str, key: str, request: Request) -> Response:
    """No sign-in: the key in the address is the credential."""
    reader = accounts.feed_reader(engine_of(request), request.app.state.feed_secret, market_id, key)
    if reader is None:
        logs.security("feed_refused", level=logging.WARNING, market=market_id[:64])
        raise HTTPException(status_code=404, detail="no such calendar")
    body = feed(engine_of(request), market_id, now=now_of(request))
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={
            "Content-Disposition": f'inline; filename="{market_id}.ics"',
            "Cache-Control": "private, max-age=300",
        },
    )
