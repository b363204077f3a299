"""The ledger's tables. Schema changes go through Alembic (``migrations/``), never create_all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from marketcare.domain.inputs import EMAIL_MAX, PERSON_MAX, TOKEN_MAX
from marketcare.domain.problems import LIMITS as PROBLEM_LIMITS


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every engine (SQLite stores them naive, in UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:  # nearly every value (a tick binds seven): no conversion
            return value.replace(tzinfo=None) if dialect.name == "sqlite" else value
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: 64-bit ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit (and a rowid)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON()}


class ScheduleVersion(Base):
    """One exact set of schedule texts; every obligation points to the version that made it."""

    __tablename__ = "schedule_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    loaded_at: Mapped[datetime]
    default_timezone: Mapped[str] = mapped_column(sa.String(64))
    sources: Mapped[dict[str, Any]]  # file name -> YAML text


class MarketRow(Base):
    __tablename__ = "markets"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    sub_district: Mapped[str] = mapped_column(sa.String(100))
    timezone: Mapped[str] = mapped_column(sa.String(64))
    active: Mapped[bool] = mapped_column(default=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("schedule_versions.id"))


class AreaRow(Base):
    __tablename__ = "areas"
    market_id: Mapped[str] = mapped_column(sa.ForeignKey("markets.id"), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(32))
    m2: Mapped[float]
    active: Mapped[bool] = mapped_column(default=True)


class LedgerState(Base):
    """The materialiser's watermark and the clock it last saw (a single row, id 1)."""

    __tablename__ = "ledger_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("schedule_versions.id"))
    materialised_until: Mapped[datetime | None]
    last_seen_now: Mapped[datetime | None]


class Obligation(Base):
    __tablename__ = "obligations"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    natural_key: Mapped[str] = mapped_column(sa.String(300), unique=True)
    market_id: Mapped[str] = mapped_column(sa.ForeignKey("markets.id"))
    area_id: Mapped[str | None] = mapped_column(sa.String(64))
    task_id: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(32))
    local_date: Mapped[str] = mapped_column(sa.String(10))  # YYYY-MM-DD in the market's zone
    occurrence: Mapped[str] = mapped_column(sa.String(16))  # local YYYY-MM-DDTHH:MM
    opens_at: Mapped[datetime]
    due_at: Mapped[datetime]
    missed_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(sa.String(16))
    state_changed_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(sa.Text)  # e.g. the reason of an excuse
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("schedule_versions.id"))
    created_at: Mapped[datetime]

    __table_args__ = (
        sa.Index("ix_obligations_state_opens", "state", "opens_at"),
        sa.Index("ix_obligations_state_missed", "state", "missed_at"),
        sa.Index("ix_obligations_market_date", "market_id", "local_date"),
    )


class Completion(Base):
    """An attempt to fulfil an obligation; append-only, deduplicated by its client token."""

    __tablename__ = "completions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    obligation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("obligations.id"), index=True)
    #: indexed alone too: a batch of ticks reads its tokens with ``token IN (...)``
    #: (migration i18g_completion_tokens)
    token: Mapped[str] = mapped_column(sa.String(TOKEN_MAX), index=True)
    by: Mapped[str] = mapped_column(sa.String(PERSON_MAX))
    at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(sa.String(16))
    readings: Mapped[dict[str, Any]]
    items: Mapped[dict[str, Any]]
    failures: Mapped[dict[str, Any]]
    note: Mapped[str | None] = mapped_column(sa.Text)
    #: photos taken with the completion: {"items": [{name, sha256, path, bytes}]}
    evidence: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: the phone's clock when the work was recorded and when it was sent (offline
    #: submissions); ``at`` is the time it counts at, by ``domain.phonetime``
    phone_at: Mapped[datetime | None]
    phone_sent_at: Mapped[datetime | None]
    #: when the ledger received it (older rows: copied from ``at`` by the migration)
    arrived_at: Mapped[datetime | None]
    #: which time ``at`` is and why (``phonetime.TimeBasis``)
    time_basis: Mapped[str] = mapped_column(sa.String(24), server_default="arrival")

    #: a client token is scoped to who sent it (migration i14_token_scope)
    __table_args__ = (sa.UniqueConstraint("by", "token", name="uq_completions_by_token"),)


class Event(Base):
    """Append-only, hash-chained log of every state change: who, when, what."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(PERSON_MAX))
    action: Mapped[str] = mapped_column(sa.String(40))
    obligation_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("obligations.id"), index=True
    )
    problem_id: Mapped[int | None] = mapped_column(BigId, index=True)
    from_state: Mapped[str | None] = mapped_column(sa.String(16))
    to_state: Mapped[str | None] = mapped_column(sa.String(16))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class UnchainedEvent(Base):
    """An event committed but not yet linked to the chain (PostgreSQL's tick batches).

    A batch of ticks inserts its events here, without the chain's head lock, so that
    writers do not queue on one row from their append to their ``COMMIT``; the chainer
    (``audit.chain``) moves them into ``events`` in ``id`` order, hashed, many at a
    time, in its own short transaction. Until then they are pending: counted by
    ``audit verify``, replayed, but not yet tamper-evident.
    """

    __tablename__ = "unchained_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: when the row was written (the server's clock): how long it has been pending
    written_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(PERSON_MAX))
    action: Mapped[str] = mapped_column(sa.String(40))
    obligation_id: Mapped[int | None] = mapped_column(BigId)
    problem_id: Mapped[int | None] = mapped_column(BigId)
    from_state: Mapped[str | None] = mapped_column(sa.String(16))
    to_state: Mapped[str | None] = mapped_column(sa.String(16))
    details: Mapped[dict[str, Any]]


class AuditHead(Base):
    """The chain's tip (single row, id 1): serialises appends and reveals a removed tail."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(sa.String(64))


class AuditTimestamp(Base):
    """An RFC 3161 token over the chain's head: a time-stamping authority's witness.

    Append-only, like the events: the token proves the ledger held exactly the history
    ending in ``hash`` at event ``seq`` no later than ``gen_time``.
    """

    __tablename__ = "audit_timestamps"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, index=True)
    hash: Mapped[str] = mapped_column(sa.String(64))
    tsa: Mapped[str] = mapped_column(sa.String(500))
    reason: Mapped[str] = mapped_column(sa.String(16))  # daily | report
    gen_time: Mapped[datetime]
    token: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime]


class Installation(Base):
    """Who this ledger is (single row, id 1): names its report files apart from others'."""

    __tablename__ = "installation"
    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32))
    #: the folder its reports go to under the exports folder: ``<database>-<uid[:8]>``
    name: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime]


class ReportRecord(Base):
    """One written report file: a period's revision, with the file's SHA-256.

    A report once written is a record: a later export of the same period whose values
    differ is a new revision with its own file, never an overwrite.
    """

    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: ``compliance`` (the workbook) or ``bulletin`` (the weekly double report, 双通报)
    kind: Mapped[str] = mapped_column(sa.String(16), server_default="compliance")
    #: the file's format: ``xlsx``, or ``pdf`` for a bulletin's printable copy
    format: Mapped[str] = mapped_column(sa.String(8), server_default="xlsx")
    period_kind: Mapped[str] = mapped_column(sa.String(8))
    period_key: Mapped[str] = mapped_column(sa.String(16))
    scope: Mapped[str] = mapped_column(sa.String(200))  # "all" or market ids joined by "+"
    language: Mapped[str] = mapped_column(sa.String(8))
    revision: Mapped[int]
    path: Mapped[str] = mapped_column(sa.String(500))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    content_digest: Mapped[str] = mapped_column(sa.String(64))
    rows: Mapped[int]
    headline: Mapped[dict[str, Any]]
    generated_at: Mapped[datetime]
    #: the audit chain's head written into the file (its anchor): sequence number and hash
    anchor_seq: Mapped[int | None] = mapped_column(BigId)
    anchor_hash: Mapped[str | None] = mapped_column(sa.String(64))
    #: what was found wrong with the recorded file (missing | changed) and when
    damage: Mapped[str | None] = mapped_column(sa.String(16))
    damage_found_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint(
            "kind", "format", "period_kind", "period_key", "scope", "language", "revision"
        ),
    )


class ReportRun(Base):
    """A scheduled report's run for one period; the natural key makes catch-up idempotent."""

    __tablename__ = "report_runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    spec_id: Mapped[str] = mapped_column(sa.String(64))
    period_key: Mapped[str] = mapped_column(sa.String(16))
    due_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(sa.String(16))  # pending | done
    report_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("reports.id"))
    done_at: Mapped[datetime | None]

    __table_args__ = (sa.UniqueConstraint("spec_id", "period_key"),)


class ReportWatermark(Base):
    """Up to when each configured report's run times have been turned into runs."""

    __tablename__ = "report_watermarks"
    spec_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    checked_until: Mapped[datetime]


class OutboxMessage(Base):
    """One email to deliver: written before sending, retried until sent or failed for good."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    report_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("reports.id"))
    recipient: Mapped[str] = mapped_column(sa.String(EMAIL_MAX))
    message_id: Mapped[str] = mapped_column(sa.String(200), unique=True)
    state: Mapped[str] = mapped_column(sa.String(16))  # pending | sending | sent | failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint("report_id", "recipient"),
        sa.Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )


class ProblemRow(Base):
    """A problem found on inspection (整改事项) with its deadline and its rectification.

    Text columns are sized by ``problems.LIMITS``, the rule every way in is checked by:
    SQLite does not enforce a length, so the rule, not the column, keeps both alike."""

    __tablename__ = "problems"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    market_id: Mapped[str] = mapped_column(sa.ForeignKey("markets.id"), index=True)
    area_id: Mapped[str | None] = mapped_column(sa.String(PROBLEM_LIMITS["area"]))
    category: Mapped[str] = mapped_column(sa.String(16))
    description: Mapped[str] = mapped_column(sa.Text)
    found_at: Mapped[datetime]
    found_by: Mapped[str] = mapped_column(sa.String(PROBLEM_LIMITS["found_by"]))
    deadline: Mapped[datetime]
    state: Mapped[str] = mapped_column(sa.String(16))
    reopened: Mapped[int] = mapped_column(default=0)
    #: makes raising idempotent: "obligation:123:missed", "import:<file sha>:7", a client token
    source_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    obligation_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("obligations.id"))
    evidence: Mapped[dict[str, Any]]
    rectified_at: Mapped[datetime | None]
    rectified_by: Mapped[str | None] = mapped_column(sa.String(PROBLEM_LIMITS["by"]))
    rectify_note: Mapped[str | None] = mapped_column(sa.Text)
    verified_at: Mapped[datetime | None]
    verified_by: Mapped[str | None] = mapped_column(sa.String(PROBLEM_LIMITS["by"]))
    reinspection_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("obligations.id"))
    created_at: Mapped[datetime]
    #: who the office assigned the rectification to (a person or a contractor), when it did
    assigned_to: Mapped[str | None] = mapped_column(sa.String(PROBLEM_LIMITS["assigned_to"]))
    assigned_at: Mapped[datetime | None]
    #: the inspection item whose failure raised it (督查), if any
    inspection_result_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("inspection_results.id"), index=True
    )

    __table_args__ = (sa.Index("ix_problems_state_deadline", "state", "deadline"),)


class Notification(Base):
    """One escalation step due for one person about one obligation or problem.

    The natural key makes materialising idempotent: a restart, downtime catch-up or a
    second process can never create the same notification twice.
    """

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subject_kind: Mapped[str] = mapped_column(sa.String(16))  # obligation | problem
    subject_id: Mapped[int] = mapped_column(BigId)
    step: Mapped[str] = mapped_column(sa.String(80))  # "{policy}:{index}" or "{policy}:p{index}"
    person_id: Mapped[str] = mapped_column(sa.String(64))
    market_id: Mapped[str] = mapped_column(sa.String(64))
    trigger_at: Mapped[datetime]
    digest_at: Mapped[datetime | None]  # batched into a digest at this time, or None
    state: Mapped[str] = mapped_column(sa.String(16))  # waiting | queued | dropped
    bundle: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    created_at: Mapped[datetime]

    __table_args__ = (
        sa.UniqueConstraint("subject_kind", "subject_id", "step", "person_id"),
        sa.Index("ix_notifications_state_digest", "state", "digest_at"),
    )


class NotificationWatermark(Base):
    """Up to when escalation trigger times have been turned into notifications (row id 1)."""

    __tablename__ = "notification_watermark"
    id: Mapped[int] = mapped_column(primary_key=True)
    checked_until: Mapped[datetime]


class NotifyMessage(Base):
    """One message of a bundle on one channel: retried until sent, failed or cancelled."""

    __tablename__ = "notify_outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bundle: Mapped[str] = mapped_column(sa.String(200))
    channel: Mapped[str] = mapped_column(sa.String(16))  # email | webhook
    person_id: Mapped[str] = mapped_column(sa.String(64))
    market_id: Mapped[str] = mapped_column(sa.String(64))
    address: Mapped[str] = mapped_column(sa.String(1000))
    webhook_format: Mapped[str | None] = mapped_column(sa.String(16))
    quiet_hours: Mapped[str | None] = mapped_column(sa.String(16))
    stable_id: Mapped[str] = mapped_column(sa.String(200), unique=True)
    subject: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16))  # pending|sending|sent|failed|cancelled
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint("bundle", "channel"),
        sa.Index("ix_notify_outbox_state_next", "state", "next_attempt_at"),
    )


class User(Base):
    """Someone who signs in to the web app or calls the API (see ``access`` for roles)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(16))  # manager | office | operator
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    #: None: the site's language (settings.language)
    language: Mapped[str | None] = mapped_column(sa.String(8))
    disabled: Mapped[bool] = mapped_column(default=False)
    #: no longer read (sessions are rows now: ``WebSession``); kept for old databases
    session_epoch: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    #: bumped to rotate the user's calendar feed addresses (the old ones stop at once)
    feed_generation: Mapped[int] = mapped_column(default=0, server_default="0")


class UserMarket(Base):
    """The markets a market manager manages (other roles have none here)."""

    __tablename__ = "user_markets"
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), primary_key=True)
    market_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)


class ApiToken(Base):
    """A per-user API token; only its SHA-256 is kept (the token is shown once)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginFailure(Base):
    """A failed sign-in, kept for the rate limit (shared by every daemon on the database)."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), index=True)
    client: Mapped[str] = mapped_column(sa.String(64), index=True)
    at: Mapped[datetime] = mapped_column(index=True)


class WebSession(Base):
    """One signed-in browser: a row per sign-in, so signing out really ends it.

    The cookie carries a random key; only its SHA-256 is kept here, so a copy of the
    database does not sign anyone in. ``ended_at`` set means the session is over, for
    the reason in ``ended_why``.
    """

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: what the browser said it was (User-Agent, shortened), to tell devices apart
    device: Mapped[str] = mapped_column(sa.String(200))
    client: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    ended_why: Mapped[str | None] = mapped_column(sa.String(32))


class EvidenceUpload(Base):
    """Who uploaded which file: attaching a photo by its hash needs this (or the market
    already holding it), so knowing a hash is not a right to the photo."""

    __tablename__ = "evidence_uploads"
    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), primary_key=True)
    uploaded_at: Mapped[datetime]


class AppSecret(Base):
    """Secrets generated once per installation (cookie signing, calendar feed URLs)."""

    __tablename__ = "app_secrets"
    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime]


class SchedulerLeader(Base):
    """Which daemon runs the scheduler now, and when it last said so.

    The lock itself is PostgreSQL's advisory lock (or the SQLite file lock); this row is
    what readiness checks and operators read: a heartbeat older than a few intervals
    means no leader is known.
    """

    __tablename__ = "scheduler_leader"
    id: Mapped[int] = mapped_column(primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(200))
    since: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class HealthProbe(Base):
    """The last write each daemon made to prove it can still write (``/readyz``).

    A full or read-only disk shows first as a failing write; reads go on working. Each
    daemon updates its own row, so probes never wait on one another.
    """

    __tablename__ = "health_probes"
    holder: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    at: Mapped[datetime]


class InspectionTemplateRow(Base):
    """A scoring sheet exactly as an inspection used it (the template's JSON snapshot)."""

    __tablename__ = "inspection_templates"
    digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    template_id: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[str] = mapped_column(sa.String(40))
    name: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[dict[str, Any]]
    first_used_at: Mapped[datetime]


class InspectionRow(Base):
    """One inspection round (督查) of one market: who, when, which sheet, the score."""

    __tablename__ = "inspections"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: the submission's client token: the same submission sent twice records once
    token: Mapped[str] = mapped_column(sa.String(100), unique=True)
    market_id: Mapped[str] = mapped_column(sa.ForeignKey("markets.id"))
    template_id: Mapped[str] = mapped_column(sa.String(64))
    template_digest: Mapped[str] = mapped_column(sa.ForeignKey("inspection_templates.digest"))
    plan_id: Mapped[str | None] = mapped_column(sa.String(64))
    by: Mapped[str] = mapped_column(sa.String(100))
    at: Mapped[datetime]
    local_date: Mapped[str] = mapped_column(sa.String(10))  # YYYY-MM-DD in the market's zone
    score: Mapped[float | None]
    total: Mapped[float]
    passed: Mapped[bool]
    failed: Mapped[int]
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]

    __table_args__ = (sa.Index("ix_inspections_market_date", "market_id", "local_date"),)


class InspectionResult(Base):
    """One item of one inspection: pass, fail or not applicable, with note and photo."""

    __tablename__ = "inspection_results"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("inspections.id"))
    item_id: Mapped[str] = mapped_column(sa.String(64))
    section: Mapped[str] = mapped_column(sa.String(200))
    name: Mapped[str] = mapped_column(sa.String(200))
    outcome: Mapped[str] = mapped_column(sa.String(8))
    points: Mapped[float]
    critical: Mapped[str | None] = mapped_column(sa.String(8))
    note: Mapped[str | None] = mapped_column(sa.Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: an earlier problem of the same item that this result re-inspected (再督查)
    rechecked_problem_id: Mapped[int | None] = mapped_column(BigId)

    __table_args__ = (sa.UniqueConstraint("inspection_id", "item_id"),)


class StandingRow(Base):
    """One line of a closed period's ranking as its bulletin published it.

    Next period's movement reads these places instead of ranking the period again (see
    ``ledger/standings``); the figures are kept beside the place so a reader can see what
    the place was given for.
    """

    __tablename__ = "standings"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    period_kind: Mapped[str] = mapped_column(sa.String(8))
    period_key: Mapped[str] = mapped_column(sa.String(16))
    #: the bulletin's scope: ``all``, market ids joined by ``+``, or a long one's SHA-256
    #: (a place is only comparable within the same set of markets)
    scope: Mapped[str] = mapped_column(sa.String(200))
    #: ``market`` or ``sub_district``
    level: Mapped[str] = mapped_column(sa.String(16))
    key: Mapped[str] = mapped_column(sa.String(200))
    rank: Mapped[int]
    inspections: Mapped[int]
    inspection_score: Mapped[float | None]
    on_time: Mapped[int]
    due: Mapped[int]
    verified: Mapped[int]
    rectification_due: Mapped[int]
    past_deadline: Mapped[int]
    #: the moment the figures were taken (at or after the period's end)
    as_of: Mapped[datetime]

    __table_args__ = (sa.UniqueConstraint("period_kind", "period_key", "scope", "level", "key"),)
