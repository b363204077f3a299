"""The hash-chained event log: append under the chain's head lock, verify from the start.

Each event's hash covers its content and the previous event's hash, so altering or
removing any event breaks every hash after it; the head row records the last sequence
number and hash, so removing events from the end is caught too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa

from marketcare.ledger.models import AuditHead, Event

GENESIS = "0" * 64
#: the actor of what the daemon does by itself (materialise, sweep, excuse, withdraw)
SYSTEM = "system"


@dataclass(frozen=True)
class NewEvent:
    at: datetime
    actor: str
    action: str
    obligation_id: int | None = None
    from_state: str | None = None
    to_state: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problem_id: int | None = None


def _canonical(seq: int, e: Any) -> bytes:
    body = {
        "seq": seq,
        "at": e.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": e.actor,
        "action": e.action,
        "obligation_id": e.obligation_id,
        "from_state": e.from_state,
        "to_state": e.to_state,
        "details": e.details,
    }
    problem_id = getattr(e, "problem_id", None)
    if problem_id is not None:  # absent from events older than problems, whose hashes stand
        body["problem_id"] = problem_id
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def event_hash(prev_hash: str, seq: int, e: Any) -> str:
    """Hash of an event (a NewEvent or a stored row) chained to the previous hash."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(seq, e)).hexdigest()


#: the PostgreSQL advisory lock key that serialises starting the chain ("mc-audit")
FIRST_EVENT_LOCK = 0x6D632D6175646974


#: the chain's head, read (locked) and moved once per append: built once, not per call
#: (building a statement with ``==`` through the ORM's attributes cost more than running it)
_HEAD = cast(sa.Table, AuditHead.__table__)
_READ_HEAD = sa.select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = (
    sa.update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=sa.bindparam("to_seq"), hash=sa.bindparam("to_hash"))
)


def _lock_head(conn: sa.Connection) -> Any:
    return conn.execute(_READ_HEAD).one_or_none()


def _as_stored(e: NewEvent) -> NewEvent:
    """The event as PostgreSQL stores it: its text without U+0000 (``db._strip_nul_on``
    drops it from every text parameter), so that what is hashed is what is stored and
    ``verify`` agrees; JSON details keep it, escaped."""
    if not any(v and "\x00" in v for v in (e.actor, e.action, e.from_state, e.to_state)):
        return e
    return replace(
        e,
        actor=e.actor.replace("\x00", ""),
        action=e.action.replace("\x00", ""),
        from_state=_nul_free(e.from_state),
        to_state=_nul_free(e.to_state),
    )


def _nul_free(text: str | None) -> str | None:
    return None if text is None else text.replace("\x00", "")


def append(conn: sa.Connection, events: Iterable[NewEvent]) -> int:
    """Append events in order inside the caller's transaction; returns how many."""
    batch = list(events)
    if not batch:
        return 0
    if conn.dialect.name == "postgresql":
        batch = [_as_stored(e) for e in batch]
    head = _lock_head(conn)
    if head is None and conn.dialect.name == "postgresql":
        # no head row to lock yet (the ledger's first event): on PostgreSQL two writers
        # could both start the chain; this lock queues them, and the second then sees
        # the head the first one committed (SQLite's BEGIN IMMEDIATE queues them already)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(FIRST_EVENT_LOCK)))
        head = _lock_head(conn)
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    rows = []
    for e in batch:
        seq += 1
        h = event_hash(prev, seq, e)
        rows.append(
            {
                "seq": seq,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "obligation_id": e.obligation_id,
                "problem_id": e.problem_id,
                "from_state": e.from_state,
                "to_state": e.to_state,
                "details": e.details,
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
    conn.execute(sa.insert(Event), rows)
    if head is None:
        conn.execute(sa.insert(AuditHead).values(id=1, seq=seq, hash=prev))
    else:
        conn.execute(_MOVE_HEAD, {"to_seq": seq, "to_hash": prev})
    return len(batch)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify(
    conn: sa.Connection,
    *,
    batch: int = 5000,
    on_event: Callable[[Any], None] | None = None,
) -> Verdict:
    """Walk the chain from the first event; name the first one altered or removed.

    ``on_event`` sees every event that verified, in order (the replay of ``examine``).
    """
    prev, expected_seq, checked = GENESIS, 1, 0
    last_seq = 0
    while True:
        rows = conn.execute(
            sa.select(Event).where(Event.seq >= expected_seq).order_by(Event.seq).limit(batch)
        ).all()
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected_seq:
                return Verdict(False, checked, expected_seq, f"event {expected_seq} was removed")
            if ev.prev_hash != prev:
                return Verdict(
                    False, checked, ev.seq, f"event {ev.seq} does not follow event {ev.seq - 1}"
                )
            if event_hash(prev, ev.seq, ev) != ev.hash:
                return Verdict(False, checked, ev.seq, f"event {ev.seq} was altered")
            if on_event is not None:
                on_event(ev)
            prev, expected_seq, checked, last_seq = ev.hash, ev.seq + 1, checked + 1, ev.seq
    head = conn.execute(sa.select(AuditHead).where(AuditHead.id == 1)).one_or_none()
    if head is None:
        if checked:
            return Verdict(False, checked, 1, "the chain head is missing")
        return Verdict(True, 0)
    if head.seq != last_seq or head.hash != prev:
        missing = last_seq + 1
        return Verdict(
            False,
            checked,
            missing,
            f"event {missing} and later were removed (the head records {head.seq})",
        )
    return Verdict(True, checked)


def head(conn: sa.Connection) -> Anchor:
    """The chain's head now: what an export or an email carries as its anchor."""
    row = conn.execute(sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).first()
    return Anchor(0, GENESIS) if row is None else Anchor(int(row.seq), str(row.hash))


# ---------------------------------------------------------------- anchors


@dataclass(frozen=True)
class Anchor:
    """The chain's head as a file or a message witnessed it: event ``seq`` had ``hash``."""

    seq: int
    hash: str
    source: str = ""

    def text(self) -> str:
        """``1329 3f2a…`` (all 64 hex digits): the form headers, footers and properties use."""
        return f"{self.seq} {self.hash}"


def check_anchor(conn: sa.Connection, anchor: Anchor) -> Verdict:
    """Whether the ledger still holds exactly the history the anchor witnessed.

    The chain up to ``anchor.seq`` must verify and end in ``anchor.hash``: a history cut
    back (events removed from the end, the head rolled back) or rewritten consistently
    (every later hash recomputed) before the anchor cannot end in the same hash.
    """
    where = f" ({anchor.source})" if anchor.source else ""
    row = conn.execute(sa.select(Event.hash).where(Event.seq == anchor.seq)).first()
    if anchor.seq == 0:
        return Verdict(True, 0)
    if row is None:
        last = conn.execute(sa.select(sa.func.max(Event.seq))).scalar() or 0
        return Verdict(
            False,
            0,
            int(last) + 1,
            f"the anchor{where} witnessed event {anchor.seq}, but the ledger's history ends "
            f"at event {last}: events {int(last) + 1}–{anchor.seq} were removed "
            "(history cut back)",
        )
    if row.hash != anchor.hash:
        return Verdict(
            False,
            0,
            anchor.seq,
            f"event {anchor.seq} differs from the anchor{where}: the anchor has "
            f"{anchor.hash[:16]}…, the ledger {str(row.hash)[:16]}…; the history up to "
            f"event {anchor.seq} was rewritten",
        )
    return Verdict(True, anchor.seq)
