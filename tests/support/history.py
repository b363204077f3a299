"""A ledger with a little of every fact the audit record must hold: ticks (one offline
with the phone's time and a photo, one failed then redone), a miss, a problem through
its whole loop, and the week's report exported. ``History`` names what tampers aim at."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from marketcare.domain.periods import Period
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.models import Obligation
from marketcare.reports import delivery

from ..conftest import make_schedule, utc

START = utc(2026, 11, 23, 0, 0)  # Monday 08:00 in Shanghai; lizhong closes at 18:30
WEEK = Period.of("week", date(2026, 11, 23))
PHOTO = {"name": "水产区.jpg", "sha256": "ab" * 32, "path": "2026/11/ab.jpg", "bytes": 48213}


@dataclass(frozen=True)
class History:
    """A week's start with every kind of fact, and the ids the tampers aim at."""

    aquatic: int  # done on time, recorded offline with the phone's time and a photo
    veg: int  # failed (a low reading), then redone
    waste: int  # missed
    done: int  # the aquatic completion
    failed: int  # the veg's failed completion
    redone: int  # the veg's good completion
    problem: int  # raised, rectified, verified (with its re-inspection)
    report: delivery.ExportResult


def obligation(conn: sa.Connection, key: str) -> Any:
    return conn.execute(sa.select(Obligation).where(Obligation.natural_key.like(f"%{key}%"))).one()


def make_history(engine: sa.Engine, exports: Path) -> History:
    ledger_materialise.materialise(engine, make_schedule(), now=START, horizon=timedelta(days=2))
    with read(engine) as conn:
        aquatic = obligation(conn, "|aquatic|disinfect|2026-11-23").id
        veg = obligation(conn, "|veg|disinfect|2026-11-23").id
        waste = obligation(conn, "|waste|2026-11-23").id
    ledger_sweep.sweep_all(engine, now=utc(2026, 11, 23, 10, 31))
    done = ledger_tick.tick(
        engine,
        obligation_id=aquatic,
        by="林秀英",
        now=utc(2026, 11, 23, 11, 20),
        readings={"chlorine": 1000},
        note="已冲洗，浸泡30分钟",
        evidence=[PHOTO],
        phone_at=utc(2026, 11, 23, 11, 2),
        phone_sent_at=utc(2026, 11, 23, 11, 20),
    ).completion_id
    failed = ledger_tick.tick(
        engine, obligation_id=veg, by="陈建国", now=utc(2026, 11, 23, 11, 5),
        readings={"chlorine": 300},
    ).completion_id  # fmt: skip
    redone = ledger_tick.tick(
        engine, obligation_id=veg, by="陈建国", now=utc(2026, 11, 23, 11, 40),
        readings={"chlorine": 500}, note="重新配药后复做",
    ).completion_id  # fmt: skip
    problem, _ = ledger_problems.add(
        engine,
        ledger_problems.NewProblem(
            market_id="lizhong",
            area_id="aquatic",
            category="repair",
            description="水产区排水沟堵塞",
            found_by="区市场监管所",
            found_at=utc(2026, 11, 23, 3, 0),
            deadline=utc(2026, 11, 24, 3, 0),
        ),
        now=utc(2026, 11, 23, 3, 5),
    )
    ledger_problems.assign(
        engine, problem_id=problem, by="区市场监管所", to="王师傅", now=utc(2026, 11, 23, 3, 10)
    )
    ledger_problems.rectify(
        engine, problem_id=problem, by="王师傅", note="已疏通", now=utc(2026, 11, 23, 8, 0)
    )
    ledger_problems.verify(engine, problem_id=problem, by="区市场监管所", now=utc(2026, 11, 23, 9))
    ledger_sweep.sweep_all(engine, now=utc(2026, 11, 24, 0, 0))  # the waste clearance is missed
    report = delivery.export(engine, period=WEEK, exports_dir=exports, now=utc(2026, 11, 24, 1))
    assert done and failed and redone
    return History(aquatic, veg, waste, done, failed, redone, problem, report)
