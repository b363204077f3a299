"""The test suite's database: a SQLite file per test, or a fresh PostgreSQL database per test.

On SQLite, a test that wants a migrated ledger gets a copy of a file migrated once per run.

``MARKETCARE_TEST_DB=postgresql`` runs the suite on PostgreSQL. With
``MARKETCARE_TEST_DATABASE_URL=postgresql+psycopg://user@host/db`` the suite uses that
server (the user must be allowed to create databases); without it, the suite starts a
throwaway server of its own (``initdb`` into a temporary folder, a free port, a Unix socket
in that folder) and removes it at the end. Durability is switched off there on purpose:
the server lives only as long as the test run.

Each test gets its own database, copied from a template (``CREATE DATABASE … TEMPLATE``
copies files, which is much cheaper than running the migrations again): an empty one where
the test expects a database nobody has initialised yet, a migrated one where the test
would have migrated first anyway.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url


def _server_binaries() -> Path:
    """Debian's newest PostgreSQL server (``make system-deps`` installs it), or the
    folder ``MARKETCARE_TEST_PG_BIN`` names."""
    given = os.environ.get("MARKETCARE_TEST_PG_BIN")
    if given:
        return Path(given)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _server_binaries()
#: which database the suite runs on: "sqlite" (the default) or "postgresql"
KIND_VARIABLE = "MARKETCARE_TEST_DB"
#: an existing PostgreSQL server to use instead of a throwaway one
URL_VARIABLE = "MARKETCARE_TEST_DATABASE_URL"
#: pytest-xdist's worker ("gw0", "gw1"…): workers that share one server
#: (``MARKETCARE_TEST_DATABASE_URL``) keep their own templates
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
EMPTY_TEMPLATE = "_".join(filter(None, ("mc_template_empty", _WORKER)))
MIGRATED_TEMPLATE = "_".join(filter(None, ("mc_template_migrated", _WORKER)))


def on_postgresql() -> bool:
    return os.environ.get(KIND_VARIABLE, "sqlite").lower() in {"postgresql", "postgres", "pg"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as ``postgres`` then."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class ThrowawayServer:
    """A PostgreSQL server in a temporary folder, for one test run."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    guardian: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, bin_dir: Path = PG_BIN) -> ThrowawayServer:
        if not (bin_dir / "initdb").exists():
            raise RuntimeError(
                f"no PostgreSQL server binaries in {bin_dir} (install postgresql: "
                "`make system-deps`), or set MARKETCARE_TEST_DATABASE_URL to a server"
            )
        folder = Path(tempfile.mkdtemp(prefix="marketcare-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
        server = cls(folder, _free_port())
        try:
            server._run(bin_dir)
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, bin_dir: Path) -> None:
        folder = self.folder
        data = folder / "data"
        run_as = _as_server_user()
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        self._launch(bin_dir)
        self.guardian = self._guard()
        self.wait_ready()

    def _launch(self, bin_dir: Path) -> None:
        folder = self.folder
        data = folder / "data"
        run_as = _as_server_user()
        log = (folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                *run_as,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "log_min_messages=warning",
                "-c",
                "timezone=UTC",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def restart(self, *, down_for: float = 0.0, bin_dir: Path = PG_BIN) -> None:
        """Stop the server as an operator would (``pg_ctl stop -m fast``: every client's
        connection is cut), stay down ``down_for`` seconds, start it again on the same
        port and socket, and wait until it accepts connections."""
        data = str(self.folder / "data")
        stop = [*_as_server_user(), str(bin_dir / "pg_ctl"), "stop", "-D", data, "-m", "fast"]
        subprocess.run(stop, check=True, capture_output=True)
        assert self.process is not None
        self.process.wait(timeout=60)
        time.sleep(down_for)
        self._launch(bin_dir)
        self.wait_ready()

    @property
    def socket_folder(self) -> Path:
        """The folder of the server's Unix socket (``-k``)."""
        return self.folder

    def _stop_command(self) -> list[str]:
        data = str(self.folder / "data")
        return [*_as_server_user(), str(PG_BIN / "pg_ctl"), "stop", "-D", data, "-m", "immediate"]

    def _guard(self) -> subprocess.Popen[bytes]:
        """A watcher that stops the server and removes its folder should this test run be
        killed outright (SIGKILL, a CI timeout): nothing of it may outlive the run."""
        script = (
            'folder="$1"; pid="$2"; shift 2; '
            'while kill -0 "$pid" 2>/dev/null; do sleep 2; done; '
            '"$@" >/dev/null 2>&1; rm -rf "$folder"'
        )
        return subprocess.Popen(
            [
                "sh",
                "-c",
                script,
                "guard",
                str(self.folder),
                str(os.getpid()),
                *self._stop_command(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        "the throwaway PostgreSQL server exited:\n" + self.log()[-3000:]
                    )
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            "the throwaway PostgreSQL server did not accept connections:\n"
                            + self.log()[-3000:]
                        ) from None
                    time.sleep(0.1)
        finally:
            engine.dispose()

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop at once (nothing here is worth a checkpoint) and remove the folder."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run(self._stop_command(), check=False, capture_output=True)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.guardian is not None and self.guardian.poll() is None:
            self.guardian.terminate()
            self.guardian.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Databases:
    """Hands out one database per test folder on a PostgreSQL server."""

    admin_url: URL
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    by_folder: dict[Path, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    prefix: str = field(default_factory=lambda: f"mc_t{os.getpid()}_")
    #: the templates made so far: each on first use (a module that only asks for empty
    #: databases, as tests/test_pgmigrate.py on the SQLite run, never pays for migrating)
    templates_ready: set[str] = field(default_factory=set)

    def _admin(self) -> sa.Engine:
        return sa.create_engine(
            self.admin_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
        )

    def url_of(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def _make_template(self, name: str) -> None:
        from marketcare.ledger.db import make_engine, migrate

        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            admin.dispose()
        if name == MIGRATED_TEMPLATE:
            engine = make_engine(self.url_of(name))
            try:
                migrate(engine)
            finally:
                engine.dispose()
        self.templates_ready.add(name)

    def fresh(self, folder: Path, *, migrated: bool) -> str:
        """The URL of the database that belongs to ``folder``; created on first use.

        ``migrated`` only chooses the template of a new database: like a SQLite file, the
        folder's database is the same one whoever asks first.
        """
        key = folder.resolve()
        with self.lock:
            if key in self.by_folder:
                return self.by_folder[key]
            template = MIGRATED_TEMPLATE if migrated else EMPTY_TEMPLATE
            if template not in self.templates_ready:
                self._make_template(template)
            name = f"{self.prefix}{next(self.counter)}"
            admin = self._admin()
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(
                        f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'
                    )
            finally:
                admin.dispose()
            url = self.url_of(name)
            self.by_folder[key] = url
            return url

    def copy(self, url: str, folder: Path) -> str:
        """A copy of the database ``url`` names, owned by ``folder`` (dropped with it).

        Nobody may be connected to the original meanwhile (dispose its engines first)."""
        name = f"{self.prefix}{next(self.counter)}"
        self._clone(make_url(url).database or "", name)
        copied = self.url_of(name)
        with self.lock:
            self.by_folder[folder.resolve()] = copied
        return copied

    def overwrite(self, url: str, source_url: str) -> None:
        """Make the database ``url`` names a copy of ``source_url``'s again (connections to
        it are cut; SQLAlchemy's pools reconnect on their next checkout)."""
        name = make_url(url).database or ""
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.dispose()
        self._clone(make_url(source_url).database or "", name)

    def _clone(self, source: str, name: str) -> None:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY FILE_COPY'
                )
        finally:
            admin.dispose()

    def drop_under(self, folder: Path) -> None:
        """Drop the databases of ``folder`` and below (connections left open are cut)."""
        folder = folder.resolve()
        with self.lock:
            gone = [k for k in self.by_folder if k.is_relative_to(folder)]
            names = [make_url(self.by_folder.pop(k)).database for k in gone]
        if not names:
            return
        admin = self._admin()
        try:
            with admin.connect() as conn:
                for name in names:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.dispose()

    def drop_all(self) -> None:
        with self.lock:
            names = [make_url(u).database for u in self.by_folder.values()]
            self.by_folder.clear()
        admin = self._admin()
        try:
            with admin.connect() as conn:
                for name in [*names, EMPTY_TEMPLATE, MIGRATED_TEMPLATE]:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.dispose()


_server: ThrowawayServer | None = None
_databases: Databases | None = None


def begin_session() -> None:
    """Start (or connect to) the PostgreSQL server when the run is on PostgreSQL."""
    global _server, _databases
    if not on_postgresql() or _databases is not None:
        return
    given = os.environ.get(URL_VARIABLE)
    if given:
        url = make_url(given)
        if url.get_backend_name() != "postgresql":
            raise RuntimeError(f"{URL_VARIABLE} must be a postgresql+psycopg:// URL, not {given}")
    else:
        _server = ThrowawayServer.start()
        url = make_url(_server.url)
    _databases = Databases(url)


def end_session() -> None:
    global _server, _databases, _session_folder
    if _session_folder is not None:
        shutil.rmtree(_session_folder, ignore_errors=True)
        _session_folder = None
    try:
        if _databases is not None and _server is None:
            _databases.drop_all()
    finally:
        _databases = None
        if _server is not None:
            _server.stop()
            _server = None


_refused = False


def refuse_databases(refused: bool) -> None:
    """While set, asking for a database fails: the test is marked ``no_database``."""
    global _refused
    _refused = refused


def database_url(folder: Path, *, migrated: bool = False) -> str:
    """The database URL a test that works in ``folder`` uses.

    SQLite: ``folder/ledger.db`` (created by whoever connects first). PostgreSQL: a new
    database, empty or already migrated (``migrated``); the same folder always gets the
    same database, so a test's daemon, its CLI commands and its own engine share one.
    """
    if _refused:
        raise RuntimeError(
            "this test is marked no_database (it runs on SQLite only) but asks for a database"
        )
    if _databases is None:
        if on_postgresql():
            raise RuntimeError("the PostgreSQL test server was not started (see conftest.py)")
        path = folder / "ledger.db"
        if migrated and not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_sqlite_template(), path)
        return f"sqlite:///{path}"
    return _databases.fresh(folder, migrated=migrated)


_session_folder: Path | None = None


def session_folder() -> Path:
    """A temporary folder that lasts as long as the test run (removed at its end)."""
    global _session_folder
    if _session_folder is None:
        _session_folder = Path(tempfile.mkdtemp(prefix="marketcare-tests-"))
    return _session_folder


def _sqlite_template() -> Path:
    """A SQLite file migrated once per run: copying it costs a millisecond where running
    every migration again costs a tenth of a second or more."""
    path = session_folder() / "migrated.db"
    if not path.exists():
        from marketcare.ledger.db import make_engine, migrate

        building = path.with_name("migrating.db")
        engine = make_engine(f"sqlite:///{building}")
        try:
            migrate(engine)
        finally:
            engine.dispose()
        # the last connection closed checkpointed the WAL: the one file is the whole database
        assert not building.with_name("migrating.db-wal").exists(), "the WAL was not merged"
        building.rename(path)
    return path


def copy_database(url: str, folder: Path) -> str:
    """A copy of the database ``url`` names, as the database of ``folder``: a template
    made once and copied per test (dispose the engines of ``url`` first)."""
    if _databases is None:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "ledger.db"
        with (
            closing(sqlite3.connect(make_url(url).database or "")) as source,
            closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)
        return f"sqlite:///{target}"
    return _databases.copy(url, folder)


def snapshot(url: str, folder: Path) -> str:
    """Keep the state of the database ``url`` names; ``restore`` brings it back.

    SQLite: a copy through SQLite's online backup, to ``folder/ledger.db``. PostgreSQL: a
    copy made with ``CREATE DATABASE … TEMPLATE`` (dispose every engine of ``url`` first).
    """
    return copy_database(url, folder)


def restore(url: str, snapshot_url: str) -> None:
    """Put the database ``url`` names back as ``snapshot`` kept it (dispose every engine of
    ``url`` first on PostgreSQL; on SQLite, open connections see the restored pages)."""
    if _databases is None:
        with (
            closing(sqlite3.connect(make_url(snapshot_url).database or "")) as copy,
            closing(sqlite3.connect(make_url(url).database or "", timeout=30)) as live,
        ):
            copy.backup(live)
        return
    _databases.overwrite(url, snapshot_url)


def release(folder: Path) -> None:
    """Drop the PostgreSQL databases a test made in ``folder`` (nothing to do on SQLite)."""
    if _databases is not None:
        _databases.drop_under(folder)


def server_log() -> str:
    return _server.log() if _server is not None else ""
