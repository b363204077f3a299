"""Every consumer of the rules tells the same story: a seeded month, read at one moment.

For every market and every day of November 2026, the board page, the JSON API,
``status --json``, the month's workbook and the daily report emails give the same counts
of due, done, late, missed, failed, excused, open and overdue obligations. The month is
simulated (``ledger.demo``), then today's evening is set up by hand so that every case
is there at the moment of reading (19:45 in Quanzhou): work open past its due time, a
reading that failed before its due time (to redo, not overdue), a late completion, an
excused day, and the office's re-inspections, which are listed but never counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
import sqlalchemy as sa
import time_machine
from typer.testing import CliRunner

from marketcare.cli import app as cli_app
from marketcare.domain.access import Role
from marketcare.domain.periods import Period
from marketcare.ledger import accounts, demo
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import problems as rectification
from marketcare.ledger.db import make_engine, migrate, read
from marketcare.ledger.models import Obligation
from marketcare.ledger.tick import tick
from marketcare.reports import delivery
from marketcare.settings import Settings
from marketcare.web.app import WebServer, create_app

from .conftest import DISINFECTION, WASTE, database_url, make_market_yaml, make_schedule, utc
from .support import pg

#: Monday 30 November 2026, 19:45 in Quanzhou: the garbage was due at 19:30, the evening's
#: disinfection is open until 20:30
NOW = utc(2026, 11, 30, 11, 45)
TODAY = date(2026, 11, 30)
MONTH = Period.of("month", TODAY)
MARKETS = ("lizhong", "xinhua")
COUNTS = ("due", "on_time", "late", "missed", "failed", "excused", "pending", "overdue")
#: how the office reads the status column (written out here, not taken from the catalog)
ZH_STATUS = {
    "按时完成": "on_time",
    "逾期完成": "late",
    "未完成（漏做）": "missed",
    "读数不合格": "failed",
    "休市免除": "excused",
    "待完成": "pending",
}
#: the board's states as the counts name them: upcoming and open are both still open
OF_STATE = {
    "done": "on_time",
    "late": "late",
    "missed": "missed",
    "failed": "failed",
    "excused": "excused",
    "open": "pending",
    "upcoming": "pending",
}
PASSWORD = "correct horse battery"


def schedule_text(closed: str = "[]") -> str:
    markets = make_market_yaml("lizhong") + make_market_yaml(
        "xinhua",
        closed=closed,
        areas="[{id: meat, name: 肉类区, kind: meat, m2: 500}, {id: aisles, kind: aisles, m2: 300}]",
    )
    return markets


@dataclass
class Month:
    engine: sa.Engine
    folder: Path
    base: str
    token: str
    reinspections: set[int]


def _ob(engine: sa.Engine, market: str, task: str, area: str | None) -> Any:
    with read(engine) as conn:
        stmt = sa.select(Obligation).where(
            Obligation.market_id == market,
            Obligation.task_id == task,
            Obligation.local_date == TODAY.isoformat(),
        )
        if area is not None:
            stmt = stmt.where(Obligation.area_id == area)
        return conn.execute(stmt).one()


def _evening(engine: sa.Engine) -> None:
    """Today at 19:45: one of each case, whatever the simulation did before today."""
    at = NOW - timedelta(minutes=40)  # 19:05
    failed = _ob(engine, "lizhong", "disinfect", "aquatic")
    tick(engine, obligation_id=failed.id, by="林秀英", now=at, readings={"chlorine": 300})
    done = _ob(engine, "lizhong", "disinfect", "veg")
    tick(engine, obligation_id=done.id, by="林秀英", now=at, readings={"chlorine": 500})
    late = _ob(engine, "xinhua", "waste", None)
    # 31 seconds late is a minute late, never a blank beside "done late"
    tick(engine, obligation_id=late.id, by="陈建国", now=late.due_at + timedelta(seconds=31))
    # lizhong's garbage stays open past its due time; xinhua's disinfection is open in time


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    folder = tmp_path_factory.mktemp("month")
    engine = make_engine(database_url(folder, migrated=True))
    migrate(engine)
    tasks = DISINFECTION + WASTE
    schedule = make_schedule(markets=schedule_text(), tasks=tasks)
    # a month of history up to yesterday evening, seeded; today is set up by hand
    demo.fill(
        engine, schedule, days=30, seed=13, now=NOW - timedelta(days=1), horizon=timedelta(days=2)
    )
    # a day declared closed after the fact: its unfinished work is excused
    closed = "[{date: 2026-11-20, reason: 临时停水休市}]"
    ledger_materialise.materialise(
        engine,
        make_schedule(markets=schedule_text(closed), tasks=tasks),
        now=NOW - timedelta(hours=12),
        horizon=timedelta(days=2),
    )
    _evening(engine)
    # the office's re-inspections: one passed, one failed (the problem reopened)
    reinspections = set()
    for verdict in ("verify", "reopen"):
        pid, _ = rectification.add(
            engine,
            rectification.NewProblem(
                market_id="lizhong",
                area_id="aquatic",
                category="sanitation",
                description=f"水产区地面积水（{verdict}）",
                found_by="区市场监管 张伟",
                found_at=NOW - timedelta(days=3),
                deadline=NOW - timedelta(days=1),
            ),
            now=NOW - timedelta(days=3),
        )
        reinspections.add(
            rectification.rectify(
                engine, problem_id=pid, by="林秀英", note="已清理", now=NOW - timedelta(hours=3)
            )
        )
        if verdict == "verify":
            rectification.verify(engine, problem_id=pid, by="张伟", now=NOW - timedelta(hours=1))
        else:
            rectification.reopen(
                engine, problem_id=pid, by="张伟", note="仍有积水", now=NOW - timedelta(hours=1)
            )
    uid = accounts.add_user(
        engine,
        accounts.NewUser("office", "区市场监管", Role.OFFICE, PASSWORD, ()),
        now=NOW,
    )
    token = accounts.create_token(engine, uid, "tests", now=NOW)[1]
    settings = Settings(
        database_url=str(engine.url),
        schedules_dir=folder / "schedules",
        exports_dir=folder / "exports",
        evidence_dir=folder / "evidence",
        web_port=0,
    )
    server = WebServer(create_app(settings, engine, clock=lambda: NOW), "127.0.0.1", 0)
    server.start()
    try:
        yield Month(engine, folder, f"http://127.0.0.1:{server.port}", token, reinspections)
    finally:
        server.stop()
        engine.dispose()
        pg.release(folder)


Tally = dict[tuple[str, str], Counter[str]]


def _tally(rows: list[tuple[str, str, str, bool]], period: Period = MONTH) -> Tally:
    """(market, day, category, overdue) rows as counts per (market, day)."""
    out: Tally = {(m, d.isoformat()): Counter() for m in MARKETS for d in period.days()}
    for market, day, category, overdue in rows:
        c = out[(market, day)]
        c[category] += 1
        c["overdue"] += overdue
        c["due"] += category in ("on_time", "late", "missed", "failed")
    return out


def _rows_of_json(rows: list[dict[str, Any]], reinspections: set[int]) -> list[Any]:
    listed = {r["id"] for r in rows if r["kind"] == "reinspection"}
    assert listed <= reinspections  # listed with the market's work, never counted in it
    return [
        (r["market"], r["date"], OF_STATE[r["state"]], r["overdue"])
        for r in rows
        if r["kind"] != "reinspection"
    ]


def from_the_api(month: Month) -> Tally:
    rows: list[Any] = []
    listed: set[int] = set()
    with httpx.Client(base_url=month.base, headers={"Authorization": f"Bearer {month.token}"}) as c:
        for market in MARKETS:
            got = c.get(f"/api/v1/markets/{market}/history", params={"days": 31})
            assert got.status_code == 200, got.text
            rows += _rows_of_json(got.json(), month.reinspections)
            listed |= {r["id"] for r in got.json() if r["kind"] == "reinspection"}
    assert listed == month.reinspections
    return _tally([r for r in rows if r[1] >= MONTH.start.isoformat()])


def from_the_board_page(month: Month) -> Tally:
    """The manager's board (its history page): each row's link, class and state badge
    (a failed reading to redo in time says "redo by 20:30" in the failed colour)."""
    with httpx.Client(base_url=month.base, follow_redirects=True) as c:
        page = c.get("/login")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert csrf is not None
        c.post(
            "/login",
            data={"username": "office", "password": PASSWORD, "csrf_token": csrf[1], "next": "/"},
        )
        with read(month.engine) as conn:
            day_of = dict(conn.execute(sa.select(Obligation.id, Obligation.local_date)).all())
            kind_of = dict(conn.execute(sa.select(Obligation.id, Obligation.kind)).all())
        rows = []
        for market in MARKETS:
            page = c.get(f"/m/{market}/history", params={"days": 31})
            assert page.status_code == 200
            for row_class, oid, badge in re.findall(
                r'<a class="row (\w+)" href="/o/(\d+)">.*?<span class="badge ([\w-]+)">',
                page.text,
                re.S,
            ):
                if kind_of[int(oid)] == "reinspection":
                    continue
                # the badge is the state's colour; an open row past due is "overdue" red
                state = "open" if badge == "overdue" else badge
                rows.append((market, day_of[int(oid)], OF_STATE[state], row_class == "overdue"))
    return _tally([r for r in rows if r[1] >= MONTH.start.isoformat()])


def from_status_json(month: Month) -> Tally:
    runner = CliRunner()
    rows: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MARKETCARE_DATABASE_URL", str(month.engine.url.render_as_string(False)))
        mp.setenv("MARKETCARE_CONFIG", "")  # no settings file
        mp.setenv("MARKETCARE_SCHEDULES_DIR", str(month.folder / "schedules"))
        for day in MONTH.days():
            with time_machine.travel(NOW, tick=False):
                result = runner.invoke(cli_app, ["status", "--date", day.isoformat(), "--json"])
            assert result.exit_code == 0, result.output
            rows += _rows_of_json(json.loads(result.stdout), month.reinspections)
    return _tally(rows)


def from_the_workbook(month: Month, tmp_path: Path, period: Period = MONTH) -> Tally:
    folder = tmp_path / period.kind
    result = delivery.export(month.engine, period=period, exports_dir=folder, now=NOW)
    wb = openpyxl.load_workbook(result.path, read_only=True)
    names = {"lizhong 农贸市场": "lizhong", "xinhua 农贸市场": "xinhua"}
    overdue = {
        r[1] for r in wb["逾期未完成"].iter_rows(min_row=3, values_only=True) if r[1] is not None
    }
    rows = []
    for title, market in names.items():
        sheet = wb[title].iter_rows(min_row=2, values_only=True)
        header = list(next(sheet))
        for values in sheet:
            r = dict(zip(header, values, strict=False))
            if r["编号"] is None:
                continue
            if r["任务类别"] == "复查":
                assert r["编号"] in month.reinspections
                assert r["完成人"] == "张伟"  # the officer who decided, as 完成人
                assert r["任务"].startswith("复查：第 ")
                assert r["编号"] not in overdue
                continue
            day = r["日期"].date().isoformat()
            rows.append((market, day, ZH_STATUS[r["状态"]], r["编号"] in overdue))
            if r["状态"] == "逾期完成":
                assert r["逾期分钟数"] >= 1
    return _tally(rows, period)


BY_MARKET = re.compile(
    r"^  (?P<name>.+?)：应完成 (?P<due>\d+)，按时完成 (?P<on_time>\d+)，逾期完成 (?P<late>\d+)，"
    r"未完成（漏做） (?P<missed>\d+)，读数不合格 (?P<failed>\d+)，休市免除 (?P<excused>\d+)，"
    r"待完成 (?P<pending>\d+)，逾期 (?P<overdue>\d+)；合规率 .+$",
    re.M,
)


def from_the_emails(month: Month, tmp_path: Path) -> Tally:
    """The body of each day's report email: a line per market."""
    from marketcare.ledger.models import ReportRecord

    out: Tally = {}
    names = {"lizhong 农贸市场": "lizhong", "xinhua 农贸市场": "xinhua"}
    for day in MONTH.days():
        result = delivery.export(
            month.engine, period=Period.of("day", day), exports_dir=tmp_path / "days", now=NOW
        )
        with read(month.engine) as conn:
            record = conn.execute(
                sa.select(ReportRecord).where(ReportRecord.id == result.report_id)
            ).one()
        _subject, body, _name = delivery.subject_and_body(record, language="zh_CN")
        found = {m["name"]: m for m in BY_MARKET.finditer(body)}
        assert set(found) == set(names), body
        for name, m in found.items():
            out[(names[name], day.isoformat())] = Counter(
                {k: int(m[k]) for k in COUNTS if int(m[k])}
            )
    return out


def test_board_api_status_workbook_and_email_count_every_market_and_day_alike(
    month: Month, tmp_path: Path
) -> None:
    api = from_the_api(month)
    sources = {
        "board page": from_the_board_page(month),
        "status --json": from_status_json(month),
        "workbook": from_the_workbook(month, tmp_path),
        "email body": from_the_emails(month, tmp_path),
    }
    for name, tally in sources.items():
        for key, counts in api.items():
            assert +tally[key] == +counts, (name, key)
        assert set(tally) == set(api), name
    # the month covers every case, and today holds the evening's open and overdue work
    total = sum(api.values(), Counter())
    assert all(total[c] for c in COUNTS), total
    today = api[("lizhong", TODAY.isoformat())]
    assert today["overdue"] >= 1 and today["pending"] >= 1  # the garbage, open past due
    assert today["failed"] == 1 and today["overdue"] == 1  # the failed reading: redo, not overdue
    assert api[("xinhua", "2026-11-20")]["excused"] >= 1  # the day declared closed afterwards


def test_the_dashboard_counts_today_the_week_and_the_months_rate_as_the_workbooks_do(
    month: Month, tmp_path: Path
) -> None:
    """The office dashboard aggregates in one grouped query; the workbooks list every
    obligation: today's and this week's figures, and the month's rectification rate, agree."""
    with httpx.Client(base_url=month.base, headers={"Authorization": f"Bearer {month.token}"}) as c:
        got = c.get("/api/v1/dashboard")
    assert got.status_code == 200, got.text
    dashboard = {f["market"]: f for f in got.json()}
    week = Period.of("week", TODAY)  # Monday 30 November to Sunday 6 December
    listed = from_the_workbook(month, tmp_path, week)
    wb = openpyxl.load_workbook(
        delivery.export(month.engine, period=MONTH, exports_dir=tmp_path / "rates", now=NOW).path
    )
    names = {"lizhong 农贸市场": "lizhong", "xinhua 农贸市场": "xinhua"}
    # the rectification sheet: market, sub-district, due, verified, rate, ...
    rates = {
        names[r[0]]: (r[2], r[3])
        for r in wb["整改率"].iter_rows(min_row=3, values_only=True)
        if r[0] in names
    }
    assert set(dashboard) == set(MARKETS)
    for market, figures in dashboard.items():
        today = listed[(market, TODAY.isoformat())]
        days = sum((listed[(market, d.isoformat())] for d in week.days()), Counter())
        assert (
            figures["due_today"],
            figures["on_time_today"],
            figures["missed_today"],
            figures["open_now"],
        ) == (today["due"], today["on_time"], today["missed"], today["pending"]), market
        assert (figures["due_week"], figures["on_time_week"], figures["missed_week"]) == (
            days["due"],
            days["on_time"],
            days["missed"],
        ), market
        assert (
            figures["rectification_due_month"],
            figures["rectification_verified_month"],
        ) == rates[market], market
    # the moment holds work of every kind: the comparison is not of zeros
    lizhong = dashboard["lizhong"]
    assert lizhong["open_now"] >= 1 and lizhong["due_week"] >= lizhong["due_today"] >= 1
    assert lizhong["rectification_due_month"] == 2 and lizhong["rectification_verified_month"] == 1
