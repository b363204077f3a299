"""Seeded, simulated history so a new installation has something real to show at once."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain.checklists import checklist_of
from marketcare.domain.inspections import plan_windows
from marketcare.domain.obligations import State
from marketcare.domain.problems import ProblemState
from marketcare.domain.schedules import Schedule
from marketcare.errors import MarketcareError
from marketcare.ledger import evidence
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import read
from marketcare.ledger.materialise import materialise
from marketcare.ledger.models import AreaRow, LedgerState, MarketRow, Obligation, ProblemRow
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
    inspections: int = 0
    problems: int = 0


def fill(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    days: int,
    seed: int,
    now: datetime,
    horizon: timedelta,
    progress: Callable[[int, int], None] | None = None,
    evidence_dir: Path | None = None,
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
    result.inspections, result.problems = inspect(
        engine, schedule, now=now, seed=seed, evidence_dir=evidence_dir
    )
    return result


#: inspections go back a month, whatever the days of daily work: a ranking and a trend
INSPECTION_DAYS = 31
OFFICERS = ("区联合考评中心 陈志明", "区联合考评中心 林晓燕")


def _demo_photo() -> bytes:
    """A tiny grey PNG standing for the photo of a failure."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\x99" * 8 for _ in range(8)))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def inspect(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    now: datetime,
    seed: int,
    evidence_dir: Path | None = None,
    days: int = INSPECTION_DAYS,
) -> tuple[int, int]:
    """A month of planned inspections as officers do them: one in each planned window,
    some items failed (each market has its own standard), most failures rectified before
    their deadline and re-inspected at the next visit. Returns (inspections, problems)."""
    sheets = {t.id: t for t in schedule.inspection_templates}
    if not sheets or not schedule.inspection_plans:
        return 0, 0
    # simulated inspections must repeat for a seed; nothing here is secret (bandit B311 accepted)
    rng = random.Random(seed * 7919 + 17)  # nosec B311
    with read(engine) as conn:
        markets = {r.id: r.timezone for r in conn.execute(sa.select(MarketRow)).all()}
    ids = sorted(markets)
    standard = {m: rng.uniform(0.02, 0.22) for m in ids}
    photo = (
        [evidence.store_bytes("demo.png", _demo_photo(), evidence_dir)]
        if evidence_dir is not None
        else [{"name": "demo.png", "sha256": "0" * 64, "path": "", "bytes": 0, "kind": "png"}]
    )
    visits: list[tuple[datetime, str, str, str]] = []
    for plan in schedule.inspection_plans:
        zone = ZoneInfo(markets[ids[0]]) if ids else ZoneInfo("UTC")
        today = now.astimezone(zone).date()
        for w in plan_windows(
            plan, ids, start=today - timedelta(days=days), end=today + timedelta(days=1)
        ):
            span = max(1, min((w.end - w.start).days, (today - w.start).days + 1))
            day = w.start + timedelta(days=rng.randrange(span))
            local = datetime.combine(day, time(9)) + timedelta(minutes=rng.randrange(7 * 60))
            at = local.replace(tzinfo=ZoneInfo(markets[w.market_id])).astimezone(now.tzinfo)
            if now - timedelta(days=days) <= at < now:
                visits.append((at, w.market_id, plan.template, plan.id))
    visits.sort()
    fixes: list[tuple[datetime, int]] = []
    count = raised = 0
    for i, (at, market_id, template_id, plan_id) in enumerate(visits):
        _rectify_until(engine, fixes, at)
        sheet = sheets[template_id]
        rules = inspection_ledger.applicable(engine, sheet, market_id)
        outcomes = {
            r.item_id: "fail" if rng.random() < standard[market_id] else "pass" for r in rules
        }
        done = inspection_ledger.record(
            engine,
            sheet,
            inspection_ledger.Submission(
                market_id=market_id,
                by=rng.choice(OFFICERS),
                outcomes=outcomes,
                photos={k: photo for k, v in outcomes.items() if v == "fail"},
                plan_id=plan_id,
                token=f"demo-{seed}-inspection-{i}",
            ),
            now=at,
        )
        count += 1
        raised += len(done.raised)
        for pid in [*done.raised, *done.reopened]:
            if rng.random() < 0.85:
                fixes.append((at + timedelta(hours=rng.uniform(3, 40)), pid))
    _rectify_until(engine, fixes, now)
    return count, raised


def _rectify_until(engine: sa.Engine, fixes: list[tuple[datetime, int]], until: datetime) -> None:
    fixes.sort()
    while fixes and fixes[0][0] <= until:
        at, pid = fixes.pop(0)
        with read(engine) as conn:
            state = conn.execute(
                sa.select(ProblemRow.state).where(ProblemRow.id == pid)
            ).scalar_one()
        if state == ProblemState.OPEN.value:
            problem_ledger.rectify(
                engine, problem_id=pid, by=rng_name(pid), note="已按要求整改", now=at
            )


def rng_name(pid: int) -> str:
    return PEOPLE[pid % len(PEOPLE)]


def _middle(bounds: tuple[float | None, float | None] | None) -> float:
    if bounds is None:
        return 1.0
    lo, hi = bounds
    if lo is not None and hi is not None:
        return round((lo + hi) / 2)
    return float(lo if lo is not None else (hi or 1) * 0.5)
