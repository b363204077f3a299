"""The baseline of the tick benchmark: a bare Starlette endpoint doing one SQLite insert.

    .venv/bin/python bench/bare_app.py --db /tmp/bare.db --port 8001

It answers the tick endpoint's path and body (``POST /api/v1/obligations/{id}/completions``
with a JSON body and a Bearer token, ``201`` with a small JSON answer) and does the least a
durable tick must do: parse the JSON, then in a worker thread (as FastAPI runs marketcare's
sync endpoints) one ``BEGIN IMMEDIATE`` / ``INSERT`` / ``COMMIT`` on a pooled ``sqlite3``
connection with the pragmas ``marketcare.db.make_engine`` sets (WAL, ``synchronous=FULL``,
foreign keys, busy timeout). No authentication lookup, no validation, no audit: the gap
between this and marketcare is what marketcare's work costs. ``bench/tick_bench.py``
serves it with the same uvicorn settings as marketcare.
"""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SCHEMA = """
CREATE TABLE IF NOT EXISTS ticks (
    id INTEGER PRIMARY KEY,
    obligation_id INTEGER NOT NULL,
    token TEXT NOT NULL UNIQUE,
    by TEXT NOT NULL,
    at TEXT NOT NULL,
    readings TEXT NOT NULL,
    note TEXT
)
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection set up as ``marketcare.db.make_engine`` sets up its connections."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Pool:
    """Connections reused across requests, as SQLAlchemy's pool reuses marketcare's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self.idle.get_nowait()
        except queue.Empty:
            conn = connect(self.path)
        try:
            yield conn
        finally:
            self.idle.put(conn)


def create_app(path: Path, *, write_lock: bool = False) -> Starlette:
    with connect(path) as conn:
        conn.execute(SCHEMA)
    pool = Pool(path)
    lock: AbstractContextManager[Any] = threading.Lock() if write_lock else nullcontext()

    def insert(obligation_id: int, body: dict[str, object]) -> int:
        with lock, pool.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "INSERT INTO ticks (obligation_id, token, by, at, readings, note)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        obligation_id,
                        str(body["token"]),
                        "bench",
                        datetime.now(UTC).isoformat(),
                        json.dumps(body.get("readings") or {}),
                        body.get("note"),
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

    async def completions(request: Request) -> JSONResponse:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        body = await request.json()
        obligation_id = int(request.path_params["obligation_id"])
        completion_id = await run_in_threadpool(insert, obligation_id, body)
        return JSONResponse(
            {"obligation_id": obligation_id, "completion_id": completion_id, "changed": True},
            status_code=201,
        )

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(
                "/api/v1/obligations/{obligation_id:int}/completions",
                completions,
                methods=["POST"],
            ),
            Route("/health", health),
        ]
    )


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--write-lock",
        action="store_true",
        help="serialise the write transactions with a lock in the process (no SQLite busy waits)",
    )
    args = ap.parse_args()
    # the same settings as marketcare's WebServer (see bench/tick_bench.py UVICORN)
    uvicorn.run(
        create_app(args.db, write_lock=args.write_lock),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
