"""The daemon serves the web app: ``marketcare init`` makes the first operator, users are
made with ``marketcare users``, and a real ``marketcare run`` answers over HTTP.

``init`` and ``users`` run in this process (``run_cli``): what they answer and write is the
point here. As processes: ``marketcare init`` in tests/test_docs.py (the installation every
document starts from), ``users add`` in tests/test_cli_errors.py (no terminal, piped bytes).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx

from .conftest import make_schedule_text
from .support.procs import make_env, run_cli, start_daemon, wait_until


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def listening_url(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if '"web app listening"' in line:
            return str(json.loads(line)["url"])
    return None


def test_init_makes_one_operator_and_says_the_password_once(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    write(tmp_path / "schedules" / "s.yaml", make_schedule_text())
    first = run_cli(env, "init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.search(r"made the first operator 'admin' with password \S{12,}", first.stdout)
    again = run_cli(env, "init", cwd=tmp_path)
    assert again.returncode == 0 and "first operator" not in again.stdout


def test_users_are_made_listed_and_disabled_from_the_command_line(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    write(tmp_path / "schedules" / "s.yaml", make_schedule_text())
    assert run_cli(env, "init", cwd=tmp_path).returncode == 0
    made = _cli_input(
        env, tmp_path, "users", "add", "wang", "--role", "manager", "--market", "lizhong"
    )
    assert made.returncode == 0, made.stderr
    bad = _cli_input(
        env, tmp_path, "users", "add", "li", "--role", "manager", "--market", "nowhere"
    )
    assert bad.returncode == 1 and "unknown market 'nowhere'" in bad.stderr
    assert "Traceback" not in bad.stderr
    listed = json.loads(run_cli(env, "users", "list", "--json", cwd=tmp_path).stdout)
    assert {u["username"]: u["markets"] for u in listed} == {"admin": [], "wang": ["lizhong"]}
    assert run_cli(env, "users", "disable", "wang", cwd=tmp_path).returncode == 0
    listed = json.loads(run_cli(env, "users", "list", "--json", cwd=tmp_path).stdout)
    assert [u["disabled"] for u in listed if u["username"] == "wang"] == [True]


def _cli_input(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, "--password-stdin", cwd=cwd, input="a long enough password\n")


def test_the_running_daemon_serves_the_web_app_and_stops_cleanly(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    write(tmp_path / "schedules" / "s.yaml", make_schedule_text())
    init = run_cli(env, "init", cwd=tmp_path)
    password = re.search(r"with password (\S+)", init.stdout)
    assert password is not None
    daemon = start_daemon(env, cwd=tmp_path)
    try:
        url = wait_until(lambda: listening_url(daemon.stderr()), what="the web app", proc=daemon)
        with httpx.Client(base_url=url, timeout=30) as client:
            page = client.get("/login")
            assert page.status_code == 200 and "csrf-token" in page.text
            token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
            assert token is not None
            signed = client.post(
                "/login",
                data={
                    "username": "admin",
                    "password": password.group(1),
                    "csrf_token": token.group(1),
                    "next": "/",
                },
            )
            assert signed.status_code == 303
            assert client.get("/api/v1/me").json()["role"] == "operator"
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.stderr()[-2000:]
    assert '"daemon stopped"' in daemon.stderr()
