"""The baseline of the tick benchmark: a bare Starlette endpoint doing one SQLite insert.

    .venv/bin/python bench/bare_app.py --db /tmp/bare.db --port 8001

It answers the tick endpoint's path and body (``POST /api/v1/obligations/{id}/completions``
with a JSON body and a Bearer token, ``201`` with a small JSON answer) and does the least a
durable tick must do: parse the JSON, then in a worker thread (as FastAPI runs marketcare's
sync endpoints) one ``BEGIN IMMEDIATE`` / ``INSERT`` / ``COMMIT`` on a pooled ``sqlite3``
connection with the pragmas ``marketcare.db.make_engine`` sets (WAL, ``synchronous=FULL``,
foreign keys, busy timeout). No authentication lookup, no validation, no audit: the gap
between this and marketcare is what marketcare's work costs. ``bench/tick_bench.py``
serves it with the same uvicorn settings as marketcare, three ways: writers racing in
SQLite's busy handler (the default), serialised by a lock (``--write-lock``), or
serialised with group commit (``--group-commit``). ``GET /_bench/gc`` answers the
process's full garbage collections so far.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
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


class GroupCommit:
    """Serialised writes with group commit, the least a writer like marketcare's can do: one
    thread takes every insert waiting (up to 64) into one ``BEGIN IMMEDIATE`` … ``COMMIT``
    with one ``executemany``, and answers each after the commit (``ledger.tick.TickWriter``
    without the rule, the audit chain or SQLAlchemy)."""

    def __init__(self, path: Path) -> None:
        self.conn = connect(path)
        self.waiting: queue.SimpleQueue[tuple[tuple[Any, ...], Future[int]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            batch = [self.waiting.get()]
            while len(batch) < 64:
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(INSERT, [row for row, _ in batch])
                first = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                self.conn.execute("COMMIT")
            except BaseException as exc:
                self.conn.execute("ROLLBACK")
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for i, (_, fut) in enumerate(batch):
                fut.set_result(first - len(batch) + 1 + i)

    async def insert(self, row: tuple[Any, ...]) -> int:
        fut: Future[int] = Future()
        self.waiting.put((row, fut))
        return await asyncio.wrap_future(fut)


INSERT = (
    "INSERT INTO ticks (obligation_id, token, by, at, readings, note) VALUES (?, ?, ?, ?, ?, ?)"
)


def _row(obligation_id: int, body: dict[str, object]) -> tuple[Any, ...]:
    return (
        obligation_id,
        str(body["token"]),
        "bench",
        datetime.now(UTC).isoformat(),
        json.dumps(body.get("readings") or {}),
        body.get("note"),
    )


async def gc_stats(_request: Request) -> JSONResponse:
    """The process's full garbage collections (``bench/tick_bench.py`` reads them)."""
    return JSONResponse(GC.stats())


class GcLog:
    """Counts the process's generation-2 (full) garbage collections and their time."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.longest = 0.0
        self._started = 0.0
        self.counting = False
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2 or self.counting:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            took = time.perf_counter() - self._started
            self.count += 1
            self.seconds += took
            self.longest = max(self.longest, took)

    def stats(self) -> dict[str, float]:
        """The collections so far, then what survives a full collection (not counted):
        the objects the collector would walk in every later one."""
        out: dict[str, float] = {
            "gen2_collections": self.count,
            "gen2_seconds": self.seconds,
            "gen2_longest_seconds": self.longest,
        }
        self.counting = True
        try:
            gc.collect()
        finally:
            self.counting = False
        out["gen2_objects"] = len(gc.get_objects(generation=2))
        out["frozen_objects"] = gc.get_freeze_count()
        return out


GC = GcLog()


def create_app(path: Path, *, write_lock: bool = False, group_commit: bool = False) -> Starlette:
    with connect(path) as conn:
        conn.execute(SCHEMA)
    pool = Pool(path)
    lock: AbstractContextManager[Any] = threading.Lock() if write_lock else nullcontext()
    group = GroupCommit(path) if group_commit else None

    def insert(obligation_id: int, body: dict[str, object]) -> int:
        with lock, pool.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(INSERT, _row(obligation_id, body))
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
        if group is not None:
            completion_id = await group.insert(_row(obligation_id, body))
        else:
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
            Route("/_bench/gc", gc_stats),
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
    ap.add_argument(
        "--group-commit",
        action="store_true",
        help="serialise the writes in one thread that commits every waiting insert at once",
    )
    args = ap.parse_args()
    gc.collect()
    gc.freeze()  # as marketcare's start-up does: the collector walks what the load makes
    # the same settings as marketcare's WebServer (see bench/tick_bench.py UVICORN)
    uvicorn.run(
        create_app(args.db, write_lock=args.write_lock, group_commit=args.group_commit),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
