"""The command's error policy (docs/cli.md, "Errors and exit codes") and its papercuts.

In-process (a CliRunner over the app's command, time_machine for ``now``) where only the
answer matters; real processes where the exit code, the terminal or the bytes of the
arguments are the point.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import time_machine
from click.testing import CliRunner, Result

from marketcare import logs
from marketcare.cli import main
from marketcare.ledger.db import alembic_config, make_engine
from marketcare.reports import delivery
from marketcare.settings import Settings

from .conftest import DISINFECTION, WASTE, make_market_yaml, utc
from .support import pg
from .support.procs import (
    ROOT,
    cli,
    cli_command,
    command,
    database,
    make_env,
    query,
    run_cli,
    scalar,
    start,
    wait_until,
)
from .support.smtp import SmtpServer

pytestmark = pytest.mark.heavy(15)

MARKETS = "markets:" + make_market_yaml("lizhong") + make_market_yaml("haibin")
TASKS = f"tasks:{DISINFECTION}{WASTE}"
#: Friday 2026-11-27, 19:00 in Quanzhou: the markets closed at 18:30, disinfection is open
EVENING = utc(2026, 11, 27, 11, 0)
ISO_LOCAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")

runner = CliRunner()


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The CLI installs its own log handler; give the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _settle(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for the commands of ``folder`` (in ``os.environ``, ``folder`` the current
    one) and its two markets' schedules."""
    values = make_env(folder)
    for key in [k for k in values if k.startswith("MARKETCARE_")] + ["COLUMNS"]:
        monkeypatch.setenv(key, values[key])
    monkeypatch.chdir(folder)
    schedules = folder / "schedules"
    schedules.mkdir()
    (schedules / "markets.yaml").write_text(MARKETS, encoding="utf-8")
    (schedules / "tasks.yaml").write_text(TASKS, encoding="utf-8")
    return values


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for in-process and subprocess runs, two markets, no database yet."""
    return _settle(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of one ledger of these two markets, initialised at 19:00, for the module.

    ``init`` migrates, makes the first operator (an Argon2 hash: a third of a second of
    processor time) and materialises: the same work, to the same rows, for every test that
    starts from it, so each copies this one (``ready``).
    """
    folder = tmp_path_factory.mktemp("initialised")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with pytest.MonkeyPatch.context() as monkeypatch:
        url = database(_settle(folder, monkeypatch))
        done = invoke("init", at=EVENING)
    root.handlers[:] = handlers
    root.setLevel(level)
    assert done.exit_code == 0, done.output
    gc.collect()  # the command's engine, and any connection it kept to what is copied
    return url


@pytest.fixture
def ready(env: dict[str, str], initialised: str) -> dict[str, str]:
    """The same, initialised at 19:00: a copy of the module's ``initialised`` ledger.
    ``init`` itself, from no database at all, stays proved by the tests that ask for
    ``env`` and run it."""
    pg.restore(database(env), initialised)
    return env


def invoke(*args: str, at: datetime = EVENING) -> Result:
    with time_machine.travel(at, tick=False):
        return runner.invoke(cli_command(), list(args))


def obligation(env: dict[str, str], market: str, area: str) -> int:
    rows = query(
        database(env),
        "SELECT id FROM obligations WHERE market_id = ? AND area_id = ? AND local_date = ?",
        (market, area, "2026-11-27"),
    )
    assert len(rows) == 1
    return int(rows[0][0])


def state_of(env: dict[str, str], oid: int) -> str:
    return str(scalar(database(env), "SELECT state FROM obligations WHERE id = ?", (oid,)))


# ---------------------------------------------------------------- crashes in normal use


def test_a_problem_whose_text_looks_like_markup_is_listed_exactly_as_typed(
    ready: dict[str, str],
) -> None:
    text = "灯管[bold]损坏 [/] [red]x"
    added = invoke(
        "problems", "add", "--market", "lizhong", "--category", "repair",
        "--description", text, "--found-by", "张伟", "--within", "3d",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = invoke("problems", "list")
    assert listed.exit_code == 0, listed.output
    assert text in listed.output


# ---------------------------------------------------------------- read commands do not write


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["problems", "list"],
        ["problems", "rate"],
        ["outbox"],
        ["notifications"],
        ["export", "--period", "day"],
        ["pest"],
        ["audit", "verify"],
        ["users", "list"],
        ["tick", "1", "--by", "林秀英"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_command_before_init_says_the_database_is_not_initialised_and_makes_none(
    env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    done = invoke(*args)
    assert done.exit_code == 1, done.output
    assert "marketcare init" in done.output and "Traceback" not in done.output
    assert query(database(env), "SELECT version_num FROM alembic_version") == []
    assert not (tmp_path / "var").exists() and not (tmp_path / "exports").exists()


def test_a_command_run_from_the_wrong_folder_creates_no_database_there(
    ready: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = {k: v for k, v in ready.items() if k != "MARKETCARE_DATABASE_URL"}
    done = run_cli(settings, "export", "--period", "day", cwd=elsewhere)
    assert done.returncode == 1
    assert "no database at var/marketcare.db" in done.stderr
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("args", "valid"),
    [
        (["status", "--market", "lizhng"], "valid: haibin, lizhong"),
        (["problems", "list", "--market", "lizhng"], "valid: haibin, lizhong"),
        (["problems", "list", "--state", "opn"], "valid: open, rectified, verified"),
        (["outbox", "--state", "snt"], "valid: pending, sending, sent, failed"),
        (["notifications", "--state", "x"], "valid: pending, sending, sent, failed, cancelled"),
        (["export", "--period", "day", "--language", "fr"], "valid: zh_CN, en"),
        (["export", "--period", "day", "--market", "nowhere"], "valid: haibin, lizhong"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_a_filter_refuses_an_unknown_value_and_lists_the_valid_ones(
    ready: dict[str, str], args: list[str], valid: str
) -> None:
    done = invoke(*args)
    assert done.exit_code == 1, done.output
    assert valid in done.output and "unknown value" in done.output


# ---------------------------------------------------------------- tokens


def test_a_token_belongs_to_one_person_and_one_obligation(ready: dict[str, str]) -> None:
    aquatic = obligation(ready, "lizhong", "aquatic")
    veg = obligation(ready, "lizhong", "veg")
    first = invoke("tick", str(aquatic), "--by", "林秀英", "--reading", "chlorine=1000",
                   "--token", "t1")  # fmt: skip
    assert first.exit_code == 0 and "recorded as done" in first.output, first.output
    reused = invoke("tick", str(veg), "--by", "林秀英", "--reading", "chlorine=500",
                    "--token", "t1")  # fmt: skip
    assert reused.exit_code == 1, reused.output
    assert f"already used this token for obligation {aquatic}" in reused.output
    assert state_of(ready, veg) == "open"
    again = invoke("tick", str(aquatic), "--by", "林秀英", "--reading", "chlorine=1000",
                   "--token", "t1")  # fmt: skip
    assert again.exit_code == 0 and "already recorded (same submission)" in again.output
    other = invoke("tick", str(veg), "--by", "王芳", "--reading", "chlorine=500", "--token", "t1")
    assert other.exit_code == 0 and "recorded as done" in other.output, other.output
    assert scalar(database(ready), "SELECT count(*) FROM completions WHERE token = 't1'") == 2


def test_a_problem_token_reused_for_another_problem_is_refused(ready: dict[str, str]) -> None:
    args = ["problems", "add", "--market", "lizhong", "--category", "repair",
            "--found-by", "张伟", "--within", "3d", "--token", "p1"]  # fmt: skip
    assert invoke(*args, "--description", "排水沟堵塞").exit_code == 0
    same = invoke(*args, "--description", "排水沟堵塞")
    assert same.exit_code == 0 and "already recorded" in same.output
    other = invoke(*args, "--description", "灯管损坏")
    assert other.exit_code == 1 and "token" in other.output
    assert scalar(database(ready), "SELECT count(*) FROM problems") == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["tick", "1180591620717411303424", "--by", "x"], 2, "less than or equal"),
        (["tick", "0", "--by", "x"], 2, "obligation_id"),
        (["outbox", "--resend", "99999999999999999999999"], 2, "--resend"),
        (["run", "--port", "70000"], 2, "'--port': Input should be less than or equal to 65535"),
        (["run", "--port", "-1"], 2, "'--port': Input should be greater than or equal to 0"),
        (["export", "--period", "day", "--date", "9999-12-31"], 1, "between 2000 and 2100"),
        (["status", "--date", "2026-02-30"], 1, "is not a date"),
        (["pest", "--month", "9999-12"], 1, "--month"),
        (["problems", "rate", "--date", "0001-01-01"], 1, "between 2000 and 2100"),
        (
            [
                "problems",
                "add",
                "--market",
                "lizhong",
                "--category",
                "repair",
                "--description",
                "x",
                "--found-by",
                "y",
                "--within",
                "99999999999999d",
            ],
            1,
            "--within",
        ),
        (
            [
                "problems",
                "add",
                "--market",
                "lizhong",
                "--category",
                "repair",
                "--description",
                "x",
                "--found-by",
                "y",
                "--deadline",
                "9999-12-31",
            ],
            1,
            "--deadline",
        ),
    ],  # fmt: skip
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_out_of_range_numbers_and_dates_are_clear_errors(
    ready: dict[str, str], args: list[str], code: int, says: str
) -> None:
    done = invoke(*args)
    assert done.exit_code == code, done.output
    assert says in done.output
    assert not isinstance(done.exception, Exception) or isinstance(done.exception, SystemExit)


def test_bytes_that_are_not_utf8_are_refused_naming_the_option(
    ready: dict[str, str], tmp_path: Path
) -> None:
    oid = obligation(ready, "lizhong", "veg")
    argv = [*command(["tick", str(oid), "--by", "x", "--reading", "chlorine=500"], at=EVENING)]
    done = subprocess.run(
        [*argv, "--note", b"\xff\xfe"], env=ready, cwd=tmp_path, capture_output=True, check=False
    )
    assert done.returncode == 1, done.stderr
    assert b"--note: not valid UTF-8" in done.stderr and b"Traceback" not in done.stderr
    assert state_of(ready, oid) == "open"
    path = subprocess.run(
        [*command(["check"]), b"\xff.yaml"], env=ready, cwd=tmp_path, capture_output=True
    )
    assert path.returncode == 1 and b"PATHS: not valid UTF-8" in path.stderr


@pytest.mark.parametrize("option", ["--by", "--token", "--note"])
def test_a_value_longer_than_its_limit_is_refused_the_same_on_every_database(
    ready: dict[str, str], option: str
) -> None:
    oid = obligation(ready, "lizhong", "veg")
    long = "长" * (2001 if option == "--note" else 101)
    args = ["tick", str(oid), "--by", "林秀英", "--reading", "chlorine=500", option, long]
    done = invoke(*args)
    assert done.exit_code == 1, done.output
    assert "at most" in done.output and "characters" in done.output
    assert state_of(ready, oid) == "open"


def test_an_error_of_the_shared_rules_names_the_options_as_typed(ready: dict[str, str]) -> None:
    """The rules name fields as the API does (``found_by``); a command names its options."""
    oid = obligation(ready, "lizhong", "veg")
    blank = invoke("tick", str(oid), "--by", " ", "--reading", "chlorine=500")
    assert blank.exit_code == 1, blank.output
    assert blank.output.startswith("error: --by: ")
    added = invoke(
        "problems", "add", "--market", "lizhong", "--category", "leak", "--description", "",
        "--found-by", "", "--within", "3d",
    )  # fmt: skip
    assert added.exit_code == 1, added.output
    message = added.output.strip()
    assert message.startswith("error: --category: 'leak' is not one of"), message
    assert "; --description: " in message and "; --found-by: " in message
    assert "found_by" not in message and state_of(ready, oid) == "open"


# ---------------------------------------------------------------- export --out


def _recorded(env: dict[str, str]) -> list[str]:
    return [str(r[0]) for r in query(database(env), "SELECT path FROM reports ORDER BY id")]


def test_export_out_copies_the_recorded_report_and_plain_exports_keep_printing_the_record(
    ready: dict[str, str], tmp_path: Path
) -> None:
    first = invoke("export", "--period", "day")
    assert first.exit_code == 0, first.output
    recorded = Path(first.stdout.strip())
    assert recorded.parent.parent == (tmp_path / "exports").resolve()  # the ledger's own folder
    folder = tmp_path / "for-the-office"
    folder.mkdir()
    to_folder = invoke("export", "--period", "day", "--out", str(folder))
    assert to_folder.exit_code == 0, to_folder.output
    assert Path(to_folder.stdout.strip()) == folder / recorded.name
    to_file = invoke("export", "--period", "day", "--out", str(folder / "今天.xlsx"))
    assert to_file.exit_code == 0 and (folder / "今天.xlsx").read_bytes() == recorded.read_bytes()
    again = invoke("export", "--period", "day")
    assert Path(again.stdout.strip()) == recorded
    assert _recorded(ready) == [str(recorded)]


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("missing/report.xlsx", "does not exist"),
        ("report.txt", "name the file .xlsx"),
        ("read-only/report.xlsx", "not writable"),
    ],
)
def test_export_out_to_a_place_it_cannot_write_is_refused_before_any_work(
    ready: dict[str, str], tmp_path: Path, where: str, says: str
) -> None:
    target = tmp_path / where
    if where.startswith("read-only"):
        if os.geteuid() == 0:
            target, says = Path("/sys/report.xlsx"), "/sys/report.xlsx"
        else:
            target.parent.mkdir()
            target.parent.chmod(0o555)
    done = invoke("export", "--period", "day", "--out", str(target))
    assert done.exit_code == 1, done.output
    assert says in done.output and "--out" in done.output
    assert not (tmp_path / "missing").exists() and _recorded(ready) == []


def test_an_exports_folder_that_is_a_file_is_unavailable_exit_75(
    ready: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exports-file").write_text("not a folder")
    monkeypatch.setenv("MARKETCARE_EXPORTS_DIR", str(tmp_path / "exports-file"))
    done = invoke("export", "--period", "day")
    assert done.exit_code == 75, done.output
    assert "is a file, not a folder" in done.output


@pytest.mark.parametrize("command", [["status"], ["init"], ["demo", "--days", "1"]])
def test_a_database_url_naming_a_file_that_is_no_database_is_one_line_and_leaves_it_alone(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    wrong = tmp_path / "problems.xlsx"
    wrong.write_bytes(b"PK\x03\x04 a spreadsheet, not a ledger" * 100)
    before = wrong.read_bytes()
    monkeypatch.setenv("MARKETCARE_DATABASE_URL", f"sqlite:///{wrong}")
    done = invoke(*command)
    assert done.exit_code == 75, done.output
    assert "not a SQLite database" in done.output and "database_url" in done.output
    assert "internal error" not in done.output and "Traceback" not in done.output
    assert wrong.read_bytes() == before


def test_init_from_a_schedules_folder_without_files_is_refused_and_changes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "schedules" / "markets.yaml").rename(tmp_path / "markets.yaml")
    (tmp_path / "schedules" / "tasks.yaml").rename(tmp_path / "tasks.yaml")
    fresh = invoke("init")
    assert fresh.exit_code == 1, fresh.output
    assert "schedules:1:1: no schedule files (*.yaml, *.yml) in this folder" in fresh.output
    assert not (tmp_path / "var").exists()  # no database made, no operator printed
    assert invoke("check").exit_code == 1

    for name in ("markets.yaml", "tasks.yaml"):
        (tmp_path / name).rename(tmp_path / "schedules" / name)
    assert invoke("init").exit_code == 0
    ahead = "SELECT count(*) FROM obligations WHERE state IN ('upcoming', 'open')"
    versions, before = (
        scalar(database(env), "SELECT count(*) FROM schedule_versions"),
        scalar(database(env), ahead),
    )
    for name in ("markets.yaml", "tasks.yaml"):  # moved away while the office edits them
        (tmp_path / "schedules" / name).rename(tmp_path / name)
    again = invoke("init")
    assert again.exit_code == 1, again.output
    assert scalar(database(env), "SELECT count(*) FROM schedule_versions") == versions
    assert scalar(database(env), ahead) == before > 0


def _history_begun(db: str) -> int:
    """Obligations written: the first day of history is in, with the watermark that the
    next demo would refuse ("already has obligations"). From here the demo has the rest of
    its 366 days to materialise and to complete (seconds); waiting for its first
    completion meant waiting for all 366 days to be materialised first."""
    try:
        return int(scalar(db, "SELECT count(*) FROM obligations") or 0)
    except sa.exc.OperationalError:  # the tables are still being made
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_removes_the_database_it_began_and_says_so(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (``timeout``, a service manager) is an interruption like Ctrl-C: half a
    history would stay behind, and the next demo would refuse the database it began."""
    env = make_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'demo.db'}")
    shutil.copytree(ROOT / "schedules", tmp_path / "schedules")
    demo = start(env, "demo", "--days", "366", cwd=tmp_path, name="demo")
    wait_until(lambda: _history_begun(database(env)), proc=demo, what="history written")
    demo.popen.send_signal(sig)
    assert demo.wait() == 130, demo.stderr()
    assert f"interrupted: the unfinished demo database {tmp_path / 'demo.db'} was removed" in (
        demo.stderr()
    )
    assert "Traceback" not in demo.stderr()
    assert not list(tmp_path.glob("demo.db*"))
    again = run_cli(env, "demo", "--days", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


# ---------------------------------------------------------------- email addresses
# ---------------------------------------------------------------- email addresses


@pytest.mark.parametrize("address", ["not an address", "office@example.org\nBcc: x@example.org"])
def test_an_address_that_is_not_one_is_refused_and_nothing_is_queued(
    ready: dict[str, str], address: str
) -> None:
    done = invoke("export", "--period", "day", "--email", "--to", address)
    assert done.exit_code == 1, done.output
    assert "is not an email address" in done.output
    assert scalar(database(ready), "SELECT count(*) FROM outbox") == 0


def test_a_queued_message_that_cannot_be_built_fails_instead_of_staying_in_sending(
    ready: dict[str, str], smtp: SmtpServer
) -> None:
    assert invoke("export", "--period", "day").exit_code == 0
    engine = make_engine(database(ready))
    report_id = int(scalar(database(ready), "SELECT id FROM reports"))
    with engine.begin() as conn:  # a row queued before addresses were checked
        conn.exec_driver_sql(
            "INSERT INTO outbox (report_id, recipient, message_id, state, attempts, "
            "next_attempt_at, created_at) VALUES (%s, %s, '<x@y>', 'pending', 0, %s, %s)"
            if engine.dialect.name == "postgresql"
            else "INSERT INTO outbox (report_id, recipient, message_id, state, attempts, "
            "next_attempt_at, created_at) VALUES (?, ?, '<x@y>', 'pending', 0, ?, ?)",
            (report_id, "a@example.org\nBcc: b@example.org", EVENING, EVENING),
        )
    try:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none")
        sent = delivery.send_due(engine, delivery.smtp_config(settings), now=EVENING)
    finally:
        engine.dispose()
    assert (sent.sent, sent.failed) == (0, 1)
    state, error = query(database(ready), "SELECT state, last_error FROM outbox")[0]
    assert state == "failed" and "cannot build the message" in error
    assert smtp.received == []


# ---------------------------------------------------------------- a new ledger


def test_a_new_ledger_shows_the_work_of_today_that_is_still_open(env: dict[str, str]) -> None:
    assert invoke("init", at=EVENING).exit_code == 0
    board = json.loads(invoke("status", "--json").stdout)
    states = {(r["market"], r["area"], r["task"]): r["state"] for r in board}
    assert states[("lizhong", "aquatic", "disinfect")] == "open"
    assert states[("haibin", "veg", "disinfect")] == "open"
    assert "missed" not in states.values()


# ---------------------------------------------------------------- a bug


def test_an_internal_error_is_one_line_exit_70_with_its_details_in_a_file(
    ready: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from marketcare.ledger import readmodel

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in the board")

    monkeypatch.setattr(readmodel, "board", broken)
    monkeypatch.setattr(sys, "argv", ["marketcare", "status"])
    monkeypatch.delenv("MARKETCARE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: RuntimeError: a bug")
    details = re.search(r"details in (\S+);", lines[0])
    assert details is not None
    kept = Path(details.group(1))
    assert "Traceback" in kept.read_text(encoding="utf-8")
    kept.unlink()


# ---------------------------------------------------------------- papercuts


def test_help_has_a_short_option_and_the_command_a_version_and_completion() -> None:
    for args in (["-h"], ["tick", "-h"], ["problems", "add", "-h"], ["users", "-h"]):
        done = runner.invoke(cli_command(), args)
        assert done.exit_code == 0 and "Usage" in done.output, args
    assert "--install-completion" in runner.invoke(cli_command(), ["--help"]).output
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("marketcare"))],
        env={**os.environ, "_MARKETCARE_COMPLETE": "complete_bash", "COMP_WORDS": "marketcare st",
             "COMP_CWORD": "1"},
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert completed.stdout.split() == ["status"], completed.stderr
    version = runner.invoke(cli_command(), ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"marketcare \d+\.\d+\.\d+\S*\n", version.output)


def test_a_table_written_to_a_pipe_is_never_cut_to_the_terminal_width(
    ready: dict[str, str], tmp_path: Path
) -> None:
    text = "东区排水沟盖板破损" + "，需要更换" * 20
    args = ["problems", "add", "--market", "lizhong", "--category", "repair",
            "--description", text, "--found-by", "张伟", "--within", "3d"]  # fmt: skip
    assert invoke(*args).exit_code == 0
    narrow = {**ready, "COLUMNS": "40", "MARKETCARE_LANGUAGE": "en"}
    done = cli(narrow, "problems", "list", cwd=tmp_path, at=EVENING)
    assert done.returncode == 0, done.stderr
    assert any(text in line and "lizhong" in line for line in done.stdout.splitlines())


def test_users_add_without_a_terminal_says_how_to_give_the_password(
    ready: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        command(["users", "add", "wang", "--role", "office"]),
        env=ready,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "--password-stdin" in done.stderr
    assert "GetPassWarning" not in done.stderr and "Aborted" not in done.stderr


@pytest.mark.parametrize("decoding", ["utf-8", "utf-8:surrogateescape"])
def test_a_password_piped_in_that_is_not_utf8_is_refused_and_makes_no_user(
    ready: dict[str, str], tmp_path: Path, decoding: str
) -> None:
    """A C locale reads stdin leniently (bytes kept as surrogates): no hash can be made of
    that, and it must be said, whichever way the bytes arrive."""
    done = subprocess.run(
        command(["users", "add", "wang", "--role", "office", "--password-stdin"]),
        env={**ready, "PYTHONIOENCODING": decoding},
        cwd=tmp_path,
        input=b"\xff\xfe-a-long-password\n",
        capture_output=True,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, stderr
    assert "--password-stdin: the password is not UTF-8 text" in stderr
    assert scalar(database(ready), "SELECT count(*) FROM users WHERE username = 'wang'") == 0


@pytest.mark.parametrize(
    ("language", "header", "state"), [("en", "Due by", "Open"), ("zh_CN", "截止时间", "进行中")]
)
def test_tables_speak_the_language_of_the_settings(
    ready: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    language: str,
    header: str,
    state: str,
) -> None:
    monkeypatch.setenv("MARKETCARE_LANGUAGE", language)
    done = invoke("status")
    assert done.exit_code == 0 and header in done.output and state in done.output


def test_json_times_are_local_with_their_offset_to_the_second(ready: dict[str, str]) -> None:
    args = ["problems", "add", "--market", "lizhong", "--category", "repair",
            "--description", "x", "--found-by", "张伟", "--within", "3d"]  # fmt: skip
    assert invoke(*args, at=datetime(2026, 11, 27, 11, 0, 7, 123456, tzinfo=EVENING.tzinfo))
    board = json.loads(invoke("status", "--json").stdout)
    problems = json.loads(invoke("problems", "list", "--json").stdout)
    users = json.loads(invoke("users", "list", "--json").stdout)
    times = [board[0]["opens_at"], board[0]["due_at"], problems[0]["found_at"]]
    times += [problems[0]["deadline"], users[0]["created_at"]]
    assert all(ISO_LOCAL.match(t) for t in times), times


def test_make_run_installs_the_runtime_only_and_make_test_the_test_tools(tmp_path: Path) -> None:
    def planned(target: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", target],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    run = planned("run")
    assert "pip install" in run and "-e ." in run and "[test]" not in run
    assert "-e '.[test]'" in planned("unit-sqlite")


def test_the_bulletin_logs_its_own_lines_not_weasyprints_steps(ready: dict[str, str]) -> None:
    done = invoke("bulletin", "--period", "week")
    assert done.exit_code == 0, done.output
    assert "bulletin written" in done.stderr
    assert "weasyprint" not in done.stderr and "fontTools" not in done.stderr


def test_uvicorns_coloured_copy_of_a_message_stays_out_of_the_log() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started", (), None)
    record.color_message = "\x1b[32mStarted\x1b[0m"
    record.port = 8000
    text = logs.TextFormatter().format(record)
    assert "color_message" not in text and "\x1b" not in text and "port=8000" in text
    body = json.loads(logs.JsonFormatter().format(record))
    assert "color_message" not in body and body["port"] == 8000


def test_a_postgresql_socket_url_reaches_alembic_intact() -> None:
    url = "postgresql+psycopg://marketcare@/marketcare?host=/var/run/postgresql"
    engine = make_engine(url)
    try:
        cfg = alembic_config(engine)
        assert cfg.get_main_option("sqlalchemy.url") == engine.url.render_as_string(
            hide_password=False
        )
        assert "%2F" in str(cfg.get_main_option("sqlalchemy.url"))
    finally:
        engine.dispose()


@pytest.mark.sqlite_only("the benchmark makes a SQLite ledger of its own")
def test_the_startup_benchmark_runs_in_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"marketcare --help: \d+\.\d+x the bare Typer app", done.stdout)
    assert "loads none of sqlalchemy, alembic, pydantic, pandas, fastapi: True" in done.stdout
