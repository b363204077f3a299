"""Pest-control (灭四害) visits checked against the contractors' agreed frequency."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from marketcare.domain.obligations import COMPLETED
from marketcare.domain.periods import Period
from marketcare.domain.schedules import Schedule
from marketcare.domain.vocabulary import TaskKind
from marketcare.ledger.models import Obligation


@dataclass(frozen=True)
class ContractStatus:
    market_id: str
    contractor: str
    agreed: int
    done: int

    @property
    def short(self) -> int:
        """Visits missing against the agreement (0 when met or exceeded)."""
        return max(self.agreed - self.done, 0)


def contract_status(conn: sa.Connection, schedule: Schedule, month: Period) -> list[ContractStatus]:
    """Per market and contractor: visits agreed for the month and visits completed in it.

    A visit counts when a pest_control obligation of a task naming the contractor, dated
    in the month, was completed (done or late). A failed visit (a finding above the
    threshold) does not count until redone.
    """
    tasks_of: dict[str, list[str]] = {}
    for task in schedule.tasks:
        if task.kind == TaskKind.PEST_CONTROL and task.contractor:
            tasks_of.setdefault(task.contractor, []).append(task.id)
    done_rows = conn.execute(
        sa.select(Obligation.market_id, Obligation.task_id, sa.func.count().label("n"))
        .where(
            Obligation.kind == TaskKind.PEST_CONTROL.value,
            Obligation.local_date >= month.start.isoformat(),
            Obligation.local_date < month.end.isoformat(),
            Obligation.state.in_([s.value for s in COMPLETED]),
        )
        .group_by(Obligation.market_id, Obligation.task_id)
    ).all()
    done: dict[tuple[str, str], int] = {}
    for r in done_rows:
        done[(r.market_id, r.task_id)] = int(r.n)
    out: list[ContractStatus] = []
    for contract in schedule.contracts:
        markets = (
            [m.id for m in schedule.markets]
            if contract.markets == "all"
            else list(contract.markets)
        )
        for market_id in markets:
            n = sum(done.get((market_id, t), 0) for t in tasks_of.get(contract.contractor, []))
            agreed = contract.visits_in(month.start)
            out.append(ContractStatus(market_id, contract.contractor, agreed, n))
    out.sort(key=lambda c: (-c.short, c.market_id, c.contractor))
    return out
