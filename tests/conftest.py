"""Shared fixtures: a migrated ledger per test, small schedule factories, a DST zone.

The fixtures several modules share live in ``tests/support/fixtures.py`` (loaded below).

The suite runs on SQLite by default and on PostgreSQL with ``MARKETCARE_TEST_DB=postgresql``
(see ``tests/support/pg.py`` and docs/postgresql.md): every test reaches its database
through ``database_url(tmp_path)``, never through a hard-coded ``sqlite:///`` URL.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .support import pg

if TYPE_CHECKING:
    import sqlalchemy as sa

    from marketcare.domain.schedules import Schedule

#: the fixtures several modules share (procs, smtp, site, signed-in clients…)
pytest_plugins = ["tests.support.fixtures"]

ROOT = Path(__file__).resolve().parent.parent


def _keep_bytecode() -> None:
    """Let the processes the suite starts keep the modules they compile.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this team's shells set it), every daemon,
    CLI command and schedule-check process compiled marketcare's modules from source
    again: about 0.3 s of CPU each, hundreds of times a run. They keep them instead in a
    folder of the temporary directory (``PYTHONPYCACHEPREFIX``), never beside the
    sources; what runs is the same code, checked against each source's time stamp.
    """
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        folder = Path(tempfile.gettempdir()) / f"marketcare-test-bytecode-{os.getuid()}"
        os.environ.setdefault("PYTHONPYCACHEPREFIX", str(folder))


_keep_bytecode()


def database_url(folder: Path, *, migrated: bool = False) -> str:
    """The test database of ``folder``: ``folder/ledger.db`` or a fresh PostgreSQL database."""
    return pg.database_url(folder, migrated=migrated)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): proves something only SQLite has (its file lock); "
        "not collected on a PostgreSQL run, with the reason printed",
    )
    config.addinivalue_line(
        "markers",
        "postgresql_only(reason): proves something only PostgreSQL has (several daemons "
        "on one database); not collected on a SQLite run, with the reason printed",
    )
    config.addinivalue_line(
        "markers",
        "no_database: touches no database, so it runs once, on the SQLite run; not collected "
        "on a PostgreSQL run (a test so marked that asks for a database fails)",
    )
    config.addinivalue_line(
        "markers",
        "heavy(seconds): a module that takes about SECONDS on a quiet machine; under "
        "pytest-xdist the heavy modules are handed out first, heaviest first",
    )
    if _distributing(config):
        # xdist would hand the modules out by their number of tests; keep ours (heavy first)
        config.option.loadscopereorder = False
    if not _distributing(config):
        pg.begin_session()


def _distributing(config: pytest.Config) -> bool:
    """Whether this process only hands the tests out to pytest-xdist's workers: each worker
    starts its own PostgreSQL server, the process that hands out none."""
    workers = config.getoption("numprocesses", default=None)
    return bool(workers) and not hasattr(config, "workerinput")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _distributing(config):
        pg.end_session()


#: the tests a run left out because they belong to the other database, with the reason
_OTHER_DATABASE: list[str] = []
#: the tests a PostgreSQL run left out because they touch no database (the SQLite run has them)
_NO_DATABASE: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out what exists only on the other database: deselected with its reason, never
    skipped. A skip says "could not run here"; these have nothing to run on this database,
    and ``make test`` runs the suite on both, so each of them runs once."""
    other = "sqlite_only" if pg.on_postgresql() else "postgresql_only"
    kept, dropped = [], []
    for item in items:
        if pg.on_postgresql() and item.get_closest_marker("no_database") is not None:
            dropped.append(item)
            _NO_DATABASE.append(item.nodeid)
            continue
        marker = item.get_closest_marker(other)
        if marker is None:
            kept.append(item)
            continue
        if not marker.args:
            raise pytest.UsageError(f"{item.nodeid}: {other} needs a reason")
        dropped.append(item)
        _OTHER_DATABASE.append(f"{item.nodeid}: {marker.args[0]}")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    items[:] = heaviest_modules_first(items)


def heaviest_modules_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The modules marked ``heavy`` first, heaviest first; the rest after them, each module's
    tests and the other modules in the order they came (pytest-randomly's, this hook runs
    after it).

    Two workers each take a whole module (``--dist loadfile``); a module of a minute and a
    half handed out last leaves one worker idle for that long at the end of the run. Handing
    out the longest first (longest-processing-time-first) leaves only the short ones for
    the end. The weights are a small list of markers, not timings kept on disk: a run
    depends on nothing but the code.
    """
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def weight(module: list[pytest.Item]) -> float:
        marker = module[0].get_closest_marker("heavy")
        return float(marker.args[0]) if marker is not None else 0.0

    ordered = sorted(modules.values(), key=weight, reverse=True)  # stable: ties keep order
    return [item for module in ordered for item in module]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist the workers collect, so the lists of what was left out come
    back from them (``pytest_sessionfinish`` puts them in the worker's output); each
    worker collected the same tests, so each test is listed once."""
    sent = getattr(node, "workeroutput", {})
    for kept, name in ((_OTHER_DATABASE, "other_database"), (_NO_DATABASE, "no_database")):
        kept.extend(t for t in sent.get(name, ()) if t not in kept)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _OTHER_DATABASE:
        here = "PostgreSQL" if pg.on_postgresql() else "SQLite"
        terminalreporter.section(f"tests of the other database, not collected on {here}")
        for line in _OTHER_DATABASE:
            terminalreporter.write_line(line)
    if _NO_DATABASE:
        modules = sorted({nodeid.split("::")[0] for nodeid in _NO_DATABASE})
        terminalreporter.section("tests that touch no database, run on SQLite only")
        terminalreporter.write_line(f"{len(_NO_DATABASE)} tests of {', '.join(modules)}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"marketcare test database: {'postgresql' if pg.on_postgresql() else 'sqlite'}"


@pytest.fixture(autouse=True)
def _release_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """A test's PostgreSQL databases go with it (a long run would otherwise fill the disk);
    a test marked ``no_database`` may not ask for one."""
    pg.refuse_databases(request.node.get_closest_marker("no_database") is not None)
    try:
        yield
    finally:
        pg.refuse_databases(False)
        pg.release(tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A ledger at the newest revision: a copy of the run's migrated template."""
    from marketcare.ledger.db import make_engine

    eng = make_engine(database_url(tmp_path, migrated=True))
    yield eng
    eng.dispose()


def make_market_yaml(
    market_id: str = "lizhong",
    *,
    timezone: str = "Asia/Shanghai",
    hours: str = '{mon-fri: "05:30-18:30", sat-sun: "05:30-19:00"}',
    closed: str = "[]",
    areas: str = "[{id: aquatic, kind: aquatic, m2: 600}, {id: veg, kind: vegetables, m2: 900}]",
) -> str:
    return f"""
  - id: {market_id}
    name: {market_id} 农贸市场
    sub_district: 鲤中
    timezone: {timezone}
    hours: {hours}
    closed: {closed}
    areas: {areas}
"""


DISINFECTION = """
  - id: disinfect
    kind: disinfection
    name: 休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: +2h
    grace: 1h
    checklist:
      - {id: washed, tick: 已冲洗}
      - {id: chlorine, reading: 有效氯, unit: mg/L, range: [400, 700], by_area_kind: {aquatic: [900, 1200]}}
"""

WASTE = """
  - id: waste
    kind: waste_clearance
    name: 垃圾日产日清
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
    grace: 30m
    checklist: [{id: cleared, tick: 已清运}]
"""


def make_schedule_text(markets: str | None = None, tasks: str | None = None) -> str:
    return f"markets:{markets or make_market_yaml()}\ntasks:{tasks if tasks is not None else DISINFECTION + WASTE}"


def make_schedule(
    markets: str | None = None, tasks: str | None = None, *, zone: str = "Asia/Shanghai"
) -> Schedule:
    from marketcare.domain.schedules import load_texts

    return load_texts({"test.yaml": make_schedule_text(markets, tasks)}, default_timezone=zone)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Skipped tests do not count as passing: in CI a skip fails the run. A pytest-xdist
    worker sends what it left out to the process that prints the summary."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["other_database"] = _OTHER_DATABASE
        workeroutput["no_database"] = _NO_DATABASE
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and os.environ.get("CI"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
