"""Daylight saving time: the daemon's steps driven across both changes of Europe/London.

Policy (marketcare.obligations): a local time in the spring gap is shifted forward by
the gap; a local time that happens twice in autumn means its first occurrence.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import time_machine

from marketcare.ledger.db import make_engine, read
from marketcare.ledger.models import Event, Obligation
from marketcare.ops.daemon import Daemon
from marketcare.settings import load_settings

from .conftest import database_url, make_market_yaml, make_schedule_text, utc

STEP = timedelta(minutes=30)
NIGHT_TASK = """
  - id: night-wash
    kind: disinfection
    name: 夜间冲洗
    scope: market
    recurrence: daily
    opens: "01:30"
    due: +1h
    grace: 30m
    checklist: [{id: washed, tick: 已冲洗}]
"""


def drive(tmp_path: Path, name: str, start: datetime, end: datetime) -> sa.Engine:
    """Run the daemon's materialise and sweep steps every 30 simulated minutes."""
    schedules = tmp_path / name / "schedules"  # the ledger's files beside it, not in it
    schedules.mkdir(parents=True)
    (schedules / "london.yaml").write_text(
        make_schedule_text(
            make_market_yaml("borough", timezone="Europe/London", hours='{daily: "06:00-18:00"}'),
            NIGHT_TASK,
        ),
        encoding="utf-8",
    )
    # files last written an hour before the daemon starts: read at once, as at a start on
    # files nobody is writing (written at the real now, in the moved clock's future, they
    # were waited for as if an editor were still saving them: a second per test)
    written = (start - timedelta(hours=1)).timestamp()
    for path in (schedules / "london.yaml", schedules):
        os.utime(path, (written, written))
    url = database_url(tmp_path / name, migrated=True)
    settings = load_settings(
        database_url=url, schedules_dir=schedules, horizon="1d", timezone="Europe/London"
    )
    engine = make_engine(url)
    daemon = Daemon(settings=settings, engine=engine)
    with time_machine.travel(start, tick=False) as clock:
        assert daemon.step_reload()  # loads the files and materialises
        while daemon.now() < end:
            clock.shift(STEP)
            daemon.step_materialise()  # sweeps too
            daemon.step_sweep()
    return engine


def obligations(engine: sa.Engine) -> list[sa.Row]:  # type: ignore[type-arg]
    with read(engine) as conn:
        return list(
            conn.execute(
                sa.select(Obligation.id, Obligation.local_date, Obligation.opens_at).order_by(
                    Obligation.opens_at
                )
            ).all()
        )


def missed_events(engine: sa.Engine) -> Counter[int]:
    with read(engine) as conn:
        ids = conn.execute(sa.select(Event.obligation_id).where(Event.action == "missed"))
        return Counter(ids.scalars())


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETCARE_CONFIG", "")  # no settings file
    for key in ("DATABASE_URL", "SCHEDULES_DIR", "HORIZON", "TIMEZONE"):
        monkeypatch.delenv(f"MARKETCARE_{key}", raising=False)


def test_in_the_spring_gap_a_0130_task_opens_once_at_0230_summer_time(tmp_path: Path) -> None:
    engine = drive(tmp_path, "spring", utc(2026, 3, 27), utc(2026, 3, 31))
    rows = obligations(engine)
    days = Counter(r.local_date for r in rows)
    assert days == Counter({f"2026-03-{d}": 1 for d in range(27, 32)})
    opens = {r.local_date: r.opens_at for r in rows}
    assert opens["2026-03-28"] == utc(2026, 3, 28, 1, 30)  # 01:30 GMT
    assert opens["2026-03-29"] == utc(2026, 3, 29, 1, 30)  # 01:30 does not exist: 02:30 BST
    assert opens["2026-03-30"] == utc(2026, 3, 30, 0, 30)  # 01:30 BST
    missed = missed_events(engine)
    past = [r.id for r in rows if r.local_date <= "2026-03-30"]
    assert missed == Counter(dict.fromkeys(past, 1))
    engine.dispose()


def test_in_the_autumn_repeat_a_0130_task_opens_once_at_the_first_0130(tmp_path: Path) -> None:
    engine = drive(tmp_path, "autumn", utc(2026, 10, 23), utc(2026, 10, 27))
    rows = obligations(engine)
    days = Counter(r.local_date for r in rows)
    assert days == Counter({f"2026-10-{d}": 1 for d in range(23, 28)})
    opens = {r.local_date: r.opens_at for r in rows}
    assert opens["2026-10-24"] == utc(2026, 10, 24, 0, 30)  # 01:30 BST
    assert opens["2026-10-25"] == utc(2026, 10, 25, 0, 30)  # the first 01:30 (still BST)
    assert opens["2026-10-26"] == utc(2026, 10, 26, 1, 30)  # 01:30 GMT
    missed = missed_events(engine)
    past = [r.id for r in rows if r.local_date <= "2026-10-26"]
    assert missed == Counter(dict.fromkeys(past, 1))
    engine.dispose()
