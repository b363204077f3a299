"""The supervision loop end to end in a real Chromium, and the weekly bulletin's files.

An officer inspects a market on a 360-px phone and fails three items with photos; three
problems appear with their deadlines; the manager rectifies two; the next inspection
passes one and fails one; the scores, the rectification rate and the bulletin's overdue
list are then what a person computes by hand (written out below, not recomputed).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import openpyxl
import pytest
import sqlalchemy as sa

from marketcare.domain.periods import Period
from marketcare.domain.schedules import load_texts
from marketcare.i18n import translator
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger import problems as problem_ledger
from marketcare.ledger.db import make_engine, migrate, read
from marketcare.ledger.materialise import materialise
from marketcare.ledger.models import InspectionResult, ProblemRow, ReportRecord
from marketcare.reports import bulletin
from tests.support.browser import browser, context, expect, screenshot, scroll_width, sign_in
from tests.support.web import ALL_PASS, SCHEDULE, START, Site, running_site

from .conftest import database_url
from .test_exports import soffice

pytestmark = pytest.mark.heavy(15)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["browser"]  # the fixture, used by name

zh = translator("zh_CN")
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200


def answer(page: Page, item: str, outcome: str, *, photo: Path | None = None) -> None:
    block = page.locator(f".item[data-item='{item}']")
    block.locator(f"input.{outcome} + span").tap()
    if photo is not None:
        block.locator(f"input[name='photo.{item}']").set_input_files(str(photo))


def problems_by_item(site: Site) -> dict[str, list[ProblemRow]]:
    with site.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ProblemRow, InspectionResult.item_id)
            .join(InspectionResult, InspectionResult.id == ProblemRow.inspection_result_id)
            .order_by(ProblemRow.id)
        ).all()
    out: dict[str, list[ProblemRow]] = {}
    for r in rows:
        out.setdefault(r.item_id, []).append(r)
    return out


def test_the_whole_supervision_loop_on_a_phone(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    photo = tmp_path / "drain.jpg"
    photo.write_bytes(JPEG)
    assert site.clock.now() == START  # Monday 2026-11-23 19:00 in Asia/Shanghai
    found_at = START
    with context(browser, phone=True) as officer_ctx, context(browser, phone=True) as mgr_ctx:
        officer = officer_ctx.new_page()
        sign_in(officer, site.base, "office")
        officer.goto(f"{site.base}/inspect")
        screenshot(officer, "inspect-markets")
        officer.locator("a.row[data-market='lizhong']").tap()
        officer.wait_for_url("**/inspect/lizhong")
        answer(officer, "floors", "fail", photo=photo)
        answer(officer, "bins", "fail", photo=photo)
        answer(officer, "garbage", "pass")
        answer(officer, "damage", "fail", photo=photo)
        officer.locator(".item[data-item='floors'] input[name='note.floors']").fill("水产区积水")
        assert scroll_width(officer) <= 360
        screenshot(officer, "inspect-form")
        officer.locator("form.sheet button[type=submit]").tap()
        officer.wait_for_url(re.compile(r"/i/\d+$"))
        expect(officer.locator(".score")).to_have_text("60.0")  # 100 − 20 − 10 − 10
        expect(officer.locator("tr[data-outcome='fail'] a[data-problem]")).to_have_count(3)
        screenshot(officer, "inspection")

        raised = problems_by_item(site)
        assert {k: len(v) for k, v in raised.items()} == {"floors": 1, "bins": 1, "damage": 1}
        floors, bins, damage = raised["floors"][0], raised["bins"][0], raised["damage"][0]
        assert floors.deadline == found_at + timedelta(days=1)  # the sheet's 24 h
        assert bins.deadline == found_at + timedelta(days=1)
        assert damage.deadline == found_at + timedelta(days=3)  # the repair section's 3 d
        assert (floors.category, damage.category) == ("sanitation", "repair")
        assert floors.description == "环境卫生：地面干净（水产区积水）"
        assert len(floors.evidence["items"]) == 1

        manager = mgr_ctx.new_page()
        sign_in(manager, site.base, "mgr_a")
        site.clock.advance(hours=1)  # 20:00: the manager fixes two of them
        for pid in (floors.id, bins.id):
            manager.goto(f"{site.base}/p/{pid}")
            manager.fill("form[action$='/rectify'] textarea[name=note]", "已整改")
            # (the photo of the problem is still loading and shifts the page: submit the form)
            manager.locator("form[action$='/rectify']").evaluate("f => f.requestSubmit()")
            expect(manager.locator(".badge.rectified")).to_be_visible()

        site.clock.advance(hours=14)  # Tuesday 10:00, before the 24-hour deadlines
        officer.goto(f"{site.base}/inspect/lizhong")
        answer(officer, "floors", "pass")
        answer(officer, "bins", "fail")  # needs its photo: refused, nothing recorded
        answer(officer, "garbage", "pass")
        answer(officer, "damage", "pass")
        officer.locator("form.sheet button[type=submit]").tap()
        photo_box = officer.locator("input[name='photo.bins']")
        assert photo_box.evaluate("e => e.validationMessage")  # the phone says why at once
        assert len(inspection_ledger.listing(site.engine, markets=["lizhong"])) == 1
        answer(officer, "bins", "fail", photo=photo)
        officer.locator("form.sheet button[type=submit]").tap()
        officer.wait_for_url(re.compile(r"/i/\d+$"))
        expect(officer.locator(".score")).to_have_text("90.0")

        manager.goto(f"{site.base}/m/lizhong/inspections")
        expect(manager.locator("a[data-inspection]")).to_have_count(2)
        expect(manager.locator("svg.chart")).to_be_visible()
        screenshot(manager, "market-inspections")

    states = {k: v[0].state for k, v in problems_by_item(site).items()}
    assert states == {"floors": "verified", "bins": "open", "damage": "open"}
    assert sum(len(v) for v in problems_by_item(site).values()) == 3  # no second problem

    site.clock.advance(days=3, hours=9)  # Friday 19:00: the week's bulletin, by hand:
    with site.api("office") as api:
        ranking = api.get("/api/v1/ranking", params={"date": "2026-11-23"}).json()
        scores = api.get("/api/v1/markets/lizhong/scores").json()["figures"]
        pdf = api.get("/api/v1/bulletins/week/2026-11-23")
        xlsx = api.get("/api/v1/bulletins/week/2026-11-23", params={"format": "xlsx"})
    (lizhong,) = [m for m in ranking["markets"] if m["market"] == "lizhong"]
    assert (lizhong["inspections"], lizhong["inspection_score"]) == (2, 75.0)  # (60 + 90) / 2
    assert scores["inspections"] == 2
    # floors, bins and damage fall due this week; only floors was verified
    assert (scores["rectified"], scores["rectification_due"]) == (1, 3)
    assert scores["rectification_rate"] == 0.3333
    # bins: deadline Tue 19:00, reopened; damage: deadline Thu 19:00, never rectified
    assert scores["past_deadline"] == 2
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    overdue = list(book.worksheets[2].iter_rows(min_row=5, values_only=True))
    assert [(r[1], r[3], r[6]) for r in overdue] == [
        ("鲤中农贸市场", "环境卫生：垃圾桶加盖", 3),
        ("鲤中农贸市场", "设施：设施完好", 1),
    ]


def test_an_inspection_made_without_a_network_is_kept_on_the_phone_and_sent_later(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    photo = tmp_path / "bin.jpg"
    photo.write_bytes(JPEG)
    too_large = tmp_path / "bin.heic"  # a HEIC is not shrunk on the phone
    too_large.write_bytes(b"\x00" * (site.settings.upload_max_bytes + 1))
    broken = tmp_path / "bin-broken.jpg"  # not a photo: the server refuses it
    broken.write_bytes(b"not a photo at all")
    with context(browser, phone=True) as ctx:
        officer = ctx.new_page()
        sign_in(officer, site.base, "office")
        officer.goto(f"{site.base}/inspect")
        officer.evaluate("navigator.serviceWorker.ready.then(() => true)")
        officer.reload()
        officer.wait_for_function("navigator.serviceWorker.controller !== null")
        officer.goto(f"{site.base}/inspect/xinhua")  # opened once with a network: kept
        officer.goto(f"{site.base}/exports")
        ctx.set_offline(True)
        # in the back room: a page never kept is the app's own page, leading to the sheets
        officer.goto(f"{site.base}/office/ranking")
        expect(officer.locator("h1")).to_have_text(zh.tr("No network"))
        officer.locator("a.button[href='/inspect']").tap()
        officer.locator("a.row[data-market='xinhua']").tap()
        officer.wait_for_url("**/inspect/xinhua")
        for item in ("floors", "garbage", "damage"):
            answer(officer, item, "pass")
        answer(officer, "bins", "fail", photo=too_large)
        officer.locator("form.sheet button[type=submit]").tap()
        # a photo over upload_max_bytes is refused at once, on its field, nothing kept
        photo_box = officer.locator("input[name='photo.bins']")
        expect(photo_box).to_have_js_property(
            "validationMessage",
            zh.tr("The photo is larger than {limit} MB; take it again at a lower size.").format(
                limit=10
            ),
        )
        expect(officer.locator("#result")).to_have_count(0)
        photo_box.set_input_files(str(broken))
        officer.locator("form.sheet button[type=submit]").tap()
        expect(officer.locator("#result")).to_be_visible()  # saved on this phone
        assert inspection_ledger.listing(site.engine, markets=["xinhua"]) == []
        ctx.set_offline(False)  # the network is back: the photo is refused, then the sheet
        # refused for its missing photo: the officer reads why, and the sheet comes back
        # as it was filled in, to send again with another photo
        result = officer.locator("#result")
        expect(result).to_contain_text("not a photo", timeout=30_000)
        expect(result).to_have_class(re.compile("error"))
        expect(officer.locator("form.sheet")).to_be_visible()
        expect(officer.locator(".item[data-item='floors'] input.pass")).to_be_checked()
        screenshot(officer, "inspect-refused")
        assert inspection_ledger.listing(site.engine, markets=["xinhua"]) == []
        officer.locator("input[name='photo.bins']").set_input_files(str(photo))
        officer.locator("form.sheet button[type=submit]").tap()
        officer.wait_for_url(re.compile(r"/i/\d+$"), timeout=60_000)
        expect(officer.locator(".score")).to_have_text("90.0")
    (recorded,) = inspection_ledger.listing(site.engine, markets=["xinhua"])
    view = inspection_ledger.one(site.engine, recorded.id)
    (bins,) = [x for x in view.results if x.item_id == "bins"]
    assert bins.evidence and len(bins.evidence["items"]) == 1
    assert view.raised.get(bins.id) is not None


def test_a_manager_sees_only_their_markets_inspections_and_no_ranking(site: Site) -> None:
    other = inspection_ledger.record(
        site.engine,
        site.schedule.inspection_templates[0],
        inspection_ledger.Submission(market_id="xinhua", by="office", outcomes=ALL_PASS),
        now=site.clock.now(),
    )
    with closing(site.client("mgr_a")) as c:
        assert c.get(f"/i/{other.inspection_id}").status_code == 404
        assert c.get("/m/xinhua/inspections").status_code == 404
        assert c.get("/office/ranking").status_code == 403
        assert c.get("/inspect/lizhong").status_code == 403
    with closing(site.client("office")) as c:
        page = c.get("/office")
        assert page.status_code == 200
        assert "svg" in page.text and "/office/ranking" in page.text
        # the site plans a round in the week of the 16th: this week (from the 23rd) has none
        assert 'data-planned="' not in page.text


# ---------------------------------------------------------------- the bulletin's files


@dataclass
class Produced:
    engine: sa.Engine
    exports: Path
    now: datetime
    result: bulletin.BulletinResult

    def again(self) -> bulletin.BulletinResult:
        return bulletin.produce(
            self.engine,
            period=Period.of("week", self.now.date()),
            exports_dir=self.exports,
            now=self.now,
        )


#: a stall's name with characters outside GB 2312 (堃) and outside the BMP (𬌗)
RARE = "（堃记水产，𬌗字号）"


@pytest.fixture(scope="module")
def long_bulletin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Produced]:
    """A week with 40 problems past deadline, long enough to run over several pages."""
    tmp = tmp_path_factory.mktemp("bulletin")
    engine = make_engine(database_url(tmp, migrated=True))
    migrate(engine)
    schedule = load_texts({"site.yaml": SCHEDULE}, default_timezone="Asia/Shanghai")
    now = datetime(2026, 11, 27, 11, tzinfo=UTC)
    materialise(engine, schedule, now=now, horizon=timedelta(days=1), start=now - timedelta(days=7))
    for i in range(40):
        problem_ledger.add(
            engine,
            problem_ledger.NewProblem(
                market_id="lizhong" if i % 2 else "xinhua",
                category="sanitation",
                description=f"第{i + 1:02d}号问题：水产区第{i}号摊位排水沟堵塞，污水外溢，地面湿滑，需要疏通并冲洗消毒"
                + (RARE if i == 7 else ""),
                found_by="督查员",
                found_at=now - timedelta(days=4),
                deadline=now - timedelta(days=3, hours=i % 3),
            ),
            now=now - timedelta(days=4),
        )
    produced = Produced(
        engine, tmp / "exports", now, bulletin.BulletinResult(0, 0, tmp, tmp, 0, False, {})
    )
    produced.result = produced.again()
    yield produced
    engine.dispose()


def pdf_pages(path: Path) -> list[str]:
    exe = shutil.which("pdftotext")
    assert exe is not None, "poppler-utils is not installed (make system-deps)"
    text = subprocess.run(
        [exe, "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    return text.split("\f")


def test_the_bulletin_pdf_prints_in_chinese_with_no_row_split_across_pages(
    long_bulletin: Produced, tmp_path: Path
) -> None:
    pages = [p for p in pdf_pages(long_bulletin.result.pdf) if p.strip()]
    assert len(pages) >= 2
    assert "周双通报" in pages[0] and "市场排名" in pages[0] and "街道排名" in pages[0]
    fonts = subprocess.run(
        ["pdffonts", str(long_bulletin.result.pdf)], capture_output=True, text=True, check=True
    ).stdout
    # the CJK face is embedded, cut to this page's text (glyphs, not boxes), and no other
    # font was needed: the rare characters are in the cut too
    (embedded,) = fonts.splitlines()[2:]
    assert "Noto-Sans-CJK-SC-Subset" in embedded, fonts
    assert RARE in "".join(pages)
    for i in range(1, 41):
        label = f"第{i:02d}号问题"
        holding = [n for n, page in enumerate(pages) if label in page]
        assert len(holding) == 1, label
        page = pages[holding[0]]
        # the row's last words and its deadline are on the same page as its start
        tail = page[page.index(label) :]
        assert "冲洗消毒" in tail and re.search(r"2026-11-2\d \d\d:\d\d", tail), label
    for page in pages[1:]:
        if "号问题" in page:
            assert "整改期限" in page  # the header row repeats on every page
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "50",
            "-png",
            "-f",
            "1",
            "-l",
            "1",
            str(long_bulletin.result.pdf),
            str(tmp_path / "p"),
        ],
        check=True,
    )
    (image,) = tmp_path.glob("p*.png")
    assert image.stat().st_size > 10_000  # drawn glyphs, not an empty page


def test_the_bulletins_own_user_agent_sheet_lays_the_page_out_as_weasyprints_whole_one(
    long_bulletin: Produced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weasyprint import HTML

    # every part of the template: the markets between the two lists' ends left out, the
    # overdue list cut short, its header repeated on the next pages
    monkeypatch.setattr(bulletin, "PDF_ALL_MARKETS", 1)
    monkeypatch.setattr(bulletin, "PDF_ENDS", 1)
    monkeypatch.setattr(bulletin, "PDF_OVERDUE", 30)
    week = Period.of("week", long_bulletin.now.date())
    with read(long_bulletin.engine) as conn:
        b = bulletin.gather(conn, week, as_of=long_bulletin.now)
    page = bulletin.with_cjk_subset(bulletin.html(b, language="zh_CN"), tmp_path)
    images = {}
    for name, html_page in (("whole", HTML), ("own", bulletin.page_class())):
        pdf = tmp_path / f"{name}.pdf"
        html_page(string=page, base_url=str(bulletin.HERE)).write_pdf(str(pdf))
        subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / name)], check=True)
        images[name] = [p.read_bytes() for p in sorted(tmp_path.glob(f"{name}-*.png"))]
    assert len(images["own"]) >= 2
    assert images["own"] == images["whole"]  # the same pixels on every page


def test_the_bulletin_workbook_opens_in_libreoffice(
    long_bulletin: Produced, tmp_path: Path
) -> None:
    done = soffice(
        tmp_path,
        long_bulletin.result.xlsx,
        "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,true,false,false,-1",
    )
    assert done.returncode == 0, done.stderr
    text = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "lo-out").glob("*.csv"))
    assert "市场排名" in text and "逾期未整改" in text and "第40号问题" in text


def test_the_same_bulletin_again_reuses_its_files_and_new_data_makes_a_revision(
    long_bulletin: Produced,
) -> None:
    first = long_bulletin.result
    assert (first.revision, first.created) == (1, True)
    assert first.xlsx.name == "marketcare_bulletin_week_2026-W48.xlsx"
    assert first.pdf.name == "marketcare_bulletin_week_2026-W48.pdf"
    same = long_bulletin.again()
    assert (same.xlsx_id, same.pdf_id, same.created) == (first.xlsx_id, first.pdf_id, False)
    with read(long_bulletin.engine) as conn:
        pid = conn.execute(sa.select(sa.func.min(ProblemRow.id))).scalar_one()
    problem_ledger.rectify(
        long_bulletin.engine, problem_id=pid, by="王", note="已疏通", now=long_bulletin.now
    )
    problem_ledger.verify(long_bulletin.engine, problem_id=pid, by="督查员", now=long_bulletin.now)
    changed = long_bulletin.again()
    assert (changed.revision, changed.created) == (2, True)
    assert changed.pdf.name == "marketcare_bulletin_week_2026-W48_r2.pdf"
    assert first.pdf.exists() and first.xlsx.exists()  # a record is never overwritten
    with read(long_bulletin.engine) as conn:
        recorded = conn.execute(
            sa.select(ReportRecord.format, ReportRecord.revision, ReportRecord.sha256)
            .where(ReportRecord.kind == "bulletin")
            .order_by(ReportRecord.id)
        ).all()
    assert [(f, r) for f, r, _ in recorded] == [("xlsx", 1), ("pdf", 1), ("xlsx", 2), ("pdf", 2)]


def test_a_scheduled_bulletin_is_emailed_once_with_its_workbook_and_its_pdf(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from marketcare.reports import delivery

    from .support.smtp import SmtpServer
    from .test_delivery import config

    reports = """
reports:
  - id: bulletin
    kind: bulletin
    period: week
    weekday: mon
    at: "08:30"
    recipients: [jianguan@licheng.example.org]
"""
    schedule = load_texts(
        {"site.yaml": SCHEDULE, "reports.yaml": reports}, default_timezone="Asia/Shanghai"
    )
    start = datetime(2026, 11, 23, 1, tzinfo=UTC)  # Monday 09:00: this week's first sight
    materialise(engine, schedule, now=start, horizon=timedelta(days=1))
    inspection_ledger.record(
        engine,
        schedule.inspection_templates[0],
        inspection_ledger.Submission(market_id="lizhong", by="陈", outcomes=ALL_PASS),
        now=start + timedelta(days=1),
    )
    delivery.plan_runs(engine, schedule, now=start)
    monday = datetime(2026, 11, 30, 1, tzinfo=UTC)  # 09:00 in Shanghai, after 08:30
    assert delivery.plan_runs(engine, schedule, now=monday) == 1
    sender = "marketcare@licheng.example.org"
    assert (
        delivery.run_pending(
            engine,
            schedule,
            now=monday,
            exports_dir=tmp_path,
            default_language="zh_CN",
            sender=sender,
        )
        == 1
    )
    smtp = SmtpServer()
    smtp.start()
    try:
        assert delivery.send_due(engine, config(smtp), now=monday).sent == 1
        assert delivery.send_due(engine, config(smtp), now=monday).sent == 0
        (received,) = smtp.received
    finally:
        smtp.stop()
    msg = received.message
    assert msg["Subject"] == "周双通报 2026-W48"
    names = [a.get_filename() for a in msg.iter_attachments()]
    assert names == ["周双通报_2026-W48.xlsx", "周双通报_2026-W48.pdf"]
    pdf = list(msg.iter_attachments())[1]
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content().startswith(b"%PDF-")


def test_managers_see_the_ranking_only_when_the_setting_says_so(tmp_path: Path) -> None:
    with running_site(tmp_path, managers_see_ranking=True) as opened:
        with opened.api("mgr_a") as api:
            assert api.get("/api/v1/ranking").status_code == 200
            assert api.get("/api/v1/markets/xinhua/scores").status_code == 404  # still own only
        with closing(opened.client("mgr_a")) as c:
            assert c.get("/office/ranking").status_code == 200
            assert c.get("/inspect").status_code == 403  # seeing is not inspecting
