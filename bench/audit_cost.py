"""What complete audit events cost (issue 16): the tick endpoint and the materialiser, with
the code before the change and after it, in the same run.

    .venv/bin/python bench/audit_cost.py                 # full run (~15 min on 2 loaded CPUs)
    .venv/bin/python bench/audit_cost.py --quick         # smoke run (under a minute)
    .venv/bin/python bench/audit_cost.py --before-ref COMMIT

"Before" is the source tree of ``--before-ref`` (default: the commit issue 16 started
from, or ``HEAD`` where this clone does not have it), unpacked with ``git archive``;
"after" is this tree. Each variant gets its own ledger, built by its own code (the same
generated city, ``bench/generate.py``), and its own server process started exactly as
``bench/tick_bench.py`` starts one (``--serve marketcare``), with ``PYTHONPATH`` naming its
``src``. Load phases alternate between the two servers round by round (the one that led
goes second next round), with the load generator of ``tick_bench.py`` (50 closed-loop
clients, one keep-alive connection each, an in-range reading per tick). The materialiser
is timed in a fresh process per measurement, alternating too: one day of the city
written onto a copy of a ledger materialised up to that day. Ratios are after / before
of the medians. Results: a table on stdout and ``bench/out/audit_cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "audit_cost.json"
#: the commit issue 16 started from (main after issues 10 and 12)
BRANCH_POINT = "bfa906a"
#: what the tick and materialiser may cost more than before (issue 16)
BUDGET = 1.10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def unpack_before(ref: str, into: Path) -> str:
    """The source tree of ``ref`` in ``into`` (src/ and bench/); returns the commit used."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except subprocess.CalledProcessError:
        log(f"{ref} is not in this clone: comparing HEAD with itself")
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src", "bench"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def env_for(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env["PYTHONPATH"] = str(tree / "src")
    return env


def run_in(tree: Path, *args: str) -> str:
    """This script, in a fresh process that imports the package from ``tree``."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), *args],
        env=env_for(tree),
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


# ---------------------------------------------------------------- inside a variant's process


def _tick_bench(tree: Path) -> Any:
    sys.path.insert(0, str(tree / "bench"))
    import tick_bench

    return tick_bench


def build_tick_ledger(tree: Path, folder: Path, markets: int, clients: int) -> None:
    tb = _tick_bench(tree)
    managers, info = tb.build_ledger(folder / "ledger.db", markets, clients)
    (folder / "managers.json").write_text(
        json.dumps({"managers": [asdict(m) for m in managers], "info": info}), encoding="utf-8"
    )


def build_materialise_base(tree: Path, db: Path, markets: int) -> None:
    tb = _tick_bench(tree)
    import generate
    from marketcare.domain.schedules import load_texts
    from marketcare.ledger.db import make_engine, migrate
    from marketcare.ledger.materialise import materialise

    schedule = load_texts(generate.city_texts(markets, 12), default_timezone=tb.ZONE)
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    start = tb.DAY_START - timedelta(days=1)
    materialise(engine, schedule, now=start, horizon=timedelta(days=1), start=start)
    engine.dispose()


def time_materialise(tree: Path, base: Path, work: Path, markets: int) -> None:
    """Print the seconds one day's materialisation takes on a fresh copy of ``base``."""
    tb = _tick_bench(tree)
    import generate
    from marketcare.domain.schedules import load_texts
    from marketcare.ledger.db import make_engine
    from marketcare.ledger.materialise import materialise

    schedule = load_texts(generate.city_texts(markets, 12), default_timezone=tb.ZONE)
    shutil.copyfile(base, work)
    engine = make_engine(f"sqlite:///{work}")
    with engine.connect() as conn:  # open the file and warm the connection, not timed
        conn.exec_driver_sql("SELECT count(*) FROM obligations").all()
    t0, c0 = time.perf_counter(), time.process_time()
    result = materialise(engine, schedule, now=tb.DAY_START, horizon=timedelta(days=1))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.dispose()
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "created": result.created}))


# ---------------------------------------------------------------- the comparison


def tick_rounds(trees: dict[str, Path], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    tb = _tick_bench(ROOT)
    managers: dict[str, list[Any]] = {}
    info: dict[str, Any] = {}
    servers: dict[str, Any] = {}
    try:
        for name, tree in trees.items():
            folder = tmp / f"tick-{name}"
            folder.mkdir()
            log(f"tick: building the {name} ledger ({args.markets} markets x 12 areas)")
            run_in(
                tree,
                "--build-tick",
                str(folder),
                "--markets",
                str(args.markets),
                "--clients",
                str(args.clients),
            )
            data = json.loads((folder / "managers.json").read_text(encoding="utf-8"))
            managers[name] = [tb.Manager(**m) for m in data["managers"]]
            for m in managers[name]:
                m.todo = [(int(i), b) for i, b in m.todo]
            info[name] = data["info"]
            need = (args.warmup + args.requests) * args.rounds
            if need > info[name]["open and tickable through the API"] * 0.9:
                raise SystemExit(f"{need} ticks need more open obligations: use more --markets")
            port = tb.free_port()
            cmd = [sys.executable, str(tree / "bench" / "tick_bench.py"), "--serve", "marketcare"]
            cmd += ["--db", str(folder / "ledger.db"), "--port", str(port)]
            cmd += ["--clock", tb.CLOCK.isoformat()]
            proc = subprocess.Popen(
                cmd,
                cwd=folder,
                env=env_for(tree),
                stderr=open(folder / "server.log", "wb"),  # noqa: SIM115
            )
            servers[name] = _wait(tb, tb.Server(name, port, proc), folder)
        phases: dict[str, list[Any]] = {name: [] for name in trees}
        order = list(trees)
        load_args = argparse.Namespace(
            warmup=args.warmup, requests=args.requests, clients=args.clients, httpx=False
        )
        for rnd in range(1, args.rounds + 1):
            for name in order if rnd % 2 else order[::-1]:
                phase = asyncio.run(tb.load(servers[name], rnd, managers[name], load_args))
                if phase.errors:
                    raise SystemExit(f"{name}: requests failed: {phase.errors}")
                phases[name].append(phase)
                s = phase.summary()
                log(
                    f"tick round {rnd} {name}: p50 {s['p50_ms']} ms, {s['throughput_rps']}/s, "
                    f"server CPU {s['server_cpu_ms_per_request']} ms/tick"
                )
    finally:
        for srv in servers.values():
            srv.proc.terminate()
            srv.proc.wait(timeout=15)

    def med(name: str, key: str) -> float:
        return round(statistics.median(p.summary()[key] for p in phases[name]), 2)

    keys = ("p50_ms", "p99_ms", "throughput_rps", "server_cpu_ms_per_request")
    figures = {name: {k: med(name, k) for k in keys} for name in trees}
    return {
        "figures": figures,
        "server CPU ratio": round(
            figures["after"]["server_cpu_ms_per_request"]
            / figures["before"]["server_cpu_ms_per_request"],
            3,
        ),
        "p50 ratio": round(figures["after"]["p50_ms"] / figures["before"]["p50_ms"], 3),
        "throughput ratio": round(
            figures["after"]["throughput_rps"] / figures["before"]["throughput_rps"], 3
        ),
        "obligations": info["after"]["obligations"],
    }


def _wait(tb: Any, server: Any, folder: Path) -> Any:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} server exited: see {folder / 'server.log'}")
        try:
            httpx.get(f"{server.base}/", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{server.name} server did not start")


def materialise_rounds(
    trees: dict[str, Path], tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    bases = {}
    for name, tree in trees.items():
        bases[name] = tmp / f"materialise-{name}.db"
        log(f"materialise: building the {name} base ledger ({args.mat_markets} markets)")
        run_in(tree, "--build-base", str(bases[name]), "--markets", str(args.mat_markets))
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    created = 0
    order = list(trees)
    for rnd in range(args.mat_repeat + 1):  # the first round warms the page cache, discarded
        for name in order if rnd % 2 else order[::-1]:
            out = run_in(
                trees[name],
                "--time-materialise",
                str(bases[name]),
                "--work",
                str(tmp / f"work-{name}.db"),
                "--markets",
                str(args.mat_markets),
            )
            got = json.loads(out.strip().splitlines()[-1])
            created = got["created"]
            if rnd:
                seconds[name].append(got["seconds"])
                cpu[name].append(got["cpu"])
                log(
                    f"materialise round {rnd} {name}: {got['seconds']:.3f} s, "
                    f"CPU {got['cpu']:.3f} s"
                )
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    cpu_medians = {name: statistics.median(v) for name, v in cpu.items()}
    return {
        "obligations in the day": created,
        "seconds (median)": {k: round(v, 4) for k, v in medians.items()},
        "cpu seconds (median)": {k: round(v, 4) for k, v in cpu_medians.items()},
        "ratio": round(medians["after"] / medians["before"], 3),
        "cpu ratio": round(cpu_medians["after"] / cpu_medians["before"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before-ref", default=BRANCH_POINT)
    ap.add_argument("--quick", action="store_true", help="small city, few requests, one round")
    ap.add_argument("--markets", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--mat-markets", type=int, default=1000)
    ap.add_argument("--mat-repeat", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-tick", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-base", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--time-materialise", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_tick:
        return build_tick_ledger(args.tree, args.build_tick, args.markets, args.clients)
    if args.build_base:
        return build_materialise_base(args.tree, args.build_base, args.markets)
    if args.time_materialise:
        return time_materialise(args.tree, args.time_materialise, args.work, args.markets)
    if args.quick:
        args.markets, args.clients, args.warmup, args.requests, args.rounds = 20, 5, 10, 40, 1
        args.mat_markets, args.mat_repeat = 20, 1
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="audit-cost-"))
    try:
        commit = unpack_before(args.before_ref, tmp / "before")
        trees = {"before": tmp / "before", "after": ROOT}
        tick = tick_rounds(trees, tmp, args)
        mat = materialise_rounds(trees, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "command": "bench/audit_cost.py" + (" --quick" if args.quick else ""),
        "before": commit,
        "load average": [round(x, 1) for x in os.getloadavg()],
        "tick": tick,
        "materialise": mat,
        "total seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    f = tick["figures"]
    print(
        "| | before | after | after / before |\n|---|---:|---:|---:|\n"
        f"| tick p50 (ms) | {f['before']['p50_ms']} | {f['after']['p50_ms']} | "
        f"{tick['p50 ratio']} |\n"
        f"| tick throughput (/s) | {f['before']['throughput_rps']} | "
        f"{f['after']['throughput_rps']} | {tick['throughput ratio']} |\n"
        f"| tick: server CPU per tick (ms) | {f['before']['server_cpu_ms_per_request']} | "
        f"{f['after']['server_cpu_ms_per_request']} | {tick['server CPU ratio']} |\n"
        f"| materialise one day (s) | {mat['seconds (median)']['before']} | "
        f"{mat['seconds (median)']['after']} | {mat['ratio']} |\n"
        f"| materialise one day: CPU (s) | {mat['cpu seconds (median)']['before']} | "
        f"{mat['cpu seconds (median)']['after']} | {mat['cpu ratio']} |\n"
        f"\nbefore = {commit[:10]}, load average {out['load average']}, "
        f"{out['total seconds']} s"
    )


if __name__ == "__main__":
    main()
