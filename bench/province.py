"""Province scale on PostgreSQL: materialising a day for 20,000 markets, and the sweep as history grows.

    .venv/bin/python bench/province.py            # default (~20 min): 20,000 markets; sweep 5,000 markets x up to 90 days
    .venv/bin/python bench/province.py --quick    # smoke run (under a minute): 200 markets; sweep 100 x 1 and 3 days
    .venv/bin/python bench/province.py --full     # 20,000 markets for both; sweep up to 60 days (~17 M rows)

A throwaway PostgreSQL 15 server is started in a temporary folder (``initdb`` as the
``postgres`` user when run as root, as ``tests/support/pg.py`` does) with durable settings:
``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on`` (the defaults), plus
``shared_buffers=1GB`` and ``max_wal_size=8GB`` (so that no forced checkpoint lands inside
a measurement; a ``CHECKPOINT`` is taken before every measured call instead). Only the
set-up that is not measured (building the history) turns ``synchronous_commit`` off in its
own session.

1. materialise one day: on copies (``CREATE DATABASE … TEMPLATE``) of a ledger migrated and
   set up for the province (schedule version recorded, markets and areas synced, watermark
   at the start of the day, no obligations yet), the day's obligations are written
   (a) by a raw psycopg ``COPY obligations (…) FROM STDIN`` of the same 14 columns the
   ledger writes, rows built from the same ``Planned`` objects, one transaction (baseline),
   (b) by ``ledger_materialise.insert_planned`` + the watermark + the audit event in one ``db.write``
   transaction (the ledger's write path; target <= 2x), (c) by a whole ``ledger_materialise.materialise``
   call, and (d) by the change proposed for ``insert_planned`` on PostgreSQL (``COPY`` into a
   temporary table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``), implemented here
   only. The run checks that all four leave identical obligations (ids aside).
2. sweep: one ledger holding the day's obligations (upcoming, written by the ledger) and a
   history that grows step by step (``--sweep-days``; rows in final states done/late/missed
   copied from the week before the day with shifted dates, ``VACUUM ANALYZE`` after each
   step, as autovacuum would). At each size: ``ledger_sweep.sweep_all`` at 20:00 local on the day
   (opens and misses the whole day's obligations), then again with nothing to do; the
   growth exponent is fitted over the sizes. ``EXPLAIN (ANALYZE, BUFFERS)`` of the sweep's
   statements is printed, and the same ``SELECT``s with index scans disabled show what a
   scan would cost at each size.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Json
from sqlalchemy import event

from marketcare.domain.obligations import Planned, expand
from marketcare.domain.schedules import Schedule
from marketcare.ledger import audit
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger.db import make_engine, migrate, write
from marketcare.ledger.models import LedgerState

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from tests.support.pg import PG_BIN, ThrowawayServer, _as_server_user, _free_port  # noqa: E402

import generate  # noqa: E402
import run  # noqa: E402
from run import (  # noqa: E402
    COLUMNS,
    DAY,
    DAY_START,
    ONE_DAY,
    SWEEP_AT,
    Result,
    fmt_s,
    log,
    rounds,
    summarize_profile,
    timed,
)

OUT = Path(os.environ.get("BENCH_OUT") or HERE / "out") / "province.json"
OUT_MD = OUT.with_suffix(".md")
COPY_SQL = f"COPY obligations ({', '.join(COLUMNS)}) FROM STDIN"
SERVER_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "maintenance_work_mem": "512MB",
    "max_connections": "50",
    "timezone": "UTC",
    "log_min_messages": "warning",
    "listen_addresses": "127.0.0.1",
}


# ---------------------------------------------------------------- the server


def start_server(tmpdir: Path | None) -> ThrowawayServer:
    """A durable throwaway server (the test suite's one runs with fsync off)."""
    folder = Path(tempfile.mkdtemp(prefix="marketcare-province-pg-", dir=tmpdir))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    server = ThrowawayServer(folder, _free_port())
    data = folder / "data"
    subprocess.run(
        [
            *_as_server_user(),
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    settings = [a for k, v in SERVER_SETTINGS.items() for a in ("-c", f"{k}={v}")]
    with (folder / "server.log").open("wb") as out:
        server.process = subprocess.Popen(
            [
                *_as_server_user(),
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(server.port),
                "-k",
                str(folder),
                *settings,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server.wait_ready()
    return server


@dataclass
class Pg:
    server: ThrowawayServer

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.server.port}/{db}"

    def dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.server.port} user=postgres dbname={db}"

    def admin(self, sql: str, db: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def clone(self, name: str, template: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def checkpoint(self) -> None:
        self.admin("CHECKPOINT")

    def version(self) -> str:
        return str(self.admin("SHOW server_version")[0][0])


def raw_rows(
    planned: Sequence[Planned], version_id: int, now: datetime
) -> Iterator[tuple[Any, ...]]:
    """The 14 columns ``ledger_materialise._rows`` writes, as tuples (psycopg adapts the types)."""
    for p in planned:
        yield (
            p.natural_key,
            p.market_id,
            p.area_id,
            p.task_id,
            p.kind,
            p.occurrence.strftime("%Y-%m-%d"),
            p.occurrence.strftime("%Y-%m-%dT%H:%M"),
            p.opens_at,
            p.due_at,
            p.missed_at,
            "upcoming",
            now,
            version_id,
            now,
        )


# ---------------------------------------------------------------- the proposed write path

TEMP_TABLE = """
CREATE TEMP TABLE planned_in (
  natural_key text, market_id text, area_id text, task_id text, kind text,
  local_date text, occurrence text, opens_at timestamptz, due_at timestamptz,
  missed_at timestamptz, state text, state_changed_at timestamptz, version_id bigint,
  created_at timestamptz
) ON COMMIT DROP
"""
MERGE_SQL = (
    f"INSERT INTO obligations ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM planned_in "
    "ON CONFLICT (natural_key) DO NOTHING"
)


def insert_planned_copy(
    conn: sa.Connection, planned: Sequence[Planned], *, version_id: int, now: datetime
) -> int:
    """What ``ledger_materialise.insert_planned`` could do on PostgreSQL: one COPY into a temporary
    table, one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (its rowcount is what was new),
    inside the caller's transaction."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    with raw.cursor() as cur:
        cur.execute(TEMP_TABLE)
        with cur.copy("COPY planned_in (" + ", ".join(COLUMNS) + ") FROM STDIN") as cp:
            for row in raw_rows(planned, version_id, now):
                cp.write_row(row)
        cur.execute(MERGE_SQL)
        return int(cur.rowcount)


ARRAY_TYPES = (
    "text", "text", "text", "text", "text", "text", "text", "timestamptz", "timestamptz",
    "timestamptz", "text", "timestamptz", "bigint", "timestamptz",
)  # fmt: skip
UNNEST_SQL = (
    f"INSERT INTO obligations ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in ARRAY_TYPES)}) "
    "ON CONFLICT (natural_key) DO NOTHING RETURNING id"
)
UNNEST_CHUNK = 20_000


def insert_planned_unnest(
    conn: sa.Connection, planned: Sequence[Planned], *, version_id: int, now: datetime
) -> int:
    """The other candidate: one ``INSERT … SELECT * FROM unnest(%s::text[], …)`` per
    20,000 rows, 14 array parameters, so the statement text stays short (psycopg parses and
    caches it once) and ``RETURNING id`` still counts what was new."""
    created = 0
    for i in range(0, len(planned), UNNEST_CHUNK):
        columns = list(zip(*raw_rows(planned[i : i + UNNEST_CHUNK], version_id, now), strict=True))
        created += len(conn.exec_driver_sql(UNNEST_SQL, tuple(list(c) for c in columns)).all())
    return created


# ---------------------------------------------------------------- set-up


def preseed(pg: Pg, db: str, schedule: Schedule) -> None:
    """Write the schedule version, markets and areas with COPY, as ``ensure_version`` would.

    Set-up only: ``ensure_version`` then finds them all present and unchanged. Letting it
    insert them itself takes one statement per row (see ``--ledger-setup``), minutes for a
    province.
    """
    with psycopg.connect(pg.dsn(db)) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO schedule_versions (digest, loaded_at, default_timezone, sources) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (
                schedule.digest,
                DAY_START,
                schedule.default_timezone,
                Json(dict(schedule.sources)),
            ),
        )
        row = cur.fetchone()
        assert row is not None
        version_id = row[0]
        with cur.copy(
            "COPY markets (id, name, sub_district, timezone, active, version_id) FROM STDIN"
        ) as cp:
            for m in schedule.markets:
                cp.write_row(
                    (
                        m.id,
                        m.name,
                        m.sub_district,
                        m.timezone or schedule.default_timezone,
                        True,
                        version_id,
                    )
                )
        with cur.copy("COPY areas (market_id, id, name, kind, m2, active) FROM STDIN") as cp:
            for m in schedule.markets:
                for a in m.areas:
                    cp.write_row((m.id, a.id, a.name, a.kind.value, a.m2, True))
        conn.commit()


def setup_ledger(pg: Pg, db: str, schedule: Schedule, args: argparse.Namespace) -> float:
    """A migrated ledger with the schedule applied and the watermark at the start of DAY.

    Returns the seconds the ledger's own first application of the schedule took."""
    pg.drop(db)
    pg.admin(f'CREATE DATABASE "{db}"')
    engine = make_engine(pg.url(db))
    try:
        migrate(engine)
        if not args.ledger_setup:
            preseed(pg, db, schedule)
        t, r = timed(
            lambda: ledger_materialise.materialise(
                engine, schedule, now=DAY_START, horizon=timedelta(0), start=DAY_START
            )
        )
        assert r.version_id is not None and r.created == 0
        return t
    finally:
        engine.dispose()


# ---------------------------------------------------------------- 1. materialise one day


def content_digest(pg: Pg, db: str) -> tuple[int, str]:
    cols = ", ".join(c for c in COLUMNS)
    (n, digest) = pg.admin(
        f"SELECT count(*), md5(string_agg(row({cols})::text, E'\\n' ORDER BY natural_key)) "
        "FROM obligations",
        db,
    )[0]
    return int(n), str(digest)


def bench_materialise(pg: Pg, schedule: Schedule, args: argparse.Namespace, out: Report) -> None:
    base = "mat_base"
    t_setup = setup_ledger(pg, base, schedule, args)
    (version_id,) = pg.admin("SELECT version_id FROM ledger_state WHERE id = 1", base)[0]
    out.info["materialise_setup"] = {
        "first_schedule_application_seconds": t_setup,
        "ledger_did_markets_and_areas": bool(args.ledger_setup),
        "markets": len(schedule.markets),
        "areas": sum(len(m.areas) for m in schedule.markets),
    }
    log(f"materialise: base ledger set up; the ledger's own part took {t_setup:.1f}s")
    t_expand, planned = timed(lambda: expand(schedule, DAY_START, DAY_START + ONE_DAY))
    n = len(planned)
    log(f"materialise: {n:,} obligations on {DAY} (expand {t_expand:.1f}s)")
    now = DAY_START
    engines: dict[str, sa.Engine] = {}
    exec_time: dict[str, list[float]] = {}
    statements: dict[str, int] = {}

    def fresh(kind: str) -> Callable[[], None]:
        def setup() -> None:
            if kind in engines:
                engines.pop(kind).dispose()
            pg.clone(f"mat_{kind}", base)
            pg.checkpoint()
            if kind != "copy":
                e = make_engine(pg.url(f"mat_{kind}"))
                with e.connect() as c:  # a pooled connection, as in the daemon
                    c.exec_driver_sql("SELECT count(*) FROM ledger_state").all()
                _time_statements(e, kind, exec_time, statements)
                engines[kind] = e

        return setup

    def run_copy() -> None:
        with psycopg.connect(pg.dsn("mat_copy")) as conn, conn.cursor() as cur:
            with cur.copy(COPY_SQL) as cp:
                for row in raw_rows(planned, version_id, now):
                    cp.write_row(row)
            conn.commit()

    def core_with(insert: Callable[..., int], kind: str) -> Callable[[], None]:
        def go() -> None:
            if kind in exec_time:
                exec_time[kind].clear()
            with write(engines[kind]) as conn:
                created = insert(conn, planned, version_id=version_id, now=now)
                hi = now + ONE_DAY
                conn.execute(
                    sa.update(LedgerState).where(LedgerState.id == 1).values(materialised_until=hi)
                )
                audit.append(
                    conn,
                    [
                        audit.NewEvent(
                            at=now,
                            actor=audit.SYSTEM,
                            action="materialised",
                            details={
                                "from": now.isoformat(),
                                "to": hi.isoformat(),
                                "created": created,
                            },
                        )
                    ],
                )
            assert created == n, (created, n)

        return go

    def run_full() -> None:
        r = ledger_materialise.materialise(engines["full"], schedule, now=now, horizon=ONE_DAY)
        assert r.created == n and r.chunks == 1, r

    def check() -> None:
        digests = {k: content_digest(pg, f"mat_{k}") for k in ("copy", "core", "full", "copy_temp")}
        same = len(set(digests.values())) == 1
        out.checks.append(
            "materialise: the raw COPY, `insert_planned`, `materialise` and the proposed "
            f"COPY + `INSERT … SELECT` left identical obligations ({n:,} rows, md5 of every "
            f"column but the id in natural-key order): {'yes' if same else 'NO'}"
        )
        assert same, digests

    variants: dict[str, tuple[Callable[[], Any] | None, Callable[[], Any]]] = {
        "copy": (fresh("copy"), run_copy),
        "core": (fresh("core"), core_with(ledger_materialise.insert_planned, "core")),
        "full": (fresh("full"), run_full),
        "copy_temp": (fresh("copy_temp"), core_with(insert_planned_copy, "copy_temp")),
        "unnest": (fresh("unnest"), core_with(insert_planned_unnest, "unnest")),
    }
    times = rounds(variants, repeat=args.repeat, warmup=1, after_warmup=check)
    sect = (
        f"materialise one day on PostgreSQL ({n:,} obligations, {len(schedule.markets):,} markets)"
    )
    base_r = Result(
        sect,
        "raw psycopg `COPY obligations … FROM STDIN`, one transaction (baseline)",
        times["copy"],
    )
    core = Result(
        sect,
        "`insert_planned` + watermark + audit event, one transaction (the ledger's write path)",
        times["core"],
        base_r,
        target=2.0,
    )
    out.results += [
        core,
        Result(
            sect,
            "whole `ledger_materialise.materialise` call for the day",
            times["full"],
            base_r,
            note="adds `expand` and `ensure_version`",
        ),
        Result(
            sect,
            "proposed: COPY into a temp table + `INSERT … SELECT … ON CONFLICT DO NOTHING`, "
            "+ watermark + audit event",
            times["copy_temp"],
            base_r,
            target=2.0,
            note="implemented in bench/province.py only",
        ),
        Result(
            sect,
            "proposed, alternative: `INSERT … SELECT * FROM unnest(14 arrays) ON CONFLICT DO "
            "NOTHING RETURNING id` per 20,000 rows, + watermark + audit event",
            times["unnest"],
            base_r,
            target=2.0,
            note="implemented in bench/province.py only",
        ),
        base_r,
        Result(
            sect,
            "`obligations.expand` for the day (pure Python)",
            [t_expand],
            base_r,
            note="one run",
        ),
    ]
    out.info["materialise"] = {
        "obligations": n,
        "rows_per_second": {k: n / statistics.median(v) for k, v in times.items()},
        "statements_core": statements.get("core"),
        "execute_seconds_core_last_round": sum(exec_time.get("core", [])),
    }

    if args.profile:
        fresh("core")()
        prof = cProfile.Profile()
        prof.enable()
        core_with(ledger_materialise.insert_planned, "core")()
        prof.disable()
        out.profile = summarize_profile(prof)
        out.profile["execute_seconds"] = sum(exec_time["core"])
        out.profile["statements"] = statements["core"]
    for e in engines.values():
        e.dispose()
    for k in variants:
        pg.drop(f"mat_{k}")
    pg.drop(base)


def _time_statements(
    engine: sa.Engine, kind: str, exec_time: dict[str, list[float]], statements: dict[str, int]
) -> None:
    """Wall time inside the driver's execute (round trip + server), to split client vs server."""
    started: list[float] = []
    exec_time[kind] = []
    statements[kind] = 0

    @event.listens_for(engine, "before_cursor_execute")
    def _before(*_a: Any) -> None:
        started.append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(*_a: Any) -> None:
        exec_time[kind].append(time.perf_counter() - started.pop())
        statements[kind] += 1


# ---------------------------------------------------------------- 2. the sweep


def shift_sql() -> str:
    iv = "make_interval(days => %(shift)s)"
    return f"""
INSERT INTO obligations ({", ".join(COLUMNS)}, completed_at)
SELECT
  market_id || '|' || coalesce(area_id, '-') || '|' || task_id || '|'
    || to_char(occurrence::timestamp - {iv}, 'YYYY-MM-DD"T"HH24:MI'),
  market_id, area_id, task_id, kind,
  to_char(local_date::date - %(shift)s, 'YYYY-MM-DD'),
  to_char(occurrence::timestamp - {iv}, 'YYYY-MM-DD"T"HH24:MI'),
  opens_at - {iv}, due_at - {iv}, missed_at - {iv},
  CASE WHEN r < 90 THEN 'done' WHEN r < 97 THEN 'late' ELSE 'missed' END,
  CASE WHEN r < 90 THEN due_at - {iv} - interval '25 minutes'
       WHEN r < 97 THEN due_at - {iv} + interval '40 minutes'
       ELSE missed_at - {iv} END,
  version_id,
  opens_at - {iv} - interval '2 days',
  CASE WHEN r < 90 THEN due_at - {iv} - interval '25 minutes'
       WHEN r < 97 THEN due_at - {iv} + interval '40 minutes' END
FROM (SELECT *, floor(random() * 100) AS r FROM template) t
WHERE local_date::date - %(shift)s >= %(lo)s::date AND local_date::date - %(shift)s < %(hi)s::date
"""


SPLIT_SQL = (
    "SELECT id, state FROM obligations WHERE state = %(state)s AND missed_at <= %(now)s "
    "ORDER BY missed_at LIMIT 2000"
)


@dataclass
class SweepSize:
    days: int
    rows: int
    table_mb: float
    build_seconds: float
    busy: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)
    opened: int = 0
    missed: int = 0
    opened_range: tuple[int, int] = (0, 0)
    split_idle_select: float = 0.0
    plan_split: list[str] = field(default_factory=list)
    scan_idle_select: float = 0.0
    index_idle_select: float = 0.0
    plan_idle: list[str] = field(default_factory=list)


def bench_sweep(pg: Pg, schedule: Schedule, args: argparse.Namespace, out: Report) -> None:
    db = "sweep"
    setup_ledger(pg, db, schedule, args)
    engine = make_engine(pg.url(db))
    # the day and, as the daemon keeps them, the days ahead of its horizon (still upcoming)
    r = ledger_materialise.materialise(
        engine, schedule, now=DAY_START, horizon=ONE_DAY * (1 + args.ahead_days)
    )
    assert r.version_id is not None and r.created > 0
    # every row the ledger wrote (the day and the days ahead) has an id up to this one;
    # the history, added later, comes after
    max_day_id, day_rows = pg.admin(
        f"SELECT max(id), count(*) FILTER (WHERE local_date <= '{DAY}') FROM obligations", db
    )[0]
    build = psycopg.connect(pg.dsn(db), autocommit=True)
    build.execute("SET synchronous_commit = off")  # set-up only; measurements use the default
    (total_now,) = build.execute("SELECT count(*) FROM obligations").fetchone()  # type: ignore[misc]
    ahead_rows = int(total_now) - int(day_rows)
    base_seq, base_hash = build.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()  # type: ignore[misc]
    build.execute(
        "CREATE TEMP TABLE template (market_id text, area_id text, task_id text, kind text, "
        "local_date text, occurrence text, opens_at timestamptz, due_at timestamptz, "
        "missed_at timestamptz, version_id bigint)"
    )
    lo_week = DAY_START - timedelta(days=7)
    with build.cursor().copy("COPY template FROM STDIN") as cp:
        for p in expand(schedule, lo_week, lo_week + timedelta(days=7)):
            cp.write_row(
                (
                    p.market_id,
                    p.area_id,
                    p.task_id,
                    p.kind,
                    p.occurrence.strftime("%Y-%m-%d"),
                    p.occurrence.strftime("%Y-%m-%dT%H:%M"),
                    p.opens_at,
                    p.due_at,
                    p.missed_at,
                    r.version_id,
                )
            )
    log(f"sweep: {len(schedule.markets):,} markets, {day_rows:,} obligations on the day")

    captured: list[tuple[str, Any]] = []
    capturing = [False]

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if capturing[0]:
            captured.append((statement, params))

    def reset() -> None:
        with psycopg.connect(pg.dsn(db), autocommit=True) as c:
            with c.transaction():
                c.execute(
                    "UPDATE obligations SET state = 'upcoming', state_changed_at = %s, "
                    "completed_at = NULL WHERE id <= %s AND state <> 'upcoming'",
                    (DAY_START, max_day_id),
                )
                # the benchmark takes back its own events: past the append-only guard
                c.execute("ALTER TABLE events DISABLE TRIGGER USER")
                c.execute("DELETE FROM events WHERE seq > %s", (base_seq,))
                c.execute("ALTER TABLE events ENABLE TRIGGER USER")
                c.execute(
                    "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (base_seq, base_hash)
                )
                c.execute("UPDATE ledger_state SET last_seen_now = NULL WHERE id = 1")
            c.execute("VACUUM obligations")
            c.execute("VACUUM events")
            c.execute("CHECKPOINT")
        with engine.connect() as c2:
            c2.exec_driver_sql("SELECT count(*) FROM ledger_state").all()

    counts: list[tuple[int, int]] = []

    def busy() -> None:
        res = ledger_sweep.sweep_all(engine, now=SWEEP_AT)
        counts.append((res.opened, res.missed))

    def idle() -> None:
        res = ledger_sweep.sweep_all(engine, now=SWEEP_AT)
        assert res.opened == 0 and res.missed == 0, res

    sizes: list[SweepSize] = []
    have = 0
    t_build = 0.0
    for days in args.sweep_days:
        if sizes:
            per_row = sizes[-1].table_mb / sizes[-1].rows
            projected = per_row * day_rows * (days + 1 + args.ahead_days) / 1000
            if projected > args.max_gb:
                log(f"sweep: stopping before {days} days (projected {projected:.1f} GB > --max-gb)")
                out.info["sweep_stopped_before_days"] = days
                break
        t0 = time.perf_counter()
        weeks = math.ceil(days / 7)
        lo = (DAY - timedelta(days=days)).isoformat()
        hi = (DAY - timedelta(days=have)).isoformat()
        for k in range(weeks - 1, -1, -1):  # the template is the week before the day: shift 0
            build.execute(shift_sql(), {"shift": 7 * k, "lo": lo, "hi": hi})
        build.execute("VACUUM ANALYZE obligations")
        t_build += time.perf_counter() - t0
        have = days
        (rows,) = build.execute("SELECT count(*) FROM obligations").fetchone()  # type: ignore[misc]
        (size,) = build.execute("SELECT pg_total_relation_size('obligations')").fetchone()  # type: ignore[misc]
        sz = SweepSize(days, int(rows), size / 1e6, t_build)
        log(
            f"sweep: {days} days of history, {rows:,} rows, {size / 1e6:,.0f} MB "
            f"(built in {t_build:.0f}s so far)"
        )
        captured.clear()

        def busy_captured() -> None:
            capturing[0] = not captured
            try:
                busy()
            finally:
                capturing[0] = False

        times = rounds(
            {"busy": (reset, busy_captured), "idle": (None, idle)},
            repeat=args.repeat,
            warmup=1,
        )
        sz.busy, sz.idle = times["busy"], times["idle"]
        # the missed count is fixed; the opened one varies by a few dozen between rounds:
        # a row past its miss time that the batch's opening query reaches before the
        # missing query does is recorded opened, then missed (ties in the ORDER BY)
        assert len({m for _, m in counts}) == 1, counts
        sz.opened, sz.missed = counts[0]
        sz.opened_range = (min(o for o, _ in counts), max(o for o, _ in counts))
        counts.clear()
        # the idle sweep's first SELECT, with and without the index
        first = next(
            (s, p)
            for s, p in captured
            if s.lstrip().upper().startswith("SELECT") and "FROM obligations" in s
        )
        sz.plan_idle, sz.index_idle_select = explain(engine, first[0], first[1])
        _, sz.scan_idle_select = explain(engine, first[0], first[1], scan=True)
        # the proposed form: one query per pending state, each an ordered range of its index
        for st in ("upcoming", "open"):
            plan, secs = explain(engine, SPLIT_SQL, {"state": st, "now": SWEEP_AT})
            sz.split_idle_select += secs
            sz.plan_split = plan
        sizes.append(sz)
    # full plans of what the busy sweep executed, at the largest size, on the reset day
    reset()
    plans: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for statement, params in captured:
        shape = re.sub(r"IN \((%\(\w+\)s(::\w+)?(, )?)+\)", "IN (…)", " ".join(statement.split()))
        if "obligations" not in statement or shape in seen:
            continue
        if not statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
            continue
        seen.add(shape)
        plan, _ = explain(engine, statement, params)
        plans.append((shape, plan))
    out.sweep_plans = plans
    out.sweep_sizes = sizes
    out.info["sweep"] = {
        "markets": len(schedule.markets),
        "day_rows": int(day_rows),
        "ahead_days": args.ahead_days,
        "ahead_rows": ahead_rows,
    }
    build.close()
    engine.dispose()
    pg.drop(db)


def explain(
    engine: sa.Engine, statement: str, params: Any, *, scan: bool = False
) -> tuple[list[str], float]:
    """EXPLAIN (ANALYZE, BUFFERS) in a transaction rolled back; the plan and the execution ms."""
    with engine.connect() as conn:
        with conn.begin() as tx:
            if scan:
                for s in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                    conn.exec_driver_sql(f"SET LOCAL {s} = off")
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).all()
            tx.rollback()
    lines = [str(r[0]) for r in rows]
    ms = next(
        (float(x.split(":")[1].split()[0]) for x in lines if x.startswith("Execution Time")), 0.0
    )
    return lines, ms / 1000


def growth(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log y over log x: time ∝ rows^k."""
    if len(xs) < 2:
        return None
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else None


# ---------------------------------------------------------------- report


@dataclass
class Report:
    command: str
    results: list[Result] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    sweep_sizes: list[SweepSize] = field(default_factory=list)
    sweep_plans: list[tuple[str, list[str]]] = field(default_factory=list)
    machine: list[tuple[str, str]] = field(default_factory=list)
    started: str = ""
    elapsed: float = 0.0

    def growth_rows(self) -> dict[str, float | None]:
        s = [z for z in self.sweep_sizes if z.days >= 1]
        xs = [z.rows for z in s]
        return {
            "busy": growth(xs, [statistics.median(z.busy) for z in s]),
            "idle": growth(xs, [statistics.median(z.idle) for z in s]),
            "idle_select_index": growth(xs, [z.index_idle_select for z in s]),
            "idle_select_scan": growth(xs, [z.scan_idle_select for z in s]),
            "idle_select_split": growth(xs, [z.split_idle_select for z in s]),
        }

    def markdown(self) -> str:
        lines = [
            f"Command: `{self.command}` (run {self.started}, total {self.elapsed / 60:.1f} min)",
            "",
            "| machine | |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in self.machine] + [""]
        if self.results:
            lines += [
                "| section | measurement | median | baseline | ratio | target |",
                "|---|---|---:|---|---:|---|",
            ]
            for r in self.results:
                ratio = "" if r.ratio is None else f"{r.ratio:.2f}×"
                if r.target and r.ratio is not None:
                    ratio = f"**{ratio}**"
                    if r.round_ratios:
                        ratio += f" <br>rounds {min(r.round_ratios):.2f}–{max(r.round_ratios):.2f}×"
                base = "" if r.baseline is None else fmt_s(r.baseline.median)
                target = "" if r.target is None else f"≤ {r.target:g}× — {r.verdict}"
                name = r.name + (f" <br>*{r.note}*" if r.note else "")
                lines.append(
                    f"| {r.section} | {name} | {fmt_s(r.median)} | {base} | {ratio} | {target} |"
                )
            lines.append("")
            m = self.info.get("materialise", {})
            if m:
                rps = m["rows_per_second"]
                lines.append(
                    "Rows/s (median round): "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in rps.items())
                    + "."
                )
                lines.append("")
            s = self.info.get("materialise_setup")
            if s:
                how = (
                    "markets and areas inserted by `ensure_version` itself"
                    if s["ledger_did_markets_and_areas"]
                    else "markets and areas pre-written with COPY, so `ensure_version` only "
                    "compares them; `--ledger-setup` lets it insert them"
                )
                lines.append(
                    f"Set-up, not measured: the first `materialise` of the province's schedule "
                    f"({s['markets']:,} markets, {s['areas']:,} areas; {how}) took "
                    f"{fmt_s(s['first_schedule_application_seconds'])}."
                )
                lines.append("")
        for c in self.checks:
            lines += [f"Check — {c}.", ""]
        if self.profile:
            p = self.profile
            lines.append(
                f"cProfile of one `insert_planned` + watermark + audit transaction: "
                f"{p['statements']} SQL statements, {fmt_s(p['execute_seconds'])} inside the "
                "driver's `execute` (round trips + server); top functions by own time:"
            )
            lines += ["", "| function | calls | own | cumulative |", "|---|---:|---:|---:|"]
            for fn, nc, tt, ct in p["top"]:
                lines.append(f"| `{fn}` | {nc} | {tt:.3f} s | {ct:.3f} s |")
            lines.append("")
        if self.sweep_sizes:
            sw = self.info["sweep"]
            z0 = self.sweep_sizes[0]
            lines.append(
                f"Sweep: {sw['markets']:,} markets, {sw['day_rows']:,} obligations on the day "
                f"({z0.opened:,} opened, {z0.missed:,} missed by the busy sweep at 20:00 local), "
                f"plus {sw['ahead_rows']:,} upcoming obligations of the {sw['ahead_days']} days "
                "ahead (the daemon's default horizon keeps them materialised); "
                "history in final states grows by days:"
            )
            lines += [
                "",
                "| history days | rows | table + indexes | busy `sweep_all` | idle `sweep_all` "
                "| idle first `SELECT` as the planner chose (EXPLAIN ANALYZE) | same, scans forced "
                "| same split per state (proposed) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for z in self.sweep_sizes:
                lines.append(
                    f"| {z.days} | {z.rows:,} | {z.table_mb:,.0f} MB | {fmt_s(statistics.median(z.busy))} "
                    f"| {fmt_s(statistics.median(z.idle))} | {fmt_s(z.index_idle_select)} "
                    f"| {fmt_s(z.scan_idle_select)} | {fmt_s(z.split_idle_select)} |"
                )
            g = self.growth_rows()
            lines.append("")
            lines.append(
                "Growth exponent k (time ∝ rows^k, least squares over the sizes): "
                + ", ".join(
                    f"{name} {'–' if v is None else f'{v:.2f}'}"
                    for name, v in (
                        ("busy sweep", g["busy"]),
                        ("idle sweep", g["idle"]),
                        ("idle SELECT with its index", g["idle_select_index"]),
                        ("the same SELECT scanning", g["idle_select_scan"]),
                        ("split per state", g["idle_select_split"]),
                    )
                )
                + "."
            )
            lines.append("")
            last = self.sweep_sizes[-1]
            lines += ["Idle sweep's first `SELECT` at the largest size:", "", "```text"]
            lines += last.plan_idle
            lines += ["```", ""]
            lines += [
                "The proposed split form at the largest size (`state = 'open'`; "
                "`'upcoming'` is alike):",
                "",
                "```text",
                *last.plan_split,
                "```",
                "",
            ]
        if self.sweep_plans:
            lines += [
                "EXPLAIN (ANALYZE, BUFFERS) of the statements the busy sweep executed (largest "
                "size, the day reset to upcoming; each in a transaction rolled back):",
                "",
                "```text",
            ]
            for shape, plan in self.sweep_plans:
                lines.append(shape[:400])
                lines += [f"  {p}" for p in plan]
                lines.append("")
            lines += ["```", ""]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "started": self.started,
            "elapsed_seconds": self.elapsed,
            "machine": dict(self.machine),
            "server_settings": SERVER_SETTINGS,
            "results": [
                {
                    "section": r.section,
                    "name": r.name,
                    "times": r.times,
                    "median": r.median,
                    "baseline": None if r.baseline is None else r.baseline.name,
                    "ratio": r.ratio,
                    "round_ratios": r.round_ratios,
                    "target": r.target,
                    "verdict": r.verdict,
                    "note": r.note,
                }
                for r in self.results
            ],
            "checks": self.checks,
            "info": self.info,
            "profile": self.profile,
            "sweep_sizes": [asdict(z) for z in self.sweep_sizes],
            "sweep_growth": self.growth_rows() if self.sweep_sizes else None,
            "sweep_plans": self.sweep_plans,
        }


def load(markets: int, tmp: Path) -> Schedule:
    city = tmp / f"city-{markets}"
    generate.write_city(city, markets, 12)
    t, schedule = timed(lambda: run.load_city(city))
    log(f"loaded {markets:,} markets in {t:.1f}s")
    return schedule  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--markets", type=int, default=20_000, help="markets of the province (materialise)"
    )
    ap.add_argument("--sweep-markets", type=int, default=5_000)
    ap.add_argument(
        "--sweep-days", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3, 10, 30, 90]
    )
    ap.add_argument("--repeat", type=int, default=2, help="measured rounds (after a warm-up)")
    ap.add_argument(
        "--ahead-days", type=int, default=2, help="upcoming days after the day (horizon)"
    )
    ap.add_argument(
        "--max-gb", type=float, default=15.0, help="stop growing the history beyond this"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200 markets; sweep 100 x 1,3 days; 1 round; no profile",
    )
    ap.add_argument(
        "--full", action="store_true", help="20,000 markets for the sweep too, up to 60 days"
    )
    ap.add_argument("--only", choices=["materialise", "sweep"], action="append")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument(
        "--ledger-setup",
        action="store_true",
        help="let ensure_version insert markets and areas itself (one INSERT per row: slow)",
    )
    ap.add_argument("--tmpdir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.markets, args.sweep_markets, args.sweep_days, args.repeat = 200, 100, [1, 3], 1
        args.profile = False
    if args.full:
        args.sweep_markets, args.sweep_days = args.markets, [1, 3, 10, 30, 60]
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    report = Report(command=f".venv/bin/python bench/province.py {shown}".strip())
    report.machine = run.machine_info()
    report.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    # a plain `kill` still stops the server and removes the temporary folders
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="marketcare-province-", dir=args.tmpdir))
    server = start_server(args.tmpdir)
    pg = Pg(server)
    report.machine.append(
        (
            "PostgreSQL",
            f"{pg.version()} ({', '.join(f'{k}={v}' for k, v in SERVER_SETTINGS.items() if k in ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_wal_size'))})",
        )
    )
    report.machine.append(("psycopg", psycopg.__version__))
    failed: BaseException | None = None
    try:
        schedules: dict[int, Schedule] = {}
        if not args.only or "materialise" in args.only:
            schedules[args.markets] = load(args.markets, tmp)
            bench_materialise(pg, schedules[args.markets], args, report)
        if not args.only or "sweep" in args.only:
            sched = schedules.get(args.sweep_markets) or load(args.sweep_markets, tmp)
            bench_sweep(pg, sched, args, report)
    except BaseException as exc:  # keep what was measured before the failure
        failed = exc
        report.checks.append(f"the run FAILED: {exc!r}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report.elapsed = time.perf_counter() - started
    report.machine.append(("load average at end", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report.as_json(), indent=2, default=str), encoding="utf-8")
    md = report.markdown()
    OUT_MD.write_text(md + "\n", encoding="utf-8")
    print(md)
    log(f"wrote {OUT} and {OUT_MD}")
    if failed is not None:
        raise failed


if __name__ == "__main__":
    main()
