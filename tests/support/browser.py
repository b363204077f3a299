"""Debian's Chromium driven by Playwright (it downloads no browser of its own), and the
helpers the browser tests share: phone and desktop contexts, signing in through the
form, full-page screenshots kept as test artifacts.

A missing Chromium fails the tests with what to run; it never skips them.

Playwright is imported by the fixture and helpers that drive it, not when a test module is
collected: every pytest-xdist worker collects every module, and only the one running a
browser test needs it (``expect`` below is Playwright's, imported on first use).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.web import PASSWORD

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, expect
else:

    def expect(actual: Any, message: str | None = None) -> Any:
        """Playwright's ``expect`` (assertions that wait), imported when first used."""
        from playwright.sync_api import expect as playwright_expect

        return playwright_expect(actual, message)


CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"

PHONE: dict[str, Any] = {
    "viewport": {"width": 360, "height": 740},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
    "locale": "zh-CN",
}
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, "locale": "zh-CN"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (each test opens fresh contexts)."""
    if not Path(CHROMIUM).exists():
        found = shutil.which("chromium")
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}"
            + (f" (found {found}, but the tests use Debian's package)" if found else "")
            + ": run `make system-deps` (it installs Debian's chromium package)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    except Exception as exc:
        pw.stop()
        pytest.fail(f"Chromium at {CHROMIUM} did not start ({exc}); run `make system-deps`")
    try:
        yield chromium
    finally:
        chromium.close()
        pw.stop()


@contextmanager
def context(browser: Browser, *, phone: bool) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) as a phone (360×740, touch) or a desktop."""
    ctx = browser.new_context(**(PHONE if phone else DESKTOP))
    ctx.set_default_timeout(20_000)
    try:
        yield ctx
    finally:
        ctx.close()


def sign_in(page: Page, base: str, user: str, password: str = PASSWORD) -> None:
    """Sign in through the form, as a person would."""
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    assert "/login" not in page.url, page.content()[:500]


def screenshot(page: Page, name: str) -> Path:
    """Keep a full-page picture as ``<name>-<width>.jpg`` for a person to look at.

    JPEG, not PNG: Chromium encodes a long page as PNG in about 0.2 s, a fifth of the
    suite's widest browser test (32 pages); a picture to look at needs no lossless copy."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 0
    safe = re.sub(r"[^a-z0-9_-]+", "-", name.lower())
    path = SCREENSHOTS / f"{safe}-{width}.jpg"
    page.screenshot(path=str(path), full_page=True, type="jpeg", quality=70)
    return path


def scroll_width(page: Page) -> int:
    """How wide the page lays out; wider than the viewport means sideways scrolling."""
    value = page.evaluate("document.documentElement.scrollWidth")
    assert isinstance(value, int)
    return value
