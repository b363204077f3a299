"""Checking schedule edits in a child process, so that no input can stop the daemon.

The daemon hands the texts of the edited files to a child process that loads them,
validates them and expands the horizon, exactly as the daemon then will. The child has
a time limit and a memory limit and runs at a lower priority; the daemon waits for it
in a thread of its own, watching its stop event, so neither its steps nor a SIGTERM
ever wait on a pathological edit. What comes back is the loaded schedule (unpickling
is ten times faster than loading again), or every located error.

The time limit is processor time, the child's own: what an edit costs to check. It
once was the wall clock from the child's start, so on a loaded machine the start of the
fork server and a lower-priority child waiting for a CPU counted as the edit's cost, and
a daemon could refuse a two-line schedule at start-up. The wall clock still bounds a
child that does not finish (``wall_bound``), generously.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from marketcare.domain.changes import compare, summary
from marketcare.domain.obligations import expand
from marketcare.domain.schedules import Schedule, load_texts
from marketcare.errors import ScheduleError, SourceError

#: the most memory (address space) the checking child may use
CHILD_MEMORY_BYTES = 4 << 30
#: how long a child may take to start (a fresh fork server imports the schedule code)
START_BOUND_SECONDS = 120.0


def wall_bound(timeout: float) -> float:
    """The wall-clock time a check of ``timeout`` seconds of processor time may take: the
    child runs at a lower priority, so a busy machine stretches it; past this it is
    stopped as if it had used its time."""
    return 10 * timeout + 60


_context: Any = None


def _processes() -> Any:
    """A forkserver context: children fork from a clean server that has this module
    loaded, never from the daemon and its threads."""
    global _context
    if _context is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["marketcare.ops.validation"])
        _context = ctx
    return _context


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a set of schedule texts."""

    schedule: Schedule | None
    errors: list[SourceError] = field(default_factory=list)
    #: what the edit changes against the running schedule, one line per task and market
    changes: list[str] = field(default_factory=list)
    #: True when the daemon was asked to stop while the check ran
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.schedule is not None


def _limit_child(seconds: float) -> None:
    """Lower priority, at most ``CHILD_MEMORY_BYTES``, and the kernel's stop (SIGXCPU)
    once the process has used ``seconds`` of processor time and a margin for its start,
    for a loop no budget check reaches."""
    try:
        os.nice(10)
    except OSError:
        pass
    for limit, wanted in (
        (resource.RLIMIT_AS, CHILD_MEMORY_BYTES),
        (resource.RLIMIT_CPU, math.ceil(seconds + time.process_time()) + 1),
    ):
        try:
            _soft, hard = resource.getrlimit(limit)
            cap = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
            resource.setrlimit(limit, (cap, hard))
        except (ValueError, OSError):
            pass


def check_texts(
    texts: Mapping[str, str],
    *,
    default_timezone: str,
    previous: Schedule | None,
    start: datetime,
    end: datetime,
    seconds: float | None = None,
) -> Verdict:
    """Load, validate and expand ``[start, end)`` here (the child's work, callable alone)."""
    try:
        schedule = load_texts(texts, default_timezone=default_timezone)
        planned = expand(schedule, start, end, seconds=seconds)
        lines: list[str] = []
        if previous is not None:
            before = expand(previous, start, end, seconds=seconds)
            changes = compare(before, planned, previous, schedule)
            lines = summary(changes, lambda m: schedule.zone(schedule.market_by_id[m]))
    except ScheduleError as exc:
        return Verdict(None, exc.errors)
    return Verdict(schedule, changes=lines)


def _child(
    conn: Connection,
    texts: dict[str, str],
    default_timezone: str,
    previous: Schedule | None,
    start: datetime,
    end: datetime,
    seconds: float,
) -> None:
    _limit_child(seconds)
    begun = time.process_time()  # the child's start (its imports) is not the edit's cost
    try:
        conn.send(("started", None))
        verdict = check_texts(
            texts,
            default_timezone=default_timezone,
            previous=previous,
            start=start,
            end=end,
            seconds=seconds,
        )
        if time.process_time() - begun > seconds:  # what the budget checks did not catch
            conn.send(("timeout", None))
        else:
            conn.send(("verdict", verdict))
    except MemoryError:
        conn.send(("memory", None))
    except BaseException:  # unforeseen: still a refusal the daemon can report, never a crash
        conn.send(("crash", traceback.format_exc(limit=5)))
    finally:
        conn.close()


def _blame(texts: Mapping[str, str], previous: Schedule | None, message: str) -> list[SourceError]:
    """The files an edit changed (the likely cause), each with ``message``."""
    before = previous.sources if previous is not None else {}
    changed = sorted(n for n, t in texts.items() if before.get(n) != t) or sorted(texts)
    return [SourceError(name, 1, 1, message) for name in changed or ["<schedules>"]]


def check_in_child(
    texts: Mapping[str, str],
    *,
    default_timezone: str,
    previous: Schedule | None,
    start: datetime,
    end: datetime,
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> Verdict:
    """Run :func:`check_texts` in a child process; past ``timeout`` seconds of its
    processor time (or ``wall_bound(timeout)`` of waiting) the child is killed and the
    changed files are named. Returns at once (cancelled) when ``should_stop`` says so."""
    ctx = _processes()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child,
        args=(send, dict(texts), default_timezone, previous, start, end, timeout),
        name="marketcare-schedule-check",
        daemon=True,
    )
    started = time.monotonic()
    try:
        child.start()
    except OSError as exc:  # no processes to be had: check here, with the time budget only
        receive.close()
        send.close()
        logging.getLogger("marketcare.daemon").warning(
            "cannot start a process to check the schedule files (%s); checking them in the "
            "daemon itself",
            exc,
        )
        return check_texts(
            texts,
            default_timezone=default_timezone,
            previous=previous,
            start=start,
            end=end,
            seconds=timeout,
        )
    send.close()
    bound, kind, value = START_BOUND_SECONDS, "unstarted", None
    try:
        while True:
            if receive.poll(0.2):
                try:
                    kind, value = receive.recv()
                except (EOFError, OSError):
                    kind, value = "died", None
                if kind == "started":  # the time to start is not the edit's
                    started, bound = time.monotonic(), wall_bound(timeout)
                    continue
                break
            if not child.is_alive() and not receive.poll(0):
                kind = "died"
                break
            if should_stop():
                return Verdict(None, cancelled=True)
            if time.monotonic() - started > bound:
                kind = "timeout" if kind == "started" else "unstarted"
                break
    finally:
        if child.is_alive() and kind != "died":  # a dying child is let go to see its end
            child.kill()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
        receive.close()
    if kind == "died" and child.exitcode == -signal.SIGXCPU:  # the kernel's stop, above
        kind = "timeout"
    if kind == "verdict":
        assert isinstance(value, Verdict)
        return value
    why = {
        "timeout": f"checking the schedule files took longer than {timeout:g} s "
        "(reload_timeout_seconds); simplify the edit of this file",
        "unstarted": "the process checking the schedule files did not start within "
        f"{START_BOUND_SECONDS:g} s (is the machine overloaded?)",
        "memory": f"checking the schedule files needed more than {CHILD_MEMORY_BYTES >> 30} GB "
        "of memory; simplify the edit of this file",
        "died": f"the process checking the schedule files stopped (exit code {child.exitcode})",
        "crash": "checking the schedule files failed unexpectedly; the details are logged",
    }[kind]
    if kind == "crash":
        logging.getLogger("marketcare.daemon").error("schedule check failed:\n%s", value)
    return Verdict(None, _blame(texts, previous, why))
