"""Operating endpoints: liveness, readiness and Prometheus metrics.

* ``GET /healthz`` — the process answers (liveness; a load balancer restarts on failure).
* ``GET /readyz`` — the database answers, a schedule has been applied, and a scheduler
  leader is known (its heartbeat is fresh); 503 naming what is missing otherwise. A
  load balancer sends traffic only to ready daemons.
* ``GET /metrics`` — Prometheus text format. Figures about the ledger are read from the
  database at scrape time (so every daemon reports the same numbers); the sweep duration
  is this process's own histogram (only the leader sweeps).

None of these needs a sign-in: they reveal counts, not records. Keep ``/metrics`` behind
the proxy's allow-list if counts are sensitive (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marketcare.domain.obligations import State
from marketcare.ledger import leader
from marketcare.ledger.db import read
from marketcare.ledger.models import (
    LedgerState,
    NotifyMessage,
    Obligation,
    OutboxMessage,
    ReportRecord,
)

router = APIRouter(include_in_schema=False)

#: this process's own measurements (the daemon observes them)
PROCESS = CollectorRegistry()
SWEEP_SECONDS = Histogram(
    "marketcare_sweep_duration_seconds",
    "Time one sweep (open, miss, raise problems) took",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=PROCESS,
)

#: obligations counted by state are those dated from this long ago on (bounded cost)
OBLIGATION_WINDOW = timedelta(days=7)


class LedgerCollector(Collector):
    """Reads the ledger's figures at scrape time."""

    def __init__(self, engine: sa.Engine, clock: Any, daemon: Any) -> None:
        self.engine = engine
        self.clock = clock
        self.daemon = daemon

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.clock()
        since = (now - OBLIGATION_WINDOW).date().isoformat()
        with read(self.engine) as conn:
            by_state = dict(
                conn.execute(
                    sa.select(Obligation.state, sa.func.count())
                    .where(Obligation.local_date >= since)
                    .group_by(Obligation.state)
                ).all()
            )
            outbox = conn.execute(
                sa.select(OutboxMessage.state, sa.func.count()).group_by(OutboxMessage.state)
            ).all()
            notify = conn.execute(
                sa.select(NotifyMessage.state, sa.func.count()).group_by(NotifyMessage.state)
            ).all()
            last_export = conn.execute(sa.select(sa.func.max(ReportRecord.generated_at))).scalar()
            damaged = conn.execute(
                sa.select(sa.func.count()).where(ReportRecord.damage.is_not(None))
            ).scalar_one()
        obligations = GaugeMetricFamily(
            "marketcare_obligations",
            "Obligations dated from 7 days ago on, by state",
            labels=["state"],
        )
        for state in State:
            obligations.add_metric([state.value], float(by_state.get(state.value, 0)))
        yield obligations

        depth = GaugeMetricFamily(
            "marketcare_outbox_depth",
            "Messages waiting to be sent (pending or being sent), by kind",
            labels=["kind"],
        )
        failed = GaugeMetricFamily(
            "marketcare_outbox_failed",
            "Messages that failed for good and wait for an operator, by kind",
            labels=["kind"],
        )
        for kind, rows in (("report", outbox), ("notification", notify)):
            counts: dict[str, int] = {str(state): int(n) for state, n in rows}
            depth.add_metric([kind], float(counts.get("pending", 0) + counts.get("sending", 0)))
            failed.add_metric([kind], float(counts.get("failed", 0)))
        yield depth
        yield failed

        export = GaugeMetricFamily(
            "marketcare_last_export_timestamp_seconds",
            "When the newest export was written (Unix time; 0 when none yet)",
        )
        export.add_metric([], last_export.timestamp() if last_export else 0.0)
        yield export

        lost = CounterMetricFamily(
            "marketcare_report_files_damaged",
            "Recorded report files found missing or changed before a new revision was written",
        )
        lost.add_metric([], float(damaged))
        yield lost

        known = leader.known(self.engine, now=now)
        lead = GaugeMetricFamily(
            "marketcare_scheduler_leader_known",
            "1 when a scheduler leader's heartbeat is fresh",
        )
        lead.add_metric([], 1.0 if known else 0.0)
        yield lead
        mine = GaugeMetricFamily("marketcare_is_leader", "1 when this process runs the scheduler")
        mine.add_metric([], 1.0 if self.daemon is not None and self.daemon.leading else 0.0)
        yield mine


def _registry(request: Request) -> CollectorRegistry:
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(
            LedgerCollector(
                request.app.state.engine, request.app.state.clock, request.app.state.daemon
            )
        )
        request.app.state.metrics_registry = registry
    return registry


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> Response:
    engine: sa.Engine = request.app.state.engine
    now = request.app.state.clock()
    checks: dict[str, Any] = {}
    try:
        with read(engine) as conn:
            version = conn.execute(
                sa.select(LedgerState.version_id).where(LedgerState.id == 1)
            ).scalar_one_or_none()
        checks["database"] = "ok"
        checks["schedule"] = "ok" if version is not None else "no schedule applied yet"
        known = leader.known(engine, now=now)
        checks["scheduler_leader"] = known["holder"] if known else "no leader heartbeat"
        ready = version is not None and known is not None
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        ready = False
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    body = generate_latest(_registry(request)) + generate_latest(PROCESS)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
