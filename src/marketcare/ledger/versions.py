"""Schedule versions: the exact texts each applied schedule was loaded from, and the
markets and areas tables kept in step with them.

A version never changes once written, so everything that judges an obligation (its
checklist, its ranges) reads the version that made it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from marketcare.domain.schedules import Schedule, load_texts
from marketcare.errors import MarketcareError, NotFound, ScheduleError
from marketcare.ledger.db import dialect_insert
from marketcare.ledger.models import (
    AreaRow,
    LedgerState,
    MarketRow,
    ScheduleVersion,
)

log = logging.getLogger(__name__)


def ensure_version(conn: sa.Connection, schedule: Schedule, *, now: datetime) -> int:
    """Record the schedule's exact texts (once per digest) and refresh markets and areas."""
    known = conn.execute(
        sa.select(ScheduleVersion.id).where(ScheduleVersion.digest == schedule.digest)
    ).scalar_one_or_none()
    if known is not None:
        applied = conn.execute(
            sa.select(LedgerState.version_id).where(LedgerState.id == 1)
        ).scalar_one_or_none()
        if applied == known:
            return int(known)  # markets and areas were written when it was applied
    stmt = dialect_insert(conn, ScheduleVersion).values(
        digest=schedule.digest,
        loaded_at=now,
        default_timezone=schedule.default_timezone,
        sources=dict(schedule.sources),
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]))
    version_id: int = conn.execute(
        sa.select(ScheduleVersion.id).where(ScheduleVersion.digest == schedule.digest)
    ).scalar_one()
    _sync_markets(conn, schedule, version_id)
    return version_id


def _sync_markets(conn: sa.Connection, schedule: Schedule, version_id: int) -> None:
    """Bring the markets and areas tables to the schedule: new rows inserted, changed rows
    updated, vanished ones deactivated (never deleted: obligations refer to them).

    Each kind of change goes to the database as one executemany: a province's first
    load is 20,000 markets and 240,000 areas, which one statement per row makes minutes.
    """
    existing = {r.id: r for r in conn.execute(sa.select(MarketRow)).all()}
    all_areas: dict[str, dict[str, Any]] = {}
    for r in conn.execute(sa.select(AreaRow)).all():
        all_areas.setdefault(r.market_id, {})[r.id] = r
    new_markets: list[dict[str, Any]] = []
    changed_markets: list[dict[str, Any]] = []
    new_areas: list[dict[str, Any]] = []
    changed_areas: list[dict[str, Any]] = []
    gone_areas: list[dict[str, Any]] = []
    seen = set()
    for m in schedule.markets:
        seen.add(m.id)
        values = {
            "name": m.name,
            "sub_district": m.sub_district,
            "timezone": m.timezone or schedule.default_timezone,
            "active": True,
        }
        row = existing.get(m.id)
        if row is None:
            new_markets.append({"id": m.id, "version_id": version_id, **values})
        elif any(getattr(row, k) != v for k, v in values.items()):
            changed_markets.append({"b_id": m.id, "version_id": version_id, **values})
        areas = all_areas.get(m.id, {})
        for a in m.areas:
            avalues = {"name": a.name, "kind": a.kind.value, "m2": a.m2, "active": True}
            arow = areas.pop(a.id, None)
            if arow is None:
                new_areas.append({"market_id": m.id, "id": a.id, **avalues})
            elif any(getattr(arow, k) != v for k, v in avalues.items()):
                changed_areas.append({"b_market": m.id, "b_id": a.id, **avalues})
        gone_areas.extend({"b_market": m.id, "b_id": gone} for gone in areas)
    gone_markets = [{"b_id": gone} for gone in sorted(set(existing) - seen)]
    market_key = MarketRow.id == sa.bindparam("b_id")
    area_key = (AreaRow.market_id == sa.bindparam("b_market")) & (
        AreaRow.id == sa.bindparam("b_id")
    )
    if new_markets:
        conn.execute(sa.insert(MarketRow), new_markets)
    if changed_markets:
        conn.execute(sa.update(MarketRow).where(market_key), changed_markets)
    if gone_markets:
        conn.execute(sa.update(MarketRow).where(market_key).values(active=False), gone_markets)
    if new_areas:
        conn.execute(sa.insert(AreaRow), new_areas)
    if changed_areas:
        conn.execute(sa.update(AreaRow).where(area_key), changed_areas)
    if gone_areas:
        conn.execute(sa.update(AreaRow).where(area_key).values(active=False), gone_areas)


@lru_cache(maxsize=8)
def _parse_version(digest: str, sources: tuple[tuple[str, str], ...], zone: str) -> Schedule:
    return load_texts(dict(sources), default_timezone=zone)


_versions_lock = threading.Lock()
#: engine → version id → parsed schedule (weak: an engine disposed of takes its entries)
_versions: weakref.WeakKeyDictionary[sa.Engine, dict[int, Schedule]] = weakref.WeakKeyDictionary()


def schedule_of_version(conn: sa.Connection, version_id: int) -> Schedule:
    """The schedule exactly as it was when ``version_id`` was loaded.

    A version never changes: its row is inserted once (per digest) and never updated
    or deleted, and obligations only name committed versions. So the parsed schedule
    is kept per engine and version id, and a hit asks the database nothing: reading
    and decoding the version's sources (megabytes for a city) on every tick was half
    of a tick's CPU. The cache is per engine because ids are per database.
    """
    engine = conn.engine
    with _versions_lock:
        known = _versions.get(engine)
        found = known.get(version_id) if known is not None else None
    if found is not None:
        return found
    row = conn.execute(
        sa.select(ScheduleVersion).where(ScheduleVersion.id == version_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"schedule version {version_id} does not exist")
    try:
        parsed = _parse_version(
            row.digest, tuple(sorted(row.sources.items())), row.default_timezone
        )
    except ScheduleError as exc:
        # a version stored before a form was refused (a BYSECOND rule, an infinite m2)
        raise MarketcareError(
            f"schedule version {version_id} can no longer be read: {exc.errors[0]}"
        ) from None
    with _versions_lock:
        _versions.setdefault(engine, {})[version_id] = parsed
    return parsed


def active_schedule(conn: sa.Connection, *, digest: str | None = None) -> Schedule | None:
    """The schedule the ledger was last materialised with, if any; given ``digest``, only
    when that is its digest (its texts are not read otherwise)."""
    state = ledger_state(conn)
    if state is None or state.version_id is None:
        return None
    if digest is not None:
        applied = conn.execute(
            sa.select(ScheduleVersion.digest).where(ScheduleVersion.id == state.version_id)
        ).scalar_one_or_none()
        if applied != digest:
            return None
    return schedule_of_version(conn, state.version_id)


def ledger_state(conn: sa.Connection, *, lock: bool = False) -> sa.Row[Any] | None:
    stmt = sa.select(LedgerState).where(LedgerState.id == 1)
    if lock:
        stmt = stmt.with_for_update()
    return conn.execute(stmt).one_or_none()
