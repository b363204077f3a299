"""The Excel workbooks: what the district office reads, checked cell by cell against the ledger."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import string
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
import sqlalchemy as sa
from babel.messages.extract import extract_from_file
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet.worksheet import Worksheet

from marketcare import i18n
from marketcare.domain import checklists, compliance, problems
from marketcare.domain.obligations import State, is_overdue, minutes_late
from marketcare.domain.periods import Period
from marketcare.domain.vocabulary import AreaKind, TaskKind
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.models import AreaRow, Completion, MarketRow, Obligation
from marketcare.reports import workbook as exports
from marketcare.reports.figures import Report
from marketcare.reports.workbook import display_width, sheet_title, write_workbook

from .conftest import DISINFECTION, WASTE, make_schedule, utc
from .support import templates

ZONE = ZoneInfo("Asia/Shanghai")
WEEK = Period.of("week", date(2026, 11, 23))  # Monday 23 to Sunday 29 November 2026
START = datetime(2026, 11, 23, tzinfo=ZONE).astimezone(UTC)
AS_OF = utc(2026, 11, 26, 12, 0)  # Thursday 20:00 in Quanzhou: the day's work is still pending
GENERATED = utc(2026, 11, 26, 12, 5)
SRC = Path(__file__).resolve().parent.parent / "src" / "marketcare"

LONG_NAME = "海滨/临江:农贸[市场]*?名字很长很长很长很长很长很长很长很长的农贸市场"
EQUALS_NOTE = "=SUM(A1:A2)"
CONTROL_NOTE = "铃声\x07空字符\x00结束"
CONTRACTOR = "泉州市洁安有害生物防治有限公司"

PEST = f"""
  - id: pest
    kind: pest_control
    name: 灭四害
    scope: market
    recurrence: {{weekly: [tue]}}
    opens: "08:00"
    due: +3d
    grace: 1d
    contractor: {CONTRACTOR}
    checklist:
      - {{id: rats, tick: 鼠类}}
      - {{id: bait, reading: 鼠饵站数量, unit: 个, range: {{min: 1}}}}
"""
TASKS = DISINFECTION + WASTE + PEST

#: what a district office reads (Simplified Chinese), written out here, not taken from the catalog
ZH_STATUS = {
    "on_time": "按时完成",
    "late": "逾期完成",
    "missed": "未完成（漏做）",
    "failed": "读数不合格",
    "excused": "休市免除",
    "pending": "待完成",
}
ZH_KIND = {
    "disinfection": "每日休市清洗消毒",
    "waste_clearance": "垃圾日产日清",
    "pest_control": "灭四害",
}
MARKET_HEADERS = [
    "编号",
    "日期",
    "区域",
    "任务",
    "任务类别",
    "开始时间",
    "截止时间",
    "完成时间",
    "完成人",
    "检测读数（要求范围）",
    "状态",
    "逾期分钟数",
    "备注",
]


def market_yaml(market_id: str, name: str, closed: str = "[]", zone: str = "Asia/Shanghai") -> str:
    return f"""
  - id: {market_id}
    name: {json.dumps(name, ensure_ascii=False)}
    sub_district: 鲤中
    timezone: {zone}
    hours: {{mon-fri: "05:30-18:30", sat-sun: "05:30-19:00"}}
    closed: {closed}
    areas:
      - {{id: aquatic, name: 水产区, kind: aquatic, m2: 600}}
      - {{id: veg, name: 蔬菜区, kind: vegetables, m2: 900}}
"""


def markets(closed: str = "[]") -> str:
    return (
        market_yaml("haibin", LONG_NAME, closed)
        + market_yaml("lizhong", "鲤中农贸市场")
        + market_yaml("zongbu", "汇总")  # the same title as the summary sheet
    )


@dataclass(frozen=True)
class Ledger:
    engine: sa.Engine
    ticks: int


def build_ledger(engine: sa.Engine) -> Ledger:
    """A week of three markets: on time, late, failed, missed, excused and pending work."""
    schedule = make_schedule(markets(), TASKS)
    ledger_materialise.materialise(
        engine, schedule, now=START, horizon=timedelta(days=8), start=START
    )
    with read(engine) as conn:
        kinds = {(r.market_id, r.id): r.kind for r in conn.execute(sa.select(AreaRow)).all()}
        rows = conn.execute(
            sa.select(Obligation).where(Obligation.opens_at < AS_OF).order_by(Obligation.id)
        ).all()
    ticks = 0
    for i, ob in enumerate(rows):
        checklist = checklists.checklist_of(
            schedule, ob.task_id, kinds.get((ob.market_id, ob.area_id))
        )
        lows = {r.id: (r.range or (1.0, None)) for r in checklist.readings}
        readings = {k: (lo + hi) / 2 if hi else (lo or 1) * 3 for k, (lo, hi) in lows.items()}
        # seconds and microseconds: the ledger keeps whole seconds, the sheet shows them
        at = ob.opens_at + timedelta(minutes=25, seconds=i, microseconds=123456)
        note = None
        if i % 9 == 0:
            continue  # missed, or pending if its grace has not ended
        if i % 9 == 1:
            at = ob.due_at + timedelta(minutes=17, seconds=23)
        elif i % 9 == 2 and lows:
            readings = {k: (lo or 1) / 2 for k, (lo, _hi) in lows.items()}  # below the minimum
        elif i % 9 == 3:
            note = EQUALS_NOTE
        elif i % 9 == 4:
            note = CONTROL_NOTE
        if at >= AS_OF:
            continue
        ledger_tick.tick(
            engine,
            obligation_id=ob.id,
            by="陈建国",
            now=at,
            readings=readings,
            note=note,
            token=f"t{ob.id}",
        )
        ticks += 1
    ledger_sweep.sweep_all(engine, now=AS_OF)
    # a day closed after the fact: its unfinished work is excused with the reason
    closed = "[{date: 2026-11-24, reason: 临时停水休市}]"
    ledger_materialise.materialise(
        engine, make_schedule(markets(closed), TASKS), now=AS_OF, horizon=timedelta(hours=1)
    )
    return Ledger(engine, ticks)


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Ledger]:
    """A copy of the week's ledger, built once per run: building it (a week of three
    markets ticked one by one) cost each test more than everything else it did."""
    engine, ticks = templates.copy_of(
        "exports-week", lambda built: build_ledger(built).ticks, tmp_path / "book"
    )
    yield Ledger(engine, ticks)
    engine.dispose()


def export(
    engine: sa.Engine,
    path: Path,
    period: Period = WEEK,
    *,
    language: str = "zh_CN",
    as_of: datetime = AS_OF,
) -> exports.WorkbookInfo:
    with read(engine) as conn:
        report = Report(conn, period, as_of=as_of)
        return write_workbook(report, path, language=language, generated_at=GENERATED)


def ledger_rows(engine: sa.Engine, period: Period) -> dict[int, dict[str, Any]]:
    """The period's obligations straight from the tables, in local time, by id."""
    with read(engine) as conn:
        latest = (
            sa.select(Completion.obligation_id, sa.func.max(Completion.id).label("cid"))
            .group_by(Completion.obligation_id)
            .subquery()
        )
        rows = conn.execute(
            sa.select(
                Obligation,
                Completion.by,
                Completion.note.label("c_note"),
                Completion.readings.label("c_readings"),
                MarketRow.name,
            )
            .join(MarketRow, MarketRow.id == Obligation.market_id)
            .outerjoin(latest, latest.c.obligation_id == Obligation.id)
            .outerjoin(Completion, Completion.id == latest.c.cid)
            .where(
                Obligation.local_date >= period.start.isoformat(),
                Obligation.local_date < period.end.isoformat(),
            )
        ).all()

    def local(t: datetime | None) -> datetime | None:
        return None if t is None else t.astimezone(ZONE).replace(tzinfo=None)

    return {
        r.id: {
            "market": r.name,
            "date": date.fromisoformat(r.local_date),
            "opens": local(r.opens_at),
            "due": local(r.due_at),
            "completed": local(r.completed_at),
            "by": r.by,
            "category": compliance.categorise(r.state, missed_at=r.missed_at, as_of=AS_OF),
            "overdue": is_overdue(State(r.state), due_at=r.due_at, now=AS_OF),
            "minutes_late": minutes_late(due_at=r.due_at, completed_at=r.completed_at),
            "note": r.c_note or r.note,
            "kind": r.kind,
            "readings": expected_readings(r.task_id, r.area_id, r.c_readings),
        }
        for r in rows
    }


def expected_readings(task: str, area: str | None, values: dict[str, float] | None) -> str | None:
    """The readings text for the fixture's tasks, written out by hand."""
    if values is None or task == "waste":
        return None
    if task == "disinfect":
        label, unit, value = "有效氯", "mg/L", values["chlorine"]
        lo, hi = (900, 1200) if area == "aquatic" else (400, 700)
        required, ok = f"{lo}–{hi}", lo <= value <= hi
    else:
        label, unit, value = "鼠饵站数量", "个", values["bait"]
        required, ok = "≥ 1", value >= 1
    return f"{label} {value:g} {unit}（要求 {required}{'' if ok else '，不合格'}）"


def table(ws: Worksheet, header_row: int) -> list[dict[str, Any]]:
    rows = ws.iter_rows(min_row=header_row, values_only=True)
    headers = list(next(rows))
    return [dict(zip(headers, r, strict=False)) for r in rows if r[0] is not None]


def as_date(v: Any) -> date:
    assert isinstance(v, datetime)
    assert v.time() == datetime.min.time()
    return v.date()


def market_sheets(wb: openpyxl.Workbook) -> Iterator[Worksheet]:
    """The sheets after summary, overdue, pest control, rectification rate, late problems
    (and pest contracts, in a month)."""
    fixed = 6 if wb.worksheets[5].title == "灭四害合同" else 5
    for ws in wb.worksheets[fixed:]:
        assert isinstance(ws, Worksheet)
        yield ws


# ---------------------------------------------------------------------- the rows


def test_every_obligation_row_equals_the_ledger(book: Ledger, tmp_path: Path) -> None:
    info = export(book.engine, tmp_path / "week.xlsx")
    expected = ledger_rows(book.engine, WEEK)
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    seen: set[int] = set()
    for ws in market_sheets(wb):
        assert [c.value for c in ws[2]] == MARKET_HEADERS
        for row in table(ws, 2):
            e = expected[row["编号"]]
            seen.add(row["编号"])
            assert e["market"].startswith(ws["A1"].value.split("（")[0])
            assert as_date(row["日期"]) == e["date"]
            assert row["开始时间"] == e["opens"]
            assert row["截止时间"] == e["due"]
            assert row["完成时间"] == e["completed"]  # to the second, as recorded
            assert row["完成人"] == e["by"]
            assert row["状态"] == ZH_STATUS[e["category"]]
            assert (row["逾期分钟数"] or 0) == e["minutes_late"]
            assert row["任务类别"] == ZH_KIND[e["kind"]]
            assert row["检测读数（要求范围）"] == e["readings"]
            note = e["note"].replace("\x07", "").replace("\x00", "") if e["note"] else None
            assert row["备注"] == note
    assert seen == set(expected)
    assert info.lines == len(expected)
    categories = {e["category"] for e in expected.values()}
    assert categories == set(compliance.CATEGORIES)  # the fixture covers every category
    assert any(e["completed"] and e["completed"].second for e in expected.values())


def test_readings_show_the_value_against_the_required_range(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    texts: dict[str, set[str]] = {}
    for ws in market_sheets(wb):
        for row in table(ws, 2):
            texts.setdefault(row["状态"], set()).add(row["检测读数（要求范围）"] or "")
    assert "有效氯 1050 mg/L（要求 900–1200）" in texts["按时完成"]
    assert "有效氯 550 mg/L（要求 400–700）" in texts["按时完成"]
    assert "鼠饵站数量 0.5 个（要求 ≥ 1，不合格）" in texts["读数不合格"]
    assert texts["读数不合格"] <= {
        "有效氯 450 mg/L（要求 900–1200，不合格）",
        "有效氯 200 mg/L（要求 400–700，不合格）",
        "鼠饵站数量 0.5 个（要求 ≥ 1，不合格）",
    }
    assert texts["未完成（漏做）"] == {""}  # nothing was measured


def test_the_overdue_sheet_lists_what_is_overdue_by_the_one_rule(
    book: Ledger, tmp_path: Path
) -> None:
    info = export(book.engine, tmp_path / "week.xlsx")
    rows_of_week = ledger_rows(book.engine, WEEK)
    expected = {i: e for i, e in rows_of_week.items() if e["overdue"]}
    # open past due, missed and failed past due; a failed reading before due is not overdue
    assert {e["category"] for e in expected.values()} == {"missed", "failed"}
    assert any(e["category"] == "failed" and not e["overdue"] for e in rows_of_week.values())
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    ws = wb.worksheets[1]
    assert ws.title == "逾期未完成"
    rows = table(ws, 2)
    assert {r["编号"]: r["状态"] for r in rows} == {
        i: ZH_STATUS[e["category"]] for i, e in expected.items()
    }
    assert {r["市场"] for r in rows} <= {LONG_NAME, "鲤中农贸市场", "汇总"}
    assert info.overdue == len(rows) > 0


def test_the_pest_control_sheet_names_the_contractor(book: Ledger, tmp_path: Path) -> None:
    info = export(book.engine, tmp_path / "week.xlsx")
    ws = openpyxl.load_workbook(tmp_path / "week.xlsx").worksheets[2]
    assert ws.title == "灭四害"
    rows = table(ws, 2)
    assert len(rows) == info.pest_control == 3  # one visit per market on Tuesday
    assert {r["防治单位"] for r in rows} == {CONTRACTOR}
    assert all(r["任务"] == "灭四害" for r in rows)


# ---------------------------------------------------------------------- the summary


def test_the_summary_numbers_equal_the_report(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    ws = openpyxl.load_workbook(tmp_path / "week.xlsx")["汇总"]
    assert ws["A1"].value == "农贸市场环境卫生工作周报"
    assert ws["A2"].value == "统计周期：2026年第48周（2026年11月23日\u2009–\u200929日）"
    assert ws["A3"].value == "数据截至：2026年11月26日 20:00"
    counts = [
        "应完成",
        "按时完成",
        "逾期完成",
        "未完成（漏做）",
        "读数不合格",
        "休市免除",
        "待完成",
    ]
    columns = ["due", "on_time", "late", "missed", "failed", "excused", "pending"]
    with read(book.engine) as conn:
        report = Report(conn, WEEK, as_of=AS_OF)
        summary, totals = report.summary, report.market_totals()
        district = report.district_total()
        names = {m.name: m.id for m in report.markets}
    kind_of = {v: k for k, v in ZH_KIND.items()}
    rows = table(ws, 4)
    detail = rows[: next(i for i, r in enumerate(rows) if r["市场"] == "全区合计") + 1]
    checked = 0
    for r in detail:
        if r["市场"] == "全区合计":
            expected = district
        elif r["任务类别"] == "小计":
            expected = totals[names[r["市场"]]]
        else:
            expected = summary[(names[r["市场"]], kind_of[r["任务类别"]])]
        assert [r[c] for c in counts] == [expected.as_dict()[c] for c in columns]
        rate = expected.compliance
        assert r["合规率"] == "—" if rate is None else r["合规率"] == pytest.approx(rate)
        checked += 1
    assert checked == len(summary) + len(totals) + 1
    # the block the chart reads: one row per market, then the district total
    block = [r for r in ws.iter_rows(min_row=4 + len(detail) + 1, values_only=True) if r[0]]
    header = next(i for i, r in enumerate(block) if r[0] == "市场")
    assert [r[0] for r in block[header + 1 :]] == [*names, "全区合计"]
    assert [r[10] for r in block[header + 1 : -1]] == pytest.approx(
        [c.compliance for c in totals.values()]
    )
    with zipfile.ZipFile(tmp_path / "week.xlsx") as z:
        chart = z.read("xl/charts/chart1.xml").decode()
    assert f"'汇总'!$K${4 + len(detail) + header + 4}" in chart
    assert '<barDir val="bar"/>' in chart


def test_compliance_is_a_percentage_and_nothing_due_shows_a_dash(
    book: Ledger, tmp_path: Path
) -> None:
    export(book.engine, tmp_path / "day.xlsx", Period.of("day", date(2026, 11, 28)))
    ws = openpyxl.load_workbook(tmp_path / "day.xlsx")["汇总"]
    rates = [row[10] for row in ws.iter_rows(min_row=5, max_row=20) if row[10].value is not None]
    dashes = [c for c in rates if c.value == "—"]
    assert dashes and all(c.data_type == "s" for c in dashes)  # Saturday: nothing due yet
    numbers = [c for c in rates if isinstance(c.value, float)]
    for c in numbers:
        assert c.number_format == "0.0%"


# ---------------------------------------------------------------------- periods


@pytest.mark.parametrize(
    ("period", "sheets"),
    [
        (Period.of("day", date(2026, 11, 25)), 8),
        (WEEK, 8),
        (Period.of("month", date(2026, 11, 1)), 8),
    ],
)
def test_day_week_and_month_list_the_obligations_of_their_period(
    book: Ledger, tmp_path: Path, period: Period, sheets: int
) -> None:
    import pandas as pd  # this test's alone: the workers that do not run it never load it

    path = tmp_path / f"{period.key}.xlsx"
    info = export(book.engine, path, period)
    expected = ledger_rows(book.engine, period)
    frames = pd.read_excel(path, sheet_name=None, header=1)
    assert list(frames) == list(info.sheets) and len(frames) == sheets
    listed = pd.concat([frames[t] for t in info.sheets[5:]])
    assert sorted(listed["编号"]) == sorted(expected)
    assert pd.api.types.is_datetime64_any_dtype(listed["日期"])
    assert set(listed["日期"].dt.date) == {e["date"] for e in expected.values()}
    overdue = frames["逾期未完成"]
    assert len(overdue) == sum(e["overdue"] for e in expected.values())
    summary = pd.read_excel(path, sheet_name="汇总", header=3)
    total = summary[summary["市场"] == "全区合计"].iloc[0]
    assert total["应完成"] == sum(e["category"] in compliance.DUE for e in expected.values())


def test_an_empty_period_still_gives_a_valid_workbook(book: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "empty.xlsx"
    info = export(book.engine, path, Period.of("month", date(2027, 3, 1)))
    assert info.lines == info.overdue == info.pest_control == 0
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == list(info.sheets)
    assert wb["逾期未完成"]["A3"].value == "无。"
    for ws in market_sheets(wb):
        assert ws["A3"].value == "本期无任务。"
        assert ws.auto_filter.ref == "A2:M2"
    total = [r for r in wb["汇总"].iter_rows(values_only=True) if r[0] == "全区合计"][0]
    assert total[3] == 0 and total[10] == "—"


def test_a_report_of_no_markets_is_a_summary_alone(book: Ledger, tmp_path: Path) -> None:
    with read(book.engine) as conn:
        report = Report(conn, WEEK, as_of=AS_OF, markets=["nowhere"])
        info = write_workbook(report, tmp_path / "none.xlsx", generated_at=GENERATED)
    assert info.sheets == ("汇总", "逾期未完成", "灭四害", "整改率", "逾期未整改")
    assert openpyxl.load_workbook(tmp_path / "none.xlsx").sheetnames == list(info.sheets)


def test_times_are_the_markets_wall_clock_across_a_daylight_saving_change(
    engine: sa.Engine, tmp_path: Path
) -> None:
    berlin = ZoneInfo("Europe/Berlin")  # summer time ends on Sunday 25 October 2026
    schedule = make_schedule(
        market_yaml("berlin", "Berlin Markthalle", zone="Europe/Berlin"), TASKS
    )
    start = datetime(2026, 10, 19, tzinfo=berlin).astimezone(UTC)
    ledger_materialise.materialise(
        engine, schedule, now=start, horizon=timedelta(days=8), start=start
    )
    week = Period.of("week", date(2026, 10, 19))
    as_of = datetime(2026, 10, 27, tzinfo=berlin).astimezone(UTC)
    with read(engine) as conn:
        report = Report(conn, week, as_of=as_of)
        write_workbook(report, tmp_path / "w.xlsx", generated_at=GENERATED)
        utc_opens = {
            r.id: r.opens_at for r in conn.execute(sa.select(Obligation.id, Obligation.opens_at))
        }
    rows = table(openpyxl.load_workbook(tmp_path / "w.xlsx")["Berlin Markthalle"], 2)
    waste = {as_date(r["日期"]): r["开始时间"] for r in rows if r["任务"] == "垃圾日产日清"}
    assert waste[date(2026, 10, 24)] == datetime(2026, 10, 24, 19, 0)  # Saturday, summer time
    assert waste[date(2026, 10, 25)] == datetime(2026, 10, 25, 19, 0)  # Sunday, winter time
    for r in rows:
        assert r["开始时间"] == utc_opens[r["编号"]].astimezone(berlin).replace(tzinfo=None)
    sat, sun = (
        utc_opens[r["编号"]]
        for r in rows
        if r["任务"] == "垃圾日产日清" and r["日期"].day in (24, 25)
    )
    assert (sun - sat) == timedelta(hours=25)
    assert "数据截至：2026年10月27日 00:00" in [
        c.value for c in openpyxl.load_workbook(tmp_path / "w.xlsx")["汇总"]["A"]
    ]


# ---------------------------------------------------------------------- safety of the cells


def test_a_note_starting_with_equals_stays_text(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    notes = [
        c
        for ws in market_sheets(wb)
        for c in ws["M"]
        if isinstance(c.value, str) and c.value.startswith("=")
    ]
    assert notes and all(c.value == EQUALS_NOTE and c.data_type == "s" for c in notes)
    with zipfile.ZipFile(tmp_path / "week.xlsx") as z:
        for name in z.namelist():
            if name.startswith("xl/worksheets/"):
                assert "<f>" not in z.read(name).decode(), name


def test_control_characters_are_removed(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    notes = {c.value for ws in market_sheets(wb) for c in ws["M"][2:] if c.value}
    assert "铃声空字符结束" in notes
    assert exports.clean("a\x00b\x1fc\td\ne\ud800") == "ab" + "c\td\ne"


def test_sheet_titles_are_valid_unique_and_short(book: Ledger, tmp_path: Path) -> None:
    info = export(book.engine, tmp_path / "week.xlsx")
    assert info.sheets[:5] == ("汇总", "逾期未完成", "灭四害", "整改率", "逾期未整改")
    titles = info.sheets[5:]
    assert titles[1:] == ("鲤中农贸市场", "汇总 (2)")
    long = titles[0]
    assert len(long) == 31 and not re.search(r"[\[\]:*?/\\]", long)
    assert long.startswith("海滨_临江_农贸_市场___名字很长")
    assert openpyxl.load_workbook(tmp_path / "week.xlsx").sheetnames == list(info.sheets)


def test_sheet_title_rules() -> None:
    taken: set[str] = set()
    assert sheet_title("Summary", taken) == "Summary"
    assert sheet_title("SUMMARY", taken) == "SUMMARY (2)"  # Excel ignores case
    assert sheet_title("history", taken) == "history_"
    assert sheet_title("'quoted'", taken) == "quoted"
    assert sheet_title("\x00", taken) == "Sheet"
    emoji = sheet_title("🧹" * 20, set())
    assert len(emoji.encode("utf-16-le")) // 2 <= 31
    assert sheet_title("x" * 40, taken) == "x" * 31
    assert sheet_title("x" * 40, taken) == "x" * 27 + " (2)"


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("abc") == 3
    assert display_width("鲤中农贸市场") == 12
    assert display_width("有效氯 1000 mg/L（要求 900–1200）") == 33  # the en dash is narrow
    assert display_width("短\n更长的一行") == 10


# ---------------------------------------------------------------------- format and print


def test_the_sheets_are_set_up_to_read_and_print(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    assert wb.properties.creator == "marketcare"
    assert wb.properties.created == GENERATED.replace(tzinfo=None)
    assert wb.properties.subject == "2026年第48周（2026年11月23日\u2009–\u200929日）"
    assert wb.properties.title == "农贸市场环境卫生工作周报"
    for ws in wb.worksheets:
        header = 4 if ws.title == "汇总" else 2
        assert ws.freeze_panes == f"A{header + 1}"
        assert ws.print_title_rows == f"$1:${header}"
        assert ws.page_setup.orientation == "landscape"
        assert int(ws.page_setup.paperSize) == 9  # A4
        # a scale of its own (never fitted down to tiny text): see the print test below
        assert exports.MIN_PRINT_SCALE <= ws.page_setup.scale <= 100
        assert not ws.sheet_properties.pageSetUpPr.fitToPage
        assert ws.oddFooter.center.text == "第 &P 页 / 共 &N 页"
        assert ws.oddFooter.left.text == "2026年第48周（2026年11月23日\u2009–\u200929日）"
        assert ws.auto_filter.ref.startswith(f"A{header}:")
        assert all(c.font.b for c in ws[header] if c.value)
    ws = wb["鲤中农贸市场"]
    width = {c.value: ws.column_dimensions[c.column_letter].width for c in ws[2]}
    assert width["区域"] >= display_width("公共通道") and width["日期"] >= 10
    assert width["状态"] >= display_width("未完成（漏做）")
    # a long text wraps in its cell rather than widening the sheet past the page
    readings = [c for c in ws["J"][2:] if c.value]
    assert readings and all(c.alignment.wrap_text for c in readings)
    assert ws.auto_filter.ref == f"A2:M{ws.max_row}"


def test_status_cells_are_coloured_by_category(book: Ledger, tmp_path: Path) -> None:
    export(book.engine, tmp_path / "week.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    for ws in [wb["逾期未完成"], *market_sheets(wb)]:
        status = next(c.column_letter for c in ws[2] if c.value == "状态")
        colours = {}
        for rules in ws.conditional_formatting:
            assert str(rules.sqref) == f"{status}3:{status}{ws.max_row}"
            for rule in rules.rules:
                assert rule.type == "cellIs" and rule.operator == "equal"
                colours[rule.formula[0]] = rule.dxf.fill.fgColor.rgb
        assert colours == {
            '"按时完成"': "00C6EFCE",
            '"逾期完成"': "00FFEB9C",
            '"未完成（漏做）"': "00FFC7CE",
            '"读数不合格"': "00F8CBAD",
            '"休市免除"': "00D9D9D9",
        }
    for ws in market_sheets(wb):
        for c in ws["B"][2:]:
            if c.value:
                assert c.number_format == "yyyy-mm-dd"
        for c in ws["F"][2:]:
            if c.value:
                assert c.number_format == "mm-dd hh:mm"
        for c in ws["H"][2:]:
            if c.value:
                assert c.number_format == "mm-dd hh:mm:ss"


def test_english_labels_with_language_en(book: Ledger, tmp_path: Path) -> None:
    info = export(book.engine, tmp_path / "week.xlsx", language="en")
    assert info.sheets[:3] == ("Summary", "Overdue", "Pest control")
    wb = openpyxl.load_workbook(tmp_path / "week.xlsx")
    ws = wb["鲤中农贸市场"]
    assert [c.value for c in ws[2]][:3] == ["No.", "Date", "Area"]
    statuses = {c.value for ws in market_sheets(wb) for c in ws["K"][2:]}
    assert statuses == {"On time", "Done late", "Missed", "Failed reading", "Excused", "Pending"}
    assert wb["Summary"]["A2"].value == "Period: Week 48 of 2026 (Nov 23\u2009–\u200929, 2026)"
    assert wb["Summary"].oddFooter.center.text == "Page &P of &N"
    readings = {c.value for c in ws["J"][2:] if c.value}
    assert "有效氯 1050 mg/L (required 900–1200)" in readings


# ---------------------------------------------------------------------- the digest


def test_the_same_period_exported_twice_has_the_same_digest(book: Ledger, tmp_path: Path) -> None:
    first = export(book.engine, tmp_path / "a.xlsx")
    again = export(book.engine, tmp_path / "b.xlsx", as_of=AS_OF + timedelta(minutes=5))
    assert first.content_digest == again.content_digest
    assert (tmp_path / "a.xlsx").read_bytes() != (tmp_path / "b.xlsx").read_bytes()
    english = export(book.engine, tmp_path / "c.xlsx", language="en")
    assert english.content_digest != first.content_digest
    with read(book.engine) as conn:
        pending = conn.execute(
            sa.select(Obligation.id, Obligation.opens_at)
            .where(Obligation.state == State.UPCOMING.value, Obligation.task_id == "waste")
            .order_by(Obligation.id)
        ).first()
    assert pending is not None
    ledger_tick.tick(book.engine, obligation_id=pending.id, by="林秀英", now=pending.opens_at)
    changed = export(book.engine, tmp_path / "d.xlsx")
    assert changed.content_digest != first.content_digest


def test_progress_reaches_the_number_of_obligations(book: Ledger, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with read(book.engine) as conn:
        report = Report(conn, WEEK, as_of=AS_OF)
        info = write_workbook(
            report,
            tmp_path / "w.xlsx",
            generated_at=GENERATED,
            progress=lambda d, t: seen.append((d, t)),
        )
    assert seen[-1] == (info.lines, info.lines)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_failed_export_leaves_no_partial_file(
    book: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "week.xlsx"
    path.write_bytes(b"the previous export")
    private = tmp_path / "tmp"  # other processes' temporary files cannot interfere
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    temporary: set[Path] = set()

    def boom(done: int, total: int) -> None:
        raise RuntimeError("disk full")

    with read(book.engine) as conn, pytest.raises(RuntimeError):
        report = Report(conn, WEEK, as_of=AS_OF)
        write_workbook(report, path, generated_at=GENERATED, progress=boom)
    assert path.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.glob("*.xlsx*")) == ["week.xlsx"]
    assert set(Path(tempfile.gettempdir()).glob("openpyxl.*")) <= temporary


def test_the_row_shortcut_still_fits_openpyxl(
    book: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``exports._CellStream`` overrides a private step of openpyxl's write-only sheet: this
    fails first when openpyxl changes it. Without the shortcut the workbook is the same."""
    step = getattr(WriteOnlyWorksheet, "_values_to_row", None)
    assert callable(step), "openpyxl changed: see exports._CellStream"
    assert list(inspect.signature(step).parameters) == ["self", "values", "row_idx"]
    fast = export(book.engine, tmp_path / "fast.xlsx")
    monkeypatch.setattr(exports._CellStream, "_values_to_row", step)
    slow = export(book.engine, tmp_path / "slow.xlsx")
    assert fast.content_digest == slow.content_digest

    def cells(path: Path) -> list[list[tuple[Any, str, str]]]:
        wb = openpyxl.load_workbook(path)
        return [
            [(c.value, c.number_format, c.data_type) for c in row]
            for ws in wb.worksheets
            for row in ws.iter_rows()
        ]

    assert cells(tmp_path / "fast.xlsx") == cells(tmp_path / "slow.xlsx")


# ---------------------------------------------------------------------- LibreOffice


def soffice(tmp_path: Path, source: Path, target: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    # `make test` installs it; without it this test fails rather than skips
    assert exe is not None, (
        "LibreOffice is not installed (apt: libreoffice-calc-nogui fonts-noto-cjk)"
    )
    out = tmp_path / "lo-out"
    return subprocess.run(
        [
            exe,
            f"-env:UserInstallation={(tmp_path / 'lo-profile').as_uri()}",
            "--headless",
            "--norestore",
            "--convert-to",
            target,
            "--outdir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_libreoffice_opens_the_workbook_and_reads_the_chinese_text(
    book: Ledger, tmp_path: Path
) -> None:
    path = tmp_path / "week.xlsx"
    export(book.engine, path)
    # every sheet to its own UTF-8 CSV (filter options: separator, quote, UTF-8, …, all sheets)
    done = soffice(
        tmp_path,
        path,
        "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,true,false,false,-1",
    )
    assert done.returncode == 0, done.stderr
    csvs = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "lo-out").glob("*.csv")}
    assert len(csvs) == 8, sorted(csvs)
    summary = csvs["week-汇总.csv"]
    assert "农贸市场环境卫生工作周报" in summary and "全区合计" in summary
    market = "".join(text for name, text in csvs.items() if name != "week-汇总.csv")
    assert "每日休市清洗消毒" in market and "未完成（漏做）" in market
    assert "有效氯 1050 mg/L（要求 900–1200）" in market
    assert EQUALS_NOTE in market
    assert re.search(r"11-23 18:30", market)  # dates shown in their number format
    done = soffice(tmp_path, path, "pdf")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lo-out" / "week.pdf").stat().st_size > 10_000


# ---------------------------------------------------------------------- the catalogs


#: the web modules translate through ``web.app.translator_of`` without importing ``i18n``
WEB_MODULES = ("web/*.py",)


def code_msgids() -> dict[str, str]:
    """Every message id the code marks (tr("…") or N_("…"), and _("…") in the page
    templates), with where it is."""
    found: dict[str, str] = {}
    web = {p for pattern in WEB_MODULES for p in SRC.glob(pattern)}
    for path in sorted(SRC.rglob("*.py")):
        if (
            path.name != "i18n.py"
            and path not in web
            and "i18n" not in path.read_text(encoding="utf-8")
        ):
            continue
        for lineno, message, _comments, _context in extract_from_file(
            "python", path, keywords={"tr": None, "N_": None}
        ):
            assert isinstance(message, str), f"{path.name}:{lineno}"
            found.setdefault(message, f"{path.relative_to(SRC)}:{lineno}")
    for path in sorted((SRC / "web" / "templates").glob("*.html")):
        for lineno, message, _comments, _context in extract_from_file(
            "jinja2", path, keywords={"_": None}
        ):
            assert isinstance(message, str), f"templates/{path.name}:{lineno}"
            found.setdefault(message, f"templates/{path.name}:{lineno}")
    return found


def placeholders(text: str) -> set[str]:
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    return names | set(re.findall(r"&[A-Z]", text))


@pytest.fixture(scope="module")
def used_msgids() -> dict[str, str]:
    """The code's message ids, extracted once for every language's test (reading every
    module and template is most of their time; nothing here changes them)."""
    return code_msgids()


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_message_the_code_uses_is_translated(
    language: str, used_msgids: dict[str, str]
) -> None:
    catalog = i18n.read_catalog(language)
    used = used_msgids
    assert len(used) > 50
    missing = {m: where for m, where in used.items() if m not in catalog}
    assert not missing, f"add to {i18n.catalog_path(language)}: {missing}"
    unused = set(catalog) - set(used)
    assert not unused, f"remove from {i18n.catalog_path(language)}: {unused}"
    for msgid, text in catalog.items():
        assert placeholders(text) == placeholders(msgid), msgid


def test_every_state_kind_and_category_has_a_label_in_each_language() -> None:
    for language in i18n.LANGUAGES:
        t = i18n.translator(language)
        labels = [t.category(c) for c in compliance.CATEGORIES]
        labels += [t.state(s) for s in State]
        labels += [t.task_kind(k) for k in TaskKind]
        labels += [t.area_kind(k) for k in AreaKind]
        assert all(labels)
        assert len({t.category(c) for c in compliance.CATEGORIES}) == len(compliance.CATEGORIES)
    # every member of every enum the reports label has its label
    assert set(i18n.CATEGORY_LABELS) == set(compliance.Category)
    assert set(i18n.STATE_LABELS) == set(State)
    assert set(i18n.TASK_KIND_LABELS) == set(TaskKind)
    assert set(i18n.AREA_KIND_LABELS) == set(AreaKind)
    assert set(i18n.PROBLEM_CATEGORY_LABELS) == set(problems.Category)
    assert set(i18n.PROBLEM_STATE_LABELS) == set(problems.ProblemState)
    zh = i18n.translator("zh_CN")
    assert zh.task_kind("reinspection") == "复查"
    assert zh.problem_category("repair") == "设施维修" and zh.problem_state("open") == "未整改"
    assert [zh.task_kind(k) for k in ("waste_clearance", "disinfection", "pest_control")] == [
        "垃圾日产日清",
        "每日休市清洗消毒",
        "灭四害",
    ]
    assert zh.area_kind("aquatic") == "水产区"
    assert zh.state("missed") == "未完成（漏做）"
    assert zh.task_kind("new_kind") == "new_kind"  # a kind from a newer schedule shows its id


def test_an_unknown_language_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(Exception, match="unknown language 'fr': use one of zh_CN, en"):
        i18n.translator("fr")
