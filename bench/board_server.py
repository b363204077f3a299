"""One marketcare web server for bench/board_bench.py, run in its own process.

    PYTHONPATH=<a checkout's src> python bench/board_server.py --db FILE --at ISO

It builds a ledger from the sample schedules (``schedules/``) as of ``--at`` (the app's
clock is fixed there), makes the market manager ``wang`` of ``lizhong``, serves the app
on a free loopback port, prints ``PORT <n>`` and runs until its stdin closes. Only the
calls that the code before issue 10 also has are used, so the same script serves the
board of any checkout given on ``PYTHONPATH`` (today's, and the one before).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from marketcare.domain.access import Role
from marketcare.domain.schedules import load_paths
from marketcare.ledger import accounts
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger.db import make_engine, migrate
from marketcare.settings import Settings
from marketcare.web.app import WebServer, create_app

PASSWORD = "correct horse battery"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--at", required=True, help="the app's fixed clock (ISO, with offset)")
    ap.add_argument("--schedules", type=Path, default=Path(__file__).parents[1] / "schedules")
    args = ap.parse_args()
    at = datetime.fromisoformat(args.at)
    engine = make_engine(f"sqlite:///{args.db}")
    migrate(engine)
    schedule = load_paths([args.schedules], default_timezone="Asia/Shanghai")
    ledger_materialise.materialise(
        engine, schedule, now=at - timedelta(days=1), horizon=timedelta(days=3)
    )
    ledger_sweep.sweep_all(engine, now=at)
    accounts.add_user(
        engine,
        accounts.NewUser("wang", "王秀兰", Role.MANAGER, PASSWORD, ("lizhong",)),
        now=at,
    )
    tmp = Path(tempfile.mkdtemp(prefix="board-bench-"))
    settings = Settings(
        database_url=str(engine.url),
        schedules_dir=args.schedules,
        exports_dir=tmp / "exports",
        evidence_dir=tmp / "evidence",
        web_port=0,
    )
    server = WebServer(create_app(settings, engine, clock=lambda: at), "127.0.0.1", 0)
    server.start()
    print(f"PORT {server.port}", flush=True)
    sys.stdin.read()  # until the benchmark closes the pipe
    server.stop()


if __name__ == "__main__":
    main()
