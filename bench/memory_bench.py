"""The daemon's memory: resident size when idle, and after an export, for the sample district.

    .venv/bin/python bench/memory_bench.py                      # 3 daemons in turn (~2 min)
    .venv/bin/python bench/memory_bench.py --compare 92e1b15    # beside an older revision's
    .venv/bin/python bench/memory_bench.py --quick              # one daemon (seconds)

Each round starts ``marketcare run`` (the real command: migrations, schedules, scheduler and
web app in one process) on a fresh copy of a ledger made by ``marketcare init`` from the
sample schedules (``schedules/``: six markets), waits until ``/healthz`` answers and
``--settle`` seconds more (the first materialise, sweep and report steps have run), and
reads the process's resident set (``VmRSS``) and its peak (``VmHWM``) from ``/proc``. Then
it asks the API for the week's workbook (``/api/v1/exports/week/…``, the district office's token)
and reads them again. Whether the export libraries are loaded is read from the process's
memory map: pandas and numpy, and lxml (which openpyxl loads when it writes), are C
extensions, so their shared objects show there once imported.

Target (issue 18): idle RSS ≤ 110 MiB. An absolute figure on purpose: memory does not
depend on the machine's load as time does. Results: a table on stdout (the one in
docs/benchmarks.md) and ``bench/out/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "memory.json"
TARGET_MIB = 110.0
LIBRARIES = ("pandas", "numpy", "lxml")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(re.search(rf"{key}:\s+(\d+) kB", text)[1]) / 1024  # type: ignore[index]
        for key in ("VmRSS", "VmHWM")
    }


def loaded(pid: int) -> list[str]:
    """Which of ``LIBRARIES`` have a shared object mapped in the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [lib for lib in LIBRARIES if f"/site-packages/{lib}/" in maps]


def prepare(folder: Path, src: Path) -> str:
    """A ledger made by ``marketcare init`` from the sample schedules of the code in ``src``
    (a revision's own: older code may not read today's), and the district office's API token."""
    shutil.copytree(src.parent / "schedules", folder / "schedules")
    env = environment(folder, src, 0)
    subprocess.run(
        [sys.executable, "-m", "marketcare.cli", "init"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    code = (
        "from datetime import datetime, UTC\n"
        "from marketcare.domain.access import Role\n"
        "from marketcare.ledger import accounts\n"
        "from marketcare.ledger.db import make_engine\n"
        f"e = make_engine({environment(folder, src, 0)['MARKETCARE_DATABASE_URL']!r})\n"
        "now = datetime.now(UTC)\n"
        "uid = accounts.add_user(e, accounts.NewUser('bench', 'bench', Role.OFFICE, "
        "'bench password 1'), now=now)\n"
        "print(accounts.create_token(e, uid, 'bench', now=now)[1])\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return made.stdout.strip().splitlines()[-1]


def environment(folder: Path, src: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env.update(
        PYTHONPATH=str(src),
        MARKETCARE_CONFIG="",  # no settings file
        MARKETCARE_DATABASE_URL=f"sqlite:///{folder / 'var' / 'marketcare.db'}",
        MARKETCARE_SCHEDULES_DIR=str(folder / "schedules"),
        MARKETCARE_EXPORTS_DIR=str(folder / "exports"),
        MARKETCARE_EVIDENCE_DIR=str(folder / "evidence"),
        MARKETCARE_WEB_PORT=str(port),
    )
    return env


def one_daemon(name: str, ledger: Path, src: Path, token: str, settle: float) -> dict[str, Any]:
    """Start ``marketcare run`` on a copy of ``ledger``'s folder and measure it."""
    folder = ledger.parent / f"run-{name}-{time.monotonic_ns()}"
    shutil.copytree(ledger, folder)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcare.cli", "run"],
        cwd=folder,
        env=environment(folder, src, port),
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "daemon.log", "wb"),  # noqa: SIM115
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: see {folder / 'daemon.log'}")
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        time.sleep(settle)
        idle = {**status(proc.pid), "libraries": loaded(proc.pid)}
        t0 = time.perf_counter()
        answer = httpx.get(
            f"{base}/api/v1/exports/week/{date.today().isoformat()}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=300,
        )
        if answer.status_code != 200:
            raise SystemExit(f"the export answered {answer.status_code}: {answer.text[:200]}")
        export_seconds = time.perf_counter() - t0
        after = {**status(proc.pid), "libraries": loaded(proc.pid)}
        return {
            "idle": idle,
            "after export": after,
            "export bytes": len(answer.content),
            "export seconds": round(export_seconds, 2),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def markdown(out: dict[str, Any]) -> str:
    load0 = " ".join(f"{x:.2f}" for x in out["load_average_at_start"])
    load1 = " ".join(f"{x:.2f}" for x in out["load_average_at_end"])
    lines = [
        f"Command: `.venv/bin/python {out['command']}` (run {out['run_at']}, "
        f"{out['total_seconds'] / 60:.1f} min; load average at start {load0}, at end {load1}; "
        f"{out['daemons']} daemon(s) per code, medians; idle = {out['settle']:g} s after "
        "`/healthz` first answered)",
        "",
        "| code | idle RSS | idle peak (VmHWM) | export libraries loaded when idle "
        "| RSS after a week's export | loaded after it |",
        "|---|---:|---:|---|---:|---|",
    ]
    for name, r in out["results"].items():
        lines.append(
            f"| {name} | **{r['idle_rss']:.1f} MiB** | {r['idle_hwm']:.1f} MiB "
            f"| {', '.join(r['idle_libraries']) or 'none'} | {r['export_rss']:.1f} MiB "
            f"| {', '.join(r['export_libraries']) or 'none'} |"
        )
    today = out["results"]["today"]["idle_rss"]
    lines += [
        "",
        "| target | result | verdict |",
        "|---|---|---|",
        f"| idle RSS ≤ {TARGET_MIB:g} MiB (sample district, six markets) | {today:.1f} MiB "
        f"| {'**met**' if today <= TARGET_MIB else '**not met**'} |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--daemons", type=int, default=3, help="daemons started in turn per code")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds idle before measuring")
    ap.add_argument("--quick", action="store_true", help="one daemon, 2 s idle")
    ap.add_argument("--compare", metavar="REV", help="also run the code of git revision REV")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tmpdir", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.daemons, args.settle = 1, 2.0
    started = time.time()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-", dir=args.tmpdir))
    try:
        sys.path.insert(0, str(HERE))
        from tick_bench import source_of

        sources = {"today": ROOT / "src"}
        if args.compare:
            sources[f"at {args.compare}"] = source_of(args.compare, tmp)
        ledgers = {}
        for name, src in sources.items():
            folder = tmp / f"ledger-{len(ledgers)}"
            folder.mkdir()
            ledgers[name] = (folder, prepare(folder, src))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
        for i in range(args.daemons):
            for name in sources if i % 2 == 0 else reversed(sources):
                folder, token = ledgers[name]
                r = one_daemon(name, folder, sources[name], token, args.settle)
                log(
                    f"{name}: idle {r['idle']['VmRSS']:.1f} MiB {r['idle']['libraries']}, "
                    f"after an export {r['after export']['VmRSS']:.1f} MiB"
                )
                runs[name].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {
        name: {
            "idle_rss": statistics.median(r["idle"]["VmRSS"] for r in rs),
            "idle_hwm": statistics.median(r["idle"]["VmHWM"] for r in rs),
            "idle_libraries": rs[0]["idle"]["libraries"],
            "export_rss": statistics.median(r["after export"]["VmRSS"] for r in rs),
            "export_libraries": rs[0]["after export"]["libraries"],
        }
        for name, rs in runs.items()
    }
    out = {
        "command": " ".join(["bench/memory_bench.py", *sys.argv[1:]]),
        "run_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "total_seconds": round(time.time() - started, 1),
        "load_average_at_start": list(load0),
        "load_average_at_end": list(os.getloadavg()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "daemons": args.daemons,
        "settle": args.settle,
        "results": results,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(out))
    log(f"written {args.out}")


if __name__ == "__main__":
    main()
