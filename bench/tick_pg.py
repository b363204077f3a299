"""The tick endpoint on PostgreSQL, with one and with several daemons sharing the database.

    .venv/bin/python bench/tick_bench.py --postgresql --daemons 3          # ~5 min on 2 CPUs
    .venv/bin/python bench/tick_bench.py --postgresql --daemons 3 --quick  # smoke run
    .venv/bin/python bench/tick_bench.py --postgresql --no-durability      # fsync etc. off

The pieces are ``bench/tick_bench.py``'s (the ledger, the server launcher, the load
generator, the phase statistics); what is new here is the database and the process count.

A throwaway PostgreSQL server (``tests.support.pg.ThrowawayServer``: ``initdb`` as the
``postgres`` user when run as root) started through a folder of wrappers whose ``postgres``
appends durable settings to the test suite's (``fsync``, ``synchronous_commit`` and
``full_page_writes`` on: the test suite turns them off, a real deployment does not), unless
``--no-durability``. The city ledger of the SQLite benchmark is built there with
``marketcare.db.migrate`` and ``ledger.materialise`` on a ``make_engine`` of the
``postgresql+psycopg`` URL. Then, each its own uvicorn process with ``tick_bench``'s
launcher and settings:

* ``--daemons`` marketcare servers (``create_app`` over the same database, clock fixed);
* as many bare servers: a Starlette endpoint on the same path doing one
  ``INSERT … RETURNING`` + ``COMMIT`` on a pooled psycopg connection (one pool per process),
  in a worker thread as ``bench/bare_app.py`` does on SQLite.

Each round measures four configurations, the order rotating: marketcare x1 (only the first
daemon gets requests), marketcare xN (the 50 clients dealt round robin over the N daemons),
bare x1, bare xN. During every measured phase a thread samples ``pg_stat_activity`` (20 Hz)
for what the client backends wait on, and the commits and WAL flushes of the phase are
read from ``pg_stat_database`` / ``pg_stat_wal``; CPU per tick is read from ``/proc`` for
the servers and for all PostgreSQL processes. Results: a table on stdout and
``bench/out/tick_pg.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from tick_bench import (  # noqa: E402
    CLOCK,
    PATH,
    UVICORN,
    Connection,
    Manager,
    Phase,
    Server,
    _phase,
    build_ledger,
    cpu_seconds,
    free_port,
    log,
    source_of,
    start_server,
)

OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "tick_pg.json"
#: appended to the test suite's server options (later ``-c`` settings win)
DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}
#: the defaults of this mode (the SQLite one's would take about 12 minutes here)
DEFAULT_MARKETS, DEFAULT_REQUESTS, DEFAULT_WARMUP = 1000, 1500, 200
NOT_DURABLE = {**DURABLE, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS ticks (
    id BIGSERIAL PRIMARY KEY,
    obligation_id BIGINT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    by TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    readings JSONB NOT NULL,
    note TEXT
)
"""


# ---------------------------------------------------------------- the PostgreSQL server


def start_pg(tmp: Path, settings: dict[str, str]) -> Any:
    """``ThrowawayServer.start`` through wrappers: its ``postgres`` adds ``settings``."""
    from tests.support.pg import PG_BIN, ThrowawayServer

    wrappers = tmp / "pg-bin"
    wrappers.mkdir()
    for name in ("initdb", "pg_ctl"):
        (wrappers / name).symlink_to(PG_BIN / name)
    extra = " ".join(f"-c {k}={v}" for k, v in settings.items())
    script = wrappers / "postgres"
    script.write_text(f'#!/bin/sh\nexec "{PG_BIN / "postgres"}" "$@" {extra}\n')
    script.chmod(0o755)
    for folder in (tmp, wrappers):
        folder.chmod(0o755)  # the server runs as ``postgres`` when we are root
    return ThrowawayServer.start(wrappers)


def pg_pids(root_pid: int) -> list[int]:
    """The PostgreSQL processes: every descendant of the server's launcher."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pg_cpu(root_pid: int) -> dict[int, float]:
    out = {}
    for pid in pg_pids(root_pid):
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return out


# ---------------------------------------------------------------- the bare PostgreSQL server


def serve_bare(url: str, port: int) -> None:
    """Run in a server process: parse the JSON, one INSERT + COMMIT in a worker thread."""
    import psycopg
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()

    @contextmanager
    def connection() -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(url)
        try:
            yield conn
        finally:
            idle.put(conn)

    def insert(obligation_id: int, body: dict[str, Any]) -> int:
        with connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO ticks (obligation_id, token, by, at, readings, note)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    obligation_id,
                    str(body["token"]),
                    "bench",
                    datetime.now(UTC),
                    json.dumps(body.get("readings") or {}),
                    body.get("note"),
                ),
            ).fetchone()
            return int(row[0]) if row else 0

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

    app = Starlette(
        routes=[
            Route(PATH.format(id="{obligation_id:int}"), completions, methods=["POST"]),
        ]
    )
    uvicorn.run(app, port=port, **UVICORN)


# ---------------------------------------------------------------- sampling the database


class Sampler:
    """What the client backends are doing, sampled from ``pg_stat_activity`` in a thread."""

    def __init__(self, url: str, hz: float = 20.0) -> None:
        self.url, self.period = url, 1 / hz
        self.waits: Counter[str] = Counter()
        self.lock_queries: Counter[str] = Counter()
        #: write transactions open (an xid taken, not yet ended), by whose: a tick
        #: writer's batch, a chainer's round (its statements name the chain's tables)
        self.writing: Counter[str] = Counter()
        #: what a backend idle in a transaction ran last (whose transaction it is)
        self.idle_after: Counter[str] = Counter()
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(self.period):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, left(query, 90),"
                    " backend_xid IS NOT NULL"
                    " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid() AND datname = current_database()"
                ).fetchall()
                self.samples += 1
                for state, wtype, wait, query, xid in rows:
                    if xid and state in ("active", "idle in transaction"):
                        chaining = "audit_head" in query or query.startswith(
                            "SELECT unchained_events."
                        )
                        self.writing["chainer" if chaining else "writer"] += 1
                    if state == "active":
                        key = f"active: {wtype}:{wait}" if wtype else "active: on CPU"
                    elif state == "idle in transaction":
                        key = "idle in transaction (the client works inside a transaction)"
                        self.idle_after[" ".join(query.split())[:60]] += 1
                    else:
                        continue
                    self.waits[key] += 1
                    if wtype == "Lock":
                        self.lock_queries[" ".join(query.split())] += 1

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "backends per sample": {
                k: round(v / n, 2) for k, v in sorted(self.waits.items(), key=lambda kv: -kv[1])
            },
            "statements waiting on a lock (samples)": dict(self.lock_queries.most_common(5)),
            "idle in transaction after (samples)": dict(self.idle_after.most_common(4)),
            "write transactions open per sample": {
                k: round(self.writing[k] / n, 3) for k in ("writer", "chainer")
            },
        }


def db_counters(url: str) -> dict[str, float]:
    """Transaction ids handed out and WAL written so far (exact, unlike ``pg_stat_*``,
    which a busy backend reports only every second and an idle one after 10 s).

    Every write transaction takes an xid, and so does every SAVEPOINT that writes: a bare
    tick is 1 xid; a marketcare batch of *b* ticks is *b* + 1, so xids per tick
    = 1 + 1/b and the mean batch is 1 / (xids per tick - 1).
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " pg_current_wal_lsn() - '0/0'::pg_lsn"
        ).fetchone()
    assert row is not None
    return {"xids": float(row[0]), "wal_bytes": float(row[1])}


# ---------------------------------------------------------------- load


async def load_group(
    name: str,
    servers: list[Server],
    rnd: int,
    managers: list[Manager],
    args: argparse.Namespace,
    url: str,
    pg_root: int,
) -> tuple[Phase, dict[str, Any]]:
    """One phase against ``servers``: client *i* talks to server *i mod n* (round robin)."""
    conns = [Connection(servers[i % len(servers)].port) for i in range(len(managers))]
    synthetic = name.startswith("bare")

    async def post(i: int, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        return await conns[i].post(path, body, token)

    try:
        await _phase(post, name, rnd, managers, args.warmup, synthetic)
        batches0 = None if synthetic else writer_batches(servers)
        before = db_counters(url)
        srv0 = sum(cpu_seconds(s.proc.pid) for s in servers)
        pg0, own0 = pg_cpu(pg_root), time.process_time()
        with Sampler(url) as sampler:
            phase = await _phase(post, name, rnd, managers, args.requests, synthetic)
        phase.server_cpu = sum(cpu_seconds(s.proc.pid) for s in servers) - srv0
        phase.client_cpu = time.process_time() - own0
        pg1 = pg_cpu(pg_root)
        db_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        after = db_counters(url)
        batches = None if batches0 is None else writer_batches(servers) - batches0
    finally:
        for c in conns:
            c.close()
    n = phase.requests
    extra: dict[str, Any] = {
        "postgres_cpu_ms_per_request": round(db_cpu / n * 1000, 2),
        "xids_per_request": round((after["xids"] - before["xids"]) / n, 3),
        "wal_bytes_per_request": round((after["wal_bytes"] - before["wal_bytes"]) / n),
        "pg_stat_activity": sampler.summary(),
    }
    # Little's law: the writers' write transactions open on average, times the phase's
    # length, over its batches (a bare request is a transaction of its own)
    seconds = n / phase.throughput if phase.throughput else 0.0
    open_ = extra["pg_stat_activity"]["write transactions open per sample"]["writer"]
    per = batches if batches is not None else n
    extra["ticks_per_batch"] = round(n / batches, 2) if batches else None
    extra["writer_ms_in_transaction_per_batch"] = (
        round(open_ * seconds / per * 1000, 2) if per else None
    )
    return phase, extra


def writer_batches(servers: list[Server]) -> int:
    """The tick writers' batches so far, summed over ``servers`` (``GET /_bench/writer``)."""
    import httpx

    return sum(
        int(httpx.get(f"{s.base}/_bench/writer", timeout=60).json()["batches"]) for s in servers
    )


# ---------------------------------------------------------------- main


KEYS = ("p50_ms", "p90_ms", "p99_ms", "throughput_rps", "server_cpu_ms_per_request")
EXTRA_KEYS = (
    "postgres_cpu_ms_per_request",
    "xids_per_request",
    "wal_bytes_per_request",
    "writer_ms_in_transaction_per_batch",
    "ticks_per_batch",
)


def run(args: argparse.Namespace) -> None:
    """``tick_bench.py --postgresql``: everything from the server to the report."""
    out_path: Path = args.out or OUT
    n = args.daemons
    given = set(sys.argv)
    if not args.quick:  # a smaller default run than on SQLite: PostgreSQL is slower here
        if "--markets" not in given:
            args.markets = DEFAULT_MARKETS
        if "--requests" not in given:
            args.requests = DEFAULT_REQUESTS
        if "--warmup" not in given:
            args.warmup = DEFAULT_WARMUP
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tick-pg-", dir=args.tmpdir))
    settings = DURABLE if args.durable else NOT_DURABLE
    servers: list[Server] = []
    pg = None
    try:
        log(f"starting PostgreSQL ({', '.join(f'{k}={v}' for k, v in settings.items())})")
        pg = start_pg(tmp, settings)
        url = pg.url
        plain_url = url.replace("postgresql+psycopg://", "postgresql://")
        import psycopg

        with psycopg.connect(plain_url, autocommit=True) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            conn.execute(BARE_SCHEMA)
        log(f"building the ledger on PostgreSQL {version}: {args.markets} markets x 12 areas")
        managers, info = build_ledger(tmp / "ledger.db", args.markets, args.clients, url=url)
        need = (args.warmup + args.requests) * args.rounds * (4 if args.compare else 2)
        have = info["open and tickable through the API"]
        log(f"ledger built in {info['built in (s)']} s: {have} open obligations, {need} needed")
        least = min(len(m.todo) for m in managers)
        if least * args.clients < need + args.rounds * 4 * args.clients:
            raise SystemExit(f"a manager has only {least} open obligations: use more --markets")
        py = sys.executable
        mc: list[Server] = []
        bare: list[Server] = []
        for i in range(n):
            port = free_port()
            cmd = [py, str(HERE / "tick_bench.py"), "--serve", "marketcare", "--url", url]
            cmd += ["--db", str(tmp / "ledger.db"), "--port", str(port), "--clock"]
            cmd += [CLOCK.isoformat()]
            for e in args.experiment or []:
                cmd += ["--experiment", e]
            mc.append(start_server(f"marketcare-{i}", cmd, port, tmp, args.pin))
        for i in range(n):
            port = free_port()
            cmd = [py, str(HERE / "tick_pg.py"), "--serve-bare", "--url", plain_url]
            cmd += ["--port", str(port)]
            bare.append(start_server(f"bare-{i}", cmd, port, tmp, args.pin))
        servers = mc + bare
        configs = {
            "marketcare x1": mc[:1],
            f"marketcare x{n}": mc,
            "bare x1": bare[:1],
            f"bare x{n}": bare,
        }
        if args.compare:  # the code as it was at REV, the same way, in every round
            src = source_of(args.compare, tmp)
            before: list[Server] = []
            for i in range(n):
                port = free_port()
                cmd = [py, str(HERE / "tick_bench.py"), "--serve", "marketcare", "--url", url]
                cmd += ["--db", str(tmp / "ledger.db"), "--port", str(port), "--clock"]
                cmd += [CLOCK.isoformat()]
                before.append(start_server(f"before-{i}", cmd, port, tmp, args.pin, src))
            servers += before
            configs[f"marketcare@{args.compare} x1"] = before[:1]
            configs[f"marketcare@{args.compare} x{n}"] = before
        phases: list[Phase] = []
        extras: list[dict[str, Any]] = []
        names = list(configs)
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                phase, extra = asyncio.run(
                    load_group(
                        name,
                        configs[name],
                        rnd,
                        managers,
                        args,
                        plain_url,
                        pg.process.pid,
                    )
                )
                phases.append(phase)
                extras.append({**phase.summary(), **extra})
                s = phase.summary()
                log(
                    f"round {rnd} {name}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                    f"{s['throughput_rps']}/s, pg CPU {extra['postgres_cpu_ms_per_request']} "
                    f"ms/req, xids/req {extra['xids_per_request']}"
                    + (f", errors {s['errors']}" if s["errors"] else "")
                )
        out = report(extras, info, args, version, settings, time.perf_counter() - started)
        out["chain"] = check_chain(url)
        log(f"audit chain: {out['chain']}")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(markdown(out))
        log(f"written {out_path}")
        if any(p.errors for p in phases):
            raise SystemExit("some requests failed: see the errors column")
    finally:
        for srv in servers:
            srv.proc.terminate()
        for srv in servers:
            try:
                srv.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
        if pg is not None:
            pg.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def check_chain(url: str) -> dict[str, Any]:
    """After the load: the daemons' tick writers linked their events (the rest is linked
    here, as ``audit verify`` would), the chain verifies, and each completion has its one
    event: nothing lost, nothing twice, whatever order the writers committed in."""
    import sqlalchemy as sa

    from marketcare.ledger import audit
    from marketcare.ledger.db import make_engine, read
    from marketcare.ledger.models import Completion, Event

    engine = make_engine(url)
    try:
        left = audit.chain(engine, wait=True)
        with read(engine) as conn:
            verdict = audit.verify(conn)
            completions = conn.execute(sa.select(sa.func.count()).select_from(Completion))
            events = conn.execute(
                sa.select(
                    sa.func.count(sa.distinct(Event.details["completion_id"].as_integer()))
                ).where(Event.action.in_(("completed", "failed_check")))
            )
            counts = (int(completions.scalar_one()), int(events.scalar_one()))
    finally:
        engine.dispose()
    if not verdict.ok or verdict.pending or counts[0] != counts[1]:
        raise SystemExit(f"the audit chain does not hold: {verdict}, completions/events {counts}")
    return {
        "events": verdict.checked,
        "left pending by the daemons": left,
        "completions": counts[0],
    }


def report(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    args: argparse.Namespace,
    version: str,
    settings: dict[str, str],
    elapsed: float,
) -> dict[str, Any]:
    names = list(dict.fromkeys(r["server"] for r in rows))
    med = {
        s: {
            k: float(statistics.median(values)) if values else None
            for k in KEYS + EXTRA_KEYS
            for values in [[r[k] for r in rows if r["server"] == s and r.get(k) is not None]]
        }
        for s in names
    }
    n = args.daemons
    mc1, mcn, b1, bn = "marketcare x1", f"marketcare x{n}", "bare x1", f"bare x{n}"

    def ratio(a: str, b: str, k: str) -> float:
        x, y = med[a][k], med[b][k]
        assert x is not None and y is not None
        return round(x / y, 3)

    return {
        "command": " ".join(["bench/tick_bench.py", *sys.argv[1:]]),
        "run_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "total_seconds": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": version,
            "server settings (besides the test suite's)": settings,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "pinned": args.pin,
        },
        "setup": {
            **info,
            "clients": args.clients,
            "daemons": n,
            "warmup_requests": args.warmup,
            "measured_requests": args.requests,
            "rounds": args.rounds,
        },
        "median": med,
        "ratios": {
            f"p99 {mc1} / {b1}": ratio(mc1, b1, "p99_ms"),
            f"throughput {mc1} / {b1}": ratio(mc1, b1, "throughput_rps"),
            f"p99 {mcn} / {bn}": ratio(mcn, bn, "p99_ms"),
            f"throughput {mcn} / {bn}": ratio(mcn, bn, "throughput_rps"),
            f"scaling marketcare 1 -> {n} (throughput)": ratio(mcn, mc1, "throughput_rps"),
            f"scaling bare 1 -> {n} (throughput)": ratio(bn, b1, "throughput_rps"),
            **{
                f"throughput {mine} / {mine.replace('marketcare', before)}": ratio(
                    mine, mine.replace("marketcare", before), "throughput_rps"
                )
                for before in (f"marketcare@{args.compare}",)
                if args.compare
                for mine in (mc1, mcn)
            },
        },
        "phases": rows,
    }


def markdown(out: dict[str, Any]) -> str:
    med = out["median"]
    lines = [
        f"Command: `.venv/bin/python {out['command']}` (run {out['run_at']}, "
        f"total {out['total_seconds'] / 60:.1f} min; PostgreSQL {out['machine']['postgresql']}; "
        f"load average at end {' '.join(str(x) for x in out['machine']['load_average_at_end'])})",
        "",
        "| round | servers | p50 | p99 | throughput | server CPU / req | postgres CPU / req "
        "| xids / req | WAL bytes / req | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in out["phases"]:
        lines.append(
            f"| {p['round']} | {p['server']} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms | "
            f"{p['throughput_rps']:.0f}/s | {p['server_cpu_ms_per_request']:.2f} ms | "
            f"{p['postgres_cpu_ms_per_request']:.2f} ms | {p['xids_per_request']:.3f} | "
            f"{p['wal_bytes_per_request']} | {sum(p['errors'].values()) or ''} |"
        )
    lines += [
        "",
        "| median over rounds | p50 | p99 | throughput | server CPU / req | postgres CPU / req "
        "| xids / req | ticks / batch | writer in a write transaction / batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def opt(value: float | None, form: str) -> str:
        return "" if value is None else format(value, form)

    for s, m in med.items():
        lines.append(
            f"| {s} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {m['throughput_rps']:.0f}/s "
            f"| {m['server_cpu_ms_per_request']:.2f} ms | {m['postgres_cpu_ms_per_request']:.2f} ms "
            f"| {m['xids_per_request']:.3f} | {opt(m.get('ticks_per_batch'), '.1f')} "
            f"| {opt(m.get('writer_ms_in_transaction_per_batch'), '.2f')} ms |"
        )
    lines += [""] + [f"* {k}: **{v:.2f}**" for k, v in out["ratios"].items()]
    lines += ["", "pg_stat_activity, client backends per sample (round 1):", ""]
    for p in out["phases"]:
        if p["round"] != 1:
            continue
        act = p["pg_stat_activity"]
        top = ", ".join(f"{k} {v}" for k, v in list(act["backends per sample"].items())[:6])
        lines.append(f"* {p['server']} ({act['samples']} samples): {top}")
        writing = act.get("write transactions open per sample", {})
        if writing:
            lines.append(
                "  * write transactions open per sample: "
                + ", ".join(f"{k} {v}" for k, v in writing.items())
            )
        for q, c in act.get("idle in transaction after (samples)", {}).items():
            lines.append(f"  * idle in transaction after ({c} samples): `{q}`")
        for q, c in act["statements waiting on a lock (samples)"].items():
            lines.append(f"  * waiting on a lock ({c} samples): `{q}`")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve-bare", action="store_true", help="run one bare server (internal)")
    ap.add_argument("--url", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    serve_bare(args.url, args.port)


if __name__ == "__main__":
    main()
