"""Escalation: who is told what, and when, while an obligation or a problem stays unresolved.

* ``materialise`` turns each escalation step whose trigger time (``opens``, ``due+1h``,
  ``deadline-1d`` …) fell in ``(watermark, now]`` into ``notifications`` rows, one per
  (subject, step, person), with ``INSERT … ON CONFLICT DO NOTHING`` and advances the
  watermark in the same transaction: downtime is replayed, nothing is doubled. A
  subject already completed (or verified) by then gets no notification.
* A notification becomes one outbox message per channel of its person at once, or, for a
  policy with a ``digest`` time, waits and is batched with the others of that person and
  market into one message at that time (``batch_digests``).
* ``send_due`` delivers messages like the report outbox (docs/delivery.md): a lease, a
  stable id on every attempt, exponential backoff across restarts, permanent failures
  kept with their reason; quiet hours move the send-after time to their end, and a
  message whose subjects were all resolved meanwhile is cancelled, not sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.header import Header
from email.mime.text import MIMEText
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain.obligations import SETTLED, State
from marketcare.domain.problems import ProblemState
from marketcare.domain.schedules import EscalationPolicy, Person, Schedule, StepAt
from marketcare.i18n import translator
from marketcare.ledger import outbox as outbox_rules
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import (
    AreaRow,
    MarketRow,
    Notification,
    NotificationWatermark,
    NotifyMessage,
    Obligation,
    ProblemRow,
)
from marketcare.reports.mail import DeliveryError, SmtpConfig, send

log = logging.getLogger(__name__)

#: obligation states that still call for a reminder or an escalation: not completed, not excused
UNRESOLVED = tuple(s.value for s in State if s not in SETTLED)
CATCH_UP_LIMIT = timedelta(days=7)
WEBHOOK_TIMEOUT = 10.0


# ---------------------------------------------------------------- domain rules (pure)


def trigger_at(at: StepAt, *, opens_at: datetime, due_at: datetime) -> datetime:
    """The instant an obligation step fires: its anchor plus the offset (elapsed time)."""
    return (opens_at if at.anchor == "opens" else due_at) + at.offset


def anchor_window(at: StepAt, after: datetime, until: datetime) -> tuple[datetime, datetime]:
    """Anchor instants whose trigger falls in ``(after, until]``."""
    return after - at.offset, until - at.offset


def _local(at: datetime, zone: ZoneInfo, clock: time, day_offset: int = 0) -> datetime:
    day = at.astimezone(zone).date() + timedelta(days=day_offset)
    return datetime.combine(day, clock).replace(tzinfo=zone, fold=0).astimezone(UTC)


def in_quiet_hours(at: datetime, quiet: tuple[time, time] | None, zone: ZoneInfo) -> bool:
    if quiet is None:
        return False
    start, end = quiet
    t = at.astimezone(zone).time()
    return start <= t < end if start < end else (t >= start or t < end)


def after_quiet_hours(at: datetime, quiet: tuple[time, time] | None, zone: ZoneInfo) -> datetime:
    """``at``, or the end of the quiet hours it falls in (local time in ``zone``)."""
    if not in_quiet_hours(at, quiet, zone):
        return at
    assert quiet is not None
    for offset in (0, 1):
        end = _local(at, zone, quiet[1], offset)
        if end > at:
            return end
    raise AssertionError("unreachable")


def next_digest(at: datetime, clock: time, zone: ZoneInfo) -> datetime:
    """The first digest time (local ``clock`` in ``zone``) at or after ``at``."""
    for offset in (0, 1, 2):
        candidate = _local(at, zone, clock, offset)
        if candidate >= at:
            return candidate
    raise AssertionError("unreachable")


def recipients(schedule: Schedule, notify: Sequence[str], market_id: str) -> list[Person]:
    """People a step names: by id, or by position (``role:`` in the YAML) among those who
    cover the market."""
    out: dict[str, Person] = {}
    by_id = {p.id: p for p in schedule.people}
    for ref in notify:
        if ref in by_id:
            out.setdefault(ref, by_id[ref])
            continue
        for person in schedule.people:
            if person.position == ref and person.covers(market_id):
                out.setdefault(person.id, person)
    return list(out.values())


def quiet_text(quiet: tuple[time, time] | None) -> str | None:
    return None if quiet is None else f"{quiet[0]:%H:%M}-{quiet[1]:%H:%M}"


def parse_quiet(text: str | None) -> tuple[time, time] | None:
    if not text:
        return None
    a, b = text.split("-")
    return time.fromisoformat(a), time.fromisoformat(b)


def stable_id(bundle: str, channel: str, sender: str) -> str:
    """The id every attempt of a message carries: a Message-ID, or a webhook idempotency key."""
    digest = hashlib.sha256(f"{bundle}|{channel}".encode()).hexdigest()[:32]
    if channel == "email":
        domain = sender.rsplit("@", 1)[-1] or "marketcare"
        return f"<marketcare.notify-{digest}@{domain}>"
    return f"marketcare-notify-{digest}"


def headline(at: StepAt) -> str:
    """What a step says about its subject, in the office's words."""
    if at.anchor == "opens":
        return "提醒：可以开始"
    if at.anchor == "due":
        return (
            "即将到期"
            if at.offset < timedelta(0)
            else ("已到期未完成" if not at.offset else "逾期未完成")
        )
    if at.offset < timedelta(0):
        return "整改即将到期"
    return "整改到期未验收" if not at.offset else "整改逾期未验收"


# ---------------------------------------------------------------- materialising


@dataclass
class MaterialiseResult:
    created: int = 0
    messages: int = 0


@dataclass(frozen=True)
class _Item:
    """One line of a message: what is due, where, and by when."""

    subject_kind: str
    subject_id: int
    market_id: str
    market_name: str
    title: str
    when: datetime
    state: str
    headline: str


@dataclass(frozen=True)
class _Ctx:
    conn: sa.Connection
    schedule: Schedule
    now: datetime
    zone: ZoneInfo
    sender: str
    result: MaterialiseResult


def materialise(
    engine: sa.Engine,
    schedule: Schedule,
    *,
    now: datetime,
    sender: str = "marketcare@localhost",
) -> MaterialiseResult:
    """Notifications whose trigger passed since the watermark; then due digests.

    ``sender`` is the email From address; its domain goes into the Message-IDs.
    """
    zone = ZoneInfo(schedule.default_timezone)

    def step() -> MaterialiseResult:
        result = MaterialiseResult()
        with write(engine) as conn:
            ctx = _Ctx(conn, schedule, now, zone, sender, result)
            mark = conn.execute(
                sa.select(NotificationWatermark).where(NotificationWatermark.id == 1)
            ).one_or_none()
            if mark is None:  # a first start begins now: no flood about the past
                conn.execute(
                    dialect_insert(conn, NotificationWatermark)
                    .values(id=1, checked_until=now)
                    .on_conflict_do_nothing()
                )
                return result
            after = max(mark.checked_until, now - CATCH_UP_LIMIT)
            if now > after and schedule.people:
                for policy in schedule.escalation:
                    _materialise_policy(ctx, policy, after)
            conn.execute(
                sa.update(NotificationWatermark)
                .where(NotificationWatermark.id == 1)
                .values(checked_until=max(now, mark.checked_until))
            )
            _batch_digests(ctx)
        return result

    return retrying(step, what="materialise notifications")


def _materialise_policy(ctx: _Ctx, policy: EscalationPolicy, after: datetime) -> None:
    conn, schedule, now = ctx.conn, ctx.schedule, ctx.now
    for index, ostep in enumerate(policy.steps):
        lo, hi = anchor_window(ostep.at, after, now)
        column = Obligation.opens_at if ostep.at.anchor == "opens" else Obligation.due_at
        stmt = sa.select(Obligation).where(
            column > lo, column <= hi, Obligation.state.in_(UNRESOLVED)
        )
        for ob in conn.execute(stmt.order_by(column, Obligation.id)).all():
            if not policy.applies_to(ob.kind):
                continue
            fired = trigger_at(ostep.at, opens_at=ob.opens_at, due_at=ob.due_at)
            item = _obligation_item(conn, schedule, ob, headline(ostep.at))
            for person in recipients(schedule, ostep.notify, ob.market_id):
                _notify(ctx, policy, f"{policy.id}:{index}", person, item, fired)
    for index, pstep in enumerate(policy.problem_steps):
        lo, hi = anchor_window(pstep.at, after, now)
        rows = conn.execute(
            sa.select(ProblemRow)
            .where(
                ProblemRow.deadline > lo,
                ProblemRow.deadline <= hi,
                ProblemRow.state != ProblemState.VERIFIED.value,
            )
            .order_by(ProblemRow.deadline, ProblemRow.id)
        ).all()
        for pr in rows:
            item = _problem_item(conn, pr, headline(pstep.at))
            for person in recipients(schedule, pstep.notify, pr.market_id):
                fired = pr.deadline + pstep.at.offset
                _notify(ctx, policy, f"{policy.id}:p{index}", person, item, fired)


def _market_name(conn: sa.Connection, market_id: str) -> str:
    name = conn.execute(sa.select(MarketRow.name).where(MarketRow.id == market_id)).scalar()
    return str(name or market_id)


def _obligation_item(conn: sa.Connection, schedule: Schedule, ob: Any, head: str) -> _Item:
    task = schedule.task_by_id.get(ob.task_id)
    title = task.name if task else ob.task_id
    if ob.area_id:
        area = conn.execute(
            sa.select(AreaRow.name).where(
                AreaRow.market_id == ob.market_id, AreaRow.id == ob.area_id
            )
        ).scalar()
        title = f"{area or ob.area_id} {title}"
    name = _market_name(conn, ob.market_id)
    return _Item("obligation", ob.id, ob.market_id, name, title, ob.due_at, ob.state, head)


def _problem_item(conn: sa.Connection, pr: Any, head: str) -> _Item:
    name = _market_name(conn, pr.market_id)
    title = f"整改事项 #{pr.id} {pr.description}"
    return _Item("problem", pr.id, pr.market_id, name, title, pr.deadline, pr.state, head)


def _notify(
    ctx: _Ctx, policy: EscalationPolicy, step: str, person: Person, item: _Item, fired: datetime
) -> None:
    conn, now, zone = ctx.conn, ctx.now, ctx.zone
    bundle = f"{item.subject_kind}:{item.subject_id}:{step}:{person.id}"
    digest_at = None
    if policy.digest is not None:
        digest_at = max(next_digest(fired, policy.digest, zone), now)
    inserted = conn.execute(
        dialect_insert(conn, Notification)
        .values(
            subject_kind=item.subject_kind,
            subject_id=item.subject_id,
            step=step,
            person_id=person.id,
            market_id=item.market_id,
            trigger_at=fired,
            digest_at=digest_at,
            state="waiting" if digest_at else "queued",
            bundle=None if digest_at else bundle,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["subject_kind", "subject_id", "step", "person_id"])
    ).rowcount
    if inserted != 1:
        return
    ctx.result.created += 1
    if digest_at is None:
        subject = f"【{item.headline}】{item.market_name} {item.title}"
        body = _body(person, [item], zone)
        ctx.result.messages += _enqueue(ctx, person, bundle, item.market_id, subject, body, fired)


def _body(person: Person, items: Sequence[_Item], zone: ZoneInfo) -> str:
    lines = [f"{person.name}：", ""]
    for it in items:
        due = it.when.astimezone(zone)
        kind = "截止" if it.subject_kind == "obligation" else "整改期限"
        lines.append(
            f"· {it.headline}｜{it.market_name} {it.title}｜{kind} {due:%Y-%m-%d %H:%M}"
            f"｜状态 {_state_label(it)}｜编号 {it.subject_kind}:{it.subject_id}"
        )
    lines += ["", "（marketcare 自动发送；完成后请在系统中登记，提醒即停止。）"]
    return "\n".join(lines) + "\n"


def _state_label(item: _Item) -> str:
    """The state in words, as a person reads it (the texts are Chinese, as the office's)."""
    zh = translator("zh_CN")
    if item.subject_kind == "obligation" and item.state in {s.value for s in State}:
        return zh.state(item.state)
    if item.subject_kind == "problem" and item.state in {s.value for s in ProblemState}:
        return zh.problem_state(item.state)
    return item.state


def _enqueue(
    ctx: _Ctx,
    person: Person,
    bundle: str,
    market_id: str,
    subject: str,
    body: str,
    not_before: datetime,
) -> int:
    """One outbox row per channel of ``person``; the send-after time respects quiet hours."""
    conn, now = ctx.conn, ctx.now
    send_after = after_quiet_hours(max(not_before, now), person.quiet_hours, ctx.zone)
    channels: list[tuple[str, str, str | None]] = []
    if person.email:
        channels.append(("email", person.email, None))
    if person.webhook:
        channels.append(("webhook", person.webhook, person.webhook_format))
    n = 0
    for channel, address, fmt in channels:
        n += max(
            conn.execute(
                dialect_insert(conn, NotifyMessage)
                .values(
                    bundle=bundle,
                    channel=channel,
                    person_id=person.id,
                    market_id=market_id,
                    address=address,
                    webhook_format=fmt,
                    quiet_hours=quiet_text(person.quiet_hours),
                    stable_id=stable_id(bundle, channel, ctx.sender),
                    subject=subject,
                    body=body,
                    state="pending",
                    attempts=0,
                    next_attempt_at=send_after,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["bundle", "channel"])
            ).rowcount
            or 0,
            0,
        )
    return n


def _unresolved(conn: sa.Connection, kind: str, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    if kind == "obligation":
        stmt = sa.select(Obligation.id).where(
            Obligation.id.in_(ids), Obligation.state.in_(UNRESOLVED)
        )
    else:
        stmt = sa.select(ProblemRow.id).where(
            ProblemRow.id.in_(ids), ProblemRow.state != ProblemState.VERIFIED.value
        )
    return {int(i) for i in conn.execute(stmt).scalars()}


def _batch_digests(ctx: _Ctx) -> None:
    """Gather waiting notifications whose digest time came into one message per group."""
    conn, schedule, now, zone, result = ctx.conn, ctx.schedule, ctx.now, ctx.zone, ctx.result
    rows = conn.execute(
        sa.select(Notification)
        .where(Notification.state == "waiting", Notification.digest_at <= now)
        .order_by(Notification.digest_at, Notification.id)
    ).all()
    groups: dict[tuple[str, str, str, datetime], list[Any]] = {}
    for n in rows:
        policy = n.step.split(":", 1)[0]
        assert n.digest_at is not None
        groups.setdefault((policy, n.person_id, n.market_id, n.digest_at), []).append(n)
    people = {p.id: p for p in schedule.people}
    policies = {p.id: p for p in schedule.escalation}
    for (policy_id, person_id, market_id, at), members in groups.items():
        person = people.get(person_id)
        live = {
            kind: _unresolved(conn, kind, [m.subject_id for m in members if m.subject_kind == kind])
            for kind in ("obligation", "problem")
        }
        keep = [m for m in members if m.subject_id in live[m.subject_kind]]
        drop = [m.id for m in members if m not in keep]
        if person is None or policy_id not in policies:
            drop, keep = [m.id for m in members], []
        if drop:
            conn.execute(
                sa.update(Notification)
                .where(Notification.id.in_(drop), Notification.state == "waiting")
                .values(state="dropped")
            )
        if not keep or person is None:
            continue
        policy = policies[policy_id]
        items = [_item_of(conn, schedule, policy, m) for m in keep]
        local = at.astimezone(zone)
        bundle = f"digest:{policy_id}:{person_id}:{market_id}:{at.isoformat()}"
        subject = f"【汇总 {local:%m-%d}】{items[0].market_name} 未完成事项 {len(items)} 项"
        body = _body(person, items, zone)
        result.messages += _enqueue(ctx, person, bundle, market_id, subject, body, at)
        conn.execute(
            sa.update(Notification)
            .where(Notification.id.in_([m.id for m in keep]), Notification.state == "waiting")
            .values(state="queued", bundle=bundle)
        )


def _item_of(conn: sa.Connection, schedule: Schedule, policy: EscalationPolicy, n: Any) -> _Item:
    index = int(n.step.rsplit(":", 1)[1].lstrip("p"))
    if n.subject_kind == "obligation":
        ob = conn.execute(sa.select(Obligation).where(Obligation.id == n.subject_id)).one()
        head = headline(policy.steps[index].at) if index < len(policy.steps) else "提醒"
        return _obligation_item(conn, schedule, ob, head)
    pr = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == n.subject_id)).one()
    head = headline(policy.problem_steps[index].at) if index < len(policy.problem_steps) else "提醒"
    return _problem_item(conn, pr, head)


# ---------------------------------------------------------------- sending


@dataclass
class SendResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    cancelled: int = 0


def _claim(engine: sa.Engine, now: datetime) -> Any | None:
    """Take one due message under a lease; cancel it instead if its subjects were resolved."""

    def step() -> Any | None:
        with write(engine) as conn:
            row = outbox_rules.select_due(conn, NotifyMessage, now)
            if row is None:
                return None
            members = conn.execute(
                sa.select(Notification.subject_kind, Notification.subject_id).where(
                    Notification.bundle == row.bundle
                )
            ).all()
            alive = any(_unresolved(conn, m.subject_kind, [m.subject_id]) for m in members)
            if members and not alive and row.state == "pending":
                conn.execute(
                    sa.update(NotifyMessage)
                    .where(NotifyMessage.id == row.id, NotifyMessage.state == row.state)
                    .values(state="cancelled", last_error="resolved before it was sent")
                )
                return "cancelled"
            return row if outbox_rules.take(conn, NotifyMessage, row, now) else "raced"

    return retrying(step, what="claim notification")


def send_due(
    engine: sa.Engine,
    smtp: SmtpConfig,
    *,
    now: datetime,
    timezone: str,
    limit: int = 50,
) -> SendResult:
    """Send due messages one at a time; each outcome is recorded before the next."""
    zone = ZoneInfo(timezone)
    result = SendResult()
    for _ in range(limit):
        row = _claim(engine, now)
        if row is None:
            break
        if row == "cancelled":
            result.cancelled += 1
            continue
        if row == "raced":
            continue
        error: DeliveryError | None = None
        try:
            if row.channel == "email":
                send(smtp, email_message(row, sender=smtp.sender, now=now), row.address)
            else:
                post_webhook(row)
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a message that cannot be made: failed for good, never
            # left in "sending" to be retried with a traceback every round
            error = DeliveryError(f"cannot build the message: {exc}", permanent=True)
        _settle(engine, row, error, now, zone)
        extra = {"notify": row.id, "channel": row.channel, "to": row.person_id}
        if error is None:
            result.sent += 1
            log.info("notification sent", extra=extra)
        elif error.permanent:
            result.failed += 1
            log.error("notification failed permanently: %s", error, extra=extra)
        else:
            result.retrying += 1
            log.warning("notification not sent, will retry: %s", error, extra=extra)
            break  # a channel is unwell: leave the rest for the next round (backoff reorders)
    return result


def _settle(
    engine: sa.Engine, row: Any, error: DeliveryError | None, at: datetime, zone: ZoneInfo
) -> None:
    values = outbox_rules.outcome_values(
        error=error, permanent=bool(error and error.permanent), attempts=row.attempts + 1, at=at
    )
    if "next_attempt_at" in values:  # a retry waits for the end of the person's quiet hours
        values["next_attempt_at"] = after_quiet_hours(
            values["next_attempt_at"], parse_quiet(row.quiet_hours), zone
        )
    outbox_rules.settle(engine, NotifyMessage, row.id, values, what="record notification")


def email_message(row: Any, *, sender: str, now: datetime) -> MIMEText:
    """A plain-text UTF-8 email carrying the message's stable Message-ID."""
    msg = MIMEText(row.body, "plain", "utf-8")
    msg["From"] = sender
    msg["To"] = row.address
    msg["Subject"] = Header(row.subject, "utf-8")  # type: ignore[assignment]  # compat32 folds it
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = row.stable_id
    msg["Auto-Submitted"] = "auto-generated"
    return msg


def webhook_payload(row: Any) -> dict[str, Any]:
    """The JSON body: the WeCom/DingTalk robot text shape, or marketcare's generic shape."""
    if row.webhook_format in ("wecom", "dingtalk"):
        content = f"{row.subject}\n{row.body}\n[{row.stable_id}]"
        return {"msgtype": "text", "text": {"content": content}, "idempotency_key": row.stable_id}
    return {
        "id": row.stable_id,
        "idempotency_key": row.stable_id,
        "subject": row.subject,
        "text": row.body,
        "market": row.market_id,
        "person": row.person_id,
        "bundle": row.bundle,
    }


def post_webhook(row: Any, *, timeout: float = WEBHOOK_TIMEOUT) -> None:
    """POST the payload; 2xx is sent, 4xx (but 408/429) permanent, anything else temporary."""
    data = json.dumps(webhook_payload(row), ensure_ascii=False).encode()
    request = urllib.request.Request(
        row.address,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": row.stable_id,
            "User-Agent": "marketcare",
        },
    )
    try:
        # the address passed the schedule's http(s)-only check, schedules._url (bandit B310 accepted)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            status = response.status
            answer = response.read(2000)
    except urllib.error.HTTPError as exc:
        code = exc.code
        permanent = 400 <= code < 500 and code not in (408, 429)
        raise DeliveryError(
            f"webhook answered HTTP {code} {exc.reason}", permanent=permanent
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach webhook: {reason}", permanent=False) from None
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook answered HTTP {status}", permanent=False)
    if row.webhook_format in ("wecom", "dingtalk"):
        try:
            errcode = json.loads(answer or b"{}").get("errcode", 0)
        except (ValueError, AttributeError):
            errcode = 0
        if errcode:
            raise DeliveryError(f"robot refused the message: errcode {errcode}", permanent=False)


# ---------------------------------------------------------------- listing and resending


#: the states of a notification: an outbox message's, or cancelled (resolved before sent)
STATES = (*outbox_rules.STATES, "cancelled")


def messages(
    engine: sa.Engine, *, states: Sequence[str] | None = None, limit: int = 200
) -> list[Any]:
    with read(engine) as conn:
        stmt = sa.select(NotifyMessage).order_by(NotifyMessage.id.desc()).limit(limit)
        if states:
            stmt = stmt.where(NotifyMessage.state.in_(list(states)))
        return list(conn.execute(stmt).all())


def resend(engine: sa.Engine, message_id: int, *, now: datetime) -> None:
    """Queue a message again (after a permanent failure was fixed); same stable id."""
    outbox_rules.requeue(engine, NotifyMessage, message_id, now=now, what="notification message")
