"""What a process knows of its own working, and the readiness decision made on it.

The daemon records here when each of its steps last completed and whether the write
probe succeeds; ``GET /readyz`` (``web/health.py``, the HTTP side) reads it, and so does
an app served without a daemon. Nothing here imports a web framework: a daemon run
without the web app (``web_enabled = false``) never loads FastAPI or Starlette.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram

from marketcare.files import probe_folder
from marketcare.ledger.audit import Waiting
from marketcare.ledger.probe import probe_write

#: this process's own measurements (the daemon observes them)
PROCESS = CollectorRegistry()
SWEEP_SECONDS = Histogram(
    "marketcare_sweep_duration_seconds",
    "Time one sweep (open, miss, raise problems) took",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=PROCESS,
)

#: how often the write probe runs, and how old its last success may be
PROBE_INTERVAL = 10.0


@dataclass
class StepRecord:
    """When one of the daemon's steps last completed, and how late it may be."""

    interval: float  # seconds between runs
    allowance: float  # seconds past its last success before it counts as late
    last_ok: datetime | None = None
    last_error: str | None = None


@dataclass
class Health:
    """What a process knows of its own working: the daemon feeds it, ``/readyz`` reads it."""

    started_at: datetime
    steps: dict[str, StepRecord] = field(default_factory=dict)
    #: since when the steps are expected to run (the scheduler's start, or taking the lead)
    steps_since: datetime | None = None
    #: the broken schedule files and why (None when the files are valid)
    schedule_problem: str | None = None
    write_ok_at: datetime | None = None
    write_error: str | None = None
    #: False for an app served without a daemon: nothing here reads the schedule files
    checks_files: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def step_ok(self, name: str, at: datetime) -> None:
        with self.lock:
            if name in self.steps:
                self.steps[name].last_ok = at
                self.steps[name].last_error = None

    def step_failed(self, name: str, error: str) -> None:
        with self.lock:
            if name in self.steps:
                self.steps[name].last_error = error

    def wrote(self, at: datetime, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.write_ok_at, self.write_error = at, None
            else:
                self.write_error = error


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def step_checks(
    steps: Mapping[str, StepRecord], *, now: datetime, since: datetime
) -> dict[str, str | None]:
    """Each step: None when it completed within its allowance, else why it is late.

    A step that never completed is measured from ``since`` (when the daemon started it).
    """
    out: dict[str, str | None] = {}
    for name, step in steps.items():
        last = step.last_ok or since
        age = (now - last).total_seconds()
        if age <= step.allowance:
            out[name] = None
            continue
        what = "last completed" if step.last_ok else "has not completed since the start,"
        why = f"; last error: {step.last_error}" if step.last_error else ""
        out[name] = f"{name} {what} {_ago(age)} ago; it runs every {_ago(step.interval)}{why}"
    return out


def write_check(
    *, now: datetime, ok_at: datetime | None, error: str | None, since: datetime
) -> str | None:
    """None when the last write probe succeeded recently, else what is wrong."""
    if error is not None:
        return f"writes are failing: {error}"
    age = (now - (ok_at or since)).total_seconds()
    if age > 3 * PROBE_INTERVAL + 30:
        return f"no write has succeeded for {_ago(age)}"
    return None


def readiness(
    *,
    now: datetime,
    database: str | None,
    schedule_applied: bool,
    leader_holder: str | None,
    health: Health | None,
    leading: bool,
    chain: Waiting | None = None,
) -> tuple[bool, dict[str, Any], list[str]]:
    """Decide readiness from what is known: (ready, checks for the answer, problems).

    ``database`` is None when the database answered, else why not. The steps count only
    on the daemon that leads (the others do not run them).
    """
    checks: dict[str, Any] = {}
    problems: list[str] = []

    def note(name: str, wrong: str | None, ok: str = "ok") -> None:
        checks[name] = ok if wrong is None else wrong
        if wrong is not None:
            problems.append(f"{name}: {wrong}")

    note("database", None if database is None else f"unreachable: {database}")
    if database is not None:
        return False, checks, problems
    note("schedule", None if schedule_applied else "no schedule applied yet")
    note(
        "scheduler_leader",
        None if leader_holder else "no leader heartbeat",
        ok=leader_holder or "",
    )
    if chain is not None:
        note(
            "audit_chain",
            (
                f"{chain.count} audit events have waited {_ago(chain.oldest.total_seconds())} "
                "to be linked to the chain (a chainer is failing: see the daemons' logs)"
            )
            if chain.late
            else None,
        )
    if health is not None:
        if health.checks_files:
            note("schedule_files", health.schedule_problem)
        note(
            "writes",
            write_check(
                now=now, ok_at=health.write_ok_at, error=health.write_error, since=health.started_at
            ),
        )
        if leading and health.steps:
            since = health.steps_since or health.started_at
            late = step_checks(health.steps, now=now, since=since)
            checks["steps"] = {name: why or "ok" for name, why in late.items()}
            problems.extend(f"steps: {why}" for why in late.values() if why is not None)
    return not problems, checks, problems


def probe_writes(engine: sa.Engine, folders: list[Path], holder: str, *, now: datetime) -> None:
    """One write probe: the database and each folder the app writes into; raises on failure."""
    probe_write(engine, holder, now=now)
    for folder in folders:
        probe_folder(folder)
