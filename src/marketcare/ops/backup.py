"""Online, consistent copies of the SQLite ledger, and putting one back.

A copy is taken through SQLite's backup API from inside one read transaction, so it is
the database as of one instant even while the daemon and the web app keep writing (WAL
lets them). It is written under a temporary name, checked, flushed to disk and only then
renamed, so a file with the final name is always a whole, verified ledger.

PostgreSQL has its own tools for this (``pg_dump -Fc`` / ``pg_restore``, WAL archiving for
point-in-time recovery); see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from filelock import Timeout
from sqlalchemy.engine import make_url

from marketcare.errors import MarketcareError
from marketcare.files import fsync_path
from marketcare.ledger import audit
from marketcare.ledger.db import MIGRATIONS, current_revision, make_engine, migrate
from marketcare.settings import Settings

#: the tables whose row counts a backup and a restore report
MAIN_TABLES = ("obligations", "completions", "events", "problems", "reports")
#: pages copied per step of the backup API (4 MiB with 4 KiB pages): small steps keep
#: the progress bar moving; the read transaction keeps the copy consistent across steps
STEP_PAGES = 1024

PG_BACKUP = (
    "the database is PostgreSQL: back it up with PostgreSQL's own tools, e.g. "
    "`pg_dump -Fc -f marketcare.dump DBNAME` (and WAL archiving for point-in-time "
    "recovery); see docs/operations.md"
)
PG_RESTORE = (
    "the database is PostgreSQL: restore a `pg_dump -Fc` file with PostgreSQL's own tools, "
    "e.g. `pg_restore --clean --if-exists --no-owner -d DBNAME marketcare.dump`; "
    "see docs/operations.md"
)

#: called with (pages copied, pages in all) after each step of the copy
Progress = Callable[[int, int], None]


class NotALedger(MarketcareError):
    """A file given as a backup is not a whole marketcare database."""


@dataclass(frozen=True)
class Inspection:
    """What a database file holds, checked: the facts a backup and a restore report."""

    path: Path
    size: int
    revision: str | None
    counts: dict[str, int]
    chain: audit.Verdict


@dataclass(frozen=True)
class Restored:
    #: where the database that was replaced now is (None when there was none)
    kept: Path | None
    revision: str | None
    counts: dict[str, int] = field(default_factory=dict)


def sqlite_file(database_url: str, *, restoring: bool = False) -> Path:
    """The ledger's file, or a clear refusal for a database this command cannot copy."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        raise MarketcareError(PG_RESTORE if restoring else PG_BACKUP)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise MarketcareError(
            f"database_url {url.render_as_string(hide_password=True)!r} is not a SQLite file"
        )
    return Path(url.database)


def default_path(db: Path, now: datetime) -> Path:
    """``backups/marketcare-<UTC timestamp>.db`` beside the database (var/backups/)."""
    return db.parent / "backups" / f"marketcare-{now:%Y%m%dT%H%M%SZ}.db"


def backup(
    db: Path, target: Path, *, step_pages: int = STEP_PAGES, progress: Progress | None = None
) -> Inspection:
    """Copy the live database to ``target`` and check the copy; returns what it holds.

    Raises when the copy is not sound (and leaves no file with the target's name).
    """
    if not db.is_file():
        raise MarketcareError(f"no database at {db}: nothing to back up (run marketcare init)")
    if target.exists():
        raise MarketcareError(f"{target} exists already; give a new path")
    if step_pages < 1:
        raise MarketcareError("--step-pages must be at least 1")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        revision = _copy(db, tmp, step_pages=step_pages, progress=progress)
        found = inspect(tmp, shown_as=target)
        if found.revision != revision:
            raise MarketcareError(
                f"the copy's schema revision {found.revision} differs from the database's "
                f"{revision}; the backup was not kept"
            )
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return Inspection(target, target.stat().st_size, found.revision, found.counts, found.chain)


def _copy(db: Path, tmp: Path, *, step_pages: int, progress: Progress | None) -> str | None:
    """Copy ``db`` as of one instant; returns the schema revision of that instant.

    The source connection opens a read transaction before the first step and keeps it to
    the last: each step then reads the same snapshot, so writers that commit meanwhile
    neither restart the copy nor leak into it.
    """
    src = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout = 30000")
        src.execute("BEGIN")
        revision = _revision(src)
        dst = sqlite3.connect(str(tmp), isolation_level=None)
        try:

            def step(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=step_pages, progress=step)
            # one self-contained file: no -wal beside it to forget when it is moved
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
        src.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        raise MarketcareError(f"cannot copy {db}: {exc}") from None
    finally:
        src.close()
    return revision


def _revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def inspect(path: Path, *, shown_as: Path | None = None) -> Inspection:
    """Check that ``path`` is a whole marketcare database and say what it holds.

    Raises NotALedger, naming ``shown_as`` (the file the user gave), when it is not a
    SQLite database, is damaged, or has no marketcare schema. A broken audit chain is
    reported in the result, not raised: whether that is acceptable is the caller's call.
    """
    name = shown_as or path
    if not path.is_file():
        raise NotALedger(f"{name}: no such file")
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise NotALedger(f"{name}: cannot open it ({exc})") from None
    try:
        problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise NotALedger(f"{name} is damaged: {'; '.join(problems)}")
        tables = {
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "alembic_version" not in tables:
            raise NotALedger(
                f"{name} is a SQLite database but not a marketcare one (no alembic_version table)"
            )
        revision = _revision(conn)
        missing = [t for t in (*MAIN_TABLES, "audit_head") if t not in tables]
        if revision is None or missing:
            raise NotALedger(
                f"{name} is not a whole marketcare database "
                f"(missing: {', '.join(missing) or 'the schema revision'})"
            )
        counts = {
            # t is a table of MAIN_TABLES, the code's own list, never input (bandit B608 accepted)
            t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # nosec B608
            for t in MAIN_TABLES
        }
    except sqlite3.DatabaseError as exc:
        raise NotALedger(f"{name} is not a readable SQLite database ({exc})") from None
    finally:
        conn.close()
    try:
        with _reader(path) as reader:
            chain = audit.verify(reader)
    except sa.exc.DBAPIError as exc:
        raise NotALedger(f"{name}: cannot read its event log ({exc.orig})") from None
    return Inspection(path, path.stat().st_size, revision, counts, chain)


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection on a file without make_engine's WAL switch (a copy stays as
    it was written)."""
    engine = sa.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(str(path)), poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def restore(
    settings: Settings,
    candidate: Path,
    *,
    now: datetime,
    force: bool = False,
    confirm: Callable[[Inspection], bool] | None = None,
) -> Restored:
    """Put a backup in place of the live SQLite database, keeping the one it replaces.

    Refused while a daemon holds the database's lock, and for a file that is not a whole
    marketcare database or whose audit chain is broken (unless ``force``); nothing is
    changed then. ``confirm`` sees what the backup holds and may still say no.
    """
    from marketcare.ledger.leader import sqlite_lock

    db = sqlite_file(settings.database_url, restoring=True)
    if not candidate.is_file():
        raise NotALedger(f"{candidate}: no such file")
    if candidate.resolve() == db.resolve():
        raise MarketcareError(f"{candidate} is the live database itself; give a backup file")
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = sqlite_lock(db)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise MarketcareError(
            f"a marketcare daemon is running on {db} (it holds {lock.lock_file}); stop it "
            "first (e.g. systemctl stop marketcare), then restore"
        ) from None
    stamp = f"{now:%Y%m%dT%H%M%SZ}"
    staging = db.with_name(f".{db.name}.restore-{stamp}")
    try:
        shutil.copyfile(candidate, staging)
        found = inspect(staging, shown_as=candidate)
        if not found.chain.ok and not force:
            raise MarketcareError(
                f"{candidate}: its audit chain is broken ({found.chain.reason}); refusing to "
                "restore a tampered ledger (--force restores it anyway)"
            )
        _known_revision(found.revision, candidate)
        if confirm is not None and not confirm(found):
            raise MarketcareError("restore cancelled; nothing was changed")
        fsync_path(staging)
        kept = _keep(db, stamp) if db.exists() else None
        for stale in (Path(f"{db}-wal"), Path(f"{db}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(staging, db)
        fsync_path(db.parent)
        revision, counts = _migrate(settings.database_url)
    finally:
        for leftover in (staging, *(Path(f"{staging}{s}") for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
        lock.release()
    return Restored(kept, revision, counts)


def _migrate(database_url: str) -> tuple[str | None, dict[str, int]]:
    """Bring a restored (older) backup to this version's schema, as the daemon would."""
    engine = make_engine(database_url)
    try:
        migrate(engine)
        revision = current_revision(engine)
        with engine.connect() as conn:
            counts = {
                # t is a table of MAIN_TABLES, the code's own list (bandit B608 accepted)
                t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one())  # nosec B608
                for t in MAIN_TABLES
            }
    finally:
        engine.dispose()
    return revision, counts


def _known_revision(revision: str | None, candidate: Path) -> None:
    """Refuse a backup made by a newer marketcare: these migrations could not read it."""
    from alembic.config import Config  # only here: a refused file never needs Alembic
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    try:
        known = (
            revision is not None
            and ScriptDirectory.from_config(cfg).get_revision(revision) is not None
        )
    except CommandError:
        known = False
    if not known:
        raise NotALedger(
            f"{candidate} has schema revision {revision}, which this marketcare does not know "
            "(it was made by a newer version): upgrade marketcare first"
        )


def _keep(db: Path, stamp: str) -> Path:
    """Keep the database about to be replaced, with whatever its WAL still holds."""
    kept = db.with_name(f"{db.name}.before-restore-{stamp}")
    try:
        _copy(db, kept, step_pages=-1, progress=None)
    except MarketcareError:  # too damaged for SQLite to read: keep the files as they are
        kept.unlink(missing_ok=True)
        shutil.copyfile(db, kept)
        wal = Path(f"{db}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{kept}-wal"))
    fsync_path(kept)
    return kept
