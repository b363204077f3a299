"""Every benchmark still runs: each one's ``--quick`` mode, as the documented command runs it.

Benchmarks are not timed tests: nothing here looks at a figure. A benchmark that no longer
starts (an API it uses changed, a file moved) or no longer prints its table fails here, in
``make test``, instead of on the day someone re-measures. Each runs in its own process with
its results sent to a temporary folder (``BENCH_OUT``), so a developer's ``bench/out`` is
left alone; they run ``PARALLEL`` at a time (much of a smoke run is starting processes and
servers, waiting more than computing), once for the module. A new script in ``bench/`` must be listed below (or named a helper), so none can
be added without its smoke run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

#: script → (its quick command's arguments, a line of the table it prints)
BENCHMARKS: dict[str, tuple[list[str], str]] = {
    "run.py": (["--quick"], "| section | measurement | median | baseline | ratio | target |"),
    "export_bench.py": (["--quick"], "| peak RSS, month ÷ week | openpyxl | xlsxwriter |"),
    "tick_bench.py": (["--quick"], "| marketcare against | what it is | throughput |"),
    "tick_pg.py": (["--quick"], "| median over rounds | p50 | p99 | throughput |"),
    "province.py": (["--quick"], "| section | measurement | median | baseline | ratio | target |"),
    "dashboard_bench.py": (["--quick"], "| ledger | server | dashboard page p99 ÷ board p99 |"),
    "memory_bench.py": (["--quick"], "| code | idle RSS | idle peak (VmHWM) |"),
    "board_bench.py": (["--quick"], "first visit: transfer"),
    "suite_fixtures.py": (["--quick"], "a migrated ledger"),
    "audit_cost.py": (["--quick"], "| tick p50 (ms) |"),
    "bulletin_bench.py": (["--quick"], "bulletin ÷ month export"),
    "expand_bench.py": (["--quick"], "| workload | markets | bare dateutil |"),
    "startup.py": (["--quick"], "marketcare --help"),
}
#: how each script is started (``tick_pg.py`` is ``tick_bench.py --postgresql``)
COMMANDS: dict[str, list[str]] = {"tick_pg.py": ["tick_bench.py", "--postgresql"]}
#: scripts that are parts of the benchmarks above, not benchmarks of their own
HELPERS = {"bare_app.py", "board_server.py", "generate.py"}

pytestmark = [pytest.mark.no_database, pytest.mark.slow, pytest.mark.heavy(65)]


def test_every_script_in_bench_is_a_listed_benchmark_or_a_helper() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts - HELPERS == set(BENCHMARKS), "list the new benchmark in BENCHMARKS"


#: smoke runs at once (the suite's wall time; nothing here is timed)
PARALLEL = 3


@pytest.fixture(scope="module")
def smoke_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every benchmark's quick run, ``PARALLEL`` at a time, each in its own folder."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = {
            script: pool.submit(
                _smoke_run, script, tmp_path_factory.mktemp(script.removesuffix(".py"))
            )
            for script in sorted(BENCHMARKS, key=_longest_first)
        }
        return {script: run.result() for script, run in runs.items()}


@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_the_benchmark_runs_in_quick_mode_and_prints_its_table(
    script: str, smoke_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done, (_, table) = smoke_runs[script], BENCHMARKS[script]
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    assert table in done.stdout, f"{script} printed no table:\n{done.stdout[-3000:]}"


#: the slowest smoke runs, started first so that the pool ends together
SLOWEST = ("audit_cost.py", "province.py", "tick_pg.py", "board_bench.py")


def _longest_first(script: str) -> int:
    return SLOWEST.index(script) if script in SLOWEST else len(SLOWEST)


def _smoke_run(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    args, _ = BENCHMARKS[script]
    program, *fixed = COMMANDS.get(script, [script])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env["BENCH_OUT"] = str(folder / "out")
    command = [sys.executable, str(BENCH / program), *fixed, *args]
    if _takes_tmpdir(script, program):
        command += ["--tmpdir", str(folder)]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )


#: scripts whose files the PostgreSQL server user must reach: pytest's folder is private to
#: the user running the tests, so these keep their own temporary folder
OWN_TMPDIR = {"province.py", "tick_pg.py"}


def _takes_tmpdir(script: str, program: str) -> bool:
    """Whether the script puts its temporary files where it is told (then under pytest's)."""
    if script in OWN_TMPDIR:
        return False
    return "--tmpdir" in (BENCH / program).read_text(encoding="utf-8")


def test_the_bulletins_steps_say_where_each_childs_memory_goes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    done = subprocess.run(
        [sys.executable, str(BENCH / "bulletin_bench.py"), "--steps", "--markets", "6", "--cold"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "6 markets, export-month" in out and "6 markets, bulletin" in out
    for step in ("export", "gather", "workbook", "font cut", "layout", "PDF writing"):
        assert re.search(rf"^    {step} +\d+\.\d → +\d+\.\d \(peak +\d+\.\d;", out, re.M), step
