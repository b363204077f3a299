"""The workbook on paper: what an office prints is legible, and a market is never split.

The sample district's week is written, converted to PDF by LibreOffice once for the
module (as an office prints it), and the PDF read back with pdfplumber: the size of every
character printed, where each sheet's pages are (the footer names the sheet) and on which
page each of the summary's rows lands.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from marketcare.domain.periods import Period
from marketcare.domain.schedules import load_paths
from marketcare.ledger import demo
from marketcare.ledger.db import make_engine, migrate, read
from marketcare.reports.figures import Report
from marketcare.reports.workbook import write_workbook

from .conftest import database_url
from .support import pg

SAMPLE = Path(__file__).resolve().parents[1] / "schedules"
NOW = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)  # Sunday 19:00 in Quanzhou
WEEK = Period.of("week", date(2026, 12, 6))
#: the smallest text an office may have to read on paper
SMALLEST_PT = 9.0
KINDS = ("垃圾日产日清", "每日休市清洗消毒", "深度清洁", "灭四害", "设施巡查", "文明劝导员值守")


@dataclass(frozen=True)
class Printed:
    pages: list[tuple[str, list[str], float, float, float]]  # sheet, lines, smallest, x0, x1
    width: float
    markets: list[str]


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Printed]:
    import pdfplumber  # only this fixture reads a PDF: no other worker need import it

    folder = tmp_path_factory.mktemp("printed")
    engine = make_engine(database_url(folder, migrated=True))
    migrate(engine)
    schedule = load_paths([SAMPLE], default_timezone="Asia/Shanghai")
    demo.fill(engine, schedule, days=8, seed=5, now=NOW, horizon=timedelta(days=1))
    book = folder / "week.xlsx"
    with read(engine) as conn:
        report = Report(conn, WEEK, as_of=NOW)
        markets = [m.name for m in report.markets]
        write_workbook(report, book, generated_at=NOW)
    engine.dispose()
    pg.release(folder)
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    # `make test` installs it; without it this test fails rather than skips
    assert exe is not None, "LibreOffice is not installed (apt: libreoffice-calc-nogui)"
    done = subprocess.run(
        [
            exe,
            f"-env:UserInstallation={(folder / 'lo-profile').as_uri()}",
            "--headless",
            "--norestore",
            "--convert-to",
            "pdf",
            "--outdir",
            str(folder),
            str(book),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pages = []
    with pdfplumber.open(folder / "week.pdf") as pdf:
        width = float(pdf.pages[0].width)
        for page in pdf.pages:
            lines = (page.extract_text() or "").splitlines()
            sheet = lines[-1].rsplit(" ", 1)[-1]  # the footer: period, page, sheet name
            chars = page.chars
            pages.append(
                (
                    sheet,
                    lines,
                    min(float(c["size"]) for c in chars),
                    min(float(c["x0"]) for c in chars),
                    max(float(c["x1"]) for c in chars),
                )
            )
    yield Printed(pages, width, markets)


def test_no_text_prints_smaller_than_9_pt_on_any_sheet(printed: Printed) -> None:
    sheets = {sheet for sheet, *_rest in printed.pages}
    assert {"汇总", "逾期未完成", "整改率", "逾期未整改", *printed.markets} <= sheets
    for sheet, lines, smallest, _x0, _x1 in printed.pages:
        assert smallest >= SMALLEST_PT, (sheet, smallest, lines[:2])


def test_every_sheet_fits_the_width_of_the_page(printed: Printed) -> None:
    """No column of a sheet spills onto a page of its own: every page starts with its
    sheet's title rows and nothing is drawn outside the paper."""
    for sheet, lines, _smallest, x0, x1 in printed.pages:
        assert x0 >= 0 and x1 <= printed.width, (sheet, x0, x1)
        if sheet in printed.markets:
            assert lines[0].startswith(sheet), lines[:2]  # the repeated title row


def test_a_markets_block_of_the_summary_is_never_split_across_pages(printed: Printed) -> None:
    summary = [(n, lines) for n, (sheet, lines, *_r) in enumerate(printed.pages) if sheet == "汇总"]
    assert len(summary) >= 2, "six markets need more than one page: the test would prove nothing"
    pages_of: dict[str, set[int]] = {m: set() for m in printed.markets}
    rows_of: dict[str, int] = dict.fromkeys(printed.markets, 0)
    for n, lines in summary:
        for line in lines:
            for market in printed.markets:
                if line.startswith(market) and any(k in line for k in (*KINDS, "小计")):
                    pages_of[market].add(n)
                    rows_of[market] += 1
    for market in printed.markets:
        assert len(pages_of[market]) == 1, (market, pages_of[market])
        assert rows_of[market] >= 4  # its kinds and its subtotal
    # and the pages are used: no market moved on while it would have fitted
    assert len({n for pages in pages_of.values() for n in pages}) < len(printed.markets)
