"""The office dashboard against the manager's board, for the sample district and a city.

    .venv/bin/python bench/dashboard_bench.py                      # six markets and 1,000 (~5 min)
    .venv/bin/python bench/dashboard_bench.py --compare 92e1b15    # the same beside an older revision
    .venv/bin/python bench/dashboard_bench.py --ticks              # a write before every round
    .venv/bin/python bench/dashboard_bench.py --quick              # smoke run (seconds)

Two ledgers are built with the project's own code, then served each by marketcare's web app
in its own process (``WebServer``'s uvicorn settings, the clock fixed at Wednesday
2026-11-25 19:00 in Quanzhou, when the evening's work is open):

* **district**: the sample schedules (``schedules/``: six markets), a fortnight of history
  simulated by ``ledger.demo.fill`` (``--days``), and a few problems, some past their
  deadline;
* **city**: ``bench/generate.py``'s city (``--markets``, 12 areas each), Monday to Thursday
  materialised and swept at the clock, then nine in ten of what has opened completed (by
  SQL, as ``bench/run.py`` makes its history; the dashboard reads states, not
  completions), and one problem in three markets.

One client signs in as the district office and as the manager of the first market (the
login form, session cookies) and asks, one request at a time and interleaved, for the
office dashboard page (``/office``), the same figures from the API (``/api/v1/dashboard``),
the manager's board (``/m/<market>``) and ``/healthz``; ``--warmup`` rounds are discarded,
then ``--requests`` rounds are measured. Latency is from sending the request to the last
byte. The figures that matter are ratios in the same run: the dashboard's p99 over the
board's p99 (target ≤ 2 for the district), and the city's dashboard p99 (target under
300 ms; an absolute figure, so the load average is printed with it).

The benchmark reads only: with the clock fixed, the app serves the figures it keeps
between requests (``reports.dashboard.Memo``) after the first count. ``--ticks`` writes
before every round, in each server's ledger from the benchmark's process (a completion of
an obligation open at the clock, with its checklist passing; a problem found when the
open ones run out), so every dashboard request finds the ledger changed: the figures of
the markets written to are counted again (the page as it is while managers tick).

With ``--compare REV`` the same ledgers are also served by the code of git revision REV
(``git archive``; needs the repository's history), request for request in the same rounds.
Results: tables on stdout (the tables of docs/benchmarks.md) and ``bench/out/dashboard.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "dashboard.json"
#: Wednesday 25 November 2026, 19:00 in Quanzhou (11:00 UTC): the evening's work is open
AT = "2026-11-25T19:00:00+08:00"
PASSWORD = "correct horse battery"
P99_RATIO_TARGET = 2.0
CITY_P99_TARGET_MS = 300.0
KINDS = ("dashboard page", "dashboard API", "board page", "healthz")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the ledgers


def _users(engine: Any, market: str, at: datetime) -> None:
    from marketcare.domain.access import Role
    from marketcare.ledger import accounts

    accounts.add_user(
        engine, accounts.NewUser("office", "区市场监管", Role.OFFICE, PASSWORD, ()), now=at
    )
    accounts.add_user(
        engine, accounts.NewUser("wang", "王秀兰", Role.MANAGER, PASSWORD, (market,)), now=at
    )


def _problems(engine: Any, markets: list[str], at: datetime, every: int) -> int:
    """One problem in ``every`` markets, every other one past its deadline."""
    from marketcare.ledger import problems

    made = 0
    for i, market in enumerate(markets[::every]):
        found = at - timedelta(days=3 + i % 5)
        problems.add(
            engine,
            problems.NewProblem(
                market_id=market,
                category="sanitation",
                description="水产区地面积水，排水沟未清理",
                found_by="区市场监管 张伟",
                found_at=found,
                deadline=found + timedelta(days=1 if i % 2 else 7),
            ),
            now=found,
        )
        made += 1
    return made


def build_district(db: Path, days: int) -> dict[str, Any]:
    """The sample schedules with ``days`` days of simulated history, as of ``AT``."""
    from marketcare.domain.schedules import load_paths
    from marketcare.ledger import demo
    from marketcare.ledger.db import make_engine, migrate

    at = datetime.fromisoformat(AT)
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    schedule = load_paths([ROOT / "schedules"], default_timezone="Asia/Shanghai")
    made = demo.fill(engine, schedule, days=days, seed=18, now=at, horizon=timedelta(days=2))
    markets = sorted(m.id for m in schedule.markets)
    _users(engine, markets[0], at)
    problems = _problems(engine, markets, at, every=1)
    engine.dispose()
    return {
        "markets": len(markets),
        "board market": markets[0],
        "obligations": made.obligations,
        "days of history": days,
        "problems": problems,
    }


def build_city(db: Path, markets: int) -> dict[str, Any]:
    """The generated city, Monday to Thursday, nine in ten of what opened completed."""
    sys.path.insert(0, str(HERE))
    import sqlalchemy as sa

    import generate
    from marketcare.domain.schedules import load_texts
    from marketcare.ledger.db import make_engine, migrate, write
    from marketcare.ledger.materialise import materialise
    from marketcare.ledger.models import Obligation
    from marketcare.ledger.sweep import sweep_all

    at = datetime.fromisoformat(AT)
    monday = at.replace(hour=0) - timedelta(days=at.weekday())
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    schedule = load_texts(generate.city_texts(markets, 12), default_timezone="Asia/Shanghai")
    made = materialise(engine, schedule, now=monday, horizon=timedelta(days=4), start=monday)
    rng = random.Random(18)
    with write(engine) as conn:
        opened = conn.execute(sa.select(Obligation.id).where(Obligation.opens_at < at)).scalars()
        done = [{"b_id": i} for i in opened if rng.random() < 0.9]
        conn.execute(
            sa.update(Obligation)
            .where(Obligation.id == sa.bindparam("b_id"))
            .values(
                state="done",
                completed_at=Obligation.opens_at,
                state_changed_at=Obligation.opens_at,
            ),
            done,
        )
    sweep_all(engine, now=at)
    ids = sorted(m.id for m in schedule.markets)
    _users(engine, ids[0], at)
    problems = _problems(engine, ids, at, every=3)
    engine.dispose()
    return {
        "markets": markets,
        "board market": ids[0],
        "obligations": made.created,
        "completed by SQL": len(done),
        "problems": problems,
    }


# ---------------------------------------------------------------- the servers


def serve(db: Path, port_file: Path) -> None:
    """Run in the server process: the app over ``db``, clock fixed at ``AT``."""
    from marketcare.ledger.db import make_engine
    from marketcare.settings import Settings
    from marketcare.web.app import WebServer, create_app

    at = datetime.fromisoformat(AT)
    engine = make_engine(f"sqlite:///{db}")
    settings = Settings(
        database_url=str(engine.url),
        schedules_dir=db.parent / "schedules",
        exports_dir=db.parent / "exports",
        evidence_dir=db.parent / "evidence",
        web_port=0,
    )
    server = WebServer(create_app(settings, engine, clock=lambda: at), "127.0.0.1", 0)
    server.start()
    port_file.with_suffix(".tmp").write_text(str(server.port))
    port_file.with_suffix(".tmp").rename(port_file)  # whole, never half-written
    sys.stdin.read()  # until the benchmark closes the pipe
    server.stop()


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    db: Path
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    engine: Any = None

    def write(self, completion: Tick | None, market: str) -> None:
        """One write to this server's ledger by another process, as the daemon's tick
        endpoint or the CLI would make it: a ``completion``, or (when
        the open obligations have run out: the district has a few dozen) a problem
        found in ``market``. Either way the ledger's state moves on."""
        from marketcare.ledger import problems, tick
        from marketcare.ledger.db import make_engine

        at = datetime.fromisoformat(AT)
        if self.engine is None:
            self.engine = make_engine(f"sqlite:///{self.db}")
        if completion is not None:
            oid, readings, items = completion
            tick.tick(
                self.engine, obligation_id=oid, by="wang", now=at, readings=readings, items=items
            )
            return
        problems.add(
            self.engine,
            problems.NewProblem(
                market_id=market,
                category="sanitation",
                description="公厕地面湿滑",
                found_by="区市场监管 张伟",
                found_at=at,
                deadline=at + timedelta(days=1),
            ),
            now=at,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        if self.engine is not None:
            self.engine.dispose()
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(name: str, db: Path, src: Path, tmp: Path) -> Server:
    port_file = db.with_suffix(".port")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(db), "--port-file", str(port_file)],
        stdin=subprocess.PIPE,
        stderr=open(db.with_suffix(".log"), "wb"),  # noqa: SIM115
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server {name} did not start: see {db.with_suffix('.log')}")
        time.sleep(0.1)
    server = Server(name, proc, int(port_file.read_text()), db)
    for user in ("office", "wang"):
        server.clients[user] = sign_in(server.base, user)
    return server


def sign_in(base: str, user: str) -> httpx.Client:
    """A client with the session cookie of ``user`` (the login form, as a browser does)."""
    # idle connections dropped before the server's keep-alive ends (uvicorn: 5 s): a
    # round of the other server's slow pages must not leave a connection it closed
    client = httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(keepalive_expiry=2.0))
    page = client.get("/login")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    data = {"username": user, "password": PASSWORD, "next": "/"}
    if csrf:
        data["csrf_token"] = csrf[1]
    answer = client.post("/login", data=data)
    if answer.status_code not in (200, 303):
        raise SystemExit(f"{user} could not sign in: {answer.status_code}")
    return client


# ---------------------------------------------------------------- the measurement


def request(server: Server, kind: str, market: str) -> tuple[float, int]:
    client, path = {
        "dashboard page": (server.clients["office"], "/office"),
        "dashboard API": (server.clients["office"], "/api/v1/dashboard"),
        "board page": (server.clients["wang"], f"/m/{market}"),
        "healthz": (server.clients["office"], "/healthz"),
    }[kind]
    t0 = time.perf_counter()
    answer = client.get(path)
    took = time.perf_counter() - t0
    if answer.status_code != 200:
        raise SystemExit(f"{server.name}: GET {path} answered {answer.status_code}")
    return took, len(answer.content)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


#: one completion: the obligation, its readings (each at the middle of its range), its items
Tick = tuple[int, dict[str, float], list[str]]


def open_obligations(db: Path) -> list[Tick]:
    """Obligations open at ``AT`` (opened, not done) with a checklist that passes, in a
    fixed random order: what the ``--ticks`` rounds complete, one per round and server."""
    import sqlalchemy as sa

    from marketcare.domain.checklists import checklist_of
    from marketcare.ledger.db import make_engine, read
    from marketcare.ledger.models import AreaRow, Obligation
    from marketcare.ledger.versions import schedule_of_version

    def middle(bounds: tuple[float | None, float | None] | None) -> float:
        low, high = bounds or (None, None)
        return ((low or 0.0) + (high if high is not None else (low or 0.0) + 2)) / 2

    engine = make_engine(f"sqlite:///{db}")
    found: list[Tick] = []
    with read(engine) as conn:
        rows = conn.execute(
            sa.select(Obligation.id, Obligation.task_id, Obligation.version_id, AreaRow.kind)
            .outerjoin(
                AreaRow,
                (AreaRow.market_id == Obligation.market_id) & (AreaRow.id == Obligation.area_id),
            )
            .where(
                Obligation.state == "open",
                Obligation.opens_at <= datetime.fromisoformat(AT),
                Obligation.kind != "reinspection",
            )
        ).all()
        for oid, task, version, area_kind in rows:
            checklist = checklist_of(schedule_of_version(conn, version), task, area_kind)
            if any(t.required for t in checklist.texts):
                continue
            readings = {r.id: middle(r.range) for r in checklist.readings}
            found.append((oid, readings, [t.id for t in checklist.ticks]))
    engine.dispose()
    random.Random(18).shuffle(found)
    return found


def measure(
    servers: list[Server],
    market: str,
    warmup: int,
    rounds: int,
    ticks: list[Tick] | None = None,
) -> dict[str, dict[str, Any]]:
    """``rounds`` interleaved rounds: each server, each kind of request, in turn;
    ``ticks``: before each round's requests one of these obligations is completed in
    each server's ledger (``Server.write``), so every dashboard request finds the
    ledger changed."""
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for i in range(warmup + rounds):
        order = servers if i % 2 == 0 else list(reversed(servers))
        for server in order:
            if ticks is not None:
                server.write(ticks[i] if i < len(ticks) else None, market)
            for kind in KINDS:
                took, size = request(server, kind, market)
                if i >= warmup:
                    times.setdefault((server.name, kind), []).append(took)
                    sizes[(server.name, kind)] = size
    out: dict[str, dict[str, Any]] = {}
    for (name, kind), values in times.items():
        out.setdefault(name, {})[kind] = {
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(pct(values, 0.99) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
            "bytes": sizes[(name, kind)],
            "n": len(values),
        }
    return out


# ---------------------------------------------------------------- report


def markdown(out: dict[str, Any]) -> str:
    load0 = " ".join(f"{x:.2f}" for x in out["load_average_at_start"])
    load1 = " ".join(f"{x:.2f}" for x in out["load_average_at_end"])
    lines = [
        f"Command: `.venv/bin/python {out['command']}` (run {out['run_at']}, "
        f"{out['total_seconds'] / 60:.1f} min; load average at start {load0}, at end {load1}; "
        f"{out['rounds']} measured rounds after {out['warmup']} warm-up rounds)",
        "",
        "| ledger | server | request | p50 | p99 | max | answer |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for ledger, result in out["ledgers"].items():
        for server, kinds in result["latency"].items():
            for kind, v in kinds.items():
                lines.append(
                    f"| {ledger} | {server} | {kind} | {v['p50_ms']:.1f} ms | {v['p99_ms']:.1f} ms "
                    f"| {v['max_ms']:.1f} ms | {v['bytes'] / 1000:.1f} kB |"
                )
    lines += [
        "",
        "| ledger | server | dashboard page p99 ÷ board p99 | dashboard API p99 ÷ board p99 "
        "| dashboard page p99 ÷ `/healthz` p99 |",
        "|---|---|---:|---:|---:|",
    ]
    for ledger, result in out["ledgers"].items():
        for server, r in result["ratios"].items():
            lines.append(
                f"| {ledger} | {server} | **{r['page / board']:.2f}** | {r['api / board']:.2f} "
                f"| {r['page / healthz']:.1f} |"
            )
    lines += ["", "| target | result | verdict |", "|---|---|---|"]
    for target, (result, met) in out["targets"].items():
        lines.append(f"| {target} | {result} | {'**met**' if met else '**not met**'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--markets", type=int, default=1000, help="the city's markets")
    ap.add_argument("--days", type=int, default=14, help="the district's days of history")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300, help="measured rounds")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in seconds: 2 days of history, a city of 20 markets, 3 + 20 rounds",
    )
    ap.add_argument("--compare", metavar="REV", help="also serve the code of git revision REV")
    ap.add_argument(
        "--ticks",
        action="store_true",
        help="complete one open obligation in each ledger before every round: no request "
        "finds the ledger as the one before left it (the figures kept between requests miss)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tmpdir", type=Path)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port_file)
        return
    if args.quick:
        args.days, args.markets, args.warmup, args.requests = 2, 20, 3, 20
    started = time.time()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="dashboard-bench-", dir=args.tmpdir))
    ledgers: dict[str, Any] = {}
    servers: list[Server] = []
    try:
        sys.path.insert(0, str(HERE))
        from tick_bench import source_of

        sources = {"today": ROOT / "src"}
        if args.compare:
            sources[f"at {args.compare}"] = source_of(args.compare, tmp)
        for ledger, build, size in (
            ("district", build_district, args.days),
            ("city", build_city, args.markets),
        ):
            log(f"building the {ledger} ledger")
            t0 = time.perf_counter()
            info = build(tmp / f"{ledger}.db", size)
            info["built in (s)"] = round(time.perf_counter() - t0, 1)
            log(f"{ledger}: {info}")
            running = []
            for name, src in sources.items():
                copy = tmp / f"{ledger}-{name.replace(' ', '-')}.db"
                shutil.copy(tmp / f"{ledger}.db", copy)
                running.append(start(name, copy, src, tmp))
            servers += running
            ticks = open_obligations(tmp / f"{ledger}.db") if args.ticks else None
            latency = measure(running, info["board market"], args.warmup, args.requests, ticks)
            for s in running:
                s.stop()
            servers = [s for s in servers if s not in running]
            ratios = {
                name: {
                    "page / board": k["dashboard page"]["p99_ms"] / k["board page"]["p99_ms"],
                    "api / board": k["dashboard API"]["p99_ms"] / k["board page"]["p99_ms"],
                    "page / healthz": k["dashboard page"]["p99_ms"] / k["healthz"]["p99_ms"],
                }
                for name, k in latency.items()
            }
            ledgers[f"{ledger} ({info['markets']:,} markets)"] = {
                "setup": info,
                "latency": latency,
                "ratios": ratios,
            }
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    district, city = list(ledgers.values())
    ratio = district["ratios"]["today"]["page / board"]
    city_p99 = city["latency"]["today"]["dashboard page"]["p99_ms"]
    out = {
        "command": " ".join(["bench/dashboard_bench.py", *sys.argv[1:]]),
        "run_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "total_seconds": round(time.time() - started, 1),
        "load_average_at_start": list(load0),
        "load_average_at_end": list(os.getloadavg()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "warmup": args.warmup,
        "rounds": args.requests,
        "ticks between rounds": args.ticks,
        "ledgers": ledgers,
        "targets": {
            f"district: dashboard page p99 ≤ {P99_RATIO_TARGET:g} × the board's": (
                f"{ratio:.2f} ×",
                ratio <= P99_RATIO_TARGET,
            ),
            f"city of {args.markets:,} markets: dashboard page p99 < {CITY_P99_TARGET_MS:g} ms": (
                f"{city_p99:.1f} ms",
                city_p99 < CITY_P99_TARGET_MS,
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(out))
    log(f"written {args.out}")


if __name__ == "__main__":
    main()
