"""Shared fixtures: a migrated ledger per test, small schedule factories, a DST zone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from marketcare.db import make_engine, migrate
from marketcare.schedules import Schedule, load_texts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def make_market_yaml(
    market_id: str = "lizhong",
    *,
    timezone: str = "Asia/Shanghai",
    hours: str = '{mon-fri: "05:30-18:30", sat-sun: "05:30-19:00"}',
    closed: str = "[]",
    areas: str = "[{id: aquatic, kind: aquatic, m2: 600}, {id: veg, kind: vegetables, m2: 900}]",
) -> str:
    return f"""
  - id: {market_id}
    name: {market_id} 农贸市场
    sub_district: 鲤中
    timezone: {timezone}
    hours: {hours}
    closed: {closed}
    areas: {areas}
"""


DISINFECTION = """
  - id: disinfect
    kind: disinfection
    name: 休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: +2h
    grace: 1h
    checklist:
      - {id: washed, tick: 已冲洗}
      - {id: chlorine, reading: 有效氯, unit: mg/L, range: [400, 700], by_area_kind: {aquatic: [900, 1200]}}
"""

WASTE = """
  - id: waste
    kind: waste_clearance
    name: 垃圾日产日清
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
    grace: 30m
    checklist: [{id: cleared, tick: 已清运}]
"""


def make_schedule_text(markets: str | None = None, tasks: str | None = None) -> str:
    return f"markets:{markets or make_market_yaml()}\ntasks:{tasks if tasks is not None else DISINFECTION + WASTE}"


def make_schedule(
    markets: str | None = None, tasks: str | None = None, *, zone: str = "Asia/Shanghai"
) -> Schedule:
    return load_texts({"test.yaml": make_schedule_text(markets, tasks)}, default_timezone=zone)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Skipped tests do not count as passing: in CI a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and os.environ.get("CI"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
