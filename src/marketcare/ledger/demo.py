"""Seeded, simulated history so a new installation has something real to show at once."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from marketcare.domain.checklists import checklist_of
from marketcare.domain.obligations import State
from marketcare.domain.schedules import Schedule
from marketcare.errors import MarketcareError
from marketcare.ledger.db import read
from marketcare.ledger.materialise import materialise
from marketcare.ledger.models import AreaRow, LedgerState, Obligation
from marketcare.ledger.sweep import sweep_all
from marketcare.ledger.tick import tick as record_tick

AGENTS = ("溴敌隆毒饵 50 g；高效氯氰菊酯 20 mL", "杀蟑胶饵 10 g；灭蝇灯检查", "溴敌隆毒饵 30 g")
PEOPLE = ("陈建国", "林秀英", "黄志强", "吴丽娟", "郑海峰", "王美玲")


@dataclass
class DemoResult:
    obligations: int = 0
    done: int = 0
    late: int = 0
    failed: int = 0
    redone: int = 0
    missed: int = 0


def fill(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    days: int,
    seed: int,
    now: datetime,
    horizon: timedelta,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Materialise the ``days`` days that end now and complete them as real markets would:
    mostly on time, some late, some readings out of range (most redone), some missed."""
    if days < 1:
        raise MarketcareError("--days must be at least 1")
    start = now - timedelta(days=days)
    with read(engine) as conn:
        state = conn.execute(sa.select(LedgerState.materialised_until)).scalar_one_or_none()
    if state is not None and state > start:
        raise MarketcareError(
            "demo fills a new ledger with history; this database already has obligations "
            "(use a new database, e.g. MARKETCARE_DATABASE_URL=sqlite:///var/demo.db)"
        )
    materialise(engine, schedule, now=now, horizon=horizon, start=start)
    # simulated history must repeat for a seed; nothing here is secret (bandit B311 accepted)
    rng = random.Random(seed)  # nosec B311
    with read(engine) as conn:
        kinds = {(r.market_id, r.id): r.kind for r in conn.execute(sa.select(AreaRow)).all()}
        rows = conn.execute(
            sa.select(Obligation)
            .where(Obligation.opens_at < now)
            .order_by(Obligation.opens_at, Obligation.id)
        ).all()
    result = DemoResult(obligations=len(rows))
    for i, ob in enumerate(rows):
        if progress:
            progress(i + 1, len(rows))
        checklist = checklist_of(schedule, ob.task_id, kinds.get((ob.market_id, ob.area_id)))
        roll = rng.random()
        window = (ob.due_at - ob.opens_at).total_seconds()
        grace = (ob.missed_at - ob.due_at).total_seconds()
        if roll < 0.07:
            continue  # missed: nobody came
        if roll < 0.15:
            at = ob.due_at + timedelta(seconds=rng.uniform(60, grace + 3 * 3600))
        else:
            at = ob.opens_at + timedelta(seconds=rng.uniform(0, window * 0.95))
        if at >= now:
            continue
        who = rng.choice(PEOPLE)
        fail = roll > 0.95 and checklist.readings
        readings = {}
        for r in checklist.readings:
            lo, hi = r.range or (None, None)
            if fail and lo is not None:
                readings[r.id] = round(lo * rng.uniform(0.3, 0.8))
            else:
                a = lo if lo is not None else (hi or 100) * 0.5
                b = hi if hi is not None else a * 1.5
                readings[r.id] = round(rng.uniform(a, b))
        token = f"demo-{seed}-{ob.id}"
        texts = {t.id: rng.choice(AGENTS) for t in checklist.texts if t.required}
        res = record_tick(
            engine, obligation_id=ob.id, by=who, now=at, readings=readings, token=token, texts=texts
        )
        if res.state == State.FAILED:
            result.failed += 1
            if rng.random() < 0.7:
                again = at + timedelta(minutes=rng.uniform(20, 90))
                if again < now:
                    good = {r.id: _middle(r.range) for r in checklist.readings}
                    record_tick(
                        engine,
                        obligation_id=ob.id,
                        by=who,
                        now=again,
                        readings=good,
                        note="重新配药后复做",
                        token=token + "-redo",
                        texts=texts,
                    )
                    result.redone += 1
        elif res.state == State.LATE:
            result.late += 1
        elif res.state == State.DONE:
            result.done += 1
    swept = sweep_all(engine, now=now)
    result.missed = swept.missed
    return result


def _middle(bounds: tuple[float | None, float | None] | None) -> float:
    if bounds is None:
        return 1.0
    lo, hi = bounds
    if lo is not None and hi is not None:
        return round((lo + hi) / 2)
    return float(lo if lo is not None else (hi or 1) * 0.5)
