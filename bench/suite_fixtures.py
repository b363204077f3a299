"""What the test suite's templates save: a ledger per test and a site per module.

Each comparison runs its two variants interleaved, round by round, after a discarded
warm-up round, and reports the ratio of the medians (see docs/benchmarks.md):

* **a migrated ledger**: running every Alembic migration into a new SQLite file (what each
  test using the ``engine`` fixture did) against copying the file migrated once per run;
* **the web tests' site ledger**: migrating, materialising three days and adding four users
  with their Argon2 hashes and API tokens (what each module's site did) against copying the
  ledger built once per run;
* **a clean start for a test**: a new site (the ledger copied, a server started) against
  putting a module's site back as it was kept (``Site.reset``).

``--quick`` runs one measured round instead of seven.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MARKETCARE_TEST_DB", "sqlite")

from tests.support import pg, web  # noqa: E402

from marketcare.ledger.db import make_engine, migrate  # noqa: E402


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(
    name: str, before: Callable[[], None], after: Callable[[], None], rounds: int
) -> tuple[str, float, float, float]:
    """Median seconds of each variant over ``rounds`` interleaved rounds, and their ratio."""
    before()
    after()  # warm-up: imports, caches, the templates themselves
    b, a = [], []
    for _ in range(rounds):
        b.append(timed(before))
        a.append(timed(after))
    mb, ma = statistics.median(b), statistics.median(a)
    return name, mb, ma, mb / ma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, for a smoke run")
    args = parser.parse_args()
    rounds = 1 if args.quick else 7
    folder = Path(tempfile.mkdtemp(prefix="marketcare-suite-bench-"))
    n = count()
    try:

        def migrate_new() -> None:
            engine = make_engine(f"sqlite:///{folder / f'm{next(n)}.db'}")
            migrate(engine)
            engine.dispose()

        def copy_migrated() -> None:
            pg.database_url(folder / f"c{next(n)}", migrated=True)

        def build_site_ledger() -> None:
            web._ledger_templates.clear()
            saved = pg._session_folder
            pg._session_folder = folder / f"s{next(n)}"
            pg._session_folder.mkdir()
            try:
                web._site_ledger()
            finally:
                pg._session_folder = saved

        template_url, _tokens = web._site_ledger()

        def copy_site_ledger() -> None:
            pg.copy_database(template_url, folder / f"t{next(n)}")

        with web.running_site(folder / "kept") as kept:
            kept.keep()

            def new_site() -> None:
                with web.running_site(folder / f"n{next(n)}"):
                    pass

            results = [
                compare("a migrated ledger", migrate_new, copy_migrated, rounds),
                compare("the site's ledger", build_site_ledger, copy_site_ledger, rounds),
                compare("a clean site for a test", new_site, kept.reset, rounds),
            ]
    finally:
        pg.end_session()
        shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"rounds: {rounds} (median of each), load average {load:.1f}")
    print(f"{'what':<26} {'before':>9} {'after':>9} {'ratio':>7}")
    for name, before_s, after_s, ratio in results:
        print(f"{name:<26} {before_s * 1000:7.1f}ms {after_s * 1000:7.1f}ms {ratio:6.1f}×")


if __name__ == "__main__":
    main()
