"""The long-running daemon: small steps against the ledger, woken by APScheduler.

APScheduler only decides *when* a step runs (memory job store, plain interval
triggers, one worker thread so steps never overlap). What is due is always derived
from the ledger's watermark, so a run APScheduler skips, a crash or days of downtime
lose nothing: the next step replays the gap.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from marketcare.clock import now_utc
from marketcare.domain.schedules import Schedule, digest_of, files_in, read_sources
from marketcare.domain.timespec import format_duration
from marketcare.errors import MarketcareError, SourceError
from marketcare.ledger import audit, leader
from marketcare.ledger.db import log_failure, make_engine
from marketcare.ledger.health import PROBE_INTERVAL, SWEEP_SECONDS, Health, StepRecord, probe_writes
from marketcare.ledger.leader import (
    Leadership,
    SqliteFileLock,
    identity,
    leadership_for,
    migrate_exclusively,
)
from marketcare.ledger.materialise import MaterialiseResult, materialise
from marketcare.ledger.sweep import SweepResult, sweep_all
from marketcare.ledger.versions import active_schedule, ledger_state
from marketcare.ops.validation import Verdict, check_in_child, wall_bound
from marketcare.settings import Settings

log = logging.getLogger("marketcare.daemon")

#: how often the leader links audit events still pending (PostgreSQL; ``step_chain``)
CHAIN_INTERVAL_SECONDS = 5.0
#: how often a daemon tries to take the scheduler lead, and the leader renews its heartbeat
LEADER_TICK_SECONDS = 1.0
#: how long a stop waits for a running step before the process exits without it
STOP_GRACE_SECONDS = 10.0
#: how far the check of the first schedule expands it
CHECK_SPAN = timedelta(days=1)


@dataclass
class Daemon:
    """The daemon's steps; each is callable on its own (tests call them directly)."""

    settings: Settings
    engine: sa.Engine
    schedule: Schedule | None = None
    _files_signature: tuple[tuple[str, float, int], ...] = ()
    #: how long the schedule files must stay unchanged before an edit is read: an editor
    #: that truncates a file and then writes it, or a copy written in place, shows a
    #: shorter (even empty, hence valid) file for a moment, which must never be run
    #: (``reload_settle_seconds`` unless set here)
    settle_seconds: float | None = None
    #: the files' signature and when this daemon first saw it (time.monotonic)
    _seen: tuple[tuple[tuple[str, float, int], ...], float] | None = None
    #: True when the last look found the files still being written: look again
    _unsettled: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)
    #: what this daemon does (``run --role``): all: the scheduler (when leader) and the web
    #: app; scheduler: no web app; web: no scheduler. Not a user's role (domain/access.py)
    duty: str = "all"
    leadership: Leadership | None = None
    #: True while this daemon holds the scheduler lead (steps run only then)
    leading: bool = True
    _leading_since: datetime | None = None
    _scheduler: Any = None
    #: what /readyz reports: step ages, a broken schedule file, the write probe
    health: Health = field(default_factory=lambda: Health(started_at=now_utc()))
    #: the digest of files already refused (not checked again until they change)
    _failed_digest: str | None = None
    #: the step running on the scheduler's worker now, if any
    _running: str | None = None
    #: a stop left a step running: the process exits without waiting for it
    _abandoned: bool = False
    _wake: threading.Event = field(default_factory=threading.Event)

    def now(self) -> datetime:
        return now_utc()

    # -- steps -------------------------------------------------------------------------

    def step_reload(self) -> bool:
        """Check the schedule files (in a child process) and take them if they changed and
        are valid; keep the last good schedule when they are broken.

        Returns True when a new schedule was taken.
        """
        verdict = self.check_files()
        return verdict is not None and self.take(verdict)

    def check_files(self) -> Verdict | None:
        """A verdict on the files when they differ from the running schedule and from the
        last refused edit; None when there is nothing new to take (or the files are still
        being written: then ``_unsettled`` is set, to look again)."""
        settled = self._read_settled()
        if settled is None:
            return None
        texts, unreadable = settled
        digest = digest_of(texts, self.settings.timezone)
        if unreadable:
            self._refuse(unreadable, digest)
            return None
        if self.schedule is not None and digest == self.schedule.digest:
            if self.health.schedule_problem is not None:
                self._valid_again()
            return None
        if digest == self._failed_digest:
            return None
        if self.schedule is None:
            applied = self._applied_with(digest)
            if applied is not None:
                log.info(
                    "schedule files as the ledger last applied them; not checked again",
                    extra={"digest": digest[:12]},
                )
                return Verdict(applied)
        before = self.schedule.sources if self.schedule is not None else {}
        log.info(
            "checking the schedule files",
            extra={"changed": sorted(n for n, t in texts.items() if before.get(n) != t)[:20]},
        )
        now = self.now()
        # an edit is expanded over the horizon, to tell what it changes there; the first
        # load over a day, enough to prove it expands (the catch-up follows at once)
        span = self.settings.horizon if self.schedule is not None else CHECK_SPAN
        verdict = check_in_child(
            texts,
            default_timezone=self.settings.timezone,
            previous=self.schedule,
            start=now,
            end=now + min(span, self.settings.horizon),
            timeout=self.settings.reload_timeout_seconds,
            should_stop=self.stopping.is_set,
        )
        if verdict.cancelled:
            return None
        if not verdict.ok:
            self._refuse(verdict.errors, digest)
            return None
        return verdict

    def _applied_with(self, digest: str) -> Schedule | None:
        """At start, the ledger's last applied schedule when the files are exactly its texts.

        A restart on unchanged files (after a crash, a reboot, an upgrade) does not check
        them again in a child process: these texts were checked when they were first
        taken, and every tick already parses the ledger's version in its own process
        (``schedule_of_version``). The check's fork server is a fresh interpreter that
        imports the schedule code: about 0.3 s of processor time at every start. A version
        this code can no longer read is checked in the child like an edit, which names
        the file and line.
        """
        try:
            with self.engine.connect() as conn:
                return active_schedule(conn, digest=digest)
        except MarketcareError:
            return None

    def _settle(self) -> float:
        given = self.settle_seconds
        return self.settings.reload_settle_seconds if given is None else given

    def _read_settled(self) -> tuple[dict[str, str], list[SourceError]] | None:
        """The files' texts once they have stayed unchanged for ``settle_seconds`` and did
        not change while they were read; None (``_unsettled``) while they keep changing."""
        self._unsettled = False
        settle = self._settle()
        deadline = time.monotonic() + 10 * settle + 1
        while True:
            before = self._schedule_signature()
            now = time.monotonic()
            if self._seen is None or self._seen[0] != before:
                self._seen = (before, now)
            if now - self._seen[1] >= settle or self._untouched_for_a_while(before):
                texts, unreadable = read_sources([self.settings.schedules_dir])
                if self._schedule_signature() == before:
                    return texts, unreadable
                self._seen = None  # replaced while it was read: wait for it to settle
            if now >= deadline or self.stopping.wait(min(0.2, settle or 0.2)):
                self._unsettled = True
                return None

    def _untouched_for_a_while(self, signature: tuple[tuple[str, float, int], ...]) -> bool:
        """Whether the folder and its files were last written ``settle_seconds`` ago or more,
        by their own times: a daemon that starts on files nobody is writing reads them at
        once instead of first watching them for that long (every start waited a second).
        The folder's own time moves when a file is added, removed or renamed into it, so a
        file deleted to be written again is still waited for; a time in the future (a
        skewed clock) is waited for too."""
        try:
            newest = self.settings.schedules_dir.stat().st_mtime
        except OSError:
            return False
        newest = max([newest, *(mtime for _, mtime, _ in signature)])
        return time.time() - newest >= self._settle()

    def take(self, verdict: Verdict) -> bool:
        """Run the schedule of a good verdict: log what it changes, materialise it."""
        fresh = verdict.schedule
        assert fresh is not None
        if self.schedule is not None and fresh.digest == self.schedule.digest:
            return False
        was_broken = self.health.schedule_problem is not None
        self.schedule = fresh
        log.info(
            "schedule loaded",
            extra={
                "digest": fresh.digest[:12],
                "markets": len(fresh.markets),
                "tasks": len(fresh.tasks),
            },
        )
        if verdict.changes:
            log.info("schedule changes:\n%s", "\n".join(verdict.changes))
        result = self.step_materialise()
        self._failed_digest = None
        if was_broken:
            self._valid_again(result.version_id if result else None)
        return True

    def _refuse(self, errors: list[SourceError], digest: str) -> None:
        kept = "keeping the last good schedule" if self.schedule else "no schedule to run yet"
        log.error("schedule files are invalid; %s:\n%s", kept, "\n".join(str(e) for e in errors))
        files = sorted({e.file for e in errors})
        first = errors[0] if errors else None
        self.health.schedule_problem = (
            f"{', '.join(files)} invalid ({len(errors)} error{'s' if len(errors) != 1 else ''}"
            + (f"; first: {first}" if first else "")
            + f"); {kept}"
        )
        self._failed_digest = digest

    def _valid_again(self, version_id: int | None = None) -> None:
        if version_id is None:
            with self.engine.connect() as conn:
                state = ledger_state(conn)
            version_id = state.version_id if state is not None else None
        self.health.schedule_problem = None
        self._failed_digest = None
        log.info("schedule valid again (version %s)", version_id, extra={"version": version_id})

    def step_materialise(self) -> MaterialiseResult | None:
        if self.schedule is None:
            return None
        started = time.monotonic()
        result = materialise(
            self.engine,
            self.schedule,
            now=self.now(),
            horizon=self.settings.horizon,
            should_stop=self.stopping.is_set,
        )
        if result.created or result.withdrawn or result.excused or result.updated:
            log.info(
                "materialised",
                extra={
                    "obligations_created": result.created,
                    "withdrawn": result.withdrawn,
                    "excused": result.excused,
                    "until": result.until.isoformat() if result.until else None,
                    "version": result.version_id,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        self.step_sweep()
        return result

    def step_sweep(self) -> SweepResult:
        now = self.now()
        with SWEEP_SECONDS.time():
            result = sweep_all(self.engine, now=now)
        if result.opened or result.missed:
            log.info("swept", extra={"opened": result.opened, "missed": result.missed})
        if self.schedule is not None:
            from marketcare.ledger import problems as problem_ledger

            raised = problem_ledger.raise_from_obligations(self.engine, self.schedule, now=now)
            if raised:
                log.info("problems raised from obligations", extra={"problems": raised})
        return result

    def step_reports(self) -> int:
        """Produce reports whose run time has come (including any missed while down)."""
        if self.schedule is None or not self.schedule.reports:
            return 0
        from marketcare.reports import delivery

        now = self.now()
        delivery.plan_runs(self.engine, self.schedule, now=now)
        return delivery.run_pending(
            self.engine,
            self.schedule,
            now=now,
            exports_dir=self.settings.exports_dir,
            default_language=self.settings.language,
            sender=self.settings.smtp_sender,
        )

    def step_chain(self) -> int:
        """Link events still pending to the audit chain: the backstop of the tick writers,
        which link after each batch but leave it when another chainer holds the head
        (or die between their commit and the link)."""
        return audit.chain(self.engine)

    def step_timestamp(self) -> bool:
        """Have the authority witness the chain's head (daily, and after each report)."""
        from marketcare.ops import timestamping

        return timestamping.stamp_if_due(self.engine, self.settings, now=self.now()) is not None

    def step_outbox(self) -> int:
        """Send due emails; failures are kept in the outbox with their reason."""
        from marketcare.reports import delivery

        result = delivery.send_due(
            self.engine,
            delivery.smtp_config(self.settings),
            now=self.now(),
            language=self.settings.language,
            clock=self.now,
        )
        return result.sent

    def step_notifications(self) -> int:
        """Turn escalation steps that came due into notifications, then send due ones."""
        from marketcare.reports import delivery, notify

        if self.schedule is not None:
            notify.materialise(
                self.engine, self.schedule, now=self.now(), sender=self.settings.smtp_sender
            )
        result = notify.send_due(
            self.engine,
            delivery.smtp_config(self.settings),
            now=self.now(),
            timezone=self.settings.timezone,
        )
        return result.sent

    def _schedule_signature(self) -> tuple[tuple[str, float, int], ...]:
        out = []
        directory = self.settings.schedules_dir
        for p in files_in(directory):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_mtime, st.st_size))
        return tuple(out)

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop``); returns after a clean shutdown."""
        stop = stop or self.stopping
        self.stopping = stop
        if self.duty != "web":
            self.leadership = leadership_for(self.engine, self.settings.sqlite_path)
            if isinstance(self.leadership, SqliteFileLock) and not self.leadership.try_acquire():
                raise MarketcareError(
                    f"another marketcare daemon is running on {self.settings.sqlite_path} "
                    f"(lock {self.leadership.lock_file}); one scheduler per SQLite database "
                    "(use PostgreSQL for several daemons, or --role web for a web-only one)"
                )

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received; stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self._run(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.leadership is not None:
                self.leadership.release()
                self.leading = False
        if self._abandoned and previous:
            # the step left running would keep the interpreter alive at exit; the ledger
            # is consistent at every commit, so the process may end now
            logging.shutdown()
            os._exit(0)

    def _run(self, stop: threading.Event) -> None:
        migrate_exclusively(self.engine)
        log.info(
            "daemon starting",
            extra={
                "role": self.duty,
                "database": self.engine.url.render_as_string(hide_password=True),
                "schedules": str(self.settings.schedules_dir),
                "horizon": format_duration(self.settings.horizon),
            },
        )
        threading.Thread(target=self._prober, args=(stop,), name="write-probe", daemon=True).start()
        if self.duty == "web":
            self._serve_only(stop)
            return
        # the leader decides; until this daemon leads, its steps are no-ops
        self._take_lead_if_free()
        if not self._load_at_start():
            return
        self._files_signature = self._schedule_signature()

        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler = scheduler
        scheduler.add_job(
            self._guarded(self.step_sweep, "sweep"),
            "interval",
            seconds=self.settings.sweep_interval_seconds,
            id="sweep",
        )
        scheduler.add_job(
            self._guarded(self.step_materialise, "materialise"),
            "interval",
            seconds=self.settings.materialise_interval_seconds,
            id="materialise",
        )
        scheduler.add_job(
            self._guarded(self.step_reports),
            "interval",
            seconds=self.settings.report_interval_seconds,
            id="reports",
            next_run_time=datetime.now(UTC),  # catch up at once on start
        )
        if self.settings.tsa_url:
            scheduler.add_job(
                self._guarded(self.step_timestamp),
                "interval",
                seconds=self.settings.report_interval_seconds,
                id="timestamp",
                next_run_time=datetime.now(UTC),
            )
        scheduler.add_job(
            self._guarded(self.step_outbox, "outbox"),
            "interval",
            seconds=self.settings.outbox_interval_seconds,
            id="outbox",
            next_run_time=datetime.now(UTC),
        )
        scheduler.add_job(
            self._guarded(self.step_notifications),
            "interval",
            seconds=self.settings.notify_interval_seconds,
            id="notifications",
            next_run_time=datetime.now(UTC),
        )
        if self.engine.dialect.name == "postgresql":
            scheduler.add_job(
                self._guarded(self.step_chain),
                "interval",
                seconds=CHAIN_INTERVAL_SECONDS,
                id="chain",
            )
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True)
        reloader = threading.Thread(
            target=self._reloader, args=(stop, scheduler), name="reloader", daemon=True
        )
        self._expect_steps()

        if stop.is_set():
            log.info("daemon stopped before its loop started")
            return
        web = self._start_web() if self.duty == "all" else None
        scheduler.start()
        watcher.start()
        reloader.start()
        log.info("daemon running")
        try:
            while not stop.wait(LEADER_TICK_SECONDS):
                self._leader_tick()
        finally:
            self._shutdown(scheduler)
            if web is not None:
                web.stop()
            log.info("daemon stopped")

    def _expect_steps(self) -> None:
        """The steps /readyz watches on the leader, with how late each may be."""
        s = self.settings
        self.health.steps = {
            "sweep": StepRecord(s.sweep_interval_seconds, 3 * s.sweep_interval_seconds + 30),
            "materialise": StepRecord(
                s.materialise_interval_seconds, 3 * s.materialise_interval_seconds + 60
            ),
            "reload": StepRecord(1.0, wall_bound(s.reload_timeout_seconds) + 30),
            "outbox": StepRecord(s.outbox_interval_seconds, 3 * s.outbox_interval_seconds + 60),
        }
        self.health.steps_since = self.now()

    def _shutdown(self, scheduler: BackgroundScheduler) -> None:
        """Stop the scheduler, waiting a bounded time for the step that runs."""
        scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._running is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._running is not None:
            log.error(
                "step %s still running %.0f s after the stop; exiting without it "
                "(everything acknowledged is committed)",
                self._running,
                STOP_GRACE_SECONDS,
            )
            self._abandoned = True

    def _load_at_start(self) -> bool:
        """Load the schedule files, or fall back to the last applied schedule."""
        if self.step_reload() or self.schedule is not None:
            return True
        if self.stopping.is_set():
            return False  # stopped while the files were being checked
        # broken files at start: run the last schedule the ledger applied, if any
        with self.engine.connect() as conn:
            self.schedule = active_schedule(conn)
        if self.schedule is None:
            raise MarketcareError(
                f"no valid schedule in {self.settings.schedules_dir} and none applied before; "
                "fix the files (marketcare check) and start again"
            )
        log.warning("running the last applied schedule until the files are fixed")
        self.step_materialise()
        return True

    def _start_web(self) -> Any:
        """Serve the web app and API from this process (``web_enabled``)."""
        if not self.settings.web_enabled:
            return None
        from marketcare.web.app import start_servers

        server = start_servers(self.settings, self.engine, daemon=self)
        log.info(
            "web app listening",
            extra={"url": f"http://{self.settings.web_host}:{server.port}/"},
        )
        return server

    def _serve_only(self, stop: threading.Event) -> None:
        web = self._start_web()
        log.info("daemon running (web only)")
        try:
            while not stop.wait(0.5):
                pass
        finally:
            if web is not None:
                web.stop()
            log.info("daemon stopped")

    # -- leadership --------------------------------------------------------------------

    def _take_lead_if_free(self) -> bool:
        """Try to become (or stay) the scheduler leader; keep the heartbeat fresh."""
        if self.leadership is None:
            return False
        was = self.leading
        try:
            self.leading = self.leadership.still_held() if was else self.leadership.try_acquire()
        except Exception as exc:
            log_failure(log, "cannot reach the database to elect a leader", exc)
            self.leading = False
        now = self.now()
        if self.leading and not was:
            self._leading_since = now
            self.health.steps_since = now
            log.info("this daemon now runs the scheduler", extra={"leader": identity()})
        elif was and not self.leading:
            log.warning(
                "this daemon lost the scheduler lead; following", extra={"leader": identity()}
            )
        if self.leading:
            try:
                leader.heartbeat(self.engine, identity(), now=now, since=self._leading_since or now)
            except Exception as exc:
                log_failure(log, "heartbeat failed", exc)
        return self.leading and not was

    def _leader_tick(self) -> None:
        became = self._take_lead_if_free()
        if became and self._scheduler is not None:
            # a new leader catches up at once: what the old one left undone is replayed
            for job in self._scheduler.get_jobs():
                job.modify(next_run_time=datetime.now(UTC))

    def _reloader(self, stop: threading.Event, scheduler: BackgroundScheduler) -> None:
        """Notice edits (woken by the file watcher, or every second) and check them in a
        child process, on this thread: the steps go on meanwhile. A good edit is taken
        on the scheduler's worker, between steps."""
        while not stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if stop.is_set():
                break
            if not self.leading:
                continue
            try:
                signature = self._schedule_signature()
                if signature != self._files_signature or self._unsettled:
                    self._files_signature = signature
                    verdict = self.check_files()
                    if verdict is not None:
                        taken = threading.Event()

                        def take(v: Verdict = verdict, done: threading.Event = taken) -> None:
                            try:
                                self.take(v)
                            finally:
                                done.set()

                        take.__name__ = "take"
                        scheduler.add_job(self._guarded(take), id="take-schedule")
                        while not taken.wait(0.2) and not stop.is_set():
                            pass
                self.health.step_ok("reload", self.now())
            except Exception as exc:
                self.health.step_failed("reload", f"{type(exc).__name__}: {exc}"[:300])
                log_failure(log, "checking the schedule files failed; trying again", exc)

    def _watch(self, stop: threading.Event) -> None:
        """Wake the reloader as soon as a schedule file changes (inotify via watchfiles)."""
        try:
            from watchfiles import watch

            for _changes in watch(
                self.settings.schedules_dir,
                stop_event=stop,
                debounce=300,
                rust_timeout=1000,
                raise_interrupt=False,
            ):
                self._wake.set()
        except Exception:  # the reloader still looks every second
            log.warning("file watching unavailable; polling the schedule files", exc_info=True)

    def _prober(self, stop: threading.Event) -> None:
        """Prove every PROBE_INTERVAL that the database and the folders take writes."""
        failing = False
        folders = [self.settings.exports_dir, self.settings.evidence_dir]
        while True:
            now = self.now()
            try:
                probe_writes(self.engine, folders, identity(), now=now)
                self.health.wrote(now, None)
                if failing:
                    log.info("writes succeed again")
                failing = False
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(getattr(exc, 'orig', None) or exc)}"
                self.health.wrote(now, reason.splitlines()[0][:300])
                if not failing:
                    log.error("the write probe failed: %s", reason)
                failing = True
            if stop.wait(PROBE_INTERVAL):
                return

    def _guarded(self, fn: Any, step: str | None = None) -> Any:
        def run() -> None:
            if not self.leading:
                return  # another daemon runs the scheduler
            self._running = getattr(fn, "__name__", "step")
            try:
                fn()
                if step is not None:
                    self.health.step_ok(step, self.now())
            except Exception as exc:
                if step is not None:
                    self.health.step_failed(step, f"{type(exc).__name__}: {exc}"[:300])
                name = getattr(fn, "__name__", fn)
                log_failure(log, f"step {name} failed; it will run again", exc)
            finally:
                self._running = None

        run.__name__ = getattr(fn, "__name__", "step")
        return run


#: what a daemon may be asked to do, by ``marketcare run --role``
DUTIES = ("all", "scheduler", "web")


def build(settings: Settings, duty: str = "all") -> Daemon:
    if duty not in DUTIES:
        raise MarketcareError(f"unknown role {duty!r}: use one of {', '.join(DUTIES)}")
    return Daemon(
        settings=settings,
        engine=make_engine(settings.database_url),
        duty=duty,
        leading=False,
    )
