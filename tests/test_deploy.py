"""The files in deploy/ are checked by the tools that will read them, where this machine
has them (systemd-analyze, postgres), and against marketcare's own settings and commands."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from marketcare.settings import Settings, load_settings

from .conftest import ROOT
from .support.pg import PG_BIN
from .support.procs import cli, make_env

DEPLOY = ROOT / "deploy"
UNITS = {
    "marketcare.service": "run --role all",
    "marketcare-web@.service": "run --role web --port %i",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text(encoding="utf-8"), source=name)
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_the_unit_runs_the_daemon_as_a_confined_restartable_service(name: str) -> None:
    parsed = unit(name)
    service = parsed["Service"]
    assert service["User"] == "marketcare"
    workdir = service["WorkingDirectory"]
    assert workdir.startswith("/")
    assert service["EnvironmentFile"] == "/etc/marketcare/env"
    assert service["ExecStart"].startswith("/")
    assert service["ExecStart"].endswith("/marketcare " + UNITS[name])
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert re.fullmatch(r"\d+s", service["TimeoutStopSec"])
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    writable = service["ReadWritePaths"].split()
    assert sorted(writable) == [f"{workdir}/exports", f"{workdir}/var"]
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in parsed["Unit"]["After"]


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check, on copies whose ExecStart is the marketcare installed here
    (verify insists the program exists); without systemd-analyze, the keys are parsed."""
    analyze = shutil.which("systemd-analyze")
    installed = Path(sys.executable).with_name("marketcare")
    assert installed.exists()
    for name in UNITS:
        text = (DEPLOY / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(
            text.replace("/opt/marketcare/.venv/bin/marketcare", str(installed)), encoding="utf-8"
        )
    if analyze is None:
        for name in UNITS:  # every line a section, a comment or a known-looking key=value
            for line in (tmp_path / name).read_text(encoding="utf-8").splitlines():
                assert not line.strip() or re.match(r"^(#|\[\w+\]$|[A-Z]\w*=)", line), line
        return
    for target in ("marketcare.service", "marketcare-web@8001.service"):
        result = subprocess.run(
            [analyze, "verify", "--man=no", str(tmp_path / target)],
            capture_output=True,
            text=True,
            check=False,
        )
        complaints = [
            line for line in (result.stdout + result.stderr).splitlines() if "marketcare" in line
        ]
        assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_command_lines_of_the_units_are_ones_marketcare_accepts(tmp_path: Path) -> None:
    helped = cli(make_env(tmp_path), "run", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "--role" in helped.stdout and "--port" in helped.stdout


def test_the_environment_example_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETCARE_CONFIG", "")  # no settings file
    values: dict[str, str] = {}
    for line in (DEPLOY / "env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("MARKETCARE_"), line
            values[key.removeprefix("MARKETCARE_").lower()] = value
    assert set(values) <= set(Settings.model_fields), set(values) - set(Settings.model_fields)
    settings = load_settings(**values)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.web_host == "127.0.0.1" and settings.web_secure_cookies


def test_the_postgresql_example_sets_only_settings_postgresql_knows() -> None:
    settings: dict[str, str] = {}
    for line in (DEPLOY / "postgresql.conf.example").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()  # no value here has a '#' in it
        if not line:
            continue
        match = re.fullmatch(r"([a-z_]+) = (\S.*)", line)
        assert match, f"not a 'name = value' line: {line!r}"
        settings[match[1]] = match[2]
    postgres = PG_BIN / "postgres"
    if postgres.exists():  # the server's own list of parameters
        described = subprocess.run(
            [str(postgres), "--describe-config"], capture_output=True, text=True, check=True
        ).stdout
        known = {row.split("\t", 1)[0].lower() for row in described.splitlines()}
        assert set(settings) <= known, set(settings) - known
    else:
        assert {"shared_buffers", "max_connections", "work_mem"} <= set(settings)
    # room for 4 daemons, each with a pool of 5 + 10 and its scheduler-lock connection
    assert int(settings["max_connections"]) >= 4 * 16
    assert settings["synchronous_commit"] == "on"


def test_the_pg_hba_example_lines_are_well_formed() -> None:
    methods = {"peer", "scram-sha-256", "reject", "md5", "trust"}
    lines = [
        line.split()
        for line in (DEPLOY / "pg_hba.conf.example").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines
    for fields in lines:
        kind = fields[0]
        assert kind in {"local", "host", "hostssl"}, fields
        assert len(fields) == (4 if kind == "local" else 5), fields
        assert fields[-1] in methods, fields
        if kind != "local":
            assert re.fullmatch(r"[0-9a-f.:]+/\d+", fields[3]), fields


def test_the_nginx_example_proxies_to_the_daemons_and_accepts_a_photo() -> None:
    text = (DEPLOY / "nginx.conf.example").read_text(encoding="utf-8")
    assert "server 127.0.0.1:8000" in text and "proxy_pass http://marketcare;" in text
    assert text.count("{") == text.count("}")
    size = re.search(r"client_max_body_size (\d+)m;", text)
    assert size and int(size[1]) * 1_000_000 > Settings.model_fields["upload_max_bytes"].default
    assert "X-Forwarded-Proto" in text and "ssl_certificate" in text
