"""Pest-control visits: their records, their findings, and the contractors' agreed frequency."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from marketcare.domain.obligations import State
from marketcare.domain.periods import Period
from marketcare.domain.schedules import load_texts
from marketcare.errors import TickRefused
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import readmodel as ledger_readmodel
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.models import Obligation
from marketcare.ledger.pestcontrol import contract_status

from .conftest import make_market_yaml, utc

PEST = """
  - id: pest
    kind: pest_control
    name: 灭四害
    scope: market
    recurrence: {weekly: [mon]}
    opens: "08:00"
    due: +3d
    contractor: 泉州市洁安有害生物防治有限公司
    checklist:
      - {id: rats, tick: 鼠类}
      - {id: fresh-droppings, reading: 新鲜鼠粪点位, unit: 处, range: [0, 0]}
      - {id: agents, text: 使用药剂及用量, required: true}
      - {id: findings, text: 发现情况}
    raise_problem: {when: [failed], category: pest, within: 3d}
contracts:
  - contractor: 泉州市洁安有害生物防治有限公司
    visits_per_month: 4
"""


def make_pest_schedule():  # type: ignore[no-untyped-def]
    text = f"markets:{make_market_yaml()}\ntasks:{PEST}"
    return load_texts({"p.yaml": text}, default_timezone="Asia/Shanghai")


def visits(engine: sa.Engine) -> list[int]:
    with read(engine) as conn:
        return list(conn.execute(sa.select(Obligation.id).order_by(Obligation.opens_at)).scalars())


def test_a_visit_record_keeps_the_agents_and_findings_in_words(engine: sa.Engine) -> None:
    schedule = make_pest_schedule()
    ledger_materialise.materialise(
        engine, schedule, now=utc(2026, 11, 1, 0, 0), horizon=timedelta(days=30)
    )
    first = visits(engine)[0]
    at = utc(2026, 11, 2, 1, 0)
    with pytest.raises(TickRefused, match="missing text.*agents"):
        ledger_tick.tick(
            engine, obligation_id=first, by="技术员 王强", now=at, readings={"fresh-droppings": 0}
        )
    result = ledger_tick.tick(
        engine,
        obligation_id=first,
        by="技术员 王强",
        now=at,
        readings={"fresh-droppings": 0},
        texts={"agents": "溴敌隆毒饵 50 g", "findings": "未见新鲜鼠迹"},
    )
    assert result.state == State.DONE
    (completion,) = ledger_readmodel.completions_of(engine, first)
    assert completion.items == {
        "rats": True,
        "agents": "溴敌隆毒饵 50 g",
        "findings": "未见新鲜鼠迹",
    }


def test_fresh_droppings_fail_the_visit_and_raise_a_pest_problem(engine: sa.Engine) -> None:
    schedule = make_pest_schedule()
    ledger_materialise.materialise(
        engine, schedule, now=utc(2026, 11, 1, 0, 0), horizon=timedelta(days=30)
    )
    first = visits(engine)[0]
    at = utc(2026, 11, 2, 1, 0)
    result = ledger_tick.tick(
        engine,
        obligation_id=first,
        by="王强",
        now=at,
        readings={"fresh-droppings": 3},
        texts={"agents": "溴敌隆毒饵 50 g"},
    )
    assert result.state == State.FAILED
    assert ledger_problems.raise_from_obligations(engine, schedule, now=at) == 1
    (problem,) = ledger_problems.listing(engine, now=at)
    assert problem.category == "pest" and "读数不合格" in problem.description


def test_a_contractor_who_came_twice_where_four_visits_were_agreed_is_short_by_two(
    engine: sa.Engine,
) -> None:
    schedule = make_pest_schedule()
    ledger_materialise.materialise(
        engine, schedule, now=utc(2026, 11, 1, 0, 0), horizon=timedelta(days=30)
    )
    for ob in visits(engine)[:2]:
        with read(engine) as conn:
            opens = conn.execute(
                sa.select(Obligation.opens_at).where(Obligation.id == ob)
            ).scalar_one()
        ledger_tick.tick(
            engine,
            obligation_id=ob,
            by="王强",
            now=opens + timedelta(hours=1),
            readings={"fresh-droppings": 0},
            texts={"agents": "溴敌隆毒饵 50 g"},
        )
    with read(engine) as conn:
        (status,) = contract_status(conn, schedule, Period.of("month", date(2026, 11, 1)))
    assert (status.agreed, status.done, status.short) == (4, 2, 2)
