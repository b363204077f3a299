"""The supervision loop: problems raised, rectified, re-inspected; the rectification rate."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from openpyxl import Workbook

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

from .conftest import make_schedule, utc

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
    assert skipped.imported == 1 and len(skipped.skipped) == 2


def test_a_file_that_is_not_a_workbook_is_refused_clearly(ready: sa.Engine, tmp_path: Path) -> None:
    bogus = tmp_path / "x.xlsx"
    bogus.write_text("not a workbook")
    with pytest.raises(MarketcareError, match="not an Excel .xlsx workbook"):
        ledger_problems.import_xlsx(ready, bogus, now=NOW)


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
    assert row.deadline == later + timedelta(days=1) and row.obligation_id is not None


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
