"""The hash-chained event log: append under the chain's head lock, verify from the start.

Each event's hash covers its content and the previous event's hash, so altering or
removing any event breaks every hash after it; the head row records the last sequence
number and hash, so removing events from the end is caught too.

On PostgreSQL a batch of ticks appends *unchained* (``append(..., defer=True)``): its
events are committed to ``unchained_events`` without the head's lock, and ``chain`` links
them afterwards, many at a time, in its own short transaction. The chain's order is the
order in which events are linked (``_link``, the one rule for both ways of appending);
an event is pending until linked, and tamper-evident from then on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from marketcare.ledger.db import as_arrays, unnest_insert
from marketcare.ledger.models import AuditHead, Event, UnchainedEvent

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


#: the chainer's try-lock: the head if nobody holds it, else no row (another chainer or an
#: inline append holds it and links what is pending itself)
_TRY_HEAD = (
    sa.select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update(skip_locked=True)
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


_EVENT_COLUMNS = (
    "seq", "at", "actor", "action", "obligation_id", "problem_id", "from_state", "to_state",
    "details", "prev_hash", "hash",
)  # fmt: skip
#: PostgreSQL: a batch's events in one statement (``db.unnest_insert``)
_EVENTS = cast(sa.Table, Event.__table__)
#: PostgreSQL: the events of an append and the head's move in one statement (one round
#: trip while every other writer waits for the head, not an executemany and an UPDATE)
_APPEND_EVENTS = unnest_insert(_EVENTS, _EVENT_COLUMNS).add_cte(
    sa.update(AuditHead)
    .where(AuditHead.id == 1)
    .values(seq=sa.bindparam("head_seq"), hash=sa.bindparam("head_hash"))
    .cte("new_head")
)


_UNCHAINED = cast(sa.Table, UnchainedEvent.__table__)
_UNCHAINED_COLUMNS = (
    "at", "actor", "action", "obligation_id", "problem_id", "from_state", "to_state", "details",
)  # fmt: skip
#: PostgreSQL: a deferred batch's events, unchained, in one statement
_INSERT_UNCHAINED = unnest_insert(_UNCHAINED, _UNCHAINED_COLUMNS)
#: the same, for a statement of the caller's own that inserts them (``tick``'s batch)
UNCHAINED = _UNCHAINED
UNCHAINED_COLUMNS = _UNCHAINED_COLUMNS


def unchained_arrays(conn: sa.Connection, events: Iterable[NewEvent]) -> dict[str, list[Any]]:
    """PostgreSQL: the parameters of a deferred append, one array per column of
    ``UNCHAINED_COLUMNS``, as they are stored (``_as_stored``).

    Built without a statement, so a tick batch builds them before its write begins and
    sends them inside it with the rest of its writes (``tick._TickSql.write_batch``).
    """
    rows = [
        {name: getattr(e, name) for name in _UNCHAINED_COLUMNS}
        for e in (_as_stored(e) for e in events)
    ]
    return as_arrays(conn, _UNCHAINED, rows, _UNCHAINED_COLUMNS)


#: PostgreSQL: pending events linked: removed from ``unchained_events``, the head moved and
#: the events inserted chained, in one statement
_LINK_PENDING = _APPEND_EVENTS.add_cte(
    sa.delete(_UNCHAINED)
    .where(_UNCHAINED.c.id == sa.func.any(sa.bindparam("linked_ids")))
    .cte("linked")
)
_PENDING = sa.select(_UNCHAINED).order_by(_UNCHAINED.c.id)
#: how many pending events one chaining transaction links at most
CHAIN_BATCH = 5000
#: a pending event older than this while daemons run is late: ``audit verify`` warns
PENDING_BOUND = timedelta(minutes=1)


@dataclass(frozen=True)
class Waiting:
    """The events committed but not linked yet, as ``/readyz`` reports them."""

    count: int
    #: how long the oldest has waited, by the database server's clock alone (the web
    #: app's clock may be another, a test's frozen one for instance)
    oldest: timedelta

    @property
    def late(self) -> bool:
        """Past ``PENDING_BOUND`` no chainer is linking them: the leader's chaining step
        links every daemon's pending events every few seconds."""
        return self.oldest > PENDING_BOUND


def waiting(conn: sa.Connection) -> Waiting | None:
    """The pending events on PostgreSQL (one short query of a table that stays nearly
    empty); None on SQLite, where nothing is ever pending."""
    if conn.dialect.name != "postgresql":
        return None
    count, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.now() - sa.func.min(_UNCHAINED.c.written_at))
    ).one()
    return Waiting(int(count), oldest if isinstance(oldest, timedelta) else timedelta(0))


def _link(seq: int, prev: str, batch: Iterable[Any]) -> list[dict[str, Any]]:
    """The chain's rule of order: each event, in the order given, takes the next sequence
    number and hashes over the one before it. Inline appends and the chainer both come
    here; ``verify`` walks the same order back by ``seq``."""
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
    return rows


def append(conn: sa.Connection, events: Iterable[NewEvent], *, defer: bool = False) -> int:
    """Append events in order inside the caller's transaction; returns how many.

    Appending is the transaction's last write, after every row lock it takes: the
    chain's order then never puts an event before one it depends on. ``defer`` (a
    batch of ticks): on PostgreSQL the events are inserted unchained, without the
    head's lock, for ``chain`` to link after the commit; on SQLite (one writer at a
    time anyway) they are chained at once. Chaining inline on PostgreSQL links the
    committed pending events first, so they keep their place before these.
    """
    batch = list(events)
    if not batch:
        return 0
    postgresql = conn.dialect.name == "postgresql"
    if defer and postgresql:
        conn.execute(_INSERT_UNCHAINED, unchained_arrays(conn, batch))
        return len(batch)
    if postgresql:
        batch = [_as_stored(e) for e in batch]
    head = _lock_head(conn)
    if head is None and postgresql:
        # no head row to lock yet (the ledger's first event): on PostgreSQL two writers
        # could both start the chain; this lock queues them, and the second then sees
        # the head the first one committed (SQLite's BEGIN IMMEDIATE queues them already)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(FIRST_EVENT_LOCK)))
        head = _lock_head(conn)
    pending = conn.execute(_PENDING).all() if postgresql else []
    _write_linked(conn, head, [*pending, *batch], [p.id for p in pending])
    return len(batch)


def _write_linked(conn: sa.Connection, head: Any, batch: list[Any], linked_ids: list[int]) -> None:
    """Link ``batch`` after ``head`` (the caller holds its lock) and write it: the events,
    the head's move, and the removal of the pending rows among them (``linked_ids``)."""
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    rows = _link(seq, prev, batch)
    last_seq, last_hash = rows[-1]["seq"], rows[-1]["hash"]
    if conn.dialect.name == "postgresql" and head is not None:
        params = {
            **as_arrays(conn, _EVENTS, rows, _EVENT_COLUMNS),
            "head_seq": last_seq,
            "head_hash": last_hash,
        }
        if linked_ids:
            conn.execute(_LINK_PENDING, {**params, "linked_ids": linked_ids})
        else:
            conn.execute(_APPEND_EVENTS, params)
        return
    conn.execute(sa.insert(Event), rows)
    if linked_ids:
        conn.execute(sa.delete(_UNCHAINED).where(_UNCHAINED.c.id.in_(linked_ids)))
    if head is None:
        conn.execute(sa.insert(AuditHead).values(id=1, seq=last_seq, hash=last_hash))
    else:
        conn.execute(_MOVE_HEAD, {"to_seq": last_seq, "to_hash": last_hash})


def chain(bind: sa.Engine | sa.Connection, *, wait: bool = False, look: bool = True) -> int:
    """Link the committed pending events to the chain, in ``id`` order; how many it linked.

    Each round is one short transaction: the head's lock, the pending events (up to
    ``CHAIN_BATCH``), one statement that links them, one ``COMMIT``. Only one chainer
    links at a time: without ``wait`` a chainer that finds the head locked leaves at
    once (whoever holds it links what is pending, or the next chainer will). A chainer
    that dies mid-round leaves its events pending, and the next one links them: nothing
    is lost, nothing linked twice. ``bind``: an engine, or a connection outside any
    transaction (the tick writer's own). ``look=False``: the caller knows events are
    pending (it just committed some), so the first round does not look before it locks.
    Nothing is ever pending on SQLite.
    """
    if bind.dialect.name != "postgresql":
        return 0
    linked = 0
    while True:
        if isinstance(bind, sa.Engine):
            with bind.begin() as conn:
                n = _chain_round(conn, wait, look)
        else:
            with bind.begin():
                n = _chain_round(bind, wait, look)
        linked, look = linked + (n or 0), True
        if n is None or n < CHAIN_BATCH:
            return linked


def _chain_round(conn: sa.Connection, wait: bool, look: bool) -> int | None:
    """One chaining transaction's work; None when another holds the head."""
    if look and conn.execute(sa.select(_UNCHAINED.c.id).limit(1)).first() is None:
        return 0  # nothing pending: the head's lock is not even asked for
    head = _lock_head(conn) if wait else conn.execute(_TRY_HEAD).one_or_none()
    if head is None and conn.execute(sa.select(_HEAD.c.id)).first() is not None:
        return None  # locked by another: it links what is pending
    if head is None:  # the ledger's first events: queue as ``append`` does
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(FIRST_EVENT_LOCK)))
        head = _lock_head(conn)
    pending = conn.execute(_PENDING.limit(CHAIN_BATCH)).all()
    if pending:
        _write_linked(conn, head, list(pending), [p.id for p in pending])
    return len(pending)


@dataclass(frozen=True)
class Pending:
    """An event committed but not linked yet, with the place it would take in the chain
    now (what ``verify``'s replay and its messages call it)."""

    seq: int
    row: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    #: events committed but not linked yet: not tampering, not yet tamper-evident
    pending: int = 0
    #: when the oldest of them was written (the database server's clock)
    oldest_pending: datetime | None = None

    def late(self, now: datetime) -> bool:
        """Whether an event has waited for the chainer longer than ``PENDING_BOUND``: with
        daemons running, a chainer that stopped working (``audit verify`` warns)."""
        return self.oldest_pending is not None and now - self.oldest_pending > PENDING_BOUND


def verify(
    conn: sa.Connection,
    *,
    batch: int = 5000,
    on_event: Callable[[Any], None] | None = None,
) -> Verdict:
    """Walk the chain from the first event; name the first one altered or removed.

    ``on_event`` sees every event that verified, in order (the replay of ``examine``),
    then the pending events in the order the chainer will link them (``Pending``, with
    the place each would take). Pending events are counted, not judged: nothing links
    them yet. Read in one snapshot (``db.read``), or an event being linked meanwhile is
    seen twice or not at all.
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
    if head is None and checked:
        return Verdict(False, checked, 1, "the chain head is missing")
    if head is not None and (head.seq != last_seq or head.hash != prev):
        missing = last_seq + 1
        return Verdict(
            False,
            checked,
            missing,
            f"event {missing} and later were removed (the head records {head.seq})",
        )
    pending, oldest = 0, None
    for row in conn.execute(_PENDING):
        pending += 1
        oldest = row.written_at if oldest is None else min(oldest, row.written_at)
        if on_event is not None:
            on_event(Pending(last_seq + pending, row))
    return Verdict(True, checked, pending=pending, oldest_pending=oldest)


def head(conn: sa.Connection) -> Anchor:
    """The chain's head now: what an export or an email carries as its anchor.

    Events still pending are not under it: a writer of an anchor links them first
    (``chain``) for an anchor as recent as can be."""
    row = conn.execute(sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).first()
    return Anchor(0, GENESIS) if row is None else Anchor(int(row.seq), str(row.hash))


def position(conn: sa.Connection) -> tuple[int, str, int]:
    """Where the log stands: the head and the last pending event's id. It moves with
    every event committed, chained or not (what a cache of figures keys on)."""
    at = head(conn)
    if conn.dialect.name != "postgresql":
        return at.seq, at.hash, 0  # nothing is ever pending there
    last = conn.execute(sa.select(sa.func.max(_UNCHAINED.c.id))).scalar()
    return at.seq, at.hash, int(last or 0)


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
