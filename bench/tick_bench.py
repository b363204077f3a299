"""The tick endpoint under 50 concurrent clients, against a bare Starlette + SQLite insert.

    .venv/bin/python bench/tick_bench.py                 # full run (~5 min on 2 CPUs)
    .venv/bin/python bench/tick_bench.py --quick         # smoke run (small city, few requests)
    .venv/bin/python bench/tick_bench.py --postgresql --daemons 3   # on PostgreSQL: bench/tick_pg.py

Two servers run, each in its own process, with the same uvicorn settings as marketcare's
``WebServer`` (one process, asyncio loop, h11, no access log):

* **marketcare**: ``marketcare.web.create_app(settings, engine)`` over a ledger built by the
  project itself (``make_engine``: WAL, ``synchronous=FULL``; the real migration): the
  benchmark city of ``bench/generate.py`` (``--markets`` x 12 areas, 32 tasks) materialised
  for Monday 2026-06-01 and swept at 20:00 local, the clock of the app fixed at that
  moment, so that tens of thousands of obligations are open. 50 market managers, each
  with an API token and 1/50 of the markets.
* **bare** (baseline, ``bench/bare_app.py``): a Starlette endpoint on the same path that
  parses the JSON body and does one ``INSERT`` in one ``BEGIN IMMEDIATE`` transaction on a
  pooled ``sqlite3`` connection with the same pragmas, in a worker thread, on the same file
  system.

The load generator (this process) runs 50 closed-loop clients (asyncio, one
``httpx.AsyncClient`` limited to 50 connections); client *i* is manager *i* with its own
token and ticks a different open obligation of its own markets on every request, with an
in-range reading for each of the checklist's readings. Each phase is ``--warmup``
requests (discarded) then ``--requests`` measured ones; latency is measured per request
from send to full response, throughput is measured requests / wall time of the phase.
Rounds alternate the order of the two servers (bare first, then marketcare first, ...) so
the machine's noise hits both; the median over rounds of each figure is reported, and the
ratios are taken between those medians. Results: a table on stdout and
``bench/out/tick.json``.

After the rounds, **the web app alone** (``app_alone``): the ASGI app called in-process
without a server, its tick writer answering at once, so the event loop's own CPU per tick
is measured on one thread's CPU clock (today's code and, with ``--compare``, the other
revision's, taking turns ``--app-rounds`` times; ``--app-rounds 0`` leaves it out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
#: where results go (``BENCH_OUT`` moves them: the test suite's smoke runs do)
OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "tick.json"
ZONE = "Asia/Shanghai"
#: the day of bench/run.py (a Monday and a xun day: every task kind has obligations)
DAY_START = datetime(2026, 6, 1, tzinfo=ZoneInfo(ZONE)).astimezone(UTC)
#: 20:00 local: the markets have closed, the day's disinfections are open
CLOCK = DAY_START + timedelta(hours=20)
PATH = "/api/v1/obligations/{id}/completions"
#: what marketcare's WebServer passes to uvicorn (both servers get exactly this)
UVICORN: dict[str, Any] = {
    "host": "127.0.0.1",
    "log_config": None,
    "access_log": False,
    "proxy_headers": True,
    "server_header": False,
    "timeout_graceful_shutdown": 5,
}
P99_TARGET_S = 0.100
THROUGHPUT_TARGET = 0.8


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the marketcare server


def serve_marketcare(args: argparse.Namespace) -> None:
    """Run in the server process: the real app over the prepared ledger, clock fixed."""
    import uvicorn
    from starlette.requests import Request

    import bare_app  # its GC counter starts with the process
    from marketcare.ledger.db import make_engine
    from marketcare.settings import Settings
    from marketcare.web.app import create_app

    db = Path(args.db)
    url = args.url or f"sqlite:///{db}"
    engine = make_engine(url)
    settings = Settings(
        database_url=url,
        schedules_dir=db.parent / "schedules",
        exports_dir=db.parent / "exports",
        evidence_dir=db.parent / "evidence",
        web_port=args.port,
    )
    clock = datetime.fromisoformat(args.clock)
    for name in args.experiment or []:
        EXPERIMENTS[name](engine)
        print(f"experiment applied in the server: {name}", file=sys.stderr, flush=True)
    app = create_app(settings, engine, clock=lambda: clock)
    inner, tokens = app, args.threads
    batches = count_batches(engine)

    async def served(scope: Any, receive: Any, send: Any) -> None:
        """The app, and ``GET /_bench/gc`` (the full collections so far) beside it."""
        if scope["type"] == "http" and scope["path"] == "/_bench/gc":
            response = await bare_app.gc_stats(Request(scope, receive))
            await response(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/_bench/writer":
            from starlette.responses import JSONResponse

            await JSONResponse({"batches": batches[0]})(scope, receive, send)
            return
        if tokens:  # anyio's default is 40 worker threads for sync endpoints
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = tokens
        await inner(scope, receive, send)

    uvicorn.run(served, port=args.port, **UVICORN)


def count_batches(engine: Any) -> list[int]:
    """The tick writer's batches so far, counted where every revision's writer reads a
    batch's earlier tokens (``token IN (…)``, once per batch), for ``GET /_bench/writer``."""
    import threading

    from sqlalchemy import event

    batches = [0]

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if (
            statement.startswith("SELECT completions.id")
            and "completions.token IN" in statement
            and threading.current_thread().name == "tick-writer"
        ):
            batches[0] += 1

    event.listen(engine, "before_cursor_execute", seen)
    return batches


def app_alone(args: argparse.Namespace) -> None:
    """Run in a child process: the web app's own CPU per tick, on one thread.

    The app is called as an ASGI callable (no HTTP server, no socket), one request at a
    time, and its ``TickWriter`` is replaced by one that answers at once without writing:
    what is left is the event loop's share of a tick (middleware, routing, FastAPI's
    dependencies and validation, the endpoint, the answer), measured as the thread's CPU
    time per block of requests. A CPU clock of one thread is less disturbed by other
    processes than the served rounds' throughput; the least of the blocks is printed as
    JSON on stdout.
    """
    from concurrent.futures import Future

    from marketcare.domain.obligations import State
    from marketcare.ledger.db import make_engine
    from marketcare.ledger.tick import TickResult
    from marketcare.settings import Settings
    from marketcare.web.app import create_app

    db = Path(args.db)
    url = f"sqlite:///{db}"
    settings = Settings(
        database_url=url,
        schedules_dir=db.parent / "schedules",
        exports_dir=db.parent / "exports",
        evidence_dir=db.parent / "evidence",
        web_port=1,
    )
    clock = datetime.fromisoformat(args.clock)
    app = create_app(settings, make_engine(url), clock=lambda: clock)

    class Answering:
        def submit(self, request: Any) -> Future[Any]:  # what older revisions call
            done: Future[Any] = Future()
            done.set_result(TickResult(request.obligation_id, State.DONE, True, 1, "done"))
            return done

        def submit_awaitable(self, request: Any) -> asyncio.Future[Any]:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(TickResult(request.obligation_id, State.DONE, True, 1, "done"))
            return done

    app.state.tick_writer = Answering()
    body = args.body.encode()
    path = PATH.format(id=args.obligation)
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {args.token}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def tick() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [201]:
            raise SystemExit(f"the tick answered {status}")

    async def measure() -> list[float]:
        for _ in range(50):  # the token read once, every code path warm
            await tick()
        blocks = []
        for _ in range(args.app_blocks):
            t0 = time.thread_time()
            for _ in range(args.app_per_block):
                await tick()
            blocks.append((time.thread_time() - t0) / args.app_per_block)
        return blocks

    blocks = asyncio.run(measure())
    print(json.dumps({"min_us": min(blocks) * 1e6, "median_us": statistics.median(blocks) * 1e6}))


def _gc_log(_engine: Any) -> None:
    """Experiment: log every garbage collection of generation 2 slower than 5 ms to stderr."""
    import gc

    started: list[float] = []

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and info.get("generation") == 2:
            ms = (time.perf_counter() - started[0]) * 1000
            if ms > 5:
                print(f"gc gen2 {ms:.1f} ms", file=sys.stderr, flush=True)

    gc.callbacks.append(timed)


def _switch_1ms(_engine: Any) -> None:
    """Experiment: the GIL is handed over every 1 ms instead of 5 (``sys.setswitchinterval``)."""
    sys.setswitchinterval(0.001)


EXPERIMENTS = {
    "gc-log": _gc_log,
    "switch-1ms": _switch_1ms,
}


# ---------------------------------------------------------------- building the ledger


@dataclass
class Manager:
    username: str
    token: str
    markets: tuple[str, ...]
    todo: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def _reading_for(bounds: tuple[float | None, float | None] | None) -> float:
    """A value inside the range (the middle when both ends are given)."""
    if bounds is None:
        return 1.0
    lo, hi = bounds
    if lo is not None and hi is not None:
        return (lo + hi) / 2
    if lo is not None:
        return lo + 1
    return hi / 2 if hi is not None and hi > 0 else 0.0


def build_ledger(
    db: Path, markets: int, clients: int, url: str | None = None
) -> tuple[list[Manager], dict[str, Any]]:
    """The city ledger in the SQLite file ``db``, or in the database at ``url`` if given."""
    sys.path.insert(0, str(HERE))
    import generate
    from marketcare.domain.access import Role
    from marketcare.domain.checklists import checklist_of
    from marketcare.domain.schedules import load_texts
    from marketcare.ledger import accounts
    from marketcare.ledger.db import make_engine, migrate
    from marketcare.ledger.materialise import materialise
    from marketcare.ledger.sweep import sweep_all

    t0 = time.perf_counter()
    texts = generate.city_texts(markets, 12)
    schedule = load_texts(texts, default_timezone=ZONE)
    engine = make_engine(url or f"sqlite:///{db}")
    migrate(engine)
    start = DAY_START - timedelta(days=1)
    made = materialise(engine, schedule, now=start, horizon=timedelta(days=2), start=start)
    sweep_all(engine, now=CLOCK)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT o.id, o.market_id, o.task_id, a.kind FROM obligations o "
            "LEFT JOIN areas a ON a.market_id = o.market_id AND a.id = o.area_id "
            "WHERE o.state = 'open' ORDER BY o.due_at, o.id"
        ).all()
        states: dict[str, int] = dict(
            conn.exec_driver_sql("SELECT state, count(*) FROM obligations GROUP BY state").all()
        )
    todo: dict[str, list[tuple[int, dict[str, Any]]]] = {m.id: [] for m in schedule.markets}
    skipped = 0
    for ob_id, market_id, task_id, kind in rows:
        checklist = checklist_of(schedule, task_id, kind)
        if any(t.required for t in checklist.texts):
            skipped += 1  # the benchmark sends no free texts
            continue
        readings = {r.id: _reading_for(r.range) for r in checklist.readings}
        todo[market_id].append((int(ob_id), {"readings": readings}))
    # markets dealt out so that every manager has about as many open obligations
    shares: list[list[str]] = [[] for _ in range(clients)]
    load = [0] * clients
    for market_id in sorted(todo, key=lambda m: (-len(todo[m]), m)):
        i = load.index(min(load))
        shares[i].append(market_id)
        load[i] += len(todo[market_id])
    managers: list[Manager] = []
    for i, mine in enumerate(shares):
        name = f"mgr{i:03d}"
        uid = accounts.add_user(
            engine,
            accounts.NewUser(name, f"bench {name}", Role.MANAGER, "bench password 1", tuple(mine)),
            now=CLOCK,
        )
        token = accounts.create_token(engine, uid, "bench", now=CLOCK)[1]
        mgr = Manager(name, token, tuple(mine))
        mgr.todo = [t for m in mine for t in todo[m]]
        mgr.todo.reverse()  # pop() takes the earliest due first
        managers.append(mgr)
    engine.dispose()
    if url is None:
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    info = {
        "markets": markets,
        "areas": markets * 12,
        "obligations": sum(states.values()),
        "states at the clock": states,
        "open and tickable through the API": len(rows) - skipped,
        "schedule sources (bytes)": sum(len(t.encode()) for t in texts.values()),
        "obligations materialised (the day before and the day)": made.created,
        "built in (s)": round(time.perf_counter() - t0, 1),
    }
    return managers, info


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def source_of(rev: str, tmp: Path) -> Path:
    """The ``src`` folder of git revision ``rev`` (``git archive``, with the sample
    ``schedules`` beside it), to serve the code as it was there beside today's
    (``--compare``); needs the repository's history."""
    out = tmp / f"src-{rev.replace('/', '_')}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src", "schedules"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def start_server(
    name: str,
    cmd: Sequence[str],
    port: int,
    cwd: Path,
    pin: str | None,
    src: Path = ROOT / "src",
) -> Server:
    full = (["taskset", "-c", pin] if pin else []) + list(cmd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(full, cwd=cwd, env=env, stderr=open(cwd / f"{name}.log", "wb"))  # noqa: SIM115
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited: see {cwd / f'{name}.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return Server(name, port, proc)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} server did not start")


# ---------------------------------------------------------------- load


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    server: str
    round: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: dict[str, int]
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    #: the server's full (generation-2) garbage collections during the phase, their time,
    #: and how many objects its oldest generation gained (what survived the requests)
    gen2: int = 0
    gen2_seconds: float = 0.0
    gen2_longest: float = 0.0
    gen2_growth: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        s = sorted(self.latencies)
        return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "round": self.round,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.pct(0.50) * 1000, 2),
            "p90_ms": round(self.pct(0.90) * 1000, 2),
            "p99_ms": round(self.pct(0.99) * 1000, 2),
            "max_ms": round(max(self.latencies) * 1000, 2),
            "server_cpu_ms_per_request": round(self.server_cpu / self.requests * 1000, 2),
            "loadgen_cpu_ms_per_request": round(self.client_cpu / self.requests * 1000, 2),
            "gen2_per_1000": round(self.gen2 / self.requests * 1000, 2),
            "gen2_ms_per_1000": round(self.gen2_seconds / self.requests * 1e6, 1),
            "gen2_longest_ms": round(self.gen2_longest * 1000, 1),
            "gen2_growth_per_1000": round(self.gen2_growth / self.requests * 1000),
            "errors": self.errors,
        }


class Connection:
    """One keep-alive HTTP/1.1 connection: a client that sends, waits, and sends again.

    A dozen lines of asyncio streams instead of httpx: httpx's async pool costs the load
    generator 3.5–6 ms of CPU per request here (``--httpx`` shows it), more than the
    bare server spends, and both share two CPUs; this costs a small fraction of that.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head[9:12])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise SystemExit("chunked responses are not supported by the load generator")
            elif name == "connection" and "close" in value:
                self.writer = None  # the next request opens a new connection
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _phase(
    post: Any, server: str, rnd: int, managers: list[Manager], n: int, synthetic: bool
) -> Phase:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = [10_000_000 * (rnd + 1)]

    async def client(i: int, mgr: Manager, quota: int) -> None:
        for _ in range(quota):
            if synthetic:  # the bare app: any id, the same body shape
                counter[0] += 1
                ob_id, body = counter[0], {"readings": {"chlorine": 1000.0}}
            else:
                if not mgr.todo:
                    raise SystemExit(f"{mgr.username} ran out of open obligations: use --markets")
                ob_id, body = mgr.todo.pop()
            payload = json.dumps({**body, "token": uuid.uuid4().hex, "note": "bench"}).encode()
            t0 = time.perf_counter()
            status, text = await post(i, PATH.format(id=ob_id), payload, mgr.token)
            latencies.append(time.perf_counter() - t0)
            if status != 201:
                key = f"{status} {text[:120]!r}"
                errors[key] = errors.get(key, 0) + 1

    share, extra = divmod(n, len(managers))  # every client does its share (closed loop)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i, m, share + (i < extra)) for i, m in enumerate(managers)))
    return Phase(server, rnd, n, time.perf_counter() - t0, latencies, errors)


async def load(
    server: Server, rnd: int, managers: list[Manager], args: argparse.Namespace
) -> Phase:
    synthetic = server.name.startswith("bare")
    closing: list[Any] = []
    if args.httpx:
        import httpx

        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        http = httpx.AsyncClient(base_url=server.base, limits=limits, timeout=120)

        async def post(i: int, path: str, body: bytes, token: str) -> tuple[int, bytes]:
            r = await http.post(
                path,
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            return r.status_code, r.content

        closing.append(http)
    else:
        conns = [Connection(server.port) for _ in managers]

        async def post(i: int, path: str, body: bytes, token: str) -> tuple[int, bytes]:
            return await conns[i].post(path, body, token)

    try:
        await _phase(post, server.name, rnd, managers, args.warmup, synthetic)
        gc0 = gc_stats(server)
        cpu0, own0 = cpu_seconds(server.proc.pid), time.process_time()
        phase = await _phase(post, server.name, rnd, managers, args.requests, synthetic)
        phase.server_cpu = cpu_seconds(server.proc.pid) - cpu0
        phase.client_cpu = time.process_time() - own0
        with_gc(phase, gc0, gc_stats(server))
        return phase
    finally:
        for h in closing:
            await h.aclose()
        if not args.httpx:
            for c in conns:
                c.close()


def gc_stats(server: Server) -> dict[str, float]:
    """The server's full collections so far (``GET /_bench/gc``, outside the measurement)."""
    import httpx

    got = httpx.get(f"{server.base}/_bench/gc", timeout=60)
    return dict(got.json()) if got.status_code == 200 else {}  # an older server: no figures


def with_gc(phase: Phase, before: dict[str, float], after: dict[str, float]) -> None:
    if "gen2_collections" not in before or "gen2_collections" not in after:
        return  # a server that does not count its collections (another revision's code)
    phase.gen2 = int(after["gen2_collections"] - before["gen2_collections"])
    phase.gen2_seconds = after["gen2_seconds"] - before["gen2_seconds"]
    phase.gen2_longest = after["gen2_longest_seconds"] if phase.gen2 else 0.0
    phase.gen2_growth = int(after["gen2_objects"] - before["gen2_objects"])


def measure_app_alone(
    managers: list[Manager], db: Path, args: argparse.Namespace, sources: dict[str, Path]
) -> dict[str, Any]:
    """The web app's CPU per tick without the server (``app_alone``), for each code in
    ``sources`` (name → its ``src``), the codes taking turns ``args.app_rounds`` times."""
    mgr = managers[0]
    ob_id, body = mgr.todo[-1]
    payload = json.dumps({**body, "token": uuid.uuid4().hex, "note": "bench"})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for _ in range(args.app_rounds):
        for name, src in sources.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
            env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE), env.get("PYTHONPATH", "")])
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "app-alone"]
            cmd += ["--db", str(db), "--clock", CLOCK.isoformat(), "--token", mgr.token]
            cmd += ["--obligation", str(ob_id), "--body", payload]
            cmd += [
                "--app-blocks",
                str(args.app_blocks),
                "--app-per-block",
                str(args.app_per_block),
            ]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"the app alone ({name}) failed: {done.stderr[-2000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        name: {
            "min_us": round(min(r["min_us"] for r in rs), 1),
            "median_us": round(statistics.median(r["median_us"] for r in rs), 1),
            "runs": len(rs),
        }
        for name, rs in runs.items()
    }


#: where a tick's time may go: (label, substring of a py-spy frame "function (file:line)")
PROFILE_PARTS: tuple[tuple[str, str], ...] = (
    ("the tick endpoint on the event loop (`api.complete`)", "complete (marketcare/web/api.py"),
    ("`app.signed_in` (token -> user, cached)", "signed_in (marketcare/web/app.py"),
    ("`accounts.principal_for_token` (a cache miss, in a worker thread)", ";principal_for_token ("),
    (
        "the tick writer thread (`TickWriter._write`: one transaction per batch)",
        "_write (marketcare/ledger/tick.py",
    ),
    ("of which the batch's statements and rule (`_tick_batch`)", "_tick_batch ("),
    ("of which the rule of each tick (`_judge`)", "_judge (marketcare/ledger/tick.py"),
    ("of which SAVEPOINT / RELEASE (a batch written tick by tick)", "_savepoint_impl ("),
    ("`versions.schedule_of_version` (checklist's schedule)", "schedule_of_version ("),
    ("`audit.append` (hash chain, once per batch)", "append (marketcare/ledger/audit.py"),
    ("SQLite `COMMIT` (WAL write + fsync)", "do_commit ("),
    ("SQLAlchemy statement compile", "_compiler ("),
    ("FastAPI request validation / body", "solve_dependencies ("),
    ("FastAPI response serialisation", "serialize_response ("),
    ("event loop thread (uvicorn h11, middleware, FastAPI)", "Handle._run ("),
    ("garbage collection (any generation)", "gc_collect"),
)


def profile(server: Server, managers: list[Manager], args: argparse.Namespace, tmp: Path) -> Any:
    """Sample the marketcare server with py-spy during one more measured phase."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return None
    raw = tmp / "profile.txt"
    cmd = [spy, "record", "-p", str(server.proc.pid), "-r", "200", "--format", "raw"]
    cmd += ["-o", str(raw), "--gil"]
    spy_log = open(tmp / "py-spy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=spy_log, stderr=spy_log)
    time.sleep(1.5)
    phase = asyncio.run(load(server, 0, managers, args))
    proc.send_signal(2)
    proc.wait(timeout=60)
    if not raw.exists():
        log(f"py-spy wrote no profile: {(tmp / 'py-spy.log').read_text()[-500:]}")
        return None
    total = 0
    parts = dict.fromkeys((label for label, _ in PROFILE_PARTS), 0)
    leaves: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, needle in PROFILE_PARTS:
            if needle in stack:
                parts[label] += n
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + n
    cpu_ms = phase.server_cpu / phase.requests * 1000
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:15]
    return {
        "samples": total,
        "requests": phase.requests,
        "server_cpu_ms_per_request": round(cpu_ms, 2),
        "throughput_rps": round(phase.throughput, 1),
        "parts": {
            k: {"share": round(v / total, 3), "ms_per_request": round(v / total * cpu_ms, 2)}
            for k, v in parts.items()
        }
        if total
        else {},
        "top_own": [{"frame": k, "share": round(v / total, 3)} for k, v in top] if total else [],
    }


# ---------------------------------------------------------------- report


def median_of(phases: list[Phase], key: str) -> float:
    return float(statistics.median(p.summary()[key] for p in phases))


#: the baselines, with what each one is (the docs' table says why the floor is the floor)
BASELINES = {
    "bare": "writers racing in SQLite's busy handler, a transaction each",
    "bare-lock": "writers serialised by a lock, a transaction each (the target's baseline)",
    "bare-group": "writers serialised with group commit: a transaction per waiting batch",
}
#: the baseline of the throughput target
FLOOR = "bare-lock"


def report(
    phases: list[Phase], info: dict[str, Any], args: argparse.Namespace, elapsed: float
) -> dict[str, Any]:
    names = list(dict.fromkeys(p.server for p in phases))
    by = {s: [p for p in phases if p.server == s] for s in names}
    keys = (
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "throughput_rps",
        "server_cpu_ms_per_request",
        "loadgen_cpu_ms_per_request",
        "gen2_per_1000",
        "gen2_ms_per_1000",
        "gen2_growth_per_1000",
    )
    med = {s: {k: median_of(ps, k) for k in keys} for s, ps in by.items()}
    mc = med["marketcare"]
    ratios: dict[str, Any] = {}
    for base in (b for b in BASELINES if b in med):
        ratios[base] = {
            "throughput": round(mc["throughput_rps"] / med[base]["throughput_rps"], 3),
            "p99": round(mc["p99_ms"] / med[base]["p99_ms"], 2),
            "cpu": round(
                mc["server_cpu_ms_per_request"] / med[base]["server_cpu_ms_per_request"], 2
            ),
            "per round": [
                round(m.throughput / b.throughput, 3)
                for m, b in zip(by["marketcare"], by[base], strict=True)
            ],
        }
    for before in (n for n in names if n.startswith(("marketcare@", "marketcare+"))):
        ratios[before] = {
            "throughput": round(mc["throughput_rps"] / med[before]["throughput_rps"], 3),
            "p99": round(mc["p99_ms"] / med[before]["p99_ms"], 2),
            "cpu": round(
                mc["server_cpu_ms_per_request"] / med[before]["server_cpu_ms_per_request"], 2
            ),
            "per round": [
                round(m.throughput / b.throughput, 3)
                for m, b in zip(by["marketcare"], by[before], strict=True)
            ],
        }
    floor = ratios.get(FLOOR, {}).get("throughput")
    return {
        "command": " ".join(["bench/tick_bench.py", *sys.argv[1:]]),
        "run_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "total_seconds": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "load_average_at_start": info.get("load average at start"),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "pinned": args.pin,
        },
        "setup": {
            **info,
            "clients": args.clients,
            "warmup_requests": args.warmup,
            "measured_requests": args.requests,
            "rounds": args.rounds,
            "experiments": (args.experiment or [])
            + ([f"threads={args.threads}"] if args.threads else []),
        },
        "median": med,
        "ratios": ratios,
        "targets": {
            "p99 < 100 ms": mc["p99_ms"] < P99_TARGET_S * 1000,
            f"throughput >= {THROUGHPUT_TARGET} x {FLOOR}": floor is not None
            and floor >= THROUGHPUT_TARGET,
        },
        "phases": [p.summary() for p in phases],
        "profile": None,
    }


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def markdown(out: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md ("Tick endpoint under 50 concurrent clients")."""
    med, ratios, m = out["median"], out["ratios"], out["machine"]
    setup = out["setup"]
    load0 = " ".join(f"{x:.2f}" for x in m["load_average_at_start"] or [])
    load1 = " ".join(f"{x:.2f}" for x in m["load_average_at_end"])
    lines = [
        f"Command: `.venv/bin/python {out['command']}` (run {out['run_at']}, "
        f"{out['total_seconds'] / 60:.1f} min; load average at start {load0}, at end {load1}; "
        f"{setup['markets']} markets, {setup['clients']} clients, "
        f"{setup['warmup_requests']} + {setup['measured_requests']} requests per phase, "
        f"{setup['rounds']} round(s))",
        "",
        "| round | server | p50 | p90 | p99 | max | throughput | server CPU / req "
        "| full GCs / 1,000 req | their time / 1,000 req | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in out["phases"]:
        lines.append(
            f"| {p['round']} | {p['server']} | {p['p50_ms']:.1f} ms | {p['p90_ms']:.1f} ms | "
            f"{p['p99_ms']:.1f} ms | {p['max_ms']:.1f} ms | {p['throughput_rps']:.0f}/s | "
            f"{p['server_cpu_ms_per_request']:.2f} ms | {p['gen2_per_1000']:.2f} | "
            f"{p['gen2_ms_per_1000']:.1f} ms | {sum(p['errors'].values()) or ''} |"
        )
    lines += [
        "",
        "| median over rounds | p50 | p99 | throughput | server CPU / req | full GCs / 1,000 req "
        "| oldest generation grew / 1,000 req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, v in med.items():
        lines.append(
            f"| {s} | {v['p50_ms']:.1f} ms | {v['p99_ms']:.1f} ms | {v['throughput_rps']:.0f}/s "
            f"| {v['server_cpu_ms_per_request']:.2f} ms | {v['gen2_per_1000']:.2f} "
            f"| {v['gen2_growth_per_1000']:+.0f} objects |"
        )
    lines += [
        "",
        "| marketcare against | what it is | throughput | p99 | server CPU / req |",
        "|---|---|---:|---:|---:|",
    ]
    for base, r in ratios.items():
        rounds = ", ".join(f"{x:.2f}" for x in r["per round"])
        what = BASELINES.get(base) or (
            f"marketcare at {base.partition('@')[2]} (before)"
            if "@" in base
            else f"today's code with the experiment {base.partition('+')[2]}"
        )
        lines.append(
            f"| {base} | {what} | **{r['throughput']:.2f}×** (rounds {rounds}) "
            f"| {r['p99']:.2f}× | {r['cpu']:.2f}× |"
        )
    mc = med["marketcare"]
    floor = ratios.get(FLOOR, {}).get("throughput")
    lines += [
        "",
        "| target | result | verdict |",
        "|---|---|---|",
        f"| p99 < 100 ms at {setup['clients']} clients | {mc['p99_ms']:.1f} ms "
        f"| {_met(out['targets']['p99 < 100 ms'])} |",
        f"| throughput ≥ {THROUGHPUT_TARGET} × {FLOOR} | "
        + ("not measured" if floor is None else f"{floor:.2f}×")
        + f" | {_met(floor is not None and floor >= THROUGHPUT_TARGET)} |",
    ]
    alone = out.get("app_alone")
    if alone:
        first = next(iter(alone.values()))
        lines += [
            "",
            "The web app alone (`app_alone`: the ASGI app called in-process, one tick at a "
            "time, its writer answering at once; CPU time of the event loop's thread, "
            f"{out['setup']['app_alone_blocks']}):",
            "",
            "| web app alone | CPU per tick (least block) | median block | against the first |",
            "|---|---:|---:|---:|",
        ]
        for name, v in alone.items():
            lines.append(
                f"| {name} | {v['min_us']:.0f} µs | {v['median_us']:.0f} µs "
                f"| {v['min_us'] / first['min_us']:.2f}× |"
            )
    prof = out.get("profile")
    if prof:
        lines += [
            "",
            f"py-spy profile of the marketcare server over {prof['requests']} more ticks "
            f"({prof['samples']} samples at 200 Hz of the thread holding the GIL; "
            f"{prof['server_cpu_ms_per_request']:.2f} ms of server CPU per tick, "
            f"{prof['throughput_rps']:.0f}/s under the profiler):",
            "",
            "| part of a tick | share of samples | ≈ CPU ms per tick |",
            "|---|---:|---:|",
        ]
        for k, v in prof["parts"].items():
            lines.append(f"| {k} | {v['share'] * 100:.0f} % | {v['ms_per_request']:.2f} |")
        lines += ["", "| leaf frame (own time) | share |", "|---|---:|"]
        for x in prof["top_own"][:10]:
            lines.append(f"| `{x['frame']}` | {x['share'] * 100:.1f} % |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--markets", type=int, default=2000, help="city size (x 12 areas)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in seconds: 40 markets, 10 clients, 20 + 100 requests, 1 round, no profile",
    )
    ap.add_argument(
        "--pin",
        metavar="CPUS",
        help="taskset: the servers on these CPUs (e.g. 0), the load generator on the others",
    )
    ap.add_argument(
        "--experiment",
        action="append",
        choices=sorted(EXPERIMENTS),
        help="monkeypatch a proposed fix into the marketcare server (not into src/)",
    )
    ap.add_argument(
        "--no-bare-lock",
        dest="bare_lock",
        action="store_false",
        help="leave out the serialised baselines (bare-lock, bare-group): bare only",
    )
    ap.add_argument(
        "--httpx",
        action="store_true",
        help="load with httpx.AsyncClient instead of the built-in keep-alive connections",
    )
    ap.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the py-spy profile of the marketcare server after the rounds",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="experiment: the marketcare server's worker-thread pool size (anyio default 40)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        choices=sorted(EXPERIMENTS),
        help="also serve today's code with this experiment applied, in every round",
    )
    ap.add_argument(
        "--compare",
        metavar="REV",
        help="also serve marketcare as it was at git revision REV (git archive) in every round",
    )
    ap.add_argument("--tmpdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, help=f"default {OUT} ({OUT.parent / 'tick_pg.json'} on PG)")
    ap.add_argument(
        "--postgresql",
        action="store_true",
        help="on a throwaway PostgreSQL server, 1 and --daemons server processes (bench/tick_pg.py)",
    )
    ap.add_argument(
        "--daemons", type=int, default=3, help="with --postgresql: marketcare processes sharing it"
    )
    ap.add_argument(
        "--no-durability",
        dest="durable",
        action="store_false",
        help="with --postgresql: fsync, synchronous_commit and full_page_writes off",
    )
    ap.add_argument(
        "--app-rounds",
        type=int,
        default=3,
        help="the web app alone, without the server: runs of each code, taking turns",
    )
    ap.add_argument("--app-blocks", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--app-per-block", type=int, default=500, help=argparse.SUPPRESS)
    ap.add_argument("--serve", choices=["marketcare", "app-alone"], help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--obligation", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--clock", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "app-alone":
        app_alone(args)
        return
    if args.serve:
        serve_marketcare(args)
        return
    if args.quick:
        args.markets, args.warmup, args.requests, args.rounds = 40, 20, 100, 1
        args.clients, args.profile = 10, False
        args.app_rounds, args.app_blocks, args.app_per_block = 1, 2, 50
    if args.postgresql:
        sys.path.insert(0, str(HERE))
        import tick_pg

        tick_pg.run(args)
        return
    args.out = args.out or OUT
    profile_requests = min(args.requests, 1000)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tick-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    compare_src: Path | None = None
    try:
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            server_cpus = {int(c) for c in args.pin.split(",")}
            rest = [c for c in cpus if c not in server_cpus] or cpus
            os.sched_setaffinity(0, rest)
            log(f"servers pinned to CPU {args.pin}, load generator to CPU {rest}")
        log(f"building the ledger: {args.markets} markets x 12 areas")
        load_at_start = [round(x, 2) for x in os.getloadavg()]
        managers, info = build_ledger(tmp / "ledger.db", args.markets, args.clients)
        info["load average at start"] = load_at_start
        copies = 1 + bool(args.compare) + len(args.variant or [])
        need = (args.warmup + args.requests) * args.rounds * copies
        need += (args.warmup + profile_requests) * args.profile
        have = info["open and tickable through the API"]
        log(f"ledger built in {info['built in (s)']} s: {have} open obligations, {need} needed")
        least = min(len(m.todo) for m in managers)
        if least * args.clients < need + args.rounds * 2 * args.clients:
            raise SystemExit(
                f"a manager has only {least} open obligations for {need // args.clients} "
                "requests: use more --markets"
            )
        py = sys.executable
        mc_port, bare_port = free_port(), free_port()
        mc_cmd = [py, str(Path(__file__).resolve()), "--serve", "marketcare"]
        mc_cmd += ["--db", str(tmp / "ledger.db"), "--port", str(mc_port)]
        mc_cmd += ["--clock", CLOCK.isoformat()]
        for e in args.experiment or []:
            mc_cmd += ["--experiment", e]
        if args.threads:
            mc_cmd += ["--threads", str(args.threads)]
        servers.append(start_server("marketcare", mc_cmd, mc_port, tmp, args.pin))
        for name in args.variant or []:  # today's code with an experiment, in every round
            port = free_port()
            cmd = [py, str(Path(__file__).resolve()), "--serve", "marketcare"]
            cmd += ["--db", str(tmp / "ledger.db"), "--port", str(port)]
            cmd += ["--clock", CLOCK.isoformat(), "--experiment", name]
            servers.append(start_server(f"marketcare+{name}", cmd, port, tmp, args.pin))
        if args.compare:
            # the same ledger file: each phase ticks other obligations, so they can share it
            port = free_port()
            cmd = [py, str(Path(__file__).resolve()), "--serve", "marketcare"]
            cmd += ["--db", str(tmp / "ledger.db"), "--port", str(port)]
            cmd += ["--clock", CLOCK.isoformat()]
            src = compare_src = source_of(args.compare, tmp)
            name = f"marketcare@{args.compare}"
            servers.append(start_server(name, cmd, port, tmp, args.pin, src))
        bare_cmd = [py, str(HERE / "bare_app.py"), "--db", str(tmp / "bare.db")]
        servers.append(
            start_server("bare", [*bare_cmd, "--port", str(bare_port)], bare_port, tmp, args.pin)
        )
        if args.bare_lock:
            for name, flag in (("bare-lock", "--write-lock"), ("bare-group", "--group-commit")):
                port = free_port()
                cmd = [py, str(HERE / "bare_app.py"), "--db", str(tmp / f"{name}.db")]
                servers.append(
                    start_server(name, [*cmd, "--port", str(port), flag], port, tmp, args.pin)
                )
        phases: list[Phase] = []
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(servers)
            order = servers[shift:] + servers[:shift]  # each server leads in turn
            for server in order:
                phase = asyncio.run(load(server, rnd, managers, args))
                phases.append(phase)
                s = phase.summary()
                log(
                    f"round {rnd} {server.name}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                    f"{s['throughput_rps']}/s" + (f", errors {s['errors']}" if s["errors"] else "")
                )
        out = report(phases, info, args, time.perf_counter() - started)
        if args.app_rounds:
            log("the web app alone, without the server")
            sources = {"marketcare": ROOT / "src"}
            if compare_src is not None:
                sources[f"marketcare@{args.compare}"] = compare_src
            out["app_alone"] = measure_app_alone(managers, tmp / "ledger.db", args, sources)
            out["setup"]["app_alone_blocks"] = (
                f"{args.app_rounds} run(s) of each code, {args.app_blocks} blocks of "
                f"{args.app_per_block} ticks each"
            )
            out["total_seconds"] = round(time.perf_counter() - started, 1)
        if args.profile:
            log("profiling the marketcare server with py-spy")
            args.requests = profile_requests
            out["profile"] = profile(servers[0], managers, args, tmp)
            out["total_seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(markdown(out))
        log(f"written {args.out}")
        if any(p.errors for p in phases):
            raise SystemExit("some requests failed: see the errors column")
    finally:
        for srv in servers:
            srv.proc.terminate()
            try:
                srv.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
