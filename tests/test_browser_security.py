"""The security headers as a real Chromium obeys them: every page runs under the strict
Content-Security-Policy without a single violation (so nothing inline is left), the API's
docs render from the daemon's own files, and a page on the same site cannot frame ours."""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from marketcare.ledger import problems as rectification
from tests.support.browser import browser, context, sign_in
from tests.support.web import Site

pytestmark = pytest.mark.heavy(11)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

__all__ = ["browser"]  # the fixture, used by name


def watch(page: Page) -> list[str]:
    """What the page reports about the policy: violations and failed loads."""
    seen: list[str] = []

    def note(message: ConsoleMessage) -> None:
        # the browser asks for /favicon.ico by itself; the app has none (404)
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            seen.append(f"{message.location['url']}: {message.text}")

    page.on("console", note)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


def problem_of(site: Site, market: str) -> int:
    now = site.clock.now()
    pid, _ = rectification.add(
        site.engine,
        rectification.NewProblem(
            market_id=market,
            category="sanitation",
            description="排水沟堵塞",
            found_by="office",
            found_at=now,
            deadline=now + timedelta(days=2),
        ),
        now=now,
    )
    return pid


def test_no_page_breaks_the_content_security_policy(site: Site, browser: Browser) -> None:
    pid = problem_of(site, "lizhong")
    ob = site.obligation("lizhong", "disinfect", "veg")
    paths = {
        "mgr_a": [
            "/m/lizhong",
            f"/o/{ob}",
            "/m/lizhong/history",
            "/m/lizhong/problems",
            f"/p/{pid}",
            "/account",
            "/exports",
            "/m/lizhong/inspections",
        ],
        "office": [
            "/office",
            f"/p/{pid}",
            "/office/outbox",
            "/exports",
            "/inspect",
            "/inspect/lizhong",
            "/office/ranking",
        ],
        "operator": ["/admin/users", "/admin/tokens", "/account"],
    }
    for user, pages in paths.items():
        with context(browser, phone=user == "mgr_a") as ctx:
            page = ctx.new_page()
            seen = watch(page)
            sign_in(page, site.base, user)
            for path in pages:
                response = page.goto(site.base + path)
                assert response is not None and response.ok, path
                page.wait_for_load_state("load")
            assert seen == [], (user, seen)


def test_the_api_docs_render_from_this_server_under_the_policy(
    site: Site, browser: Browser
) -> None:
    with context(browser, phone=False) as ctx:
        page = ctx.new_page()
        seen = watch(page)
        elsewhere: list[str] = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(site.base) else elsewhere.append(r.url),
        )
        page.goto(f"{site.base}/api/docs")
        page.locator(".opblock-summary-path").first.wait_for()
        assert page.locator(".opblock-summary-path", has_text="/api/v1/me").count() >= 1
        assert elsewhere == [] and seen == [], (elsewhere, seen)


class _Framer(http.server.BaseHTTPRequestHandler):
    """A page on the same site (127.0.0.1, another port) that frames the board."""

    target = ""

    def do_GET(self) -> None:
        body = f'<!doctype html><iframe id="f" src="{self.target}"></iframe>'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_page_on_the_same_site_cannot_frame_the_signed_in_board(
    site: Site, browser: Browser
) -> None:
    """Issue 15, row 4: a page on the same site framed the signed-in board."""
    handler = type("Framer", (_Framer,), {"target": f"{site.base}/m/lizhong"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with context(browser, phone=False) as ctx:
            page = ctx.new_page()
            sign_in(page, site.base, "mgr_a")
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_load_state("load")
            framed = next(f for f in page.frames if f != page.main_frame)
            assert "鲤中" not in framed.content()  # the board's market never shows
            assert framed.locator("a.row").count() == 0
    finally:
        server.shutdown()
        server.server_close()
