"""The ``marketcare`` command's contract: output formats, exit codes, messages.

In-process (typer's CliRunner, with time_machine for a fixed ``now``): the exit code a
command gives is the one its process ends with (``main`` passes ``SystemExit`` through),
and ``ended_itself`` checks that the command refused bad input itself rather than by an
exception escaping it (what would reach a user as a traceback). The installed command is
run as a real process once; the entry point's own policy for a bug (exit 70, no
traceback) is proved in tests/test_cli_errors.py.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine
import typer.main
from typer.testing import CliRunner, Result

from marketcare.cli import app
from marketcare.domain.obligations import expand
from marketcare.domain.schedules import load_paths

from .conftest import DISINFECTION, WASTE, database_url, make_market_yaml, utc
from .support.procs import cli, database, make_env, query, scalar
from .support.tamper import unguarded

#: three market-wide rounds through the day, so that at 15:00 one is missed, one is open
#: past its due time and one is open and not yet due
ROUNDS = """
  - id: morning-round
    kind: facility_inspection
    name: 早间巡查
    scope: market
    recurrence: daily
    opens: "06:00"
    due: +1h
    grace: 1h
    checklist: [{id: checked, tick: 已巡查}]
  - id: civility-duty
    kind: civility_duty
    name: 文明劝导员值守
    scope: market
    recurrence: daily
    opens: "09:00"
    due: +2h
    grace: 6h
    checklist: [{id: on-duty, tick: 已到岗}]
  - id: noon-round
    kind: facility_inspection
    name: 午间巡查
    scope: market
    recurrence: daily
    opens: "12:00"
    due: +4h
    grace: 1h
    checklist: [{id: checked, tick: 已巡查}]
"""
MARKETS = (
    "markets:"
    + make_market_yaml("lizhong")
    + make_market_yaml(
        "haibin", areas="[{id: meat, kind: meat, m2: 400}, {id: aisles, kind: aisles, m2: 300}]"
    )
)
TASKS = f"tasks:{DISINFECTION}{WASTE}{ROUNDS}"
# Friday 2026-11-27 in Quanzhou (UTC+8): midnight, and 15:00
MIDNIGHT = utc(2026, 11, 26, 16, 0)
AFTERNOON = utc(2026, 11, 27, 7, 0)
LOCATED = re.compile(r"^(?P<file>.+?\.ya?ml):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")

runner = CliRunner()


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The CLI installs its own log handler; give the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for the commands, a two-market schedule, and a ledger already at the newest
    revision (a copy of the run's migrated template, as after a first start): the commands
    here are about schedules, ticks and reports, and running every migration again cost
    each ``init`` more than the rest of its test (migrating is test_ledger's and
    test_pgmigrate's)."""
    database_url(tmp_path, migrated=True)
    values = make_env(tmp_path)
    for key in [k for k in values if k.startswith("MARKETCARE_")] + ["COLUMNS"]:
        monkeypatch.setenv(key, values[key])
    monkeypatch.chdir(tmp_path)
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "markets.yaml").write_text(MARKETS, encoding="utf-8")
    (schedules / "tasks.yaml").write_text(TASKS, encoding="utf-8")
    return values


def invoke(*args: str, at: datetime | None = None) -> Result:
    if at is None:
        return runner.invoke(app, list(args))
    with time_machine.travel(at, tick=False):
        return runner.invoke(app, list(args))


def ended_itself(r: Result) -> None:
    """The command finished on its own terms: an exit code and its message, never an
    exception left for ``main`` to turn into "a bug" (exit 70)."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.stdout + r.stderr


def obligation_id(env: dict[str, str], key: str) -> int:
    rows = query(database(env), "SELECT id FROM obligations WHERE natural_key = ?", (key,))
    assert len(rows) == 1, key
    return int(rows[0][0])


def completions(env: dict[str, str], oid: int) -> int:
    return int(
        scalar(database(env), "SELECT count(*) FROM completions WHERE obligation_id = ?", (oid,))
    )


# ---------------------------------------------------------------- check


def test_check_accepts_a_valid_schedule(env: dict[str, str], tmp_path: Path) -> None:
    r = invoke("check")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("ok: 2 file(s), 2 markets, 4 areas")
    ended_itself(r)


def test_check_reports_every_error_at_its_file_line_and_column(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    markets = MARKETS.replace("kind: meat", "kind: meet").replace("    areas:", "    aeras:", 1)
    (bad / "markets.yaml").write_text(markets, encoding="utf-8")
    (bad / "tasks.yaml").write_text("tasks:\n  - id: x\n     kind: disinfection\n")
    r = invoke("check", str(bad))
    assert r.exit_code == 1
    ended_itself(r)
    errors = [LOCATED.match(line) for line in r.stderr.splitlines()]
    assert errors and all(errors), r.stderr
    found = {(Path(m["file"]).name, int(m["line"]), int(m["col"])): m["msg"] for m in errors if m}
    lines = markets.splitlines()

    def at(text: str) -> tuple[int, int]:
        n = next(i for i, line in enumerate(lines) if text in line)
        return n + 1, lines[n].index(text) + 1

    assert "unknown key 'aeras'" in found[("markets.yaml", *at("aeras"))]
    assert "'meet'" in found[("markets.yaml", *at("meet"))]
    assert any(f == "tasks.yaml" and line == 3 for f, line, _ in found), found


# ---------------------------------------------------------------- plan


def test_plan_json_gives_each_obligation_with_iso_times_and_their_offset(
    env: dict[str, str], tmp_path: Path
) -> None:
    r = invoke("plan", "--from", "2026-12-01", "--days", "2", "--json")
    assert r.exit_code == 0, r.output
    planned = json.loads(r.stdout)
    schedule = load_paths([tmp_path / "schedules"], default_timezone="Asia/Shanghai")
    assert len(planned) == len(
        expand(schedule, utc(2026, 11, 30, 16), utc(2026, 12, 2, 16))
    )  # 2 days × 2 markets × (2 areas + 4 market-wide tasks)
    assert len(planned) == 24
    for p in planned:
        assert {"market", "area", "task", "kind", "opens_at", "due_at", "missed_at"} <= set(p)
        assert (p["area"] is None) == (p["task"] != "disinfect")
        for field in ("opens_at", "due_at", "missed_at"):
            value = datetime.fromisoformat(p[field])
            assert value.utcoffset() == timedelta(hours=8), p[field]
            assert re.search(r"T\d\d:\d\d:\d\d\+08:00$", p[field]), p[field]
    waste = next(p for p in planned if p["market"] == "lizhong" and p["task"] == "waste")
    assert waste["kind"] == "waste_clearance"
    assert waste["opens_at"] == "2026-12-01T18:30:00+08:00"  # closing on a Tuesday
    assert waste["due_at"] == "2026-12-01T19:30:00+08:00"
    assert waste["missed_at"] == "2026-12-01T20:00:00+08:00"


def test_plan_diff_shows_what_an_edit_adds_and_removes_against_the_loaded_schedule(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert invoke("init").exit_code == 0
    window = ("--from", "2026-12-01", "--days", "2")
    same = invoke("plan", *window, "--diff")
    assert same.exit_code == 0 and "no difference" in same.stdout
    schedules = tmp_path / "schedules"
    (schedules / "markets.yaml").write_text(MARKETS + make_market_yaml("linjiang"))
    (schedules / "tasks.yaml").write_text(TASKS.replace(WASTE, ""))

    r = invoke("plan", *window, "--diff", "--json")
    assert r.exit_code == 0, r.output
    diff = json.loads(r.stdout)
    added = {(p["market"], p["task"]) for p in diff["added"]}
    removed = {(p["market"], p["task"]) for p in diff["removed"]}
    assert added == {
        ("linjiang", t) for t in ("disinfect", "morning-round", "civility-duty", "noon-round")
    }
    assert len(diff["added"]) == 2 * (2 + 3)
    assert removed == {("lizhong", "waste"), ("haibin", "waste")}
    assert len(diff["removed"]) == 2 * 2
    assert diff["changed"] == []

    text = invoke("plan", *window, "--diff")
    assert text.exit_code == 0
    assert "+ 10 added" in text.stdout and "- 4 removed" in text.stdout


def test_plan_diff_of_a_folder_not_yet_live_shows_old_and_new_times_checklists_and_ranges(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert invoke("init").exit_code == 0
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "markets.yaml").write_text(MARKETS, encoding="utf-8")
    (staging / "tasks.yaml").write_text(
        TASKS.replace("due: closing+1h", "due: closing+90m")
        .replace("aquatic: [900, 1200]", "aquatic: [1000, 1500]")
        .replace(
            "{id: cleared, tick: 已清运}", "{id: cleared, tick: 已清运}, {id: photo, tick: 已拍照}"
        ),
        encoding="utf-8",
    )
    window = ("--from", "2026-12-01", "--days", "1")
    r = invoke("plan", *window, "--diff", "--schedules", str(staging), "--json")
    assert r.exit_code == 0, r.output
    diff = json.loads(r.stdout)
    assert diff["added"] == diff["removed"] == []
    waste = next(c for c in diff["changed"] if c["market"] == "lizhong")
    assert (waste["was"]["due_at"], waste["due_at"]) == (
        "2026-12-01T19:30:00+08:00",
        "2026-12-01T20:00:00+08:00",
    )
    assert {(c["task"], c["change"], c["old"], c["new"]) for c in diff["tasks"]} == {
        ("waste", "due", "closing+1h", "closing+1h30m"),
        ("waste", "checklist item 'photo'", None, "tick '已拍照'"),
        (
            "disinfect",
            "checklist item 'chlorine' range for aquatic",
            "900–1200 mg/L",
            "1000–1500 mg/L",
        ),
    }
    text = invoke("plan", *window, "--diff", "--schedules", str(staging))
    assert text.exit_code == 0, text.output
    assert "12-01 19:30 → 12-01 20:00" in text.stdout
    assert "900–1200 mg/L" in text.stdout and "1000–1500 mg/L" in text.stdout
    # the live files were not touched: the ledger's schedule still plans the old times
    live = json.loads(invoke("plan", *window, "--json").stdout)
    assert {p["due_at"] for p in live if p["task"] == "waste" and p["market"] == "lizhong"} == {
        "2026-12-01T19:30:00+08:00"
    }


def test_plan_refuses_a_schedules_folder_that_does_not_exist(env: dict[str, str]) -> None:
    r = invoke("plan", "--schedules", "no-such-folder")
    assert r.exit_code == 1
    assert "--schedules: no-such-folder: no such file or directory" in r.output


def test_init_with_a_wrong_schedule_makes_no_operator_and_changes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "schedules" / "tasks.yaml").write_text("tasks:\n\t- id: x\n", encoding="utf-8")
    r = invoke("init", at=MIDNIGHT)
    ended_itself(r)
    assert r.exit_code == 1
    assert "tasks.yaml:2:1: invalid YAML: a tab character here" in r.output
    assert "password" not in r.output
    assert query(database(env), "SELECT count(*) FROM users") == [(0,)]


def test_check_refuses_what_the_daemon_would_refuse_as_too_slow_to_expand(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETCARE_HORIZON", "366d")
    monkeypatch.setenv("MARKETCARE_RELOAD_TIMEOUT_SECONDS", "0.000001")
    r = invoke("check")
    ended_itself(r)
    assert r.exit_code == 1
    assert ".yaml:" in r.output and "ok:" not in r.output
    monkeypatch.setenv("MARKETCARE_RELOAD_TIMEOUT_SECONDS", "120")
    assert invoke("check").exit_code == 0


def test_plan_past_its_most_obligations_stops_and_says_to_plan_fewer_days_or_markets(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import marketcare.cli.schedules as schedules_cli

    monkeypatch.setattr(schedules_cli, "PLAN_MOST", 10)  # a million, in a test's terms
    r = invoke("plan", "--from", "2026-12-01", "--days", "30", "--json")
    ended_itself(r)
    assert r.exit_code == 1
    assert "obligations in one go; plan fewer --days or --market" in r.output
    assert "more than 10 obligations" in r.output and ".yaml:" in r.output
    assert invoke("plan", "--from", "2026-12-01", "--days", "1").exit_code == 0


# ---------------------------------------------------------------- status


def test_status_json_lists_overdue_obligations_first(env: dict[str, str]) -> None:
    assert invoke("init", at=MIDNIGHT).exit_code == 0
    noon = obligation_id(env, "lizhong|-|noon-round|2026-11-27T00:00")
    done = invoke("tick", str(noon), "--by", "林秀英", at=AFTERNOON)
    assert done.exit_code == 0, done.output

    r = invoke("status", "--json", at=AFTERNOON)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * 6  # two markets: 2 areas + 4 market-wide tasks each
    flags = [row["overdue"] for row in rows]
    assert flags == sorted(flags, reverse=True)  # every overdue one before the rest
    overdue = [(row["task"], row["state"]) for row in rows if row["overdue"]]
    assert overdue == [("morning-round", "missed")] * 2 + [("civility-duty", "open")] * 2
    rest = [row["state"] for row in rows if not row["overdue"]]
    assert rest == ["open"] + ["upcoming"] * 6 + ["done"]
    assert rows[-1]["id"] == noon and rows[-1]["completed_at"] == "2026-11-27T15:00:00+08:00"
    version = scalar(database(env), "SELECT version_id FROM ledger_state WHERE id = 1")
    assert {r["schedule_version"] for r in rows} == {version}


# ---------------------------------------------------------------- tick


def test_a_reading_out_of_range_exits_3_with_the_required_range(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert invoke("init", at=MIDNIGHT).exit_code == 0
    oid = obligation_id(env, "lizhong|aquatic|disinfect|2026-11-27T00:00")
    r = invoke(
        "tick",
        str(oid),
        "--by",
        "陈建国",
        "--reading",
        "chlorine=300",
        at=utc(2026, 11, 27, 11, 0),  # 19:00, half an hour after closing
    )
    assert r.exit_code == 3, r.stdout + r.stderr
    assert f"obligation {oid}: failed" in r.stdout
    assert "chlorine=300 outside 900–1200 mg/L" in r.stdout
    ended_itself(r)
    outcomes = query(
        database(env), "SELECT outcome FROM completions WHERE obligation_id = ?", (oid,)
    )
    assert outcomes == [("failed",)]


def test_ticking_a_done_obligation_says_so_and_changes_nothing(env: dict[str, str]) -> None:
    assert invoke("init", at=MIDNIGHT).exit_code == 0
    oid = obligation_id(env, "haibin|-|noon-round|2026-11-27T00:00")
    first = invoke("tick", str(oid), "--by", "林秀英", at=AFTERNOON)
    assert first.exit_code == 0 and "recorded as done on time" in first.stdout
    db = database(env)
    before = query(db, "SELECT * FROM obligations WHERE id = ?", (oid,))
    events = scalar(db, "SELECT count(*) FROM events")

    again = invoke("tick", str(oid), "--by", "陈建国", at=AFTERNOON + timedelta(minutes=5))
    assert again.exit_code == 0
    assert "already done by 林秀英 at 2026-11-27T07:00" in again.stdout
    assert "nothing changed" in again.stdout
    assert completions(env, oid) == 1
    assert query(db, "SELECT * FROM obligations WHERE id = ?", (oid,)) == before
    assert scalar(db, "SELECT count(*) FROM events") == events


def test_a_tick_before_the_window_opens_is_refused_with_the_opening_time(
    env: dict[str, str],
) -> None:
    assert invoke("init", at=MIDNIGHT).exit_code == 0
    oid = obligation_id(env, "lizhong|-|waste|2026-11-27T00:00")
    r = invoke("tick", str(oid), "--by", "林秀英", at=AFTERNOON)
    assert r.exit_code == 1
    assert "opens at 2026-11-27 18:30 CST" in r.stderr
    assert completions(env, oid) == 0


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("name", "value"), [("horizon", "banana"), ("timezone", "Mars/Base")], ids=["horizon", "zone"]
)
def test_a_bad_setting_exits_2_naming_the_setting(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"MARKETCARE_{name.upper()}", value)
    r = invoke("status")
    assert r.exit_code == 2
    assert f"setting '{name}'" in r.stderr and f"MARKETCARE_{name.upper()}" in r.stderr
    assert value in r.stderr
    ended_itself(r)


def test_a_settings_file_named_but_missing_is_refused_before_anything_is_made(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a typo in MARKETCARE_CONFIG left every setting at its default (another database)
    missing = tmp_path / "etc" / "marketcare.tmol"
    monkeypatch.setenv("MARKETCARE_CONFIG", str(missing))
    monkeypatch.setenv("MARKETCARE_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    r = invoke("init")
    assert r.exit_code == 2, r.output
    assert "MARKETCARE_CONFIG" in r.stderr and str(missing) in r.stderr
    assert not (tmp_path / "fresh.db").exists()
    ended_itself(r)


def test_an_empty_marketcare_config_means_no_settings_file(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "marketcare.toml").write_text('horizon = "3x"\n', encoding="utf-8")
    monkeypatch.setenv("MARKETCARE_CONFIG", "")  # the folder's config/marketcare.toml is not read
    assert invoke("check").exit_code == 0
    monkeypatch.setenv("MARKETCARE_HORIZON", "3x")  # and no error points at a file
    refused = invoke("check")
    assert refused.exit_code == 2
    assert "setting 'horizon' (MARKETCARE_HORIZON): bad duration" in refused.stderr
    monkeypatch.delenv("MARKETCARE_HORIZON")
    monkeypatch.delenv("MARKETCARE_CONFIG")
    assert invoke("check").exit_code == 2  # the default file is read when the variable is unset


@pytest.mark.parametrize(("where", "value"), [("env", ""), ("env", "  "), ("option", "")])
def test_an_empty_web_host_is_refused_not_taken_as_every_address(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str, value: str
) -> None:
    if where == "env":
        monkeypatch.setenv("MARKETCARE_WEB_HOST", value)
    r = invoke("run", *(["--host", value] if where == "option" else []))
    assert r.exit_code == 2, r.output
    assert "setting 'web_host'" in r.stderr and "0.0.0.0" in r.stderr
    ended_itself(r)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('horizon = "2d\nweb_port = 1\n', "Illegal character"),
        ('horizon = "3x"\n', "setting 'horizon' (MARKETCARE_HORIZON or horizon in "),
        ("horizon = '\u6708'\n".encode("gbk"), "cannot read the settings file "),
    ],
    ids=["malformed", "bad-value", "not-utf8"],
)
def test_a_bad_settings_file_is_named_by_the_error_wherever_it_is(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str | bytes,
    says: str,
) -> None:
    config = tmp_path / "etc" / "marketcare.toml"
    config.parent.mkdir()
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("MARKETCARE_CONFIG", str(config))
    r = invoke("status")
    assert r.exit_code == 2, r.output
    assert says in r.stderr and str(config) in r.stderr
    assert "config/marketcare.toml" not in r.stderr
    ended_itself(r)


def _leaf_commands() -> list[tuple[str, Any]]:
    found, todo = [], [("marketcare", typer.main.get_command(app))]
    while todo:
        name, command = todo.pop()
        if hasattr(command, "commands"):
            todo += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
        else:
            found.append((name, command))
    return sorted(found, key=lambda found: found[0])


@pytest.mark.parametrize(("name", "command"), _leaf_commands(), ids=lambda v: str(v))
def test_every_commands_help_ends_with_an_example_of_itself_with_real_options(
    name: str, command: Any
) -> None:
    """A newcomer's first question after what a command does: how it is written."""
    epilog = command.epilog or ""
    assert epilog.startswith("Example: "), f"{name} --help shows no example"
    words = shlex.split(epilog.removeprefix("Example: "))
    while "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # MARKETCARE_…=… before the command
    assert " ".join(words[: len(name.split())]) == name, epilog
    known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
    for word in words[len(name.split()) :]:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in known, f"{name} has no option {word}"
    shown = runner.invoke(app, [*name.split()[1:], "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and epilog in shown.output


# ---------------------------------------------------------------- demo and audit


def test_the_same_demo_seed_gives_the_same_history_on_two_new_databases(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    histories, outputs = [], []
    for name in ("one", "two"):
        db = database_url(tmp_path / name, migrated=True)
        monkeypatch.setenv("MARKETCARE_DATABASE_URL", db)
        r = invoke("demo", "--days", "3", "--seed", "7", at=AFTERNOON)
        assert r.exit_code == 0, r.output
        outputs.append(r.stdout)
        histories.append(
            query(
                db,
                "SELECT o.natural_key, c.token, c.by, c.at, c.outcome, c.readings, c.items,"
                " c.failures, c.note FROM completions c JOIN obligations o"
                " ON o.id = c.obligation_id ORDER BY o.natural_key, c.at, c.token",
            )
        )
    assert outputs[0] == outputs[1]
    assert histories[0] == histories[1]
    assert len(histories[0]) > 20
    assert len({row[4] for row in histories[0]}) >= 2  # not all the same outcome


def test_audit_verify_names_the_event_that_was_altered(env: dict[str, str], tmp_path: Path) -> None:
    assert invoke("demo", "--days", "2", "--seed", "3", at=AFTERNOON).exit_code == 0
    ok = invoke("audit", "verify")
    assert ok.exit_code == 0, ok.stderr
    assert re.match(r"ok: \d+ events, chain intact", ok.stdout)

    engine = sa.create_engine(database(env), poolclass=sa.pool.NullPool)
    with engine.begin() as conn, unguarded(conn):
        conn.execute(sa.text("UPDATE events SET actor = '无名氏' WHERE seq = 5"))
    engine.dispose()
    r = invoke("audit", "verify")
    assert r.exit_code == 1
    assert "event 5 was altered" in r.stderr and "first bad event: 5" in r.stderr
    ended_itself(r)


# ---------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command",
    [[], ["init"], ["check"], ["plan"], ["status"], ["tick"], ["demo"], ["run"], ["audit"]]
    + [["audit", "verify"]],
    ids=lambda c: " ".join(c) or "marketcare",
)
def test_every_command_explains_itself_with_help(command: list[str]) -> None:
    r = runner.invoke(app, [*command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout
    assert r.exception is None


def test_help_works_from_the_installed_command(env: dict[str, str], tmp_path: Path) -> None:
    r = cli(env, "--help", cwd=tmp_path)
    assert r.returncode == 0
    for command in ("init", "check", "plan", "status", "tick", "demo", "run", "audit"):
        assert command in r.stdout


def test_the_problems_commands_run_the_loop_and_report_the_rate(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert invoke("init", at=MIDNIGHT).exit_code == 0
    added = invoke(
        "problems",
        "add",
        "--market",
        "lizhong",
        "--area",
        "aquatic",
        "--category",
        "repair",
        "--description",
        "水产区排水沟堵塞",
        "--found-by",
        "张伟",
        "--deadline",
        "2026-11-28",
        at=MIDNIGHT,
    )
    assert added.exit_code == 0, added.output
    assert "problem 1 recorded; deadline 2026-11-28 23:59 CST" in added.stdout
    assert invoke("problems", "verify", "1", "--by", "张伟", at=MIDNIGHT).exit_code == 1
    assert (
        invoke(
            "problems", "rectify", "1", "--by", "林秀英", "--note", "已疏通", at=MIDNIGHT
        ).exit_code
        == 0
    )
    assert invoke("problems", "verify", "1", "--by", "张伟", at=AFTERNOON).exit_code == 0
    rate = invoke("problems", "rate", "--date", "2026-11-27", "--json", at=AFTERNOON)
    assert json.loads(rate.stdout)["district"] == {"due": 1, "verified": 1, "rate": 1.0}
    listed = json.loads(invoke("problems", "list", "--json", at=AFTERNOON).stdout)
    assert [(p["id"], p["state"], p["overdue"]) for p in listed] == [(1, "verified", False)]


def test_a_bad_spreadsheet_is_refused_with_its_rows_and_no_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    from openpyxl import Workbook

    assert invoke("init", at=MIDNIGHT).exit_code == 0
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["市场", "类别", "问题描述", "发现人", "整改期限"])
    ws.append(["lizhong", "卫生", "地面积水", "张伟", "明天"])
    wb.save(tmp_path / "findings.xlsx")
    result = invoke("problems", "import", str(tmp_path / "findings.xlsx"), at=MIDNIGHT)
    assert result.exit_code == 1
    assert "row 2, column E (整改期限): '明天' is not a date" in result.output
    assert "Traceback" not in result.output
