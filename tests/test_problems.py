"""The supervision loop: problems raised, rectified, re-inspected; the rectification rate."""

from __future__ import annotations

import io
import zipfile
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from openpyxl import Workbook, load_workbook

from marketcare.domain.problems import ProblemState, rectification_rate
from marketcare.errors import MarketcareError
from marketcare.ledger import audit
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import readmodel as ledger_readmodel
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read
from marketcare.ledger.models import Obligation

from .conftest import make_market_yaml, make_schedule, utc
from .support.tamper import unguarded

NOW = utc(2026, 11, 27, 2, 0)


@pytest.fixture
def ready(engine: sa.Engine) -> sa.Engine:
    ledger_materialise.materialise(engine, make_schedule(), now=NOW, horizon=timedelta(days=1))
    return engine


def make_problem(**kw: object) -> ledger_problems.NewProblem:
    values: dict[str, object] = {
        "market_id": "lizhong",
        "area_id": "aquatic",
        "category": "repair",
        "description": "水产区排水沟堵塞",
        "found_by": "区市场监管 张伟",
        "found_at": NOW,
        "deadline": NOW + timedelta(days=3),
    }
    values.update(kw)
    return ledger_problems.NewProblem(**values)  # type: ignore[arg-type]


def test_a_rectified_problem_gets_a_reinspection_and_closes_only_when_it_passes(
    ready: sa.Engine,
) -> None:
    pid, created = ledger_problems.add(ready, make_problem(), now=NOW)
    assert created
    ob_id = ledger_problems.rectify(
        ready, problem_id=pid, by="市场管理员 林秀英", note="已疏通", now=NOW + timedelta(hours=5)
    )
    with read(ready) as conn:
        ob = conn.execute(sa.select(Obligation).where(Obligation.id == ob_id)).one()
    assert ob.kind == "reinspection" and ob.state == "open"
    (row,) = ledger_problems.listing(ready, now=NOW)
    assert row.state == ProblemState.RECTIFIED
    ledger_problems.verify(ready, problem_id=pid, by="区市场监管 张伟", now=NOW + timedelta(days=1))
    (row,) = ledger_problems.listing(ready, now=NOW)
    assert row.state == ProblemState.VERIFIED and not row.overdue
    with read(ready) as conn:
        assert (
            conn.execute(sa.select(Obligation.state).where(Obligation.id == ob_id)).scalar_one()
            == "done"
        )
        assert audit.verify(conn).ok


def test_a_failed_reinspection_reopens_the_problem_and_counts_it(ready: sa.Engine) -> None:
    pid, _ = ledger_problems.add(ready, make_problem(), now=NOW)
    ledger_problems.rectify(ready, problem_id=pid, by="林秀英", note="已疏通", now=NOW)
    ledger_problems.reopen(
        ready, problem_id=pid, by="张伟", note="仍有积水", now=NOW + timedelta(hours=2)
    )
    (row,) = ledger_problems.listing(ready, now=NOW)
    assert row.state == ProblemState.OPEN and row.reopened == 1
    second = ledger_problems.rectify(
        ready, problem_id=pid, by="林秀英", note="更换篦子", now=NOW + timedelta(hours=4)
    )
    assert second  # a new re-inspection round


def test_moves_not_allowed_from_a_state_are_refused_with_what_is_allowed(ready: sa.Engine) -> None:
    pid, _ = ledger_problems.add(ready, make_problem(), now=NOW)
    with pytest.raises(
        MarketcareError, match="cannot verify a problem that is open; from open it can be: rectify"
    ):
        ledger_problems.verify(ready, problem_id=pid, by="张伟", now=NOW)


def test_a_problem_past_its_deadline_and_not_verified_is_overdue(ready: sa.Engine) -> None:
    ledger_problems.add(ready, make_problem(description="墙面破损"), now=NOW)
    ledger_problems.add(ready, make_problem(deadline=NOW + timedelta(days=30)), now=NOW)
    later = NOW + timedelta(days=4)
    rows = ledger_problems.listing(ready, now=later, overdue=True)
    assert [r.description for r in rows] == ["墙面破损"]


def test_the_same_source_raises_one_problem(ready: sa.Engine) -> None:
    first = ledger_problems.add(ready, make_problem(source_key="obligation:1:missed"), now=NOW)
    again = ledger_problems.add(ready, make_problem(source_key="obligation:1:missed"), now=NOW)
    assert first[0] == again[0] and not again[1]


def test_invalid_problems_name_the_field(ready: sa.Engine) -> None:
    with pytest.raises(MarketcareError, match="market: unknown market 'nowhere'"):
        ledger_problems.add(ready, make_problem(market_id="nowhere"), now=NOW)
    with pytest.raises(MarketcareError, match="category: 'leak' is not one of"):
        ledger_problems.add(ready, make_problem(category="leak"), now=NOW)


def test_the_rectification_rate_is_verified_over_due_in_the_period() -> None:
    start, end = utc(2026, 11, 23, 0, 0), utc(2026, 11, 30, 0, 0)
    problems = [
        (ProblemState.VERIFIED, utc(2026, 11, 24, 0, 0), utc(2026, 11, 23, 9, 0)),
        (ProblemState.RECTIFIED, utc(2026, 11, 25, 0, 0), None),
        (ProblemState.OPEN, utc(2026, 11, 26, 0, 0), None),
        (
            ProblemState.VERIFIED,
            utc(2026, 12, 5, 0, 0),
            utc(2026, 11, 24, 0, 0),
        ),  # not due this week
    ]
    rate = rectification_rate(problems, start=start, end=end, as_of=end)
    assert (rate.verified, rate.due) == (1, 3)
    assert rate.value == pytest.approx(1 / 3)
    assert rectification_rate([], start=start, end=end, as_of=end).value is None


def test_rates_per_market_come_from_the_one_rule(ready: sa.Engine) -> None:
    pid, _ = ledger_problems.add(ready, make_problem(), now=NOW)
    ledger_problems.add(ready, make_problem(description="灯不亮"), now=NOW)
    ledger_problems.rectify(ready, problem_id=pid, by="a", note="ok", now=NOW)
    ledger_problems.verify(ready, problem_id=pid, by="b", now=NOW + timedelta(hours=1))
    with read(ready) as conn:
        rates = ledger_problems.rates(
            conn, start=NOW, end=NOW + timedelta(days=7), as_of=NOW + timedelta(days=7)
        )
    assert (rates["lizhong"].verified, rates["lizhong"].due) == (1, 2)


def write_sheet(path: Path, rows: list[list[object]]) -> Path:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["市场", "区域", "类别", "问题描述", "发现时间", "发现人", "整改期限"])
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def test_a_clean_spreadsheet_imports_every_row_once(ready: sa.Engine, tmp_path: Path) -> None:
    sheet = write_sheet(
        tmp_path / "督查.xlsx",
        [
            [
                "lizhong",
                "aquatic",
                "设施维修",
                "水产区水槽渗漏",
                "2026-11-26 09:30",
                "张伟",
                "2026-11-30",
            ],
            ["lizhong", None, "卫生", "垃圾房异味", "2026-11-26", "张伟", "2026-11-28 12:00"],
        ],
    )
    result = ledger_problems.import_xlsx(ready, sheet, now=NOW)
    assert result.imported == 2
    again = ledger_problems.import_xlsx(ready, sheet, now=NOW)
    assert again.imported == 0 and again.already == 2
    rows = ledger_problems.listing(ready, now=NOW)
    deadline = {r.description: r.deadline for r in rows}
    assert deadline["水产区水槽渗漏"] == utc(2026, 11, 30, 15, 59, 59)  # end of the day, Shanghai


def test_a_bad_row_is_reported_by_row_and_column_and_nothing_is_imported(
    ready: sa.Engine, tmp_path: Path
) -> None:
    sheet = write_sheet(
        tmp_path / "bad.xlsx",
        [
            ["lizhong", "aquatic", "卫生", "地面积水", "2026-11-26", "张伟", "2026-11-30"],
            ["lizhong", "aquatic", "卫生", "地面积水", "2026-11-26", "张伟", "下周"],
            ["lizhng", None, "卫生", "x", "2026-11-26", "张伟", "2026-11-30"],
        ],
    )
    with pytest.raises(ledger_problems.ImportRejected) as caught:
        ledger_problems.import_xlsx(ready, sheet, now=NOW)
    assert caught.value.errors == [
        "row 3, column G (整改期限): '下周' is not a date; write 2026-12-05 or 2026-12-05 17:00",
        "row 4, column A (市场): unknown market 'lizhng' (known: lizhong)",
    ]
    assert ledger_problems.listing(ready, now=NOW) == []
    skipped = ledger_problems.import_xlsx(ready, sheet, now=NOW, skip_bad=True)
    assert skipped.imported == 1 and len(skipped.skipped) == 2 and skipped.bad_rows == 2


def test_real_date_cells_date_time_cells_and_text_dates_import_alike(
    ready: sa.Engine, tmp_path: Path
) -> None:
    """An office's date cell (a number shown as a date) is a date: a deadline means the
    end of that day, as the text 2026-11-30 does; a date-time cell is that moment."""
    from datetime import date, datetime

    path = tmp_path / "cells.xlsx"
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["市场", "类别", "问题描述", "发现时间", "发现人", "整改期限"])
    ws.append(["lizhong", "卫生", "日期单元格", date(2026, 11, 26), "张伟", date(2026, 11, 30)])
    ws.append(
        [
            "lizhong",
            "卫生",
            "日期时间单元格",
            datetime(2026, 11, 26, 9, 30),
            "张伟",
            datetime(2026, 11, 30, 17, 0),
        ]
    )
    ws.append(["lizhong", "卫生", "文本日期", "2026-11-26", "张伟", "2026-11-30"])
    ws.append(["lizhong", "卫生", "零点的日期时间", "2026-11-26", "张伟", datetime(2026, 11, 30)])
    ws["F5"].number_format = "yyyy-mm-dd hh:mm"  # typed as a date and time: 00:00 it is
    wb.save(path)
    assert ledger_problems.import_xlsx(ready, path, now=NOW).imported == 4
    got = {r.description: (r.found_at, r.deadline) for r in ledger_problems.listing(ready, now=NOW)}
    end_of_30th = utc(2026, 11, 30, 15, 59, 59)  # 23:59:59 in Shanghai
    assert got["日期单元格"] == (utc(2026, 11, 25, 16, 0), end_of_30th)
    assert got["文本日期"] == got["日期单元格"]
    assert got["日期时间单元格"] == (utc(2026, 11, 26, 1, 30), utc(2026, 11, 30, 9, 0))
    assert got["零点的日期时间"][1] == utc(2026, 11, 29, 16, 0)


def test_every_bad_cell_of_a_row_is_reported_and_skipped_rows_are_counted(
    ready: sa.Engine, tmp_path: Path
) -> None:
    sheet = write_sheet(
        tmp_path / "bad.xlsx",
        [
            ["lizhng", None, "杂项", "地面积水", "明天", "张伟", "下周"],
            ["lizhong", "aquatic", "卫生", "地面积水", "2026-11-26", "张" * 500, "2126-11-30"],
            ["lizhong", "aquatic", "卫生", "地面积水", "2026-12-25", "张伟", "2026-12-30"],
            ["lizhong", "aquatic", "卫生", "地面积水", "2026-11-26", "张伟", "2026-11-30"],
        ],
    )
    with pytest.raises(ledger_problems.ImportRejected) as caught:
        ledger_problems.import_xlsx(ready, sheet, now=NOW)
    assert caught.value.errors == [
        "row 2, column A (市场): unknown market 'lizhng' (known: lizhong)",
        "row 2, column C (类别): '杂项' is not one of sanitation, repair, pest, order",
        "row 2, column E (发现时间): '明天' is not a date; write 2026-12-05 or 2026-12-05 17:00",
        "row 2, column G (整改期限): '下周' is not a date; write 2026-12-05 or 2026-12-05 17:00",
        "row 3, column F (发现人): at most 100 characters (this one has 500)",
        "row 3, column G (整改期限): is more than 366 days away; check the year",
        "row 4, column E (发现时间): is in the future; record a problem once it was found",
    ]
    assert ledger_problems.listing(ready, now=NOW) == []
    skipped = ledger_problems.import_xlsx(ready, sheet, now=NOW, skip_bad=True)
    assert skipped.imported == 1 and skipped.bad_rows == 3 and len(skipped.skipped) == 7


def test_the_same_length_limits_hold_on_every_database(ready: sa.Engine) -> None:
    """SQLite would store 500 characters in a 100-character column; the rule refuses them
    before either database sees them, from the one definition in the domain."""
    from marketcare.domain.problems import LIMITS
    from marketcare.ledger.models import ProblemRow

    assert ProblemRow.__table__.c.found_by.type.length == LIMITS["found_by"]
    with pytest.raises(MarketcareError, match="found_by: at most 100 characters"):
        ledger_problems.add(ready, make_problem(found_by="张" * 101), now=NOW)
    ledger_problems.add(ready, make_problem(found_by="张" * 100), now=NOW)


def test_a_file_that_is_not_a_workbook_is_refused_clearly(ready: sa.Engine, tmp_path: Path) -> None:
    bogus = tmp_path / "x.xlsx"
    bogus.write_text("not a workbook")
    with pytest.raises(MarketcareError, match="not an Excel .xlsx workbook"):
        ledger_problems.import_xlsx(ready, bogus, now=NOW)


def test_an_empty_cell_of_merged_cells_or_a_formula_without_its_result_says_so(
    ready: sa.Engine, tmp_path: Path
) -> None:
    row = ["lizhong", None, "卫生", "地面积水", "2026-11-26", "张伟", "2026-11-30"]
    sheet = write_sheet(tmp_path / "督查.xlsx", [row, [None, *row[1:]], [*row[:6], "=TODAY()+3"]])
    wb = load_workbook(sheet)
    assert wb.active is not None
    wb.active.merge_cells("A2:A3")  # the office's way of writing one market for two rows
    wb.save(sheet)  # saved by a program: the formula's result is not kept
    with pytest.raises(MarketcareError) as refused:
        ledger_problems.import_xlsx(ready, sheet, now=NOW)
    errors = refused.value.errors  # type: ignore[attr-defined]
    assert len(errors) == 2, errors
    assert errors[0].startswith("row 3, column A (市场): say which market")
    assert "part of the merged cells A2:A3, whose value is in A2 only: unmerge" in errors[0]
    assert errors[1].startswith("row 4, column G (整改期限): empty")
    assert "the formula =TODAY()+3 but the file keeps no result of it" in errors[1]
    assert ledger_problems.listing(ready, now=NOW) == []


def test_a_spreadsheet_that_inflates_a_thousandfold_is_refused_before_it_is_read(
    ready: sa.Engine, tmp_path: Path
) -> None:
    """1 MB on disk, 1 GB of XML once inflated: openpyxl would hold it all in memory."""
    clean = write_sheet(
        tmp_path / "clean.xlsx", [["lizhong", None, "卫生", "积水", None, "张伟", "2026-11-30"]]
    )
    bomb = tmp_path / "督查.xlsx"
    with zipfile.ZipFile(clean) as original, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name in original.namelist():
            if name != "docProps/core.xml":
                z.writestr(name, original.read(name))
        with z.open("docProps/core.xml", "w") as inflating:
            for _ in range(64):
                inflating.write(b" " * (1 << 20))
    with pytest.raises(MarketcareError) as refused:
        ledger_problems.import_xlsx(ready, bomb, now=NOW)
    assert "its part docProps/core.xml would inflate from " in refused.value.message
    assert ledger_problems.listing(ready, now=NOW) == []


def _ods() -> bytes:
    """The start of an OpenDocument spreadsheet: its first entry, stored, names the type."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", "<office:document-content/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "Excel 97-2003 workbook (.xls)"),
        (_ods(), "OpenDocument spreadsheet (.ods)"),
        ("市场,类别,问题描述\nlizhong,卫生,积水\n".encode("gbk"), "text (a .csv file?)"),
        (b"", "the file is empty"),
    ],
    ids=["xls", "ods", "csv", "empty"],
)
def test_a_spreadsheet_of_another_format_is_named_with_how_to_make_an_xlsx_of_it(
    ready: sa.Engine, tmp_path: Path, content: bytes, kind: str
) -> None:
    other = tmp_path / "督查.xlsx"  # the name says .xlsx; the bytes say what it is
    other.write_bytes(content)
    with pytest.raises(MarketcareError) as refused:
        ledger_problems.import_xlsx(ready, other, now=NOW)
    assert kind in refused.value.message
    assert "save it as an Excel Workbook (.xlsx)" in refused.value.message
    assert ledger_problems.listing(ready, now=NOW) == []


def test_a_sheet_without_the_columns_names_the_sheet_and_what_its_first_row_holds(
    ready: sa.Engine, tmp_path: Path
) -> None:
    wb = Workbook()
    notes = wb.active
    assert notes is not None
    notes.title = "填表说明"
    notes.append(["请在第二张表填写"])
    wb.create_sheet("问题").append(["市场", "类别", "问题描述", "发现人", "整改期限"])
    wb.save(tmp_path / "督查.xlsx")
    with pytest.raises(MarketcareError) as refused:
        ledger_problems.import_xlsx(ready, tmp_path / "督查.xlsx", now=NOW)
    message = refused.value.message
    assert "the first sheet ('填表说明'), row 1: missing column(s): market" in message
    assert "row 1 holds '请在第二张表填写'" in message


def test_a_missed_obligation_raises_one_problem_when_its_task_asks_for_it(
    engine: sa.Engine,
) -> None:
    from .conftest import WASTE

    raising = WASTE + "    raise_problem: {when: [missed], category: sanitation, within: 1d}\n"
    schedule = make_schedule(tasks=raising)
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=timedelta(days=1))
    later = utc(2026, 11, 27, 13, 0)  # waste clearance missed at 20:00 CST
    ledger_sweep.sweep_all(engine, now=later)
    assert ledger_problems.raise_from_obligations(engine, schedule, now=later) == 1
    assert ledger_problems.raise_from_obligations(engine, schedule, now=later) == 0
    (row,) = ledger_problems.listing(engine, now=later)
    assert row.description == "垃圾日产日清 2026-11-27 未完成（漏做）"
    missed_at = utc(2026, 11, 27, 12, 0)  # 20:00 CST: found when it was missed, not later
    assert row.found_at == missed_at and row.deadline == missed_at + timedelta(days=1)
    assert row.obligation_id is not None


def test_problems_raised_late_for_old_misses_land_in_the_weeks_they_happened(
    engine: sa.Engine,
) -> None:
    """The first run after a long gap (or after ``demo``) raises a problem for every old
    miss: each is found when it was missed and due a day later, in its own week, so the
    catch-up does not fill this week's rectification rate."""
    from marketcare.domain.periods import Period
    from marketcare.ledger.db import read
    from marketcare.reports.figures import Report, problem_rates

    from .conftest import DISINFECTION, make_market_yaml

    raising = DISINFECTION + "    raise_problem: {when: [missed], category: sanitation}\n"
    named = "[{id: aquatic, name: 水产区, kind: aquatic, m2: 600}, {id: veg, name: 蔬菜区, kind: vegetables, m2: 900}]"
    schedule = make_schedule(markets=make_market_yaml(areas=named), tasks=raising)
    start = utc(2026, 11, 9, 0, 0)  # Monday of week 46
    ledger_materialise.materialise(
        engine, schedule, now=start, horizon=timedelta(days=1), start=start
    )
    later = utc(2026, 11, 23, 3, 0)  # two weeks on, nothing done: every day was missed
    ledger_materialise.materialise(engine, schedule, now=later, horizon=timedelta(hours=1))
    ledger_sweep.sweep_all(engine, now=later)
    raised = ledger_problems.raise_from_obligations(engine, schedule, now=later)
    assert raised == 2 * 14  # two areas, fourteen days
    rows = ledger_problems.listing(engine, now=later)
    # titled with the area's name, not its id
    assert {r.description.split(" ")[0] for r in rows} == {
        "休市清洗消毒（水产区）",
        "休市清洗消毒（蔬菜区）",
    }
    assert {r.found_at.date() for r in rows} == {
        (start + timedelta(days=d)).date() for d in range(14)
    }
    with read(engine) as conn:
        weeks = [Period.of("week", (start + timedelta(days=7 * w)).date()) for w in range(3)]
        due = [problem_rates(Report(conn, week, as_of=later)).get("lizhong") for week in weeks]
    # a miss on Sunday evening is due on Monday: the weeks share them, none piles up today
    assert [r.due if r else 0 for r in due] == [12, 14, 2]
    assert all(r is None or r.verified == 0 for r in due)


def test_a_problem_raised_from_a_failed_area_task_names_the_area_not_its_id(
    engine: sa.Engine,
) -> None:
    from .conftest import DISINFECTION, make_market_yaml

    raising = (
        DISINFECTION + "    raise_problem: {when: [failed], category: sanitation, within: 1d}\n"
    )
    named = "[{id: aquatic, name: 水产区, kind: aquatic, m2: 600}]"
    schedule = make_schedule(markets=make_market_yaml(areas=named), tasks=raising)
    ledger_materialise.materialise(engine, schedule, now=NOW, horizon=timedelta(days=1))
    (ob,) = ledger_readmodel.board(engine, day=date(2026, 11, 27), now=NOW)
    at = ob.opens_at + timedelta(minutes=10)
    ledger_tick.tick(engine, obligation_id=ob.id, by="林秀英", now=at, readings={"chlorine": 300})
    assert ledger_problems.raise_from_obligations(engine, schedule, now=at) == 1
    (row,) = ledger_problems.listing(engine, now=at)
    assert row.description == "休市清洗消毒（水产区） 2026-11-27 读数不合格"


def test_the_weekly_export_lists_late_problems_and_the_rectification_rate(
    ready: sa.Engine, tmp_path: Path
) -> None:
    import openpyxl

    from marketcare.domain.periods import Period
    from marketcare.reports import delivery

    fixed, _ = ledger_problems.add(
        ready, make_problem(description="灯具损坏", deadline=NOW + timedelta(days=1)), now=NOW
    )
    ledger_problems.add(
        ready, make_problem(description="排水沟堵塞", deadline=NOW + timedelta(days=1)), now=NOW
    )
    ledger_problems.rectify(
        ready, problem_id=fixed, by="林秀英", note="已更换", now=NOW + timedelta(hours=3)
    )
    ledger_problems.verify(ready, problem_id=fixed, by="张伟", now=NOW + timedelta(hours=6))
    week = Period.of("week", NOW.date())
    result = delivery.export(ready, period=week, exports_dir=tmp_path, now=NOW + timedelta(days=4))
    wb = openpyxl.load_workbook(result.path)
    rates = list(wb["整改率"].iter_rows(min_row=3, values_only=True))
    assert rates[0][:5] == ("lizhong 农贸市场", "鲤中", 2, 1, 0.5)
    late = [r for r in wb["逾期未整改"].iter_rows(min_row=3, values_only=True) if r[0] is not None]
    assert [(r[4], r[7], r[9]) for r in late] == [("排水沟堵塞", "未整改", 3)]
    assert late[0][2] == "aquatic"  # the area's name (this schedule gives none: its id)


def test_the_overdue_list_reads_each_time_zone_once_and_keeps_market_then_deadline_order(
    engine: sa.Engine,
) -> None:
    from marketcare.domain.periods import Period
    from marketcare.reports.figures import Report, late_problems

    markets = "".join(
        make_market_yaml(market, timezone=zone)
        for market, zone in (
            ("aaa", "Europe/Berlin"),
            ("mmm", "Asia/Shanghai"),
            ("zzz", "Europe/Berlin"),
        )
    )
    ledger_materialise.materialise(
        engine, make_schedule(markets), now=NOW, horizon=timedelta(days=1)
    )
    for market, description, deadline in (
        ("zzz", "z 灯具损坏", NOW + timedelta(days=1)),
        ("aaa", "a 后到期", NOW + timedelta(days=2)),
        ("mmm", "m 排水沟堵塞", NOW + timedelta(days=1)),
        ("aaa", "a 先到期", NOW + timedelta(days=1)),
    ):
        ledger_problems.add(
            engine,
            make_problem(market_id=market, description=description, deadline=deadline),
            now=NOW,
        )
    with read(engine) as conn:
        week = Report(conn, Period.of("week", NOW.date()), as_of=NOW + timedelta(days=4))
        late = late_problems(week)
    assert [(p.market_id, p.description) for p in late] == [
        ("aaa", "a 先到期"),
        ("aaa", "a 后到期"),
        ("mmm", "m 排水沟堵塞"),
        ("zzz", "z 灯具损坏"),
    ]
    # each deadline in its market's zone: 02:00 UTC is 03:00 in Berlin, 10:00 in Shanghai
    assert [p.deadline.hour for p in late] == [3, 3, 10, 3]


def test_a_reinspection_is_the_offices_work_and_a_failed_one_counts_against_the_rectification(
    ready: sa.Engine, tmp_path: Path
) -> None:
    import openpyxl

    from marketcare.domain.periods import Period
    from marketcare.reports import delivery

    passed, _ = ledger_problems.add(ready, make_problem(description="灯具损坏"), now=NOW)
    failed, _ = ledger_problems.add(ready, make_problem(description="排水沟堵塞"), now=NOW)
    for pid in (passed, failed):
        ledger_problems.rectify(ready, problem_id=pid, by="林秀英", note="已修", now=NOW)
    later = NOW + timedelta(hours=5)
    ledger_problems.verify(ready, problem_id=passed, by="区市场监管 张伟", now=later)
    ledger_problems.reopen(ready, problem_id=failed, by="区市场监管 张伟", note="仍堵", now=later)
    week = Period.of("week", NOW.date())
    result = delivery.export(ready, period=week, exports_dir=tmp_path, now=later)
    wb = openpyxl.load_workbook(result.path)
    # the market's compliance knows nothing of them
    summary = [r for r in wb["汇总"].iter_rows(min_row=5, values_only=True) if r[2]]
    assert not any(r[2] == "复查" for r in summary)
    # the rectification figures: two re-inspections, one failed
    (row, _total) = [r for r in wb["整改率"].iter_rows(min_row=3, values_only=True) if r[0]][:2]
    assert row[5:8] == (2, 1, 0)
    # listed on the market's sheet: kind translated, task named, the officer as 完成人
    sheet = wb["lizhong 农贸市场"]
    header = [c.value for c in sheet[2]]
    listed = [
        dict(zip(header, r, strict=False))
        for r in sheet.iter_rows(min_row=3, values_only=True)
        if r[4] == "复查"
    ]
    assert sorted(r["任务"] for r in listed) == [
        f"复查：第 {passed} 号问题（第 1 次）",
        f"复查：第 {failed} 号问题（第 1 次）",
    ]
    assert {r["完成人"] for r in listed} == {"区市场监管 张伟"}
    assert {r["备注"] for r in listed} == {"通过", "未通过：仍堵"}
    assert result.headline["rectification"]["reinspection_failed"] == 1


def test_reinspections_closed_by_an_older_release_get_their_completion_on_upgrade(
    ready: sa.Engine,
) -> None:
    """Migration i13_reinspection_completions: the officer and the result of a
    re-inspection closed before completions were recorded for it, from its audit event."""
    from alembic import command

    from marketcare.ledger.db import alembic_config
    from marketcare.ledger.models import Completion

    passed, _ = ledger_problems.add(ready, make_problem(description="灯具损坏"), now=NOW)
    failed, _ = ledger_problems.add(ready, make_problem(description="排水沟堵塞"), now=NOW)
    obs = {}
    for pid in (passed, failed):
        obs[pid] = ledger_problems.rectify(ready, problem_id=pid, by="林秀英", note="已修", now=NOW)
    later = NOW + timedelta(hours=5)
    ledger_problems.verify(ready, problem_id=passed, by="张伟", now=later)
    ledger_problems.reopen(ready, problem_id=failed, by="李娜", note="仍堵", now=later)
    with ready.begin() as conn, unguarded(conn):  # as an older release left them
        conn.execute(sa.delete(Completion).where(Completion.token.like("reinspection:%")))
    config = alembic_config(ready)
    command.downgrade(config, "i13_reinspection_completions-1")  # to the revision before this one
    command.upgrade(config, "head")
    with read(ready) as conn:
        got = {
            r.obligation_id: (r.by, r.items, r.outcome, r.at)
            for r in conn.execute(sa.select(Completion)).all()
        }
    assert got == {
        obs[passed]: ("张伟", {"passed": True}, "done", later),
        obs[failed]: ("李娜", {"passed": False}, "done", later),
    }
    command.upgrade(config, "head")  # nothing twice


def test_a_date_at_the_ends_of_the_calendar_is_told_out_of_range_not_raised() -> None:
    """Was: the end of 9999-12-31 west of UTC (a deadline) and the first hours of year 1
    east of it overflowed: a traceback in the spreadsheet import and the command line."""
    from zoneinfo import ZoneInfo

    west, east = ZoneInfo("America/New_York"), ZoneInfo("Asia/Shanghai")
    for value, zone, end_of_day in (
        ("9999-12-31", west, True),
        (date.max, west, True),
        ("0001-01-01", east, False),
    ):
        when, error = ledger_problems.parse_when(value, zone, end_of_day=end_of_day, default=None)
        assert when is None and error is not None and "out of range" in error, value
