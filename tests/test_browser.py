"""The main journeys in a real Chromium: a manager on a 360-px phone, the office on a
desktop. Every page visited is kept as a full-page screenshot at both widths
(tests/artifacts/screenshots), and no page scrolls sideways on a phone."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import openpyxl
import pytest
import sqlalchemy as sa

from marketcare.domain.periods import Period
from marketcare.i18n import translator
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger.models import ProblemRow
from marketcare.reports import delivery
from tests.support.browser import browser, context, expect, screenshot, scroll_width, sign_in
from tests.support.web import ALL_PASS, Site

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["browser"]  # the fixture, used by name

zh = translator("zh_CN")
pytestmark = pytest.mark.heavy(25)


RED = "rgb(180, 35, 24)"  # --bad in app.css


def state_of(site: Site, pid: int) -> str:
    with site.engine.connect() as conn:
        return str(
            conn.execute(sa.select(ProblemRow.state).where(ProblemRow.id == pid)).scalar_one()
        )


def make_problem(site: Site, description: str) -> int:
    now = site.clock.now()
    pid, _ = ledger_problems.add(
        site.engine,
        ledger_problems.NewProblem(
            market_id="lizhong",
            category="sanitation",
            description=description,
            found_by="office",
            found_at=now - timedelta(hours=1),
            deadline=now + timedelta(days=2),
            area_id="aquatic",
        ),
        now=now,
    )
    return pid


def open_checklist(page: Page, obligation_id: int) -> None:
    """From the board, open the obligation's own page (its record and checklist)."""
    link = page.locator(f"li.task#ob-{obligation_id} a[href='/o/{obligation_id}']").first
    link.evaluate("a => a.closest('details') && (a.closest('details').open = true)")
    link.tap()
    page.wait_for_url(f"**/o/{obligation_id}")


# ---------------------------------------------------------------- a manager on a phone


def test_a_manager_ticks_a_disinfection_with_an_in_range_reading_on_a_phone(
    site: Site, browser: Browser
) -> None:
    aquatic = site.obligation("lizhong", "disinfect", "aquatic")
    with context(browser, phone=True) as ctx:
        page = ctx.new_page()
        page.goto(f"{site.base}/")
        page.wait_for_url("**/login**")
        screenshot(page, "login")
        sign_in(page, site.base, "mgr_a")
        page.wait_for_url("**/m/lizhong")
        screenshot(page, "board")

        open_checklist(page, aquatic)
        screenshot(page, "checklist")
        page.locator("label.check", has_text="已冲洗").tap()
        page.fill("#reading_chlorine", "1000")
        expect(page.locator("#reading_chlorine")).not_to_have_class(re.compile("out-of-range"))
        expect(page.locator(".range")).to_contain_text("900–1200 mg/L")
        page.locator("form.checklist button.primary").tap()

        result = page.locator("#result")
        expect(result).to_contain_text(zh.tr("Recorded, on time."))
        expect(result).to_have_class(re.compile(r"\bok\b"))
        screenshot(page, "checklist-recorded")


def test_an_out_of_range_reading_is_flagged_red_and_recorded_as_failed_once_confirmed(
    site: Site, browser: Browser
) -> None:
    veg = site.obligation("lizhong", "disinfect", "veg")
    with context(browser, phone=True) as ctx:
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_a")
        open_checklist(page, veg)
        page.locator("label.check", has_text="已冲洗").tap()
        reading = page.locator("#reading_chlorine")
        reading.fill("1500")

        # flagged while typing (progressive enhancement) ...
        expect(reading).to_have_class(re.compile("out-of-range"))
        expect(reading).to_have_css("border-top-color", RED)
        screenshot(page, "checklist-out-of-range")
        page.locator("form.checklist button.primary").tap()

        # ... asked about before anything is recorded ...
        confirm = page.locator(".confirm")
        expect(confirm).to_contain_text("400–700 mg/L")
        screenshot(page, "checklist-confirm")
        confirm.locator("button.danger").tap()

        # ... and recorded as failed, in red, with the range
        result = page.locator("#result")
        expect(result).to_contain_text(
            zh.tr("Recorded as FAILED: redo the work and record it again.")
        )
        expect(result).to_contain_text("400–700 mg/L")
        expect(result).to_have_css("color", RED)
        page.reload()
        expect(page.locator("li.card .field-error").first).to_contain_text("1500")
        screenshot(page, "checklist-failed")


def test_a_manager_reports_a_problem_with_the_form(site: Site, browser: Browser) -> None:
    with context(browser, phone=True) as ctx:
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_a")
        page.goto(f"{site.base}/m/lizhong/problems")
        page.select_option("select[name=category]", "repair")
        page.select_option("select[name=area]", "veg")
        page.fill("textarea[name=description]", "蔬菜区3号摊位水龙头漏水")
        page.fill("input[name=deadline]", "2026-11-30")
        screenshot(page, "problems-form")
        page.locator("form[action^='/m/lizhong/problems'] button[type=submit]").tap()

        listed = page.locator("ul.problems a.row", has_text="水龙头漏水")
        expect(listed).to_have_count(1)
        screenshot(page, "problems")
        listed.tap()
        page.wait_for_url(re.compile(r"/p/\d+$"))
        expect(page.locator("main")).to_contain_text("蔬菜区3号摊位水龙头漏水")
        screenshot(page, "problem")


# ---------------------------------------------------------------- the office on a desktop


def test_the_office_verifies_a_problem_after_the_manager_rectifies_it(
    site: Site, browser: Browser
) -> None:
    pid = make_problem(site, "水产区排水沟堵塞")
    with context(browser, phone=False) as office_ctx, context(browser, phone=True) as mgr_ctx:
        office = office_ctx.new_page()
        sign_in(office, site.base, "office")
        office.wait_for_url("**/office")
        screenshot(office, "office")
        office.locator("table.dash-table a[href='/m/lizhong/problems']").click()
        office.wait_for_url("**/m/lizhong/problems")
        office.locator(f"a.row[href='/p/{pid}']").click()
        office.wait_for_url(f"**/p/{pid}")
        expect(office.locator(f"form[action='/p/{pid}/verify']")).to_have_count(0)
        screenshot(office, "problem-open")

        manager = mgr_ctx.new_page()
        sign_in(manager, site.base, "mgr_a")
        manager.goto(f"{site.base}/p/{pid}")
        manager.fill("form[action$='/rectify'] textarea[name=note]", "已疏通并冲洗")
        manager.locator("form[action$='/rectify'] button[type=submit]").tap()
        manager.wait_for_url(f"**/p/{pid}")
        expect(manager.locator(".badge.rectified")).to_be_visible()
        screenshot(manager, "problem-rectified")
        assert state_of(site, pid) == "rectified"

        office.reload()
        verify = office.locator(f"form[action='/p/{pid}/verify']")
        expect(verify).to_be_visible()
        verify.locator("[name=note]").fill("复查合格")
        verify.locator("button[type=submit]").click()
        office.wait_for_url(re.compile(rf"/p/{pid}(\?.*)?$"))
        expect(office.locator(".badge.verified")).to_be_visible()
        expect(office.locator(f"form[action='/p/{pid}/reopen']")).to_have_count(0)
        screenshot(office, "problem-verified")
    assert state_of(site, pid) == "verified"


def test_the_office_downloads_the_weekly_export(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    with context(browser, phone=False) as ctx:
        page = ctx.new_page()
        sign_in(page, site.base, "office")
        page.goto(f"{site.base}/exports")
        page.select_option("select[name=period]", "week")
        page.fill("input[name=date]", "2026-11-23")
        page.select_option("select[name=market]", "all")
        screenshot(page, "exports")
        with page.expect_download() as info:
            page.locator("form.export-form button[type=submit]").click()
        download = info.value
        assert download.suggested_filename == "marketcare_week_2026-W48.xlsx"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
    book = openpyxl.load_workbook(saved)
    assert book.sheetnames
    assert saved.stat().st_size > 1000


# ---------------------------------------------------------------- every page, both widths


def pages_by_user(site: Site) -> dict[str, list[tuple[str, str]]]:
    """Every page of the app (name, path), under the user who would open it."""
    problem = make_problem(site, "公共通道地面积水，需要及时清理以防滑倒")
    aquatic = site.obligation("lizhong", "disinfect", "aquatic")
    inspection = inspection_ledger.record(
        site.engine,
        site.schedule.inspection_templates[0],
        inspection_ledger.Submission(
            market_id="lizhong", by="office 用户", outcomes={**ALL_PASS, "damage": "fail"}
        ),
        now=site.clock.now(),
    ).inspection_id
    return {
        "": [("login", "/login")],
        "mgr_a": [
            ("board", "/m/lizhong"),
            ("checklist", f"/o/{aquatic}"),
            ("history", "/m/lizhong/history"),
            ("problems", "/m/lizhong/problems"),
            ("market-inspections", "/m/lizhong/inspections"),
            ("account", "/account"),
        ],
        "office": [
            ("office", "/office"),
            ("problem", f"/p/{problem}"),
            ("exports", "/exports"),
            ("outbox", "/office/outbox"),
            ("inspect", "/inspect"),
            ("inspect-form", "/inspect/lizhong"),
            ("inspection", f"/i/{inspection}"),
            ("ranking", "/office/ranking"),
        ],
        "operator": [("users", "/admin/users")],
    }


def queue_a_report_email(site: Site, exports: Path) -> None:
    """So the outbox has a row to show (a long address and file name: the widest case)."""
    now = site.clock.now()
    result = delivery.export(
        site.engine, period=Period.of("week", now.date()), exports_dir=exports, now=now
    )
    delivery.enqueue(
        site.engine,
        result.report_id,
        ["district.sanitation.office@example.gov.cn"],
        now=now,
        sender="marketcare@example.org",
    )


def test_no_page_scrolls_sideways_on_a_phone_and_each_is_kept_at_both_widths(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    queue_a_report_email(site, tmp_path)
    ledger_sweep.sweep_all(site.engine, now=site.clock.now())
    too_wide: dict[str, int] = {}
    seen: list[str] = []
    by_user = pages_by_user(site)
    for phone in (True, False):
        # one profile and one tab per width, the users in turn, each signing in afresh
        # (the previous one's cookies cleared): a profile of its own for each user and
        # width cost Chromium a new renderer, its fonts and the service worker's
        # install eight times instead of twice, a quarter of this test's CPU
        with context(browser, phone=phone) as ctx:
            page = ctx.new_page()
            for user, pages in by_user.items():
                ctx.clear_cookies()
                if user:
                    sign_in(page, site.base, user)
                for name, path in pages:
                    response = page.goto(f"{site.base}{path}")
                    assert response is not None and response.status == 200, (name, path)
                    screenshot(page, name)
                    seen.append(f"{name}-{360 if phone else 1280}")
                    if phone:
                        width = scroll_width(page)
                        if width > 360 + 1:
                            too_wide[name] = width
    assert not too_wide, f"pages wider than a 360-px phone: {too_wide}"
    assert len(seen) == 2 * 16
