"""The manager's phone in a real Chromium (Debian's, through Playwright): the evening round
in few taps without a page load, the offline queue with the phone's time, a sign-in that
expires while checklists wait, the out-of-range confirmation, and every manager and
office page checked by axe-core with tap targets of at least 44×44 CSS px.

One browser and one site for the module; each test works in its own market, so the
tests do not depend on their order. The phone's clock is Playwright's, set to the site's
clock, so the phone's time and the arrival time can be told apart by moving both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from marketcare.i18n import translator
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger.models import Completion, Obligation
from tests.support.browser import browser, context, expect, screenshot, sign_in
from tests.support.field import AREAS, NAMES, QUICK, USERS, evening_schedule
from tests.support.web import Site, running_site

pytestmark = pytest.mark.heavy(50)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route

__all__ = ["browser"]  # the fixture, used by name

zh = translator("zh_CN")
PHOTO = Path(__file__).resolve().parents[1] / "src/marketcare/web/static/icon-512.png"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(
        tmp_path_factory.mktemp("field"),
        schedule_text=evening_schedule(),
        users=USERS,
        names=NAMES,
    ) as s:
        yield s


# ---------------------------------------------------------------- helpers


def set_phone_clock(ctx: BrowserContext, at: datetime) -> None:
    """The phone's clock reads ``at`` (the site's clock), then runs on."""
    ctx.clock.install(time=at)


def controlled_board(page: Page, site: Site, market: str) -> None:
    """Open the board until the service worker controls it (and so keeps a copy)."""
    page.goto(f"{site.base}/m/{market}")
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    page.reload()
    page.wait_for_function("navigator.serviceWorker.controller !== null")
    expect(page.locator(".board")).to_be_visible()


def task(page: Page, oid: int) -> Locator:
    return page.locator(f"li.task#ob-{oid}")


def obligation_id(site: Site, market: str, task_id: str, area: str | None = None) -> int:
    return site.obligation(market, task_id, area)


def completions_of(site: Site, oid: int) -> list[Any]:
    with site.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(Completion).where(Completion.obligation_id == oid).order_by(Completion.id)
            ).all()
        )


def state_of(site: Site, oid: int) -> str:
    with site.engine.connect() as conn:
        return str(
            conn.execute(sa.select(Obligation.state).where(Obligation.id == oid)).scalar_one()
        )


def sent(page: Page, oid: int) -> Locator:
    return task(page, oid).locator(".sent-note")


def send_checklist(page: Page, oid: int, chlorine: str) -> Locator:
    """Open the task's checklist (unless open), tick it, write the chlorine reading and
    send; the task's row."""
    row = task(page, oid)
    if row.locator("details").get_attribute("open") is None:
        row.locator("summary").tap()
    row.locator("label.check").tap()
    row.locator("input[name=reading_chlorine]").fill(chlorine)
    row.locator("button.primary").tap()
    return row


# ---------------------------------------------------------------- one tap per task


def test_the_evening_round_of_ten_tasks_takes_few_taps_and_no_page_load(
    site: Site, browser: Browser
) -> None:
    with context(browser, phone=True) as ctx:
        set_phone_clock(ctx, site.clock.now())
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_a")
        page.wait_for_url("**/m/lizhong")
        loads: list[str] = []
        page.on("load", lambda: loads.append(page.url))
        taps: dict[str, int] = {}

        def tap(target: Locator, why: str) -> None:
            taps[why] = taps.get(why, 0) + 1
            target.tap()

        for tid, *_ in QUICK:
            oid = obligation_id(site, "lizhong", tid)
            tap(task(page, oid).locator("button.tick"), tid)
        screenshot(page, "board-ticked-with-undo")

        for n, (area, _name, _kind) in enumerate(AREAS):
            oid = obligation_id(site, "lizhong", "disinfect", area)
            row = task(page, oid)
            if n == 0:  # the first is opened by hand; then each opens by itself
                tap(row.locator("summary"), area)
            else:
                expect(row.locator("details")).to_have_attribute("open", "")
            form = row.locator("form")
            tap(form.locator("label.check"), area)
            tap(form.locator("input[name=reading_chlorine]"), area)
            page.keyboard.type("1000" if area in ("aquatic", "meat", "poultry") else "500")
            if n == 0:
                screenshot(page, "board-checklist-inline")
            tap(form.locator("button.primary"), area)
            if n < len(AREAS) - 1:
                # the offer on the next row, not the one left on this row by the last submit
                following = obligation_id(site, "lizhong", "disinfect", AREAS[n + 1][0])
                expect(task(page, following).locator(".next-offer")).to_contain_text(
                    zh.tr("Next: {task}").split("{")[0]
                )
        screenshot(page, "board-next-offered")
        expect(page.locator("li.task.sent-ok")).to_have_count(10, timeout=30_000)
        screenshot(page, "board-round-done")

    assert loads == [], f"full page loads after the first: {loads}"
    for tid, *_ in QUICK:
        assert taps[tid] <= 2, (tid, taps[tid])
    for area, *_ in AREAS:
        assert taps[area] <= 4, (area, taps[area])
    assert sum(taps.values()) <= 21  # docs/web.md: 21 taps for the round
    for tid, *_ in QUICK:
        assert [c.outcome for c in completions_of(site, obligation_id(site, "lizhong", tid))] == [
            "done"
        ]
    for area, *_ in AREAS:
        oid = obligation_id(site, "lizhong", "disinfect", area)
        assert [(c.outcome, c.by) for c in completions_of(site, oid)] == [("done", "mgr_a")]


# ---------------------------------------------------------------- offline


def test_offline_ticks_are_kept_then_sent_once_with_both_times_and_a_colleagues_tick_is_reported(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    from axe_playwright_python.sync_playwright import Axe  # its browser test's alone

    too_large = tmp_path / "meat.heic"  # a HEIC is not shrunk on the phone
    too_large.write_bytes(b"\x00" * (site.settings.upload_max_bytes + 1))
    waste = obligation_id(site, "xinhua", "waste")
    aquatic = obligation_id(site, "xinhua", "disinfect", "aquatic")
    meat = obligation_id(site, "xinhua", "disinfect", "meat")
    start = site.clock.now()
    with context(browser, phone=True) as ctx:
        set_phone_clock(ctx, start)
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_b")
        controlled_board(page, site, "xinhua")

        ctx.set_offline(True)
        task(page, waste).locator("button.tick").tap()
        row = send_checklist(page, aquatic, "500")  # under 900–1200
        row.locator(".confirm button", has_text=zh.tr("Record as failed")).tap()
        # kept as FAILED: the row says so and stays open to the redo, without a network
        expect(sent(page, aquatic)).to_contain_text("500 ∉ 900–1200 mg/L")
        expect(row.locator("button.primary")).to_be_enabled()
        row.locator("summary").tap()
        row.locator("input[name=reading_chlorine]").fill("1000")  # the work done again
        row.locator("button.primary").tap()
        expect(sent(page, aquatic)).to_have_text(
            zh.tr("Saved on this phone; it is sent as soon as there is a network.")
        )
        row = task(page, meat)
        if row.locator("details").get_attribute("open") is None:
            row.locator("summary").tap()
        row.locator("label.check").tap()
        row.locator("input[name=reading_chlorine]").fill("950")
        photo_box = row.locator("input[type=file]")
        photo_box.set_input_files(str(too_large))  # refused at once, nothing kept
        row.locator("button.primary").tap()
        expect(photo_box).to_have_js_property(
            "validationMessage",
            zh.tr("The photo is larger than {limit} MB; take it again at a lower size.").format(
                limit=10
            ),
        )
        expect(page.locator("#queue-text")).to_contain_text(
            zh.tr("Waiting to send ({n})").format(n=3)  # the garbage, aquatic twice
        )
        photo_box.set_input_files(str(PHOTO))
        row.locator("button.primary").tap()
        waiting = page.locator("#queue-text")
        expect(waiting).to_contain_text(zh.tr("Waiting to send ({n})").format(n=4))
        expect(page.locator("#queue-list")).to_contain_text(zh.tr("photo waiting"))
        screenshot(page, "board-offline-waiting")
        assert serious(Axe().run(page).response["violations"]) == []  # rows marked waiting

        # the app opened again without a network: the board and the queue are still there
        page.reload()
        expect(page.locator(".board")).to_be_visible()
        expect(waiting).to_contain_text(zh.tr("Waiting to send ({n})").format(n=4))
        expect(page.locator("#offline-note")).to_be_visible()
        assert completions_of(site, aquatic) == []
        screenshot(page, "board-offline-reopened")

        # meanwhile a colleague, online, does the garbage round
        with site.api("mgr_c") as colleague:
            done = colleague.post(
                f"/api/v1/obligations/{waste}/completions", json={"items": ["done"]}
            )
            assert done.status_code == 201, done.text

        # half an hour later the network is back: the queue goes out by itself
        site.clock.advance(minutes=30)
        ctx.clock.fast_forward("30:00")
        ctx.set_offline(False)
        expect(page.locator("#queue-text")).to_have_text("", timeout=30_000)
        expect(sent(page, aquatic)).to_contain_text(zh.tr("Recorded, on time."))
        expect(sent(page, waste)).to_contain_text("王芳")
        expect(page.locator("#queue-list")).to_contain_text("王芳")
        screenshot(page, "board-offline-sent")

        # a network that answers too slowly: the kept copy, which says it is one
        held: list[Route] = []

        def hold(route: Route) -> None:
            held.append(route)

        ctx.route("**/m/xinhua", hold)  # the service worker's fetch of the board
        page.reload()
        expect(page.locator("#offline-note")).to_have_text(
            zh.tr(
                "The network is slow: this is the copy kept at {time}."
                " Open the page again to see the latest."
            ).format(time="19:00")  # the last board loaded, before the round
        )
        for route in held:
            route.continue_()
        ctx.unroute("**/m/xinhua")

    arrived = start + timedelta(minutes=30)
    failed, _redone = completions_of(site, aquatic)  # in the order they were made
    assert (failed.outcome, failed.time_basis, failed.arrived_at) == ("failed", "phone", arrived)
    assert state_of(site, aquatic) == "done"
    for oid in (aquatic, meat):
        c = completions_of(site, oid)[-1]
        assert (c.by, c.outcome, c.time_basis, c.arrived_at) == ("mgr_b", "done", "phone", arrived)
        assert start <= c.phone_at <= start + timedelta(minutes=3) and c.at == c.phone_at
    (photo_kept,) = completions_of(site, meat)
    assert photo_kept.evidence["items"][0]["kind"] == "jpeg"  # shrunk on the phone
    assert [c.by for c in completions_of(site, waste)] == ["mgr_c"]
    site.clock.advance(minutes=-30)


def test_an_expired_sign_in_keeps_the_queue_until_the_manager_signs_in_again(
    site: Site, browser: Browser
) -> None:
    drains = obligation_id(site, "haibin", "drains")
    with context(browser, phone=True) as ctx:
        set_phone_clock(ctx, site.clock.now())
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_d")
        controlled_board(page, site, "haibin")
        ctx.set_offline(True)
        task(page, drains).locator("button.tick").tap()
        expect(page.locator("#queue-text")).to_contain_text(
            zh.tr("Waiting to send ({n})").format(n=1)
        )
        ctx.clear_cookies()  # the session ends while the phone is offline
        ctx.set_offline(False)
        signin = page.locator("#queue-signin")
        expect(signin).to_be_visible(timeout=30_000)
        expect(page.locator("#queue-text")).to_contain_text(
            zh.tr("Signed out: sign in again to send the {n} waiting. They stay on this phone.")
            .format(n=1)
            .split("：")[0]
        )
        screenshot(page, "board-sign-in-again")
        assert completions_of(site, drains) == []

        signin.tap()
        page.wait_for_url("**/login**")
        page.fill("input[name=username]", "mgr_d")
        page.fill("input[name=password]", "correct horse battery")
        with page.expect_navigation():
            page.locator("form[action='/login'] button[type=submit]").tap()
        expect(sent(page, drains)).to_contain_text(zh.tr("Recorded, on time."), timeout=30_000)
    assert [c.by for c in completions_of(site, drains)] == ["mgr_d"]


def test_a_slow_answer_a_server_error_and_no_network_lose_nothing_and_say_why_it_waits(
    site: Site, browser: Browser
) -> None:
    """A checklist kept while the one before is still being sent (a slow network) goes
    out when that answer comes, not at the next "online" or tap; a 503 and a missing
    network are shown on the waiting line and the queue sends again by itself; a phone
    clock put back does not hold a one-tap tick for hours."""
    cooked = obligation_id(site, "xinhua", "disinfect", "cooked")
    veg = obligation_id(site, "xinhua", "disinfect", "veg")
    poultry = obligation_id(site, "xinhua", "disinfect", "poultry")
    toilets = obligation_id(site, "xinhua", "toilets")
    held: list[Route] = []
    refused: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    def unavailable(route: Route) -> None:
        refused.append(route)
        route.fulfill(
            status=503, headers={"Retry-After": "1"}, json={"detail": "database unavailable"}
        )

    waiting = zh.tr("Waiting to send ({n})")
    with context(browser, phone=True) as ctx:
        set_phone_clock(ctx, site.clock.now())
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_c")
        page.route(f"**/api/v1/obligations/{cooked}/completions", hold)
        with page.expect_request(f"**/api/v1/obligations/{cooked}/completions"):
            send_checklist(page, cooked, "500")  # sent, and its answer does not come yet
        send_checklist(page, veg, "500")  # kept while the round is still sending the first
        expect(page.locator("#queue-text")).to_contain_text(waiting.format(n=2))
        (first,) = held
        first.continue_()
        expect(sent(page, cooked)).to_contain_text(zh.tr("Recorded, on time."))
        expect(sent(page, veg)).to_contain_text(zh.tr("Recorded, on time."))

        page.route(f"**/api/v1/obligations/{poultry}/completions", unavailable)
        send_checklist(page, poultry, "1000")
        line = page.locator("#queue-text")
        expect(line).to_contain_text(waiting.format(n=1))
        expect(line).to_contain_text("503")
        expect(page.locator("#queue-list")).to_contain_text(
            zh.tr(
                "The server could not take it just now ({status}): nothing was recorded yet;"
                " it is sent again by itself."
            ).format(status=503)
        )
        screenshot(page, "board-server-unavailable")
        assert completions_of(site, poultry) == []
        page.unroute(f"**/api/v1/obligations/{poultry}/completions")
        expect(sent(page, poultry)).to_contain_text(zh.tr("Recorded, on time."), timeout=30_000)

        ctx.set_offline(True)
        task(page, toilets).locator("button.tick").tap()
        # the phone's clock is put back three hours (set right) during the 5 s to undo:
        # the tick is not held for three hours
        ctx.clock.set_system_time(site.clock.now() - timedelta(hours=3))
        expect(line).to_contain_text(  # once its 5 s to undo are over
            zh.tr("No network: it is sent when the network is back."), timeout=20_000
        )
        ctx.set_offline(False)
        expect(sent(page, toilets)).to_contain_text(zh.tr("Recorded, on time."), timeout=30_000)
        expect(line).to_have_text("")

    assert len(refused) >= 1
    for oid in (cooked, veg, poultry, toilets):
        assert [c.by for c in completions_of(site, oid)] == ["mgr_c"], oid
    ids = [completions_of(site, oid)[0].id for oid in (cooked, veg, poultry, toilets)]
    assert ids == sorted(ids)  # in the order they were made


def test_an_out_of_range_reading_waits_for_the_managers_confirmation(
    site: Site, browser: Browser
) -> None:
    veg = obligation_id(site, "haibin", "disinfect", "veg")
    cooked = obligation_id(site, "haibin", "disinfect", "cooked")
    poultry = obligation_id(site, "haibin", "disinfect", "poultry")
    with context(browser, phone=True) as ctx:
        set_phone_clock(ctx, site.clock.now())
        page = ctx.new_page()
        sign_in(page, site.base, "mgr_d")
        row = task(page, veg)
        row.locator("summary").tap()
        row.locator("label.check").tap()
        reading = row.locator("input[name=reading_chlorine]")
        reading.fill("1000")
        expect(reading).to_have_class(re.compile("out-of-range"))
        row.locator("button.primary").tap()
        confirm = row.locator(".confirm")
        expect(confirm).to_contain_text("1000")
        expect(confirm).to_contain_text("400–700 mg/L")
        screenshot(page, "board-confirm-out-of-range")
        assert completions_of(site, veg) == []  # nothing recorded before the answer

        confirm.locator("button", has_text=zh.tr("Correct it")).tap()
        expect(reading).to_be_focused()
        reading.fill("500")
        row.locator("button.primary").tap()
        expect(sent(page, veg)).to_contain_text(zh.tr("Recorded, on time."))

        def record_as_failed(obligation: int, chlorine: str) -> None:
            row = send_checklist(page, obligation, chlorine)
            row.locator(".confirm button", has_text=zh.tr("Record as failed")).tap()

        record_as_failed(cooked, "300")
        expect(sent(page, cooked)).to_contain_text(
            zh.tr("Recorded as FAILED: redo the work and record it again.")
        )

        # a failed reading recorded by the server whose answer never reaches the phone:
        # sent again (the same token), it is still shown as FAILED, with its form to redo
        def answer_lost(route: Route) -> None:
            route.fetch()
            route.abort()

        page.route(f"**/api/v1/obligations/{poultry}/completions", answer_lost)
        record_as_failed(poultry, "100")
        expect(page.locator("#queue-text")).to_contain_text(
            zh.tr("The server did not answer: it is sent again by itself.")
        )
        page.unroute(f"**/api/v1/obligations/{poultry}/completions")
        page.locator("#queue-send").tap()
        expect(sent(page, poultry)).to_contain_text(
            zh.tr("Recorded as FAILED: redo the work and record it again.")
        )
        expect(task(page, poultry)).not_to_have_class(re.compile("sent-ok"))

        page.reload()
        badge = task(page, cooked).locator(".badge")
        expect(badge).to_have_text(zh.tr("Redo by {time}").format(time="20:30"))
        expect(page.locator('[data-section="overdue"]')).not_to_contain_text("熟食区")
        expect(task(page, poultry).locator("button.primary")).to_be_enabled()
    assert [c.outcome for c in completions_of(site, veg)] == ["done"]
    assert [c.outcome for c in completions_of(site, cooked)] == ["failed"]
    assert [c.outcome for c in completions_of(site, poultry)] == ["failed"]


# ---------------------------------------------------------------- every page: axe, tap targets

SMALL_TARGETS = """() => {
  const out = [];
  const seen = new Set();
  for (const el of document.querySelectorAll(
      'a, button, select, textarea, summary, input:not([type=hidden])')) {
    const target = el.matches('input[type=checkbox], input[type=radio]') ? el.closest('label') || el : el;
    if (seen.has(target)) continue;
    seen.add(target);
    const r = target.getBoundingClientRect();
    const style = getComputedStyle(target);
    if (r.width === 0 || r.height === 0 || style.visibility === 'hidden') continue;
    if (r.width < 44 || r.height < 44) {
      out.push(`${target.tagName.toLowerCase()}.${target.className} "${(target.textContent || target.value || '').trim().slice(0, 30)}" ${Math.round(r.width)}x${Math.round(r.height)}`);
    }
  }
  return out;
}"""


def pages_of(site: Site) -> dict[str, list[tuple[str, str]]]:
    """Every manager and office page, under the user who would open it."""
    now = site.clock.now()
    pid, _ = ledger_problems.add(
        site.engine,
        ledger_problems.NewProblem(
            market_id="haibin",
            category="sanitation",
            description="公共通道地面积水",
            found_by="mgr_d",
            found_at=now - timedelta(hours=1),
            deadline=now + timedelta(days=2),
            area_id="veg",
        ),
        now=now,
    )
    aquatic = obligation_id(site, "haibin", "disinfect", "aquatic")
    return {
        "": [("login", "/login")],
        "mgr_d": [
            ("board", "/m/haibin"),
            ("checklist", f"/o/{aquatic}"),
            ("history", "/m/haibin/history"),
            ("problems", "/m/haibin/problems"),
            ("problems-reported", f"/m/haibin/problems?reported={pid}"),
            ("problem", f"/p/{pid}"),
            ("account", "/account"),
            ("offline", "/offline"),
            ("market-inspections", "/m/haibin/inspections"),
        ],
        "office": [
            ("office", "/office"),
            ("office-board", "/m/haibin"),
            ("office-problem", f"/p/{pid}"),
            ("exports", "/exports"),
            ("outbox", "/office/outbox"),
            ("inspect", "/inspect"),
            ("ranking", "/office/ranking"),
        ],
        "operator": [("users", "/admin/users"), ("tokens", "/admin/tokens")],
    }


def serious(violations: list[dict[str, Any]]) -> list[str]:
    """axe's serious and critical findings, each with the first few elements at fault."""
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


def test_every_manager_and_office_page_passes_axe_and_a_managers_targets_are_44_px(
    site: Site, browser: Browser
) -> None:
    from axe_playwright_python.sync_playwright import Axe  # its browser test's alone

    axe = Axe()
    violations: dict[str, list[str]] = {}
    small: dict[str, list[str]] = {}
    for user, pages in pages_of(site).items():
        with context(browser, phone=True) as ctx:
            page = ctx.new_page()
            if user:
                sign_in(page, site.base, user)
            for name, path in pages:
                response = page.goto(f"{site.base}{path}")
                assert response is not None and response.status == 200, (name, path)
                for opened in page.locator("details.task").all()[:1]:
                    opened.evaluate("d => d.open = true")
                screenshot(page, name)
                bad = serious(axe.run(page).response["violations"])
                if bad:
                    violations[name] = bad
                if user.startswith("mgr") or name == "login":
                    tiny = page.evaluate(SMALL_TARGETS)
                    if tiny:
                        small[name] = tiny
    assert not violations, violations
    assert not small, f"tap targets under 44×44 px: {small}"
