"""What a running daemon keeps loaded: the export and PostgreSQL libraries only when used.

pandas and openpyxl (with numpy and lxml) are some 40 MiB that only an export needs, and
psycopg some 9 MiB that a daemon on SQLite never needs; ``bench/memory_bench.py`` measures
the idle daemon against its target (issue 18). These tests hold the imports behind it: a
fresh interpreter loads every module the daemon and its web app load at start, and runs
the database error policy over an error, and none of those libraries is there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.no_database

#: what the daemon imports before it serves: the command, the steps, the web app's routes
DAEMON_MODULES = (
    "marketcare.cli",
    "marketcare.ops.daemon",
    "marketcare.web.app",
    "marketcare.web.api",
    "marketcare.web.pages",
    "marketcare.web.health",
)
#: loaded only by an export (pandas, openpyxl) or a PostgreSQL engine (psycopg)
ON_DEMAND = ("pandas", "openpyxl", "numpy", "psycopg")


def _loaded_after(code: str) -> list[str]:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {DAEMON_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"{code}\n"
        f"print(json.dumps([m for m in {ON_DEMAND!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_daemon_and_its_web_app_start_without_the_export_or_postgresql_libraries() -> None:
    assert _loaded_after("") == []


def test_judging_a_database_error_on_sqlite_does_not_load_psycopg() -> None:
    code = (
        "import sqlite3\n"
        "from marketcare.ledger import db\n"
        "db.driver_errors()\n"
        "assert not db._is_driver_fault(sqlite3.OperationalError('database is locked'))\n"
    )
    assert _loaded_after(code) == []
