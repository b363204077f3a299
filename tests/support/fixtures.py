"""The fixtures several test modules share, defined once (``conftest.py`` loads this module
as a plugin, so every test sees them by name, as before).

* ``procs``: the processes a test starts; whatever is still alive at its end is killed.
* ``smtp``: a real SMTP server (aiosmtpd) listening for the test; ``smtp_down``: one that is
  not listening yet, for tests where the mail server "comes back" later.
* ``site``: the web app over a real ledger (``tests/support/web.py``), one per test module.
  A module passes settings to it with ``SITE_SETTINGS = {"upload_max_bytes": …}``. Each
  test starts from the state the site had before the first: the same ledger, files,
  clock and sessions, whatever the tests before it did (``Site.keep`` and ``Site.reset``).
* ``mgr_a``, ``mgr_b``, ``office``, ``operator``: clients of ``site`` signed in as that
  user (signed in once per module, on first use; their cookies reset with the site).

Every pytest process loads this module, the one that only hands the tests out to
pytest-xdist's workers too: the web app and the SMTP server are imported by the fixtures
that start them (a test module that uses them imports them anyway), not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

    from .procs import Proc
    from .smtp import SmtpServer
    from .web import Site


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; whatever is still alive at the end is killed."""
    started: list[Proc] = []
    yield started
    for p in started:
        if p.alive():
            p.kill()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server, listening."""
    from .smtp import SmtpServer

    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_down() -> Iterator[SmtpServer]:
    """An SMTP server on a port of its own that is not listening until the test starts it."""
    from .smtp import SmtpServer

    server = SmtpServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One running site per module, with the module's ``SITE_SETTINGS``, its state kept
    for ``reset``."""
    from .web import running_site

    settings: dict[str, Any] = getattr(request.module, "SITE_SETTINGS", {})
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with running_site(folder, **settings) as s:
        s.keep()
        try:
            yield s
        finally:
            for client in s.signed_in.values():
                client.close()


@pytest.fixture(autouse=True)
def _each_test_starts_with_the_sites_first_state(request: pytest.FixtureRequest) -> None:
    """Whatever a test did to the module's site (ticks, problems, users, the clock), the
    next test starts from the state the site was kept in: the order of tests cannot matter."""
    if "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        site.reset()


@pytest.fixture
def mgr_a(site: Site) -> httpx.Client:
    return site.session("mgr_a")


@pytest.fixture
def mgr_b(site: Site) -> httpx.Client:
    return site.session("mgr_b")


@pytest.fixture
def office(site: Site) -> httpx.Client:
    return site.session("office")


@pytest.fixture
def operator(site: Site) -> httpx.Client:
    return site.session("operator")
