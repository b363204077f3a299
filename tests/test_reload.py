"""Hot reload in the daemon's terms: what an edit changes, a broken edit, and the fix.

The daemon's reload step is called directly (it checks the files in a child process, as
it does when it runs); the log is what the operator reads.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine

from marketcare.domain.obligations import ExpansionTooLarge, expand
from marketcare.domain.schedules import load_texts
from marketcare.ledger.db import make_engine, migrate
from marketcare.ops.daemon import Daemon
from marketcare.ops.validation import check_in_child
from marketcare.settings import load_settings

from .conftest import DISINFECTION, WASTE, database_url, make_market_yaml, make_schedule_text, utc
from .support.procs import make_env

NOW = utc(2026, 11, 27, 2, 0)  # Friday 10:00 in Quanzhou


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.setenv("MARKETCARE_CONFIG", "")  # no settings file
    (tmp_path / "schedules").mkdir()
    write(tmp_path, make_schedule_text())
    url = database_url(tmp_path)
    settings = load_settings(
        database_url=url,
        schedules_dir=tmp_path / "schedules",
        exports_dir=tmp_path / "exports",
        evidence_dir=tmp_path / "evidence",
        horizon="1d",
    )
    engine = make_engine(url)
    migrate(engine)
    with time_machine.travel(NOW, tick=False):
        # files a test has just written are read after a tenth of a second, not the
        # default second, as in tests/support/procs.py: the tests that prove the settling
        # set their own, and none here waits on the default (the clock is moved back, so
        # every file looks freshly written and each reload waited the whole second)
        d = Daemon(settings=settings, engine=engine, settle_seconds=0.1)
        assert d.step_reload()
        yield d
    engine.dispose()


def write(folder: Path, text: str) -> None:
    (folder / "schedules" / "s.yaml").write_text(text, encoding="utf-8")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "marketcare.daemon"]


def test_an_edit_is_logged_per_task_and_market_with_old_and_new_times_and_ranges(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="marketcare.daemon")
    edited = make_schedule_text(
        make_market_yaml() + make_market_yaml("haibin"),
        DISINFECTION.replace("aquatic: [900, 1200]", "aquatic: [1000, 1500]")
        + WASTE.replace("due: closing+1h", "due: closing+90m"),
    )
    write(tmp_path, edited)
    assert daemon.step_reload()
    [changes] = [m for m in messages(caplog) if m.startswith("schedule changes:")]
    lines = changes.splitlines()[1:]
    assert (
        "task waste at lizhong: 1 changed (e.g. due 19:30 → 20:00, missed after 20:00 → 20:30)"
        in lines
    )
    assert "task waste at haibin: 1 added" in lines
    assert "task disinfect at haibin: 2 added" in lines
    assert "task waste: due closing+1h → closing+1h30m" in lines
    assert (
        "task disinfect: checklist item 'chlorine' range for aquatic 900–1200 mg/L → 1000–1500 mg/L"
        in lines
    )


def test_a_broken_edit_is_reported_with_its_file_then_the_fix_says_valid_again(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="marketcare.daemon")
    running = daemon.schedule
    write(
        tmp_path, make_schedule_text(tasks=WASTE.replace("recurrence: daily", "recurrence: dayly"))
    )
    assert not daemon.step_reload()
    assert daemon.schedule is running
    problem = daemon.health.schedule_problem
    assert problem is not None and "s.yaml invalid (1 error; first: " in problem
    assert "unknown recurrence 'dayly'" in problem and problem.endswith(
        "keeping the last good schedule"
    )
    assert not daemon.step_reload()  # the same content is not checked (nor logged) again
    assert sum("schedule files are invalid" in m for m in messages(caplog)) == 1

    write(tmp_path, make_schedule_text(tasks=WASTE))
    assert daemon.step_reload()
    assert daemon.health.schedule_problem is None
    with daemon.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_id FROM ledger_state")).scalar_one()
    assert f"schedule valid again (version {version})" in messages(caplog)


def test_putting_the_running_files_back_after_a_broken_edit_is_valid_again_too(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="marketcare.daemon")
    write(tmp_path, "markets: [\n")
    assert not daemon.step_reload()
    write(tmp_path, make_schedule_text())
    assert not daemon.step_reload()  # nothing new to take: the running schedule again
    assert daemon.health.schedule_problem is None
    assert any(m.startswith("schedule valid again (version ") for m in messages(caplog))


def _withdrawn(daemon: Daemon) -> int:
    with daemon.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM events WHERE action = 'withdrawn'")
            ).scalar_one()
        )


def test_a_file_truncated_then_written_by_an_editor_is_read_once_written_never_empty(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = make_schedule_text(make_market_yaml() + make_market_yaml("haibin"))
    (tmp_path / "schedules" / "s.yaml").write_text("", encoding="utf-8")  # truncated...
    looked = Daemon._schedule_signature

    def finish_the_save_after_the_first_look(self: Daemon) -> tuple[tuple[str, float, int], ...]:
        seen = looked(self)
        if seen and seen[0][2] == 0:
            write(tmp_path, edited)  # ...then written, as an editor saves
        return seen

    monkeypatch.setattr(Daemon, "_schedule_signature", finish_the_save_after_the_first_look)
    daemon.settle_seconds = 0.05
    with time_machine.travel(NOW, tick=False):
        assert daemon.step_reload()
    assert daemon.schedule is not None
    assert sorted(m.id for m in daemon.schedule.markets) == ["haibin", "lizhong"]
    assert _withdrawn(daemon) == 0  # the empty file was never run


def test_a_file_replaced_while_it_is_read_is_read_again_before_it_is_run(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import marketcare.ops.daemon as daemon_module

    edited = make_schedule_text(make_market_yaml() + make_market_yaml("haibin"))
    write(tmp_path, "markets: []\n")  # half of a copy made in place
    reads: list[dict[str, str]] = []
    real_read = daemon_module.read_sources

    def read_while_the_copy_finishes(paths: list[Path]) -> tuple[dict[str, str], list[Any]]:
        texts, unreadable = real_read(paths)
        reads.append(texts)
        if len(reads) == 1:
            write(tmp_path, edited)
        return texts, unreadable

    monkeypatch.setattr(daemon_module, "read_sources", read_while_the_copy_finishes)
    daemon.settle_seconds = 0
    with time_machine.travel(NOW, tick=False):
        assert daemon.step_reload()
    assert len(reads) == 2
    assert daemon.schedule is not None and len(daemon.schedule.markets) == 2
    assert _withdrawn(daemon) == 0


def test_a_schedules_folder_emptied_under_the_daemon_keeps_the_last_good_schedule(
    daemon: Daemon, tmp_path: Path
) -> None:
    running = daemon.schedule
    with daemon.engine.connect() as conn:
        ahead = conn.execute(sa.text("SELECT count(*) FROM obligations")).scalar_one()
    (tmp_path / "schedules" / "s.yaml").rename(tmp_path / "s.yaml.bak")  # moved away by hand
    assert not daemon.step_reload()
    assert daemon.schedule is running
    problem = daemon.health.schedule_problem
    assert problem is not None and "no schedule files (*.yaml, *.yml)" in problem
    daemon.step_materialise()
    with daemon.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM obligations")).scalar_one() == ahead


def test_a_check_past_its_time_limit_is_stopped_and_names_the_changed_files() -> None:
    before = load_texts({"a.yaml": make_schedule_text()}, default_timezone="Asia/Shanghai")
    texts = {"a.yaml": make_schedule_text(make_market_yaml() + make_market_yaml("haibin"))}
    verdict = check_in_child(
        texts,
        default_timezone="Asia/Shanghai",
        previous=before,
        start=NOW,
        end=NOW + timedelta(days=1),
        timeout=0.001,
    )
    assert not verdict.ok
    assert [(e.file, e.line, e.column) for e in verdict.errors] == [("a.yaml", 1, 1)]
    assert "took longer than 0.001 s (reload_timeout_seconds)" in verdict.errors[0].message


def test_a_check_in_the_child_returns_the_schedule_and_what_it_changes() -> None:
    before = load_texts({"a.yaml": make_schedule_text()}, default_timezone="Asia/Shanghai")
    texts = {"a.yaml": make_schedule_text(make_market_yaml() + make_market_yaml("haibin"))}
    verdict = check_in_child(
        texts,
        default_timezone="Asia/Shanghai",
        previous=before,
        start=NOW,
        end=NOW + timedelta(days=1),
        timeout=120,
    )
    assert verdict.ok and verdict.schedule is not None
    assert verdict.schedule.digest == load_texts(texts, default_timezone="Asia/Shanghai").digest
    assert "task waste at haibin: 1 added" in verdict.changes


def test_an_expansion_over_its_time_budget_is_a_located_error_not_a_hang() -> None:
    schedule = load_texts({"a.yaml": make_schedule_text()}, default_timezone="Asia/Shanghai")
    with pytest.raises(ExpansionTooLarge) as info:
        expand(schedule, NOW, NOW + timedelta(days=3650), seconds=0)
    [error] = info.value.errors
    assert error.file == "a.yaml" and error.line > 1
    assert (
        "expanding the schedule took longer than 0 s; check this task's recurrence" in error.message
    )


#: a daemon without the web app, through its start and each of its steps, then the web
#: frameworks it loaded (none expected); run in a fresh interpreter
WITHOUT_WEB = """
import json, sys, threading, time
from marketcare.settings import load_settings
from marketcare.ops.daemon import build

daemon = build(load_settings())
stop = threading.Event()
runner = threading.Thread(target=daemon.run, args=(stop,))
runner.start()
deadline = time.monotonic() + 120
while daemon._scheduler is None or not daemon._scheduler.running:
    assert runner.is_alive() and time.monotonic() < deadline, "the daemon did not start"
    time.sleep(0.05)
for step in (daemon.step_materialise, daemon.step_sweep, daemon.step_reports,
             daemon.step_outbox, daemon.step_notifications):
    step()
stop.set()
runner.join(60)
print(json.dumps([m for m in ("fastapi", "starlette", "uvicorn", "jinja2") if m in sys.modules]))
"""


def test_a_daemon_without_the_web_app_runs_its_steps_without_loading_a_web_framework(
    tmp_path: Path,
) -> None:
    (tmp_path / "schedules").mkdir()
    write(tmp_path, make_schedule_text())
    env = make_env(tmp_path, web_enabled="false", horizon="1d")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_WEB],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_time_to_start_the_checking_process_is_not_counted_as_the_edits(
    tmp_path: Path,
) -> None:
    """The limit is the check's own processor time: a fresh fork server (a new interpreter
    importing the schedule code) or a busy CPU does not make a two-line edit too slow.
    Run in a new process so that its fork server starts from nothing."""
    import os
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "from datetime import timedelta\n"
        "from marketcare.domain.schedules import load_texts\n"
        "from marketcare.ops.validation import check_in_child\n"
        "from tests.conftest import make_schedule_text, utc\n"
        "if __name__ == '__main__':\n"
        "    now = utc(2026, 11, 27, 2, 0)\n"
        "    v = check_in_child({'a.yaml': make_schedule_text()}, default_timezone='Asia/Shanghai',"
        " previous=None, start=now, end=now + timedelta(hours=6), timeout=0.25)\n"
        "    print('ok' if v.ok else v.errors[0].message)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_daemon_starting_on_files_nobody_is_writing_reads_them_without_waiting(
    daemon: Daemon, tmp_path: Path
) -> None:
    folder = tmp_path / "schedules"
    written = (NOW - timedelta(minutes=5)).timestamp()
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (written, written))
    waits: list[float | None] = []

    class Watched(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait(timeout)

    with time_machine.travel(NOW, tick=False):
        started = Daemon(settings=daemon.settings, engine=daemon.engine, stopping=Watched())
        started.settle_seconds = 2
        assert started.step_reload()
    assert started.schedule is not None
    assert waits == []  # read at once: the files were last written five minutes ago


def test_a_file_just_removed_from_the_folder_is_waited_for_however_old_the_others_are(
    daemon: Daemon, tmp_path: Path
) -> None:
    folder = tmp_path / "schedules"
    written = (NOW - timedelta(minutes=5)).timestamp()
    (folder / "s.yaml").touch()
    os.utime(folder / "s.yaml", (written, written))
    (folder / "extra.yaml").write_text("markets: []\n", encoding="utf-8")
    (folder / "extra.yaml").unlink()  # the folder's own time is now: an entry went
    os.utime(folder, ((NOW - timedelta(seconds=0.1)).timestamp(),) * 2)
    with time_machine.travel(NOW, tick=False):
        fresh = Daemon(settings=daemon.settings, engine=daemon.engine)
        assert not fresh._untouched_for_a_while(fresh._schedule_signature())
        os.utime(folder, (written, written))
        assert fresh._untouched_for_a_while(fresh._schedule_signature())
