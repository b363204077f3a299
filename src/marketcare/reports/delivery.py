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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import compliance
from marketcare.domain.periods import Period, from_key
from marketcare.domain.schedules import ReportSpec, Schedule
from marketcare.errors import MarketcareError, NotFound
from marketcare.files import fsync_path
from marketcare.i18n import translator
from marketcare.ledger import audit, installation
from marketcare.ledger import outbox as outbox_rules
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import OutboxMessage, ReportRecord, ReportRun, ReportWatermark
from marketcare.ledger.verification import file_damage
from marketcare.reports.figures import Report
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


def file_name(period: Period, scope: str, language: str, revision: int) -> str:
    """``marketcare_week_2026-W48.xlsx``; a subset, English or a later revision says so."""
    name = f"marketcare_{period.kind}_{period.key}"
    if scope != "all":
        safe = re.sub(r"[^a-z0-9+_-]", "", scope)
        if len(safe) > 60:
            safe = safe[:40] + "-" + hashlib.sha256(scope.encode()).hexdigest()[:8]
        name += f"_{safe}"
    if language != "zh_CN":
        name += f"_{language}"
    if revision > 1:
        name += f"_r{revision}"
    return name + ".xlsx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _headline(report: Report) -> dict[str, Any]:
    total = report.district_total()
    rate = total["compliance"]
    return {
        "compliance": None if rate != rate else round(float(rate), 4),
        "due": int(total["due"]),
        "on_time": int(total["on_time"]),
        "late": int(total["late"]),
        "missed": int(total["missed"]),
        "failed": int(total["failed"]),
        "excused": int(total["excused"]),
        "overdue": int(total["missed"] + total["failed"]),
    }


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

    Files go to this ledger's own folder under ``exports_dir`` (``installation.identity``),
    so two ledgers sharing the folder never collide. A recorded file of this period found
    missing or changed is recorded as such (an event, a log line, ``/metrics``) before a
    new revision is written.
    """
    from marketcare.reports.workbook import Stamp, write_workbook

    scope = scope_of(markets)
    me = installation.identity(engine, now=now)
    target_dir = (out.parent if out is not None else exports_dir / me.name).resolve()
    target_dir.mkdir(parents=True, exist_ok=True)
    out = None if out is None else target_dir / out.name
    tmp = target_dir / f".marketcare-{os.getpid()}-{now.timestamp():.0f}.xlsx.part"
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
                        ReportRecord.period_kind == period.kind,
                        ReportRecord.period_key == period.key,
                        ReportRecord.scope == scope,
                        ReportRecord.language == language,
                    )
                    .order_by(ReportRecord.revision.desc())
                    .limit(1)
                ).one_or_none()
                damaged = _note_damage(conn, latest, now=now) if latest is not None else None
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
                final = (
                    out
                    if (out is not None and revision == 1)
                    else target_dir / file_name(period, scope, language, revision)
                )
                if final.exists():
                    if _recorded(conn, final):
                        raise MarketcareError(
                            f"{final} is a recorded report; it is never overwritten"
                        )
                    _set_aside(final, now)
                os.replace(tmp, final)
                digest = _sha256(final)
                values = {
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
                report_id = conn.execute(
                    sa.insert(ReportRecord)
                    .values(generated_at=now, **values)
                    .returning(ReportRecord.id)
                ).scalar_one()
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
        return result
    finally:
        tmp.unlink(missing_ok=True)


def _anchor_of(record: Any) -> audit.Anchor | None:
    if record.anchor_seq is None or record.anchor_hash is None:
        return None
    return audit.Anchor(int(record.anchor_seq), str(record.anchor_hash))


def _note_damage(conn: sa.Connection, record: Any, *, now: datetime) -> str | None:
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
        result = export(
            engine,
            period=period,
            exports_dir=exports_dir,
            now=now,
            markets=None if spec.markets == "all" else spec.markets,
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


# ---------------------------------------------------------------- the outbox


def enqueue(
    engine: sa.Engine, report_id: int, recipients: Sequence[str], *, now: datetime, sender: str
) -> int:
    def step() -> int:
        with write(engine) as conn:
            return _enqueue(conn, report_id, recipients, now=now, sender=sender)

    return retrying(step, what="enqueue")


def _enqueue(
    conn: sa.Connection, report_id: int, recipients: Sequence[str], *, now: datetime, sender: str
) -> int:
    n = 0
    for rcpt in dict.fromkeys(r.strip() for r in recipients):
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

    def step() -> Any | None:
        with write(engine) as conn:
            row = outbox_rules.select_due(conn, OutboxMessage, now)
            if row is None or not outbox_rules.take(conn, OutboxMessage, row, now):
                return None
            report = conn.execute(
                sa.select(ReportRecord).where(ReportRecord.id == row.report_id)
            ).one()
            return row, report, audit.head(conn)

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
        row, report, anchor = claimed
        error: DeliveryError | None = None
        try:
            msg = _message(row, report, smtp, now=now, language=language, anchor=anchor)
            send(smtp, msg, row.recipient)
        except DeliveryError as exc:
            error = exc
        except OSError as exc:  # the report file itself is unreadable
            error = DeliveryError(
                f"cannot read {report.path}: {exc.strerror or exc}", permanent=True
            )
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


def subject_and_body(
    report: Any, *, language: str, anchor: audit.Anchor | None = None
) -> tuple[str, str, str]:
    """Subject, plain-text body and attachment name of a report email (from the catalogs).

    With ``anchor`` the body ends with the audit chain's head as the email is sent: the
    office's mailbox keeps it, a witness of the ledger's history outside the database.
    """
    t = translator(language)
    period = from_key(report.period_kind, report.period_key)
    h = report.headline or {}
    rate = h.get("compliance")
    title = t.report_title(period)
    values = {
        "title": title,
        "period": t.period(period),
        "key": period.key,
        "revision": report.revision,
        "pct": "—" if rate is None else f"{rate * 100:.1f}%",
        "sha": report.sha256,
        **{k: h.get(k, 0) for k in ("due", "on_time", "late", "missed", "failed", "overdue")},
    }
    body = "\n".join(
        [
            t.tr("{title}: {period} ({key}), revision {revision}.").format(**values),
            "",
            t.tr("Compliance: {pct} ({on_time} of {due} due done on time)").format(**values),
            t.tr("Missed: {missed}   Failed readings: {failed}   Done late: {late}").format(
                **values
            ),
            t.tr("Overdue list: {overdue} items").format(**values),
            "",
            t.tr("Attachment SHA-256: {sha}").format(**values),
            "",
        ]
    )
    if anchor is not None:
        body += (
            t.tr("Audit chain head: event {seq}, {hash}").format(seq=anchor.seq, hash=anchor.hash)
            + "\n"
        )
    name = f"{title}_{period.key}"
    if report.revision > 1:
        name += "_" + t.tr("revision {revision}").format(**values)
    name = re.sub(r'\s*[\\/:*?"<>|]+\s*', " ", name).strip()  # a name every mail client can save
    return f"{title} {period.key}", body, name + ".xlsx"


def _message(
    row: Any,
    report: Any,
    smtp: SmtpConfig,
    *,
    now: datetime,
    language: str,
    anchor: audit.Anchor | None = None,
) -> Any:
    data = Path(report.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != report.sha256:
        raise DeliveryError(
            f"{report.path} no longer matches its recorded SHA-256; not sending an altered report",
            permanent=True,
        )
    subject, body, name = subject_and_body(
        report, language=report.language or language, anchor=anchor
    )
    return build_message(
        sender=smtp.sender,
        recipient=row.recipient,
        subject=subject,
        body=body,
        attachment=data,
        filename=name,
        msg_id=row.message_id,
        date=now,
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
