"""Operating endpoints: liveness, readiness and Prometheus metrics.

* ``GET /healthz`` — the process answers (liveness; a load balancer restarts on failure).
* ``GET /readyz`` — the database answers and takes writes (a write probe), a schedule
  has been applied and the schedule files are valid, a scheduler leader is known (its
  heartbeat is fresh), and — on the daemon that leads — every step (sweep,
  materialisation, reload, outbox round) completed within its expected interval; 503
  naming what is wrong otherwise. The decision is ``readiness`` in ``ledger/health.py``,
  a plain function on what the daemon recorded there.
* ``GET /metrics`` — Prometheus text format. Figures about the ledger are read from the
  database at scrape time (so every daemon reports the same numbers); the sweep duration
  is this process's own histogram (only the leader sweeps).

Liveness and readiness need no sign-in: they reveal nothing. ``/metrics`` is off the
public listener: served on a separate address (``metrics_listen``, ``metrics_app``), or
on the main one to a scraper sending ``metrics_token``; with neither set it is 404.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marketcare import logs
from marketcare.domain.obligations import State
from marketcare.ledger import audit, leader
from marketcare.ledger.db import read
from marketcare.ledger.health import PROBE_INTERVAL, PROCESS, Health, probe_writes, readiness
from marketcare.ledger.models import (
    LedgerState,
    NotifyMessage,
    Obligation,
    OutboxMessage,
    ReportRecord,
)
from marketcare.settings import Settings

router = APIRouter(include_in_schema=False)

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


# ---------------------------------------------------------------- readiness


def _inline_health(request: Request, now: datetime) -> Health:
    """An app served without a daemon probes writes itself, at most every PROBE_INTERVAL."""
    state = request.app.state
    health: Health | None = getattr(state, "inline_health", None)
    if health is None:
        health = state.inline_health = Health(started_at=now, checks_files=False)
    last = health.write_ok_at
    if (
        health.write_error is not None
        or last is None
        or (now - last).total_seconds() >= PROBE_INTERVAL
    ):
        try:
            probe_writes(state.engine, [], f"web:{id(state)}", now=now)
            health.wrote(now, None)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            health.wrote(now, _reason(exc))
    return health


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@router.get("/readyz")
def readyz(request: Request) -> Response:
    engine: sa.Engine = request.app.state.engine
    now = request.app.state.clock()
    daemon = request.app.state.daemon
    database: str | None = None
    version = None
    known = None
    chain = None
    try:
        with read(engine) as conn:
            version = conn.execute(
                sa.select(LedgerState.version_id).where(LedgerState.id == 1)
            ).scalar_one_or_none()
            chain = audit.waiting(conn)
        known = leader.known(engine, now=now)
    except sa.exc.SQLAlchemyError as exc:
        database = type(exc).__name__
    health = getattr(daemon, "health", None) if daemon is not None else None
    if health is None and database is None:
        health = _inline_health(request, now)
    ready, checks, problems = readiness(
        now=now,
        database=database,
        schedule_applied=version is not None,
        leader_holder=known["holder"] if known else None,
        health=health,
        leading=bool(getattr(daemon, "leading", False)),
        chain=chain,
    )
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=200 if ready else 503)


def _metrics_refusal(request: Request) -> Response | None:
    """None when this request may read the metrics, else the answer to give."""
    settings: Settings = request.app.state.settings
    token = settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            return None
        logs.security("metrics_refused", level=logging.WARNING, client=_client(request))
        return JSONResponse(
            {"detail": "send Authorization: Bearer <metrics_token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if getattr(request.app.state, "metrics_listener", False):
        return None
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/metrics")
def metrics(request: Request) -> Response:
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    body = generate_latest(_registry(request)) + generate_latest(PROCESS)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def metrics_app(settings: Settings, engine: sa.Engine, *, daemon: Any = None) -> FastAPI:
    """The separate listener of ``metrics_listen``: ``/metrics`` and ``/healthz`` only, so
    the address Prometheus scrapes serves no page, no API and no sign-in."""
    from marketcare.clock import now_utc

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.clock = now_utc
    app.state.daemon = daemon
    app.state.metrics_listener = True
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    return app
