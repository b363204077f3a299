"""Reports as records, and their delivery by email through a durable outbox.

* ``export`` writes the workbook first (to a temporary name, then renamed), then records
  it with its SHA-256. A period exported again with the same values reuses the recorded
  file; with different values (a late correction) it becomes a new revision with its own
  file name. Nothing is overwritten once recorded.
* ``plan_runs`` turns each configured report's run times into ``report_runs`` rows from a
  stored watermark (as obligations are materialised), so a report due while the daemon
  was down is produced when it starts; ``run_pending`` produces them.
* ``enqueue`` writes one outbox row per (report, recipient); ``send_due`` sends them,
  at least once, with the same Message-ID on every attempt, exponential backoff across
  restarts, and permanent failures kept with their reason until ``resend``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import compliance
from marketcare.domain.inputs import check_email
from marketcare.domain.periods import Period, from_key
from marketcare.domain.problems import Rate
from marketcare.domain.schedules import ReportSpec, Schedule
from marketcare.errors import BadInput, Conflict, NotFound, Unavailable
from marketcare.files import fsync_path
from marketcare.i18n import translator
from marketcare.ledger import audit, installation
from marketcare.ledger import outbox as outbox_rules
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import OutboxMessage, ReportRecord, ReportRun, ReportWatermark
from marketcare.ledger.verification import file_damage
from marketcare.reports.figures import Rectification, Report
from marketcare.reports.mail import (
    ANCHOR_HEADER,
    DeliveryError,
    SmtpConfig,
    build_message,
    message_id,
    send,
)

log = logging.getLogger(__name__)

CATCH_UP_LIMIT = timedelta(days=400)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# ---------------------------------------------------------------- exporting


@dataclass(frozen=True)
class ExportResult:
    report_id: int
    path: Path
    revision: int
    sha256: str
    created: bool
    rows: int
    headline: dict[str, Any]
    #: the audit chain's head the file carries (its anchor)
    anchor: audit.Anchor | None = None
    #: earlier recorded files found missing or changed before this one was written
    damaged: tuple[str, ...] = ()


def scope_of(markets: Sequence[str] | None) -> str:
    return "all" if not markets else "+".join(sorted(set(markets)))


def file_name(
    period: Period, scope: str, language: str, revision: int, *, report: str = "", fmt: str = "xlsx"
) -> str:
    """``marketcare_week_2026-W48.xlsx`` (``report="bulletin"``, ``fmt="pdf"``:
    ``marketcare_bulletin_week_2026-W48.pdf``); a subset, English or a later revision says
    so. Every recorded report is named here."""
    name = "_".join(["marketcare", *([report] if report else []), period.kind, period.key])
    if scope != "all":
        safe = re.sub(r"[^a-z0-9+_-]", "", scope)
        if len(safe) > 60:
            safe = safe[:40] + "-" + hashlib.sha256(scope.encode()).hexdigest()[:8]
        name += f"_{safe}"
    if language != "zh_CN":
        name += f"_{language}"
    if revision > 1:
        name += f"_r{revision}"
    return f"{name}.{fmt}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: problems past their deadline listed in an email body (all of them are in the workbook)
EMAIL_PROBLEMS = 30


def _headline(report: Report) -> dict[str, Any]:
    """What the email says, kept with the record: the district's counts and each market's
    (``compliance.Counts``), the rectification figures, and the problems past their
    deadline (the weekly double report's second half)."""
    names = {m.id: m.name for m in report.markets}
    counts = report.counts()
    district = sum(counts.values(), compliance.Counts())
    rect = report.rectification()
    total = sum(rect.values(), Rectification(Rate(0, 0)))
    late = report.late_problems()
    zones = {m.id: m.zone for m in report.markets}
    return {
        **district.as_dict(),
        "compliance": _rounded(district.compliance),
        "markets": [
            {"market": m, "name": names[m], **c.as_dict(), "compliance": _rounded(c.compliance)}
            for m, c in counts.items()
        ],
        "rectification": {
            "due": total.rate.due,
            "verified": total.rate.verified,
            "rate": _rounded(total.rate.value),
            "reinspected": total.reinspected,
            "reinspection_failed": total.failed,
        },
        "late_problems": len(late),
        "problems": [
            {
                "id": p.id,
                "market": names.get(p.market_id, p.market_id),
                "area": p.area_name or p.area_id,
                "description": p.description,
                "deadline": p.deadline.isoformat(timespec="minutes"),
                "days_overdue": p.days_overdue,
                "zone": zones.get(p.market_id),
            }
            for p in late[:EMAIL_PROBLEMS]
        ],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def export(
    engine: sa.Engine,
    *,
    period: Period,
    exports_dir: Path,
    now: datetime,
    markets: Sequence[str] | None = None,
    language: str = "zh_CN",
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write (or reuse) the workbook of a period and record it; see the module docstring.

    Files are recorded in this ledger's own folder under ``exports_dir``
    (``installation.identity``), so two ledgers sharing the folder never collide; that
    file is the record of what was sent, which later exports compare with and reuse. A
    recorded file of this period found missing or changed is recorded as such (an event, a
    log line, ``/metrics``) before a new revision is written. ``out`` asks for a copy of
    the recorded file as well: a file path, or an existing folder that receives the file
    under its recorded name. Both folders are checked before any work, so a wrong path
    costs nothing and changes nothing.
    """
    from marketcare.reports.workbook import Stamp, write_workbook

    scope = scope_of(markets)
    copy_to = None if out is None else _copy_target(out)
    me = installation.identity(engine, now=now)
    target_dir = exports_folder(exports_dir, me.name)
    tmp = target_dir / f".marketcare-{os.getpid()}-{now.timestamp():.0f}.xlsx.part"
    audit.chain(engine)  # the anchor the file carries covers every event committed so far
    try:
        with read(engine) as conn:
            report = Report(conn, period, as_of=now, markets=markets)
            if markets:
                known = {m.id for m in report.markets}
                unknown = sorted(set(markets) - known)
                if unknown:
                    raise NotFound(f"unknown market {unknown[0]!r}")
            anchor = audit.head(conn)
            stamp = Stamp(
                seq=anchor.seq,
                hash=anchor.hash,
                installation=me.uid,
                scope=scope,
                language=language,
                period_kind=period.kind,
                period_key=period.key,
            )
            info = write_workbook(
                report, tmp, language=language, generated_at=now, progress=progress, stamp=stamp
            )
            headline = _headline(report)
        fsync_path(tmp)

        def record() -> ExportResult:
            with write(engine) as conn:
                latest = conn.execute(
                    sa.select(ReportRecord)
                    .where(
                        ReportRecord.kind == "compliance",
                        ReportRecord.period_kind == period.kind,
                        ReportRecord.period_key == period.key,
                        ReportRecord.scope == scope,
                        ReportRecord.language == language,
                    )
                    .order_by(ReportRecord.revision.desc())
                    .limit(1)
                ).one_or_none()
                damaged = note_damage(conn, latest, now=now) if latest is not None else None
                if latest is not None and damaged is None:
                    if latest.content_digest == info.content_digest:
                        tmp.unlink(missing_ok=True)
                        return ExportResult(
                            latest.id,
                            Path(latest.path),
                            latest.revision,
                            latest.sha256,
                            False,
                            latest.rows,
                            latest.headline,
                            _anchor_of(latest),
                        )
                revision = 1 if latest is None else latest.revision + 1
                final = target_dir / file_name(period, scope, language, revision)
                if final.exists():
                    if _recorded(conn, final):
                        raise Conflict(f"{final} is a recorded report; it is never overwritten")
                    _set_aside(final, now)
                os.replace(tmp, final)
                digest = _sha256(final)
                values = {
                    "kind": "compliance",
                    "format": "xlsx",
                    "period_kind": period.kind,
                    "period_key": period.key,
                    "scope": scope,
                    "language": language,
                    "revision": revision,
                    "path": str(final),
                    "sha256": digest,
                    "content_digest": info.content_digest,
                    "rows": info.rows,
                    "headline": headline,
                    "anchor_seq": anchor.seq,
                    "anchor_hash": anchor.hash,
                }
                report_id = record_report(conn, values, now=now)
                return ExportResult(
                    report_id,
                    final,
                    revision,
                    digest,
                    True,
                    info.rows,
                    headline,
                    anchor,
                    () if damaged is None else (damaged,),
                )

        result = retrying(record, what="record report")
        log.info(
            "report written" if result.created else "report unchanged; reusing the recorded file",
            extra={
                "path": str(result.path),
                "revision": result.revision,
                "sha256": result.sha256[:16],
            },
        )
        if copy_to is not None:
            result = replace(result, path=_copy(result.path, copy_to))
        return result
    finally:
        tmp.unlink(missing_ok=True)


def exports_folder(folder: Path, own: str) -> Path:
    """This ledger's folder ``own`` in the exports folder, made if missing; refused when
    it cannot take a file. The exports folder itself (the setting) is what a message
    names when it is the cause."""
    if folder.exists() and not folder.is_dir():
        raise Unavailable(
            f"the exports folder {folder} is a file, not a folder (setting exports_dir)",
            retry_after=60,
        )
    target = folder / own
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise Unavailable(
            f"{target} (this ledger's reports) is a file, not a folder: move it away",
            retry_after=60,
        ) from None
    except OSError as exc:
        raise Unavailable(
            f"cannot make the exports folder {target}: {exc.strerror} (setting exports_dir)",
            retry_after=60,
        ) from None
    if not _writable(target):
        raise Unavailable(
            f"the exports folder {target} is not writable (setting exports_dir)", retry_after=60
        )
    return target.resolve()


def _writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried, not guessed from the mode bits
    (which say nothing for root, nor for a read-only filesystem)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _copy_target(out: Path) -> Path:
    """Where ``--out`` puts its copy: a file in an existing, writable folder (an existing
    folder itself receives the file under its recorded name)."""
    folder = out if out.is_dir() else out.parent
    if not folder.is_dir():
        raise BadInput(f"--out {out}: the folder {folder} does not exist", "out")
    if not _writable(folder):
        raise BadInput(f"--out {out}: the folder {folder} is not writable", "out")
    if not out.is_dir() and out.suffix.lower() != ".xlsx":
        raise BadInput(f"--out {out}: name the file .xlsx (or give a folder)", "out")
    return out


def _copy(recorded: Path, out: Path) -> Path:
    """A copy of the recorded file at ``out``, written whole or not at all."""
    target = out / recorded.name if out.is_dir() else out
    if target.resolve() == recorded.resolve():
        return recorded
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(recorded, tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(
            f"--out {out}: cannot write {target}: {exc.strerror or exc}", "out"
        ) from None
    return target


def record_report(conn: sa.Connection, values: dict[str, Any], *, now: datetime) -> int:
    """Record a written report file and its ``report_recorded`` event (every column), in
    the caller's transaction; returns the record's id. Every kind of report goes through
    here, so ``audit verify`` can hold each ``reports`` row to its event."""
    report_id = int(
        conn.execute(
            sa.insert(ReportRecord).values(generated_at=now, **values).returning(ReportRecord.id)
        ).scalar_one()
    )
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=audit.SYSTEM,
                action="report_recorded",
                details={"report_id": report_id, **values},
            )
        ],
    )
    return report_id


def _anchor_of(record: Any) -> audit.Anchor | None:
    if record.anchor_seq is None or record.anchor_hash is None:
        return None
    return audit.Anchor(int(record.anchor_seq), str(record.anchor_hash))


def note_damage(conn: sa.Connection, record: Any, *, now: datetime) -> str | None:
    """Say so when a recorded file is missing or changed: a line for the person, an
    error in the log, an event, and the record marked (counted in ``/metrics``).

    Returns that line, or None when the file is as recorded.
    """
    damage = file_damage(Path(record.path), record.sha256)
    if damage is None:
        return None
    line = (
        f"recorded report {record.path} (revision {record.revision}) is {damage}; "
        "a new revision is written"
    )
    log.error(
        "a recorded report file is %s",
        damage,
        extra={"report": record.id, "path": record.path, "revision": record.revision},
    )
    if record.damage != damage:
        conn.execute(
            sa.update(ReportRecord)
            .where(ReportRecord.id == record.id)
            .values(damage=damage, damage_found_at=now)
        )
        audit.append(
            conn,
            [
                audit.NewEvent(
                    at=now,
                    actor=audit.SYSTEM,
                    action="report_file_damaged",
                    details={"report_id": record.id, "damage": damage, "path": record.path},
                )
            ],
        )
    return line


def _set_aside(path: Path, now: datetime) -> None:
    """A file of that name that this ledger never recorded: kept, under another name."""
    aside = path.with_name(f"{path.stem}.set-aside-{now:%Y%m%dT%H%M%S}{path.suffix}")
    os.replace(path, aside)
    log.warning(
        "a file this ledger did not record was in the way; kept it under another name",
        extra={"path": str(path), "kept_as": str(aside)},
    )


def _recorded(conn: sa.Connection, path: Path) -> bool:
    return (
        conn.execute(sa.select(ReportRecord.id).where(ReportRecord.path == str(path))).first()
        is not None
    )


# ---------------------------------------------------------------- scheduled reports


def run_times(
    spec: ReportSpec, *, zone: ZoneInfo, after: datetime, until: datetime
) -> list[tuple[datetime, Period]]:
    """The runs of ``spec`` in ``(after, until]`` (UTC) and the period each one covers."""
    out: list[tuple[datetime, Period]] = []
    day = after.astimezone(zone).date()
    last = until.astimezone(zone).date()
    while day <= last:
        if _runs_on(spec, day):
            local = datetime.combine(day, datetime.min.time()) + timedelta(minutes=spec.at.minutes)
            at = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
            if after < at <= until:
                period = Period.of(spec.period, day)
                out.append((at, period if spec.covered == "current" else period.previous()))
        day += timedelta(days=1)
    return out


def _runs_on(spec: ReportSpec, day: date) -> bool:
    if spec.period == "day":
        return True
    if spec.period == "week":
        return _WEEKDAYS[day.weekday()] == spec.weekday
    return day.day == spec.day


def plan_runs(engine: sa.Engine, schedule: Schedule, *, now: datetime) -> int:
    """Turn each report's run times since its watermark into pending runs; returns how many."""
    zone = ZoneInfo(schedule.default_timezone)
    created = 0

    def step() -> int:
        n = 0
        with write(engine) as conn:
            marks = {
                r.spec_id: r.checked_until for r in conn.execute(sa.select(ReportWatermark)).all()
            }
            for spec in schedule.reports:
                after = marks.get(spec.id)
                if after is None:  # a new report starts now; history is exported on demand
                    conn.execute(
                        sa.insert(ReportWatermark).values(spec_id=spec.id, checked_until=now)
                    )
                    continue
                after = max(after, now - CATCH_UP_LIMIT)
                if now <= after:
                    continue
                for at, period in run_times(spec, zone=zone, after=after, until=now):
                    result = conn.execute(
                        dialect_insert(conn, ReportRun)
                        .values(spec_id=spec.id, period_key=period.key, due_at=at, state="pending")
                        .on_conflict_do_nothing(index_elements=["spec_id", "period_key"])
                    )
                    n += max(result.rowcount or 0, 0)
                conn.execute(
                    sa.update(ReportWatermark)
                    .where(ReportWatermark.spec_id == spec.id)
                    .values(checked_until=now)
                )
        return n

    created = retrying(step, what="plan report runs")
    return created


def run_pending(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    now: datetime,
    exports_dir: Path,
    default_language: str,
    sender: str,
) -> int:
    """Produce every pending report run (file first, then record and outbox); returns how many."""
    specs = {s.id: s for s in schedule.reports}
    with read(engine) as conn:
        pending = conn.execute(
            sa.select(ReportRun)
            .where(ReportRun.state == "pending")
            .order_by(ReportRun.due_at, ReportRun.id)
        ).all()
    done = 0
    for run in pending:
        spec = specs.get(run.spec_id)
        if spec is None:
            with write(engine) as conn:
                conn.execute(
                    sa.update(ReportRun)
                    .where(ReportRun.id == run.id, ReportRun.state == "pending")
                    .values(state="cancelled", done_at=now)
                )
            log.warning(
                "report %s is no longer configured; run %s cancelled", run.spec_id, run.period_key
            )
            continue
        period = from_key(spec.period, run.period_key)
        result = _produce(
            engine,
            spec,
            period=period,
            exports_dir=exports_dir,
            now=now,
            language=spec.language or default_language,
        )

        def finish(
            run_id: int = run.id,
            report_id: int = result.report_id,
            recipients: Sequence[str] = tuple(spec.recipients),
        ) -> None:
            with write(engine) as conn:
                _enqueue(conn, report_id, recipients, now=now, sender=sender)
                conn.execute(
                    sa.update(ReportRun)
                    .where(ReportRun.id == run_id, ReportRun.state == "pending")
                    .values(state="done", report_id=report_id, done_at=now)
                )

        retrying(finish, what="queue report")
        log.info(
            "scheduled report produced",
            extra={"report": spec.id, "period": period.key, "path": str(result.path)},
        )
        done += 1
    return done


def _produce(
    engine: sa.Engine,
    spec: ReportSpec,
    *,
    period: Period,
    exports_dir: Path,
    now: datetime,
    language: str,
) -> Any:
    """The file a scheduled report sends: the workbook, or a bulletin's (its PDF goes
    with it, see ``_message``)."""
    markets = None if spec.markets == "all" else list(spec.markets)
    if spec.kind == "bulletin":
        from marketcare.reports.bulletin import produce

        b = produce(
            engine,
            period=period,
            exports_dir=exports_dir,
            now=now,
            markets=markets,
            language=language,
        )
        return ExportResult(b.xlsx_id, b.xlsx, b.revision, "", b.created, 0, b.headline)
    return export(
        engine, period=period, exports_dir=exports_dir, now=now, markets=markets, language=language
    )


# ---------------------------------------------------------------- the outbox


def enqueue(
    engine: sa.Engine, report_id: int, recipients: Sequence[str], *, now: datetime, sender: str
) -> int:
    """Queue the report for each recipient (once each); every address is checked first,
    so a bad one queues nothing (an address with a line break could never be sent)."""

    def step() -> int:
        with write(engine) as conn:
            return _enqueue(conn, report_id, recipients, now=now, sender=sender)

    return retrying(step, what="enqueue")


def _enqueue(
    conn: sa.Connection, report_id: int, recipients: Sequence[str], *, now: datetime, sender: str
) -> int:
    n = 0
    for rcpt in dict.fromkeys([check_email(r, "recipients") for r in recipients]):
        result = conn.execute(
            dialect_insert(conn, OutboxMessage)
            .values(
                report_id=report_id,
                recipient=rcpt,
                message_id=message_id(report_id, rcpt, sender),
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["report_id", "recipient"])
        )
        n += max(result.rowcount or 0, 0)
    return n


@dataclass
class SendResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _claim(engine: sa.Engine, now: datetime) -> Any | None:
    """Take one due message under a lease (see ``outbox``), with its report."""
    audit.chain(engine)  # the anchor the email carries covers every event committed so far

    def step() -> Any | None:
        with write(engine) as conn:
            row = outbox_rules.select_due(conn, OutboxMessage, now)
            if row is None or not outbox_rules.take(conn, OutboxMessage, row, now):
                return None
            report = conn.execute(
                sa.select(ReportRecord).where(ReportRecord.id == row.report_id)
            ).one()
            extra = None
            if report.kind == "bulletin":
                from marketcare.reports.bulletin import companion_pdf

                extra = companion_pdf(conn, report)
            return row, (report, extra), audit.head(conn)

    return retrying(step, what="claim outbox")


def send_due(
    engine: sa.Engine,
    smtp: SmtpConfig,
    *,
    now: datetime,
    language: str = "zh_CN",
    limit: int = 50,
    clock: Callable[[], datetime] | None = None,
) -> SendResult:
    """Send due outbox messages, one at a time; each outcome is recorded before the next."""
    result = SendResult()
    for _ in range(limit):
        claimed = _claim(engine, now)
        if claimed is None:
            break
        row, (report, extra), anchor = claimed
        error: DeliveryError | None = None
        try:
            msg = _message(
                row, report, smtp, now=now, language=language, extra=extra, anchor=anchor
            )
            send(smtp, msg, row.recipient)
        except DeliveryError as exc:
            error = exc
        except OSError as exc:  # the report file itself is unreadable
            error = DeliveryError(
                f"cannot read {report.path}: {exc.strerror or exc}", permanent=True
            )
        except Exception as exc:  # a message that cannot be made (a bad address queued
            # before addresses were checked): failed for good, never left in "sending"
            error = DeliveryError(f"cannot build the message: {exc}", permanent=True)
        at = clock() if clock else now
        _settle(engine, row, error, at)
        if error is None:
            result.sent += 1
            log.info(
                "email sent", extra={"outbox": row.id, "to": row.recipient, "report": report.path}
            )
        elif error.permanent:
            result.failed += 1
            log.error(
                "email failed permanently: %s", error, extra={"outbox": row.id, "to": row.recipient}
            )
        else:
            result.retrying += 1
            log.warning(
                "email not sent, will retry: %s",
                error,
                extra={"outbox": row.id, "to": row.recipient},
            )
            break  # the server is unwell: leave the rest for the next round
    return result


def _settle(engine: sa.Engine, row: Any, error: DeliveryError | None, at: datetime) -> None:
    values = outbox_rules.outcome_values(
        error=error, permanent=bool(error and error.permanent), attempts=row.attempts + 1, at=at
    )
    outbox_rules.settle(engine, OutboxMessage, row.id, values, what="record delivery")


def subject_and_body(report: Any, *, language: str) -> tuple[str, str, str]:
    """Subject, plain-text body and attachment name of a report email (from the catalogs).

    A later revision says so in its subject, its body and its attachment's name, so the
    office can tell it from the one it replaces. The body has the headline figures, each
    market's, the rectification rate and the problems past their deadline.
    """
    t = translator(language)
    period = from_key(report.period_kind, report.period_key)
    h = report.headline or {}
    title = t.report_title(period)
    values = {
        "title": title,
        "period": t.period(period),
        "key": period.key,
        "revision": report.revision,
        "previous": report.revision - 1,
        "pct": compliance.percent(h.get("compliance")),
        "sha": report.sha256,
        **{
            k: h.get(k, 0)
            for k in ("due", "on_time", "late", "missed", "failed", "excused", "pending")
        },
        "overdue": h.get("overdue", 0),
    }
    lines = [t.tr("{title}: {period} ({key}), revision {revision}.").format(**values)]
    if report.revision > 1:
        lines.append(
            t.tr(
                "It replaces revision {previous}: figures of the period changed after it was made."
            ).format(**values)
        )
    lines += [
        "",
        t.tr("Compliance: {pct} ({on_time} of {due} due done on time)").format(**values),
        t.tr("Missed: {missed}   Failed readings: {failed}   Done late: {late}").format(**values),
        t.tr("Still open: {pending}   Excused: {excused}").format(**values),
        t.tr("Overdue list: {overdue} items").format(**values),
    ]
    markets = h.get("markets") or []
    if markets:
        lines += ["", t.tr("By market:")]
        for m in markets:
            lines.append(
                "  "
                + t.tr(
                    "{name}: due {due}, on time {on_time}, late {late}, missed {missed}, "
                    "failed {failed}, excused {excused}, open {pending}, overdue {overdue}; "
                    "compliance {pct}"
                ).format(**{**m, "pct": compliance.percent(m.get("compliance"))})
            )
    rect = h.get("rectification")
    if rect is not None:
        lines += [
            "",
            t.tr("Rectification rate: {pct} ({verified} of {due} problems due verified)").format(
                pct=compliance.percent(rect.get("rate")), verified=rect["verified"], due=rect["due"]
            ),
            t.tr("Re-inspections: {reinspected}, of which failed: {failed}").format(
                reinspected=rect.get("reinspected", 0), failed=rect.get("reinspection_failed", 0)
            ),
            t.tr("Problems past their deadline: {n}").format(n=h.get("late_problems", 0)),
        ]
        for p in h.get("problems") or []:
            where = f"{p['market']} {p['area']}" if p.get("area") else p["market"]
            lines.append(
                "  "
                + t.tr(
                    "No. {id} {where}: {description} (deadline {deadline}, {days} days overdue)"
                ).format(
                    id=p["id"],
                    where=where,
                    description=p["description"],
                    deadline=p["deadline"].replace("T", " "),
                    days=p["days_overdue"],
                )
            )
        if h.get("late_problems", 0) > len(h.get("problems") or []):
            lines.append("  " + t.tr("(the whole list is in the attachment)"))
    lines += ["", t.tr("Attachment SHA-256: {sha}").format(**values), ""]
    body = "\n".join(lines)
    name = f"{title}_{period.key}"
    subject = f"{title} {period.key}"
    if report.revision > 1:
        revision = t.tr("revision {revision}").format(**values)
        name += "_" + revision
        subject += " " + revision
    name = re.sub(r'\s*[\\/:*?"<>|]+\s*', " ", name).strip()  # a name every mail client can save
    return subject, body, name + ".xlsx"


def _verified_bytes(report: Any) -> bytes:
    data = Path(report.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != report.sha256:
        raise DeliveryError(
            f"{report.path} no longer matches its recorded SHA-256; not sending an altered report",
            permanent=True,
        )
    return data


def _message(
    row: Any,
    report: Any,
    smtp: SmtpConfig,
    *,
    now: datetime,
    language: str,
    extra: Any | None = None,
    anchor: audit.Anchor | None = None,
) -> Any:
    data = _verified_bytes(report)
    lang = report.language or language
    if report.kind == "bulletin":
        from marketcare.reports.bulletin import mail_text

        subject, body, name = mail_text(report, language=lang)
    else:
        subject, body, name = subject_and_body(report, language=lang)
    if anchor is not None:
        # the office's mailbox keeps the chain's head as the email left: a witness of the
        # ledger's history outside the database (``audit verify --anchor``)
        line = translator(lang).tr("Audit chain head: event {seq}, {hash}")
        body = body.rstrip("\n") + "\n\n" + line.format(seq=anchor.seq, hash=anchor.hash) + "\n"
    attachments = []
    if extra is not None:
        attachments.append((_verified_bytes(extra), name.removesuffix(".xlsx") + ".pdf"))
    return build_message(
        sender=smtp.sender,
        recipient=row.recipient,
        subject=subject,
        body=body,
        attachment=data,
        filename=name,
        msg_id=row.message_id,
        date=now,
        extra=attachments,
        headers={ANCHOR_HEADER: anchor.text()} if anchor is not None else None,
    )


def resend(engine: sa.Engine, outbox_id: int, *, now: datetime) -> None:
    """Queue a message again (after a permanent failure was fixed, or to send a copy)."""
    outbox_rules.requeue(engine, OutboxMessage, outbox_id, now=now, what="outbox message")


def outbox(
    engine: sa.Engine, *, states: Sequence[str] | None = None, limit: int = 200
) -> list[Any]:
    with read(engine) as conn:
        stmt = (
            sa.select(
                OutboxMessage, ReportRecord.path, ReportRecord.period_key, ReportRecord.period_kind
            )
            .join(ReportRecord, ReportRecord.id == OutboxMessage.report_id)
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
        if states:
            stmt = stmt.where(OutboxMessage.state.in_(list(states)))
        return list(conn.execute(stmt).all())


def smtp_config(settings: Any) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        user=settings.smtp_user,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        sender=settings.smtp_sender,
        timeout=settings.smtp_timeout_seconds,
    )


__all__ = [
    "ExportResult",
    "SendResult",
    "compliance",
    "enqueue",
    "export",
    "file_name",
    "outbox",
    "plan_runs",
    "resend",
    "run_pending",
    "run_times",
    "send_due",
    "smtp_config",
]
