"""A daemon's first load of the schedule files: checked in a child process unless they are
exactly the texts the ledger last applied (a restart on unchanged files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
import time_machine

from marketcare.ledger.db import make_engine, migrate
from marketcare.ledger.models import ScheduleVersion
from marketcare.ops.daemon import Daemon
from marketcare.settings import Settings, load_settings

from .conftest import DISINFECTION, WASTE, database_url, make_market_yaml, make_schedule_text, utc

NOW = utc(2026, 11, 27, 2, 0)
CHECKED = "checking the schedule files"
NOT_CHECKED = "schedule files as the ledger last applied them; not checked again"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A schedules folder and its migrated ledger (each start below opens its own engine
    on it, as a new process does)."""
    monkeypatch.setenv("MARKETCARE_CONFIG", "")  # no settings file
    (tmp_path / "schedules").mkdir()
    write(tmp_path, make_schedule_text())
    settings = load_settings(
        database_url=database_url(tmp_path),
        schedules_dir=tmp_path / "schedules",
        exports_dir=tmp_path / "exports",
        evidence_dir=tmp_path / "evidence",
        horizon="1d",
        reload_settle_seconds=0,
    )
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return settings


def write(folder: Path, text: str) -> None:
    (folder / "schedules" / "s.yaml").write_text(text, encoding="utf-8")


def start(settings: Settings, caplog: pytest.LogCaptureFixture) -> list[str]:
    """A daemon's first reload, as at its start (with an engine of its own, as a new
    process has); what it logged."""
    caplog.clear()
    engine = make_engine(settings.database_url)
    try:
        with caplog.at_level(logging.INFO, logger="marketcare.daemon"), time_machine.travel(NOW):
            daemon = Daemon(settings=settings, engine=engine)
            assert daemon.step_reload()
            assert daemon.schedule is not None
    finally:
        engine.dispose()
    return [r.getMessage() for r in caplog.records if r.name == "marketcare.daemon"]


def test_a_restart_on_unchanged_files_takes_the_ledgers_schedule_without_a_check_process(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first = start(settings, caplog)
    assert CHECKED in first and NOT_CHECKED not in first  # a new ledger: checked
    again = start(settings, caplog)
    assert NOT_CHECKED in again and CHECKED not in again
    assert "schedule loaded" in again


def test_files_edited_while_the_daemon_was_down_are_checked_at_its_start(
    settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    start(settings, caplog)
    more = make_market_yaml("xinhua", hours='{daily: "06:00-18:00"}')
    write(tmp_path, make_schedule_text(make_market_yaml() + more, DISINFECTION + WASTE))
    again = start(settings, caplog)
    assert CHECKED in again and NOT_CHECKED not in again


def test_a_ledger_version_this_code_cannot_read_is_checked_like_an_edit(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    start(settings, caplog)
    # the stored texts no longer load (as a form refused since they were stored would)
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(ScheduleVersion).values(sources={"s.yaml": "markets: ["}))
    finally:
        engine.dispose()
    again = start(settings, caplog)
    assert CHECKED in again and NOT_CHECKED not in again
