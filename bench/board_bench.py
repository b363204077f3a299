"""The manager's board on a slow phone network: transfer size and time to a usable board,
first visit and repeat visit (online, and offline from the service worker), today's board
side by side with the board before issue 10, in the same run.

    .venv/bin/python bench/board_bench.py            # 5 rounds (a few minutes)
    .venv/bin/python bench/board_bench.py --quick    # 1 round, today's board only (seconds)

Two servers run in their own processes (``bench/board_server.py``): one on this
checkout's ``src``, one on the ``src`` of ``--baseline`` (default: the commit before the
issue, taken with ``git archive``), each over its own ledger built from the sample
schedules at 19:00 on a Monday, so that the evening's tasks of 鲤中农贸市场 are open.
Debian's Chromium, driven by Playwright as a 360-px phone, is slowed by DevTools network
emulation to Chrome's "Slow 3G" profile (2,000 ms latency, 400 kbit/s each way, the
figures of Chrome's DevTools preset). Each round, for each server in turn (the order
alternates): a fresh browser profile with the session cookie (signed in outside the
measurement), then

* **first visit**: the board with an empty cache; bytes on the wire (the sum of DevTools'
  ``encodedDataLength``: compressed bodies and headers) and the time from navigation to a
  usable board: the later of ``DOMContentLoaded`` end (deferred scripts ran, the forms
  work) and the first contentful paint (the stylesheet is there, the board is shown);
* **repeat visit, offline**: the same profile with the network off (DevTools' offline
  emulation and Playwright's ``set_offline``, which also reaches the service worker):
  today's board comes from the service worker's copy; the board before the issue cannot
  open at all.

A repeat visit *online* is not reported: DevTools' emulation slows the page's own
requests, not those its service worker makes, so the figure would flatter today's board.

Figures are medians over rounds; the ratio is today's / before. Targets (issue 10): the
board's first-visit transfer at most 60 KB compressed; the offline repeat visit usable in
under 300 ms. Results: a table on stdout and ``bench/out/board.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
AT = "2026-11-23T19:00:00+08:00"  # a Monday evening: disinfection and garbage are open
MARKET = "lizhong"
BASELINE = "e58dc45"  # main before issue 10
SLOW_3G = {
    "offline": False,
    "latency": 2000,
    "downloadThroughput": 500 * 1000 / 8 * 0.8,
    "uploadThroughput": 500 * 1000 / 8 * 0.8,
}
PHONE: dict[str, Any] = {
    "viewport": {"width": 360, "height": 740},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
    "locale": "zh-CN",
}


class Server:
    """``bench/board_server.py`` on the given ``src``, in its own process."""

    def __init__(self, name: str, src: Path, tmp: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(src))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "board_server.py"),
                "--db",
                str(tmp / f"{name}.db"),
                "--at",
                AT,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise SystemExit(f"the {name} server did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"

    def cookies(self) -> list[dict[str, Any]]:
        """Sign in (outside any measurement) and return the session cookie for Playwright."""
        with httpx.Client(base_url=self.base, timeout=60) as c:
            page = c.get("/login").text
            marker = 'name="csrf-token" content="'
            start = page.index(marker) + len(marker)
            csrf = page[start : page.index('"', start)]
            signed = c.post(
                "/login",
                data={
                    "username": "wang",
                    "password": "correct horse battery",
                    "csrf_token": csrf,
                    "next": "/",
                },
            )
            assert signed.status_code == 303, signed.text[:300]
            return [
                {"name": k, "value": v, "domain": "127.0.0.1", "path": "/"}
                for k, v in c.cookies.items()
            ]

    def html_sizes(self) -> tuple[int, int]:
        """The board's HTML: raw bytes, and as the server sends it to a browser (gzip if it compresses)."""
        with httpx.Client(
            base_url=self.base, timeout=60, cookies={c["name"]: c["value"] for c in self.cookies()}
        ) as c:
            raw = c.get(f"/m/{MARKET}", headers={"Accept-Encoding": "identity"}).content
            sent = c.get(f"/m/{MARKET}", headers={"Accept-Encoding": "gzip"})
            wire = (
                int(sent.headers.get("content-length") or len(gzip.compress(raw)))
                if sent.headers.get("content-encoding")
                else len(raw)
            )
            return len(raw), wire

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def baseline_src(rev: str, tmp: Path) -> Path:
    """The ``src`` folder of ``rev`` (``git archive``), to serve the board as it was."""
    out = tmp / "baseline"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def visit(page: Any, cdp: Any, url: str) -> dict[str, Any]:
    """One navigation: bytes on the wire, time to DOMContentLoaded end, whether it opened."""
    sizes: dict[str, float] = {}

    def finished(event: dict[str, Any]) -> None:
        sizes[event["requestId"]] = float(event.get("encodedDataLength", 0))

    cdp.on("Network.loadingFinished", finished)
    try:
        page.goto(url, wait_until="load", timeout=120_000)
        # the first paint may come just after the load event: wait for its entry
        page.wait_for_function(
            "performance.getEntriesByName('first-contentful-paint').length > 0", timeout=30_000
        )
        timing = json.loads(
            page.evaluate(
                "JSON.stringify({dcl: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
                " fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0})"
            )
        )
        opened = page.locator(".board, main h1").count() > 0
        page.wait_for_timeout(300)  # late requests (the manifest, the icon) are counted too
    except Exception:  # the page could not open (offline, before the service worker)
        return {"bytes": None, "usable_ms": None, "opened": False}
    finally:
        cdp.remove_listener("Network.loadingFinished", finished)
    return {
        "bytes": int(sum(sizes.values())),
        "usable_ms": round(max(timing["dcl"], timing["fcp"]), 1),
        "dcl_ms": round(timing["dcl"], 1),
        "fcp_ms": round(timing["fcp"], 1),
        "opened": opened,
    }


def measure(browser: Browser, server: Server) -> dict[str, Any]:
    ctx = browser.new_context(**PHONE)
    try:
        ctx.add_cookies(server.cookies())
        page = ctx.new_page()
        cdp = ctx.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", SLOW_3G)
        url = f"{server.base}/m/{MARKET}"
        first = visit(page, cdp, url)
        # let a service worker (today's board) finish installing before the repeat visits
        page.evaluate(
            "() => 'serviceWorker' in navigator && navigator.serviceWorker.getRegistration()"
            ".then(r => r ? navigator.serviceWorker.ready : null).then(() => true)"
        )
        page.wait_for_timeout(500)
        ctx.set_offline(True)
        cdp.send("Network.emulateNetworkConditions", dict(SLOW_3G, offline=True))
        offline = visit(page, cdp, url)
        return {"first": first, "offline": offline}
    finally:
        ctx.close()


def median(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="one round of today's board only (no git history needed: a smoke run)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--baseline",
        default=BASELINE,
        help="the revision whose board is compared ('none': today's board only)",
    )
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    baseline = None if args.quick or args.baseline == "none" else args.baseline
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="board-bench-"))
    servers = [Server("today", ROOT / "src", tmp)]
    if baseline is not None:
        servers.append(Server("before", baseline_src(baseline, tmp), tmp))
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            for r in range(rounds):
                order = servers if r % 2 == 0 else list(reversed(servers))
                for server in order:
                    results[server.name].append(measure(browser, server))
            browser.close()
        html = {s.name: s.html_sizes() for s in servers}
    finally:
        for s in servers:
            s.stop()

    summary: dict[str, Any] = {}
    for name, runs in results.items():
        summary[name] = {
            step: {
                "bytes": median([run[step]["bytes"] for run in runs]),
                "usable_ms": median([run[step]["usable_ms"] for run in runs]),
                "opened": sum(1 for run in runs if run[step]["opened"]),
            }
            for step in ("first", "offline")
        }
        summary[name]["html_raw"], summary[name]["html_wire"] = html[name]
    load = os.getloadavg()
    print(
        f"Board of {MARKET} at {AT}, Chromium on Slow 3G (2,000 ms, 400 kbit/s), "
        f"{rounds} round(s), median; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print(f"{'':34}{'today':>14}{'before':>14}{'ratio':>9}")

    def row(label: str, a: Any, b: Any, unit: str) -> None:
        def fmt(v: Any) -> str:
            return (
                ("not measured" if baseline is None else "cannot open")
                if v is None
                else f"{v / 1000:.1f} KB"
                if unit == "B"
                else f"{v:.0f} ms"
            )

        ratio = f"{a / b:.2f}" if a is not None and b else "–"
        print(f"{label:34}{fmt(a):>14}{fmt(b):>14}{ratio:>9}")

    t = summary["today"]
    b = summary.get("before") or {
        "html_raw": None,
        "html_wire": None,
        "first": {"bytes": None, "usable_ms": None, "opened": 0},
        "offline": {"bytes": None, "usable_ms": None, "opened": 0},
    }
    row("board HTML (raw)", t["html_raw"], b["html_raw"], "B")
    row("board HTML (as sent)", t["html_wire"], b["html_wire"], "B")
    for step, label in (("first", "first visit"), ("offline", "repeat visit, offline")):
        row(f"{label}: transfer", t[step]["bytes"], b[step]["bytes"], "B")
        row(f"{label}: usable after", t[step]["usable_ms"], b[step]["usable_ms"], "ms")
    before = f", before {b['offline']['opened']}/{rounds}" if baseline else ""
    print(f"offline repeat visits that opened: today {t['offline']['opened']}/{rounds}{before}")
    first_kb = t["first"]["bytes"] / 1000 if t["first"]["bytes"] else None
    offline_ms = t["offline"]["usable_ms"]
    print(
        f"targets: first-visit transfer <= 60 KB: {first_kb:.1f} KB "
        f"({'met' if first_kb is not None and first_kb <= 60 else 'NOT met'}); "
        f"offline repeat < 300 ms: {offline_ms} ms ({'met' if offline_ms is not None and offline_ms < 300 else 'NOT met'})"
    )
    out = Path(os.environ.get("BENCH_OUT") or ROOT / "bench" / "out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "board.json").write_text(
        json.dumps(
            {
                "rounds": rounds,
                "baseline": baseline,
                "load_average": load,
                "machine": platform.platform(),
                "seconds": round(time.time() - started, 1),
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
