"""A dynamic security scan of a running daemon with demo data, signed in as a market
manager: wapiti (XSS, SQL and command injection, CSRF, open redirects, CRLF, headers, CSP,
cookie flags) over the pages, and sqlmap over the API's query and body parameters. It
passes when neither finds anything of medium severity or above.

``make test`` runs it short (a few minutes at most on two loaded cores); ``make
security`` runs it with the full budget (``MARKETCARE_SCAN=full``). Both use Debian's
``wapiti`` and ``sqlmap`` (``make system-deps`` installs them); the scanners reach
nothing but the daemon on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support.procs import ROOT, Proc, cli, make_env, start_daemon, wait_until
from .support.web import csrf_of

pytestmark = pytest.mark.heavy(20)


FULL = os.environ.get("MARKETCARE_SCAN") == "full"
#: Debian's wapiti runs on the system Python; the wrapper mends its URL exclusions
WAPITI_PYTHON = "/usr/bin/python3"
WAPITI_RUN = Path(__file__).resolve().parent / "support" / "wapiti_run.py"
#: seconds: the whole wapiti run, each of its modules, and each sqlmap target
WAPITI_SECONDS, MODULE_SECONDS, SQLMAP_SECONDS = (900, 180, 1200) if FULL else (150, 40, 120)
WAPITI_MODULES = "xss,sql,exec,csrf,redirect,crlf,http_headers,csp,cookieflags"
PASSWORD = "scan password 2026"
MARKET = "lizhong"
#: wapiti's levels ("1" low … "4" critical); medium is the first that fails the scan
MEDIUM = 2


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make system-deps`", pytrace=False)
    return found


@dataclass
class Target:
    base: str
    cookies: dict[str, str]
    csrf: str
    token: str
    tmp: Path
    #: an obligation of the manager's market, to tick
    obligation: int


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """``marketcare run`` on three days of demo history, a manager signed in."""
    tmp = tmp_path_factory.mktemp("scan")
    env = make_env(tmp, evidence_dir=str(tmp / "evidence"))
    (tmp / "schedules").mkdir()
    for name in ("markets.yaml", "tasks.yaml"):  # no mail, no webhooks to reach
        shutil.copy(ROOT / "schedules" / name, tmp / "schedules" / name)
    demo = cli(env, "demo", "--days", "3", cwd=tmp, timeout=600)
    assert demo.returncode == 0, demo.stderr
    made = subprocess.run(
        [*_marketcare(), "users", "add", "wang", "--role", "manager", "--market", MARKET]
        + ["--password-stdin"],
        env=env,
        cwd=tmp,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    daemon = start_daemon(env, cwd=tmp)
    try:
        base = wait_until(lambda: _listening(daemon), what="the web app", proc=daemon)
        with httpx.Client(base_url=base, timeout=60) as c:
            signed = c.post(
                "/login",
                data={"username": "wang", "password": PASSWORD, "csrf_token": csrf_of(c)},
            )
            assert signed.status_code == 303, signed.text[:300]
            csrf = csrf_of(c, "/account")
            made_token = c.post(
                "/api/v1/tokens",
                json={"name": "scan", "password": PASSWORD},
                headers={"X-CSRF-Token": csrf},
            )
            assert made_token.status_code == 201, made_token.text
            board = c.get(f"/api/v1/markets/{MARKET}/history", params={"days": 2}).json()
            yield Target(
                base, dict(c.cookies), csrf, made_token.json()["token"], tmp, board[0]["id"]
            )
    finally:
        daemon.terminate()


def _marketcare() -> list[str]:
    import sys

    return [sys.executable, "-m", "marketcare.cli"]


def _listening(daemon: Proc) -> str | None:
    for line in daemon.stderr().splitlines():
        if '"web app listening"' in line:
            return str(json.loads(line)["url"]).rstrip("/")
    return None


def _findings(report: dict[str, Any]) -> list[str]:
    """Every vulnerability and anomaly of medium level or above, as one line each."""
    out = []
    for kind in ("vulnerabilities", "anomalies"):
        for category, items in (report.get(kind) or {}).items():
            for item in items:
                if int(item.get("level", 0)) >= MEDIUM:
                    out.append(f"{category}: {item.get('info')} ({item.get('path')})")
    return out


@pytest.mark.timeout(WAPITI_SECONDS * 2 + 600)
@pytest.mark.sqlite_only(
    "the pages are the same on both databases; the database-facing injections are "
    "sqlmap's, which runs on both"
)
def test_wapiti_finds_nothing_of_medium_severity_or_above(target: Target) -> None:
    tool("wapiti")
    out = target.tmp / "wapiti.json"
    cookie = "; ".join(f"{k}={v}" for k, v in target.cookies.items())
    base = target.base
    excluded = [  # signing out would end the scan's own session; ending sessions too
        f"{base}/logout",
        f"{base}/account/sessions/*",
        f"{base}/account/tokens/*/revoke",  # sqlmap's token (the only one on the page)
        f"{base}/api/*",  # the API is sqlmap's (below); its schema is no page to crawl
    ]
    args = [
        WAPITI_PYTHON, str(WAPITI_RUN),  # wapiti with its exclusions mended (see there)
        "-u", f"{base}/",
        "--scope", "folder",
        "-m", WAPITI_MODULES,
        "-H", f"Cookie: {cookie}",
        "-s", f"{base}/m/{MARKET}",
        "-s", f"{base}/m/{MARKET}/problems",
        "-s", f"{base}/m/{MARKET}/history?days=3&area=aquatic",
        "-s", f"{base}/account",
        "-s", f"{base}/exports",
        "--max-scan-time", str(WAPITI_SECONDS),
        "--max-attack-time", str(MODULE_SECONDS),
        "--max-links-per-page", "40" if FULL else "15",
        "--max-files-per-dir", "100" if FULL else "20",
        "-d", "3" if FULL else "2",
        "-S", "normal" if FULL else "polite",
        "--timeout", "30",
        "--flush-session",
        "--store-session", str(target.tmp / "wapiti-session"),
        "--store-config", str(target.tmp / "wapiti-config"),
        "--no-bugreport",
        "-v", "1",
        "-f", "json",
        "-o", str(out),
    ]  # fmt: skip
    for url in excluded:
        args += ["-x", url]
    # wapiti loads every module, and its fingerprinting module (not run here) downloads
    # its database when it has none: an empty one keeps the scan off the network
    (target.tmp / "wapiti-config").mkdir(exist_ok=True)
    (target.tmp / "wapiti-config" / "apps.json").write_text("{}", encoding="utf-8")
    run = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=WAPITI_SECONDS * 2 + 300,
        check=False,
        env={**os.environ, "HOME": str(target.tmp)},
    )
    (target.tmp / "wapiti.log").write_text(run.stdout + run.stderr, encoding="utf-8")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    crawled = set(re.findall(r"^\[\+\] GET (\S+)", run.stdout, re.M))
    assert len(crawled) >= 5, f"wapiti reached only {crawled}: {run.stdout[-1500:]}"
    assert any("/o/" in url for url in crawled), crawled  # signed in: it saw checklists
    assert _findings(report) == []
    # and it really was signed in: the session still works after the scan
    with httpx.Client(base_url=base, cookies=target.cookies) as c:
        assert c.get("/api/v1/me").status_code == 200


SQLMAP_TARGETS = [
    ("history", f"/api/v1/markets/{MARKET}/history?days=3&area=aquatic", None),
    ("problems", f"/api/v1/markets/{MARKET}/problems?state=open&overdue=false", None),
    (
        "report",
        f"/api/v1/markets/{MARKET}/problems",
        {"category": "order", "description": "占道经营", "deadline": "2026-12-31"},
    ),
]
FULL_TARGETS = [
    ("export", f"/api/v1/exports/day/2026-11-30?market={MARKET}&language=zh_CN", None),
    ("tick", "/api/v1/obligations/{obligation}/completions", {"note": "已冲洗", "token": "s1"}),
]


@pytest.mark.timeout(SQLMAP_SECONDS + 600)
@pytest.mark.parametrize(
    ("name", "path", "body"),
    SQLMAP_TARGETS + (FULL_TARGETS if FULL else []),
    ids=[t[0] for t in SQLMAP_TARGETS + (FULL_TARGETS if FULL else [])],
)
def test_sqlmap_finds_no_injection_in_the_api(
    target: Target, name: str, path: str, body: dict[str, Any] | None
) -> None:
    sqlmap = tool("sqlmap")
    out = target.tmp / f"sqlmap-{name}"
    args = [
        sqlmap,
        "-u", target.base + path.format(obligation=target.obligation),
        "-H", f"Authorization: Bearer {target.token}",
        "--batch",
        "--level", "3" if FULL else "1",
        "--risk", "2" if FULL else "1",
        "--technique", "BEUST" if FULL else "BEU",
        "--threads", "2",
        "--timeout", "30",
        "--retries", "1",
        "--disable-coloring",
        "--flush-session",
        "--output-dir", str(out),
    ]  # fmt: skip
    if body is not None:
        args += ["--data", json.dumps(body, ensure_ascii=False), "--method", "POST"]
    if name == "export":  # each answer is a workbook made afresh: no time-based payloads
        args[args.index("--technique") + 1] = "BEU"
    run = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=SQLMAP_SECONDS + 300,
        check=False,
        env={**os.environ, "HOME": str(target.tmp)},
    )
    (target.tmp / f"sqlmap-{name}.log").write_text(run.stdout + run.stderr, encoding="utf-8")
    tested = re.findall(
        r"testing (?:if )?(?:GET|POST|\(custom\) POST|JSON) parameter '([^']+)'", run.stdout
    )
    assert tested, run.stdout[-2000:]
    found = re.findall(r"parameter '[^']+' (?:is|appears to be) '[^']+' injectable", run.stdout)
    assert found == [], run.stdout[-3000:]
    assert "all tested parameters do not appear to be injectable" in run.stdout
    assert "might be injectable" not in run.stdout and "is vulnerable" not in run.stdout
