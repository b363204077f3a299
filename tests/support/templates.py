"""Ledgers a module's tests read alike, built once per run and copied for each test.

Building a week of ticks (or materialising a demo) costs a test far more than copying the
result: SQLite copies a file through its online backup, PostgreSQL makes a database from a
template. Each test still gets a ledger of its own, so what one test writes no other sees,
and the order of tests cannot matter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from marketcare.ledger.db import make_engine

from . import pg

T = TypeVar("T")

#: what each template was built with: its database URL and what its builder returned
_built: dict[str, tuple[str, Any]] = {}


def built_once(key: str, build: Callable[[sa.Engine], T]) -> tuple[str, T]:
    """The template ledger ``key`` names (a migrated ledger given to ``build`` the first
    time it is asked for in this run) and what ``build`` returned then."""
    if key not in _built:
        folder = pg.session_folder() / f"template-{len(_built)}"
        engine = make_engine(pg.database_url(folder, migrated=True))
        try:
            value = build(engine)
            url = engine.url.render_as_string(hide_password=False)
        finally:
            engine.dispose()  # a template is copied only with no connection open on it
        _built[key] = (url, value)
    url, value = _built[key]
    return url, value


def copy_of(key: str, build: Callable[[sa.Engine], T], folder: Path) -> tuple[sa.Engine, T]:
    """An engine on a fresh copy of the template ``key`` as the database of ``folder``
    (dispose it at the end of the test), and what the template's ``build`` returned."""
    url, value = built_once(key, build)
    return make_engine(pg.copy_database(url, folder)), value
