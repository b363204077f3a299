"""A real web server for tests: the app over a real SQLite ledger, served by uvicorn on a
free loopback port, reached through HTTP with httpx (and by Chromium in browser tests).

Two markets (``lizhong`` and ``xinhua``) and one user per role and market:

==========  ==========  ===========
user        role        markets
==========  ==========  ===========
mgr_a       manager     lizhong
mgr_b       manager     xinhua
office      office      (all)
operator    operator    (none)
==========  ==========  ===========

The clock is the site's own (``site.clock.now``): tests move it instead of sleeping.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from marketcare.domain.access import Role
from marketcare.domain.schedules import Schedule, load_texts
from marketcare.ledger import accounts
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger.db import make_engine, migrate
from marketcare.settings import Settings
from marketcare.web.app import WebServer, create_app

from . import pg
from .pg import database_url

PASSWORD = "correct horse battery"
#: Monday 2026-11-23 19:00 in Asia/Shanghai: the markets have closed, disinfection is open
START = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)

SCHEDULE = """
markets:
  - id: lizhong
    name: 鲤中农贸市场
    sub_district: 鲤中
    timezone: Asia/Shanghai
    hours: {mon-sun: "05:30-18:30"}
    areas:
      - {id: aquatic, name: 水产区, kind: aquatic, m2: 600}
      - {id: veg, name: 蔬菜区, kind: vegetables, m2: 900}
  - id: xinhua
    name: 新华农贸市场
    sub_district: 海滨
    timezone: Asia/Shanghai
    hours: {mon-sun: "05:30-18:30"}
    areas:
      - {id: meat, name: 肉类区, kind: meat, m2: 500}
tasks:
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
  - id: waste
    kind: waste_clearance
    name: 垃圾日产日清
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
    grace: 30m
    checklist: [{id: cleared, tick: 已清运}]
inspection_templates:
  - id: sheet
    name: 督查评分表
    pass_mark: 80
    photo_on_fail: true
    sections:
      - id: env
        name: 环境卫生
        items:
          - {id: floors, name: 地面干净, deduct: 20}
          - {id: bins, name: 垃圾桶加盖, deduct: 10}
          - {id: garbage, name: 垃圾日产日清, deduct: 20, critical: cap}
      - id: repair
        name: 设施
        category: repair
        deadline: 3d
        items:
          - {id: damage, name: 设施完好, deduct: 10, photo_on_fail: false}
inspections:
  - {id: rounds, template: sheet, recurrence: {monthly_days: [1, 16]}, within: 7d}
"""

#: the TLS settings every test client shares. httpx builds a context of its own for each
#: client it makes (loading the CA bundle: about 40 ms of CPU), hundreds of clients a run,
#: though the suite's servers speak plain HTTP on the loopback.
LOCAL_TLS = httpx.create_ssl_context()


def http(base_url: str = "", **kwargs: Any) -> httpx.Client:
    """A client of the suite's own servers (``httpx.Client``'s arguments, the shared TLS
    settings)."""
    return httpx.Client(base_url=base_url, verify=LOCAL_TLS, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """One GET with a client of its own, as ``httpx.get`` (no cookies, no sign-in)."""
    with http() as c:
        return c.get(url, **kwargs)


#: every item of the site's inspection sheet passed
ALL_PASS = {"floors": "pass", "bins": "pass", "garbage": "pass", "damage": "pass"}

USERS: dict[str, tuple[Role, tuple[str, ...]]] = {
    "mgr_a": (Role.MANAGER, ("lizhong",)),
    "mgr_b": (Role.MANAGER, ("xinhua",)),
    "office": (Role.OFFICE, ()),
    "operator": (Role.OPERATOR, ()),
}


@dataclass
class Clock:
    at: datetime

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class Site:
    base: str
    engine: sa.Engine
    settings: Settings
    schedule: Schedule
    clock: Clock
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)
    #: clients signed in once for a whole module (``tests/support/fixtures.py``)
    signed_in: dict[str, httpx.Client] = field(default_factory=dict)
    kept_url: str | None = None
    kept_clients: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)

    def session(self, user: str) -> httpx.Client:
        """A client signed in as ``user`` once for the whole module: the first call signs in
        and keeps the site again, so the session is part of what every later test starts
        from (call it before the test changes anything)."""
        if user not in self.signed_in:
            self.signed_in[user] = self.client(user)
            self.keep()
        return self.signed_in[user]

    def keep(self) -> None:
        """Keep the ledger, the site's files and the signed-in clients as they are now:
        ``reset`` brings them back, so each test starts where the first one did."""
        self.engine.dispose()
        self.kept_url = pg.snapshot(
            str(self.engine.url.render_as_string(hide_password=False)), self.tmp / "snapshot"
        )
        for folder in self._folders():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, self.tmp / "snapshot" / folder.name, dirs_exist_ok=True)
        self.kept_clients = {
            user: (dict(c.cookies), dict(c.headers)) for user, c in self.signed_in.items()
        }

    def reset(self) -> None:
        """Back to what ``keep`` kept: the ledger, the files, the clients' cookies and the
        clock; cached token answers are forgotten."""
        self.clock.at = START
        if self.kept_url is None:
            return
        self.engine.dispose()
        pg.restore(self.engine.url.render_as_string(hide_password=False), self.kept_url)
        for folder in self._folders():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(self.tmp / "snapshot" / folder.name, folder)
        for user, (cookies, headers) in self.kept_clients.items():
            client = self.signed_in[user]
            client.cookies.clear()
            client.cookies.update(cookies)
            client.headers.clear()
            client.headers.update(headers)
        accounts.forget_tokens()

    def _folders(self) -> list[Path]:
        return [Path(self.settings.evidence_dir), Path(self.settings.exports_dir)]

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client signed in as ``user`` through the sign-in form (a session cookie)."""
        c = http(self.base, follow_redirects=False, timeout=30, **kwargs)
        if user is not None:
            sign_in(c, user)
        return c

    def api(self, user: str) -> httpx.Client:
        """A client that authenticates with ``user``'s API token (no cookie, no CSRF)."""
        return http(
            self.base,
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=30,
        )

    def obligation(self, market: str, task: str, area: str | None = None) -> int:
        """The id of today's obligation of ``task`` (in ``area``) in ``market``."""
        day = self.clock.now().astimezone(START.astimezone().tzinfo).date()
        from marketcare.ledger.models import Obligation

        with self.engine.connect() as conn:
            stmt = sa.select(Obligation.id).where(
                Obligation.market_id == market,
                Obligation.task_id == task,
                Obligation.local_date == _local_day(self.clock.now()),
            )
            if area is not None:
                stmt = stmt.where(Obligation.area_id == area)
            found = conn.execute(stmt).scalars().first()
        assert found is not None, (market, task, area, day)
        return int(found)


def _local_day(moment: datetime) -> str:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()


def csrf_of(client: httpx.Client, path: str = "/login") -> str:
    """The CSRF token a page carries (every page has it in a meta tag)."""
    page = client.get(path)
    marker = 'name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


def sign_in(client: httpx.Client, user: str, password: str = PASSWORD) -> httpx.Response:
    token = csrf_of(client)
    response = client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token, "next": "/"},
    )
    assert response.status_code == 303, response.text[:500]
    client.headers["X-CSRF-Token"] = csrf_of(client, "/account")
    return response


_ledger_templates: dict[str, tuple[str, dict[str, str]]] = {}


def _site_ledger(
    schedule_text: str = SCHEDULE,
    users: dict[str, tuple[Role, tuple[str, ...]]] | None = None,
    names: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """A site's ledger (its days materialised and swept, its users and their API tokens),
    built once per run for each schedule and set of users; each site gets a copy. Hashing
    the passwords with Argon2 takes longer than everything else a site needs."""
    users = users or USERS
    key = repr((schedule_text, sorted(users.items()), sorted((names or {}).items())))
    if key not in _ledger_templates:
        folder = pg.session_folder() / f"site-{len(_ledger_templates)}"
        engine = make_engine(database_url(folder, migrated=True))
        try:
            migrate(engine)
            schedule = load_texts(
                {"schedules/site.yaml": schedule_text}, default_timezone="Asia/Shanghai"
            )
            day_before = START - timedelta(days=1)
            ledger_materialise.materialise(
                engine, schedule, now=day_before, horizon=timedelta(days=3), start=day_before
            )
            ledger_sweep.sweep_all(engine, now=START)
            tokens = {}
            for name, (role, markets) in users.items():
                uid = accounts.add_user(
                    engine,
                    accounts.NewUser(
                        name, (names or {}).get(name, f"{name} 用户"), role, PASSWORD, markets
                    ),
                    now=START,
                )
                tokens[name] = accounts.create_token(engine, uid, "tests", now=START)[1]
            url = engine.url.render_as_string(hide_password=False)
        finally:
            engine.dispose()
        _ledger_templates[key] = (url, tokens)
    return _ledger_templates[key]


@contextmanager
def running_site(
    tmp: Path,
    *,
    schedule_text: str = SCHEDULE,
    users: dict[str, tuple[Role, tuple[str, ...]]] | None = None,
    names: dict[str, str] | None = None,
    **overrides: Any,
) -> Iterator[Site]:
    """A copy of the site's ledger, served on a free port; the server stops at the end.

    ``schedule_text`` and ``users`` replace the default schedule and users (a module that
    needs a bigger market or a second manager brings its own); ``names`` gives display
    names (else ``<user> 用户``)."""
    template, tokens = _site_ledger(schedule_text, users, names)
    engine = make_engine(pg.copy_database(template, tmp))
    schedule = load_texts({"schedules/site.yaml": schedule_text}, default_timezone="Asia/Shanghai")
    clock = Clock(START)
    settings = Settings(
        database_url=str(engine.url),
        schedules_dir=tmp / "schedules",
        exports_dir=tmp / "exports",
        evidence_dir=tmp / "evidence",
        web_port=0,
        **overrides,
    )
    site = Site("", engine, settings, schedule, clock, tmp, tokens=dict(tokens))
    server = WebServer(create_app(settings, engine, clock=clock.now), "127.0.0.1", 0)
    server.start()
    site.base = f"http://127.0.0.1:{server.port}"
    try:
        yield site
    finally:
        server.stop()
        engine.dispose()
