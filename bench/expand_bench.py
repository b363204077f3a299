"""Expanding schedules: ``obligations.expand`` against a bare dateutil iteration of the same rules.

    .venv/bin/python bench/expand_bench.py            # city (1,000 markets) and province (20,000)
    .venv/bin/python bench/expand_bench.py --quick    # seconds: 100 and 400 markets

Workloads: ``bench/generate.py`` with the forms of issue 11 (``forms=True``): 12 areas a
market, the city's tasks plus rest days, toilet rounds every two hours while open, a
seasonal task, exception and extra dates, summer hours, a district closure and a 24-hour
market every 40.

Measured, for one local day (what the materialiser asks per chunk), interleaved round by
round after a discarded warm-up, the median of ``--repeat`` rounds:

* **bare** (the baseline): for each task and each (market, area) it applies to, dateutil
  iterates the same rule over the day — the task's RRULE started on the day itself (or,
  with an ``INTERVAL``, at the last start of its cycle; from the anchor in 2020 dateutil
  would replay six years on every call, hundreds of times slower), with the season
  as ``BYMONTH``, the exception and extra dates as an ``rruleset``, the rounds while open
  as ``BYHOUR``/``BYMINUTE`` of that market's hours, an area's rest rule for
  ``rest_days`` — and one tuple is made per occurrence: the loop a plain dateutil
  expansion would be, without opening times, windows, closures or time zones.
* **expand, warm**: ``obligations.expand`` of the same day, its per-year occurrence cache
  filled (the daemon's steady state: every chunk after the first).
* **expand, cold**: the same with the cache emptied before each round (a first load).
* **rules once** (a lower bound, for orientation): each distinct rule iterated once and a
  tuple made per target — what is left when nothing is computed per market: no opening
  times, windows, closures, rest days or zones.

The ratios (expand ÷ bare) are the figures; seconds are for orientation only.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dateutil import rrule as du

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import city_texts  # noqa: E402
from marketcare.domain import recurrence  # noqa: E402
from marketcare.domain.obligations import expand, rounds_of, targets  # noqa: E402
from marketcare.domain.schedules import Market, Schedule, Task, load_texts  # noqa: E402

DAY = date(2026, 12, 2)  # a Wednesday: rest days, rounds, the weekly walk, the 2nd
ZONE = ZoneInfo("Asia/Shanghai")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bare_text(task: Task) -> str:
    r = task.recurrence
    text = r.rrule_text
    if r.season is not None:
        text += ";BYMONTH=" + ",".join(str(m) for m in r.season.months())
    return text


def start_near(text: str, anchor: datetime, day: date) -> datetime:
    """The latest start on or before ``day`` in phase with the rule's cycle, so that
    dateutil iterates the day only (from the anchor, it would replay years each time)."""
    lo = datetime.combine(day, anchor.time())
    parts = dict(p.split("=", 1) for p in text.removeprefix("RRULE:").split(";") if "=" in p)
    interval = int(parts.get("INTERVAL", "1"))
    if lo <= anchor:
        return anchor
    if interval == 1:
        return lo
    step = {"DAILY": 1, "WEEKLY": 7}.get(parts["FREQ"])
    if step is None:
        return anchor
    cycle = timedelta(days=step * interval)
    return anchor + cycle * ((lo - anchor) // cycle)


def bare_rule(
    task: Task, market: Market, area_id: str | None, day: date, cache: dict[Any, Any]
) -> Any:
    """The dateutil rule (or rule set) that yields this target's occurrences of ``task``."""
    r = task.recurrence
    if r.rest_days:
        area = next(a for a in market.areas if a.id == area_id)
        if area.rest is None:
            return None
        key: Any = ("rest", area.rest.rrule_text, area.rest.dtstart)
        if key not in cache:
            text = area.rest.rrule_text
            cache[key] = du.rrulestr(text, dtstart=start_near(text, area.rest.dtstart, day))
        return cache[key]
    text = _bare_text(task)
    if r.every_hours is not None:
        rounds = rounds_of(task, market.hours_on(day), day, ZONE)
        if not rounds:
            return None
        times = sorted({(at.hour, at.minute) for at, _w in rounds})
        text += ";BYHOUR=" + ",".join(str(h) for h, _ in times)
        text += ";BYMINUTE=" + ",".join(sorted({str(m) for _, m in times}))
    key = (task.id, text)
    if key not in cache:
        rule = du.rrulestr(text, dtstart=start_near(text, r.dtstart, day))
        if r.except_dates or r.extra:
            rules = du.rruleset()
            rules.rrule(rule)
            for d in r.except_dates:
                rules.exdate(datetime.combine(d, datetime.min.time()))
            for d in r.extra:
                rules.rdate(datetime.combine(d, datetime.min.time()))
            rule = rules
        cache[key] = rule
    return cache[key]


def bare(schedule: Schedule, day: date) -> list[tuple[str, str | None, str, datetime]]:
    """The baseline: one dateutil iteration per task and target, a tuple per occurrence."""
    lo = datetime.combine(day, datetime.min.time())
    hi = lo + timedelta(days=1) - timedelta(microseconds=1)
    cache: dict[Any, Any] = {}
    out: list[tuple[str, str | None, str, datetime]] = []
    for task in schedule.tasks:
        for market, area_id, _kind in targets(schedule, task):
            rule = bare_rule(task, market, area_id, day, cache)
            if rule is None:
                continue
            for occurrence in rule.between(lo, hi, inc=True):
                out.append((market.id, area_id, task.id, occurrence))
    return out


def bare_once(schedule: Schedule, day: date) -> list[tuple[str, str | None, str, datetime]]:
    """A lower bound: each distinct rule iterated once, then one tuple per target and
    occurrence (no windows, closures, zones or obligations: only the rules' own cost)."""
    lo = datetime.combine(day, datetime.min.time())
    hi = lo + timedelta(days=1) - timedelta(microseconds=1)
    cache: dict[Any, Any] = {}
    found: dict[int, list[datetime]] = {}
    out: list[tuple[str, str | None, str, datetime]] = []
    for task in schedule.tasks:
        for market, area_id, _kind in targets(schedule, task):
            rule = bare_rule(task, market, area_id, day, cache)
            if rule is None:
                continue
            occurrences = found.get(id(rule))
            if occurrences is None:
                occurrences = found[id(rule)] = rule.between(lo, hi, inc=True)
            for occurrence in occurrences:
                out.append((market.id, area_id, task.id, occurrence))
    return out


def utc_day(day: date) -> tuple[datetime, datetime]:
    lo = datetime.combine(day, datetime.min.time(), tzinfo=ZONE).astimezone(UTC)
    return lo, lo + timedelta(days=1)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Time ``fn`` with the cyclic collector paused, as ``expand`` pauses it itself: the
    baselines get the same advantage."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def measure(name: str, markets: int, repeat: int) -> dict[str, Any]:
    log(f"{name}: generating and loading {markets:,} markets")
    t_load, schedule = timed(
        lambda: load_texts(
            city_texts(markets, 12, 500, forms=True), default_timezone="Asia/Shanghai"
        )
    )
    start, end = utc_day(DAY)
    b_n = len(bare(schedule, DAY))
    e_n = len(expand(schedule, start, end))  # warm-up: fills the year cache
    times: dict[str, list[float]] = {"bare": [], "once": [], "warm": [], "cold": []}
    for _ in range(repeat):
        times["bare"].append(timed(lambda: bare(schedule, DAY))[0])
        times["once"].append(timed(lambda: bare_once(schedule, DAY))[0])
        times["warm"].append(timed(lambda: expand(schedule, start, end))[0])
        recurrence._year_cache.clear()
        times["cold"].append(timed(lambda: expand(schedule, start, end))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "name": name,
        "markets": markets,
        "load_s": t_load,
        "bare_n": b_n,
        "expand_n": e_n,
        **{f"{k}_s": v for k, v in med.items()},
        "warm_ratio": med["warm"] / med["bare"],
        "cold_ratio": med["cold"] / med["bare"],
        "once_ratio": med["warm"] / med["once"],
    }
    log(
        f"{name}: bare {med['bare']:.3f} s ({b_n:,} occurrences), expand warm {med['warm']:.3f} s "
        f"/ cold {med['cold']:.3f} s ({e_n:,} obligations): warm {result['warm_ratio']:.2f}×, "
        f"cold {result['cold_ratio']:.2f}× the bare iteration"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="100 and 400 markets, 2 rounds")
    ap.add_argument("--repeat", type=int, default=None, help="measured rounds (default 5; quick 2)")
    ap.add_argument("--city", type=int, default=None, help="markets of the city workload")
    ap.add_argument("--province", type=int, default=None, help="markets of the province workload")
    args = ap.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 5)
    city = args.city or (100 if args.quick else 1000)
    province = args.province or (400 if args.quick else 20_000)
    load = os.getloadavg()
    log(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs")
    rows = [measure("city", city, repeat), measure("province", province, repeat)]
    print()
    print(
        "| workload | markets | bare dateutil | expand (warm) | expand (cold) | warm ÷ bare "
        "| cold ÷ bare | rules once | warm ÷ rules once | obligations | µs per obligation (warm) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['markets']:,} | {r['bare_s']:.3f} s | {r['warm_s']:.3f} s | "
            f"{r['cold_s']:.3f} s | {r['warm_ratio']:.2f}× | {r['cold_ratio']:.2f}× | "
            f"{r['once_s']:.3f} s | {r['once_ratio']:.1f}× | "
            f"{r['expand_n']:,} | {r['warm_s'] / r['expand_n'] * 1e6:.1f} |"
        )
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
