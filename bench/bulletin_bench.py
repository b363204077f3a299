"""The weekly bulletin against the export it summarises: time and peak memory, as ratios.

    .venv/bin/python bench/bulletin_bench.py                # district (6) and province (20,000)
    .venv/bin/python bench/bulletin_bench.py --quick        # the district only, one round
    .venv/bin/python bench/bulletin_bench.py --markets 2000 # one size only
    .venv/bin/python bench/bulletin_bench.py --quick --cold # first in the process
    .venv/bin/python bench/bulletin_bench.py --markets 20000 --kinds bulletin,data

For each size a SQLite ledger is built once with bulk SQL (not measured): a month of
obligations (each market's waste clearance and the disinfection of two areas, every day,
with seeded outcomes), two inspections per market with their scores, and problems, some
past their deadline. Then, each in its own child process (``getrusage`` gives its peak
RSS), interleaved round by round, median of ``--repeat``. Before the clock starts a child
imports what the product imports for its kind, and only that: the export's child the
exporter and its workbook (openpyxl), the bulletin's the bulletin and WeasyPrint as the
bulletin imports it, so neither side pays for the other's libraries:

* **export (week)** and **export (month)** — ``delivery.export`` of one week and of the
  month: the existing workbook of that data (the baselines; the month's is the export
  the month's bulletin summarises). The week's workbook has a sheet per market, so above
  ``WEEKLY_UP_TO`` markets it is not run (a province's takes about half an hour a round);
* **bulletin (month)** — ``bulletin.produce`` of the month: the ranking of every market
  and sub-district with the movement (so the month before is read too), the overdue
  list, written as Excel and as PDF and recorded;
* **bulletin data only** — ``bulletin.gather`` alone, to show where the time goes.

Each child first makes the same report of the period before (untimed), as a running
daemon has: last month's bulletin kept its places (``ledger/standings``), which this
month's movement reads, and the libraries' first-use costs (Babel's locale data, the
fonts, the C bindings' types) are paid, as they are once in a daemon's life. ``--cold``
leaves that out (each measurement first in its process, the places recomputed). The peak
memory is the child's whole life, the untimed report included, for both sides alike.

``--steps`` says where a child's memory goes instead (Linux): the month export's child and
the bulletin's, each step of the bulletin (``gather``, the workbook, the font's cut, the
layout, the PDF's writing) with the resident memory after it (anonymous and mapped from
files, from ``/proc/self/status``) and its own peak (the high-water mark reset before it
through ``/proc/self/clear_refs``); the children's peaks are then not measured.

``--kinds`` measures some of them only (a province's month export takes hours on a shared
machine: its bulletin can still be measured, without a ratio).

Target: the month's bulletin costs no more than the export it summarises (ratio <= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

WEEKLY_UP_TO = 1000
SUB_DISTRICTS = ("鲤中", "海滨", "临江", "开元", "浮桥", "江南", "金龙", "常泰")
MONTH = date(2026, 11, 1)
DAYS = 30
AS_OF = datetime(2026, 12, 1, 2, tzinfo=UTC)  # 10:00 on 1 December in Shanghai
SCHEDULE = """
markets:
  - id: m00000
    name: 样本市场
    sub_district: 鲤中
    hours: {mon-sun: "05:30-18:30"}
    areas: [{id: a1, kind: aquatic, m2: 300}, {id: a2, kind: vegetables, m2: 300}]
tasks:
  - {id: waste, kind: waste_clearance, name: 垃圾日产日清, scope: market, recurrence: daily, opens: closing, due: closing+1h}
  - id: disinfect
    kind: disinfection
    name: 休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: +2h
    checklist: [{id: chlorine, reading: 有效氯, unit: mg/L, range: [400, 1200]}]
"""


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build(path: Path, markets: int, seed: int = 1) -> None:
    """A month of one district's (or province's) work, bulk-loaded with SQL."""
    from marketcare.ledger.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    now = _ts(AS_OF)
    db.execute(
        "INSERT INTO schedule_versions (id, digest, loaded_at, default_timezone, sources)"
        " VALUES (1, 'bench', ?, 'Asia/Shanghai', ?)",
        (now, json.dumps({"bench.yaml": SCHEDULE}, ensure_ascii=False)),
    )
    db.execute(
        "INSERT INTO ledger_state (id, version_id, materialised_until, last_seen_now)"
        " VALUES (1, 1, ?, ?)",
        (now, now),
    )
    ids = [f"m{i:05d}" for i in range(markets)]
    db.executemany(
        "INSERT INTO markets (id, name, sub_district, timezone, active, version_id)"
        " VALUES (?, ?, ?, 'Asia/Shanghai', 1, 1)",
        [(m, f"第{i + 1}农贸市场", SUB_DISTRICTS[i % 8]) for i, m in enumerate(ids)],
    )
    db.executemany(
        "INSERT INTO areas (market_id, id, name, kind, m2, active) VALUES (?, ?, ?, ?, 300, 1)",
        [
            (m, a, n, k)
            for m in ids
            for a, n, k in (("a1", "水产区", "aquatic"), ("a2", "蔬菜区", "vegetables"))
        ],
    )
    states = ("done",) * 17 + ("late", "missed", "failed")
    for d in range(-DAYS, DAYS):  # the month and the one before (for the movement)
        day = MONTH + timedelta(days=d)
        close = datetime(day.year, day.month, day.day, 10, 30, tzinfo=UTC)  # 18:30 local
        rows = []
        for m in ids:
            for area, task, kind in (
                (None, "waste", "waste_clearance"),
                ("a1", "disinfect", "disinfection"),
                ("a2", "disinfect", "disinfection"),
            ):
                state = rng.choice(states)
                done = (
                    close + timedelta(minutes=rng.randrange(100))
                    if state in ("done", "late")
                    else None
                )
                rows.append(
                    (
                        f"{m}|{area or '-'}|{task}|{day.isoformat()}T18:30",
                        m,
                        area,
                        task,
                        kind,
                        day.isoformat(),
                        f"{day.isoformat()}T18:30",
                        _ts(close),
                        _ts(close + timedelta(hours=2)),
                        _ts(close + timedelta(hours=3)),
                        state,
                        _ts(close),
                        None if done is None else _ts(done),
                        now,
                    )
                )
        db.executemany(
            "INSERT INTO obligations (natural_key, market_id, area_id, task_id, kind, local_date,"
            " occurrence, opens_at, due_at, missed_at, state, state_changed_at, completed_at,"
            " version_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,1,?)",
            rows,
        )
    db.execute(
        "INSERT INTO inspection_templates (digest, template_id, version, name, body, first_used_at)"
        " VALUES ('t', 'farmers-market', '1', '督查评分表', '{}', ?)",
        (now,),
    )
    inspections, problems = [], []
    for i, m in enumerate(ids):
        for k, day in enumerate(
            (MONTH - timedelta(days=20), MONTH + timedelta(days=3), MONTH + timedelta(days=17))
        ):
            at = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
            score = round(rng.uniform(55, 100), 1)
            inspections.append((f"b{i}-{k}", m, _ts(at), day.isoformat(), score, int(score >= 80)))
            if rng.random() < 0.6:
                verified = rng.random() < 0.8
                deadline = at + timedelta(days=1)
                problems.append(
                    (
                        m,
                        f"第{i}市场 水产区排水沟堵塞",
                        _ts(at),
                        _ts(deadline),
                        "verified" if verified else "open",
                        _ts(deadline - timedelta(hours=3)) if verified else None,
                        now,
                    )
                )
    db.executemany(
        "INSERT INTO inspections (token, market_id, template_id, template_digest, by, at,"
        " local_date, score, total, passed, failed, created_at)"
        " VALUES (?, ?, 'farmers-market', 't', '督查员', ?, ?, ?, 100, ?, 1, ?)",
        [(*row, now) for row in inspections],
    )
    db.executemany(
        "INSERT INTO problems (market_id, category, description, found_at, found_by, deadline,"
        " state, reopened, evidence, verified_at, created_at)"
        " VALUES (?, 'sanitation', ?, ?, '督查员', ?, ?, 0, '{}', ?, ?)",
        problems,
    )
    db.commit()
    db.close()


def child(kind: str, path: str, out: str) -> None:
    """One measurement, in this (child) process."""
    kind, _, temperature = kind.partition("+")
    steps = kind.endswith("/steps")
    kind = kind.removesuffix("/steps")
    # what a running daemon has loaded for this kind already, and only that: the time is
    # the work, not Python's imports, and neither side pays for the other's libraries
    # (WeasyPrint and the fonts' bindings are the bulletin's, not the export's)
    from marketcare.domain.periods import Period
    from marketcare.ledger.db import make_engine, read
    from marketcare.reports import delivery, workbook  # noqa: F401

    if not kind.startswith("export"):
        from marketcare.reports import bulletin

        bulletin.page_class()  # WeasyPrint, as the bulletin's PDF imports it
    if steps:
        _watch_steps(kind)
        _mark("imported")
    engine = make_engine(f"sqlite:///{path}")
    week = Period.of("week", MONTH + timedelta(days=10))
    month = Period.of("month", MONTH)

    def run(period: Period, week: Period, out: Path) -> None:
        if kind == "export":
            delivery.export(engine, period=week, exports_dir=out, now=AS_OF)
        elif kind == "export-month":
            delivery.export(engine, period=period, exports_dir=out, now=AS_OF)
        elif kind == "bulletin":
            from marketcare.reports import bulletin

            bulletin.produce(engine, period=period, exports_dir=out, now=AS_OF)
        elif kind == "data":
            from marketcare.reports import bulletin

            with read(engine) as conn:
                bulletin.gather(conn, period, as_of=AS_OF)
        else:
            raise SystemExit(f"unknown measurement {kind!r}")

    if temperature != "cold":
        # a running daemon made last period's reports already: its bulletin kept October's
        # places, and the libraries' first-use costs (locale data, fonts, C bindings) are
        # paid; the bulletin "data" run reads the places that bulletin kept
        before = Path(out) / "before"
        if kind == "data":
            from marketcare.reports import bulletin

            bulletin.produce(engine, period=month.previous(), exports_dir=before, now=AS_OF)
        else:
            run(month.previous(), week.previous(), before)
    if steps:
        _mark("the month's (timed)")
    started = time.perf_counter()
    run(month, week, Path(out))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if steps:
        print(json.dumps({"steps": STEPS}))
        return
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


#: each step measured by ``--steps``: name, resident MiB before, after, anonymous and
#: file-mapped MiB after, peak MiB during
STEPS: list[tuple[str, float, float, float, float, float]] = []


def _status() -> dict[str, float]:
    with open("/proc/self/status", encoding="ascii") as f:
        return {
            k: int(v.split()[0]) / 1024
            for k, _, v in (line.partition(":") for line in f)
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")
        }


def _mark(label: str) -> None:
    s = _status()
    STEPS.append((f"-- {label}", s["VmRSS"], s["VmRSS"], s["RssAnon"], s["RssFile"], s["VmHWM"]))


def _watch_steps(kind: str) -> None:
    """Wrap the steps of the bulletin or the export to note their memory (``--steps``)."""
    from marketcare.reports import delivery

    def watch(owner: Any, name: str, label: str) -> None:
        step = getattr(owner, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            before = _status()["VmRSS"]
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # the high-water mark from now on: this step's peak
            try:
                return step(*args, **kwargs)
            finally:
                s = _status()
                STEPS.append((label, before, s["VmRSS"], s["RssAnon"], s["RssFile"], s["VmHWM"]))

        setattr(owner, name, watched)

    watch(delivery, "export", "export")
    if kind.startswith("export"):
        return
    import weasyprint
    import weasyprint.document

    from marketcare.reports import bulletin, bulletin_font

    watch(bulletin, "gather", "gather")
    watch(bulletin, "write_xlsx", "workbook")
    watch(bulletin_font, "cut", "font cut")
    watch(weasyprint.HTML, "render", "layout")
    watch(weasyprint.document.Document, "write_pdf", "PDF writing")


def show_steps(markets: int, path: Path, tmp: Path, *, cold: bool) -> None:
    """``--steps``: the month export's and the bulletin's children, step by step."""
    for kind in ("export-month", "bulletin"):
        out = Path(tempfile.mkdtemp(dir=tmp))
        shutil.copy(path, out / "ledger.db")
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                f"{kind}/steps" + ("+cold" if cold else ""),
                str(out / "ledger.db"),
                str(out),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        steps = json.loads(done.stdout.strip().splitlines()[-1])["steps"]
        print(f"{markets:>6} markets, {kind}: MiB resident before → after a step (its peak)")
        for label, before, after, anon, file, peak in steps:
            if label.startswith("--"):
                print(f"  {label[3:]}: {after:.1f} MiB resident", flush=True)
                continue
            print(
                f"    {label:<12} {before:6.1f} → {after:6.1f} (peak {peak:6.1f}; "
                f"anonymous {anon:5.1f}, files {file:5.1f})",
                flush=True,
            )


def measure(kind: str, path: Path, tmp: Path, *, cold: bool = False) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=tmp))
    copy = out / "ledger.db"
    shutil.copy(path, copy)  # a fresh copy: every run writes (records) its report
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind + ("+cold" if cold else ""),
            str(copy),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


KINDS = ("export", "export-month", "bulletin", "data")


def run_size(
    markets: int,
    repeat: int,
    tmp: Path,
    *,
    cold: bool = False,
    only: tuple[str, ...] = KINDS,
) -> dict[str, Any]:
    path = tmp / f"ledger-{markets}.db"
    started = time.perf_counter()
    build(path, markets)
    built = time.perf_counter() - started
    # the week's workbook has a sheet per market: at a province's size one round of it
    # takes half an hour (2,000 markets: 3 minutes, twice with the week before), so there
    # only the month is the baseline
    weekly = markets <= WEEKLY_UP_TO
    kinds = tuple(k for k in KINDS if k in only and (weekly or k != "export"))
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(repeat):
        for k in kinds:
            runs[k].append(measure(k, path, tmp, cold=cold))
    med = {
        k: {
            "seconds": statistics.median(r["seconds"] for r in v),
            "peak_mib": statistics.median(r["peak_mib"] for r in v),
        }
        for k, v in runs.items()
    }

    def ratio(of: str, to: str, what: str) -> float | None:
        return med[of][what] / med[to][what] if of in med and to in med else None

    return {
        "markets": markets,
        "build_seconds": built,
        **med,
        "time_ratio": ratio("bulletin", "export-month", "seconds"),
        "memory_ratio": ratio("bulletin", "export-month", "peak_mib"),
        "time_ratio_week": ratio("bulletin", "export", "seconds"),
    }


def _figure(r: dict[str, Any], kind: str) -> str:
    if kind not in r:
        return "not run"
    return f"{r[kind]['seconds']:.2f} s / {r[kind]['peak_mib']:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the district only, one round")
    parser.add_argument("--markets", type=int, action="append", help="a size (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="each measurement first in its process (no report of the period before)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"the measurements to make, comma-separated (default: {','.join(KINDS)})",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="where the memory goes: each step of a child (Linux; no ratios)",
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    only = tuple(args.kinds.split(","))
    if not set(only) <= set(KINDS):
        parser.error(f"--kinds: one of {', '.join(KINDS)}")
    sizes = args.markets or ([6] if args.quick else [6, 20_000])
    repeat = 1 if args.quick else args.repeat
    print(
        f"# bulletin benchmark: {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f}, {'cold' if args.cold else 'after the period before'}"
    )
    with tempfile.TemporaryDirectory(prefix="marketcare-bulletin-bench-") as tmp:
        for markets in sizes:
            if args.steps:
                path = Path(tmp) / f"ledger-{markets}.db"
                build(path, markets)
                show_steps(markets, path, Path(tmp), cold=args.cold)
                continue
            r = run_size(
                markets, 1 if markets > 5000 else repeat, Path(tmp), cold=args.cold, only=only
            )
            ratios = (
                ""
                if r["time_ratio"] is None
                else f"; bulletin ÷ month export: time {r['time_ratio']:.2f}, memory "
                f"{r['memory_ratio']:.2f}"
            )
            if r["time_ratio_week"] is not None:
                ratios += f" (÷ week export: time {r['time_ratio_week']:.2f})"
            print(
                f"{markets:>6} markets (ledger built in {r['build_seconds']:.0f} s): "
                f"export week {_figure(r, 'export')}, month {_figure(r, 'export-month')}; "
                f"bulletin month {_figure(r, 'bulletin')} "
                f"(data alone {_figure(r, 'data')}){ratios}",
                flush=True,
            )
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
