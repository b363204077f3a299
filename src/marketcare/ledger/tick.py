"""Completions: the tick rule, one tick at a time (the CLI) or batched by the group-commit
writer (the web), both through ``_tick_in`` so the rule is written once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from marketcare.domain import inputs
from marketcare.domain.checklists import check, checklist_of
from marketcare.domain.obligations import (
    COMPLETED,
    State,
    can_tick,
    completion_outcome,
    format_range,
    minutes_late,
)
from marketcare.domain.phonetime import ClockTrust, TimeBasis, Timing, judge
from marketcare.errors import Conflict, Kind, NotFound, TickRefused, Unavailable
from marketcare.ledger import audit
from marketcare.ledger.db import as_arrays, log_failure, retrying, write
from marketcare.ledger.models import (
    AreaRow,
    Completion,
    MarketRow,
    Obligation,
)
from marketcare.ledger.versions import schedule_of_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickResult:
    obligation_id: int
    state: State
    changed: bool
    completion_id: int | None
    message: str
    failures: Mapping[str, Any] = field(default_factory=dict)
    #: the completion's times (this one's, or the earlier same submission's)
    timing: Timing | None = None
    #: when already done by someone: who (user name) and when it counts as done
    done_by: str | None = None
    done_at: datetime | None = None


@dataclass(frozen=True)
class TickRequest:
    """One tick as the ledger takes it, from the CLI (``tick``) or the web (``TickWriter``).

    ``allowed_markets`` is the caller's market scope (None: any market). It is checked
    against the obligation inside the transaction that records the tick, so the web needs
    no transaction of its own to authorise; a refusal is the same ``NotFound`` as a
    missing obligation, so another market's ids reveal nothing.

    ``now`` is when the tick arrives. ``phone_at`` and ``phone_sent_at`` are the phone's
    clock when the work was recorded offline and when it was sent; ``trust`` decides
    whether the completion counts at the phone's time (``domain.phonetime``).
    """

    obligation_id: int
    by: str
    now: datetime
    token: str
    readings: Mapping[str, float] = field(default_factory=dict)
    items: Sequence[str] | None = None
    note: str | None = None
    texts: Mapping[str, str] = field(default_factory=dict)
    evidence: Sequence[Mapping[str, Any]] = ()
    allowed_markets: frozenset[str] | None = None
    phone_at: datetime | None = None
    phone_sent_at: datetime | None = None
    trust: ClockTrust = ClockTrust()

    @classmethod
    def of(
        cls,
        *,
        obligation_id: int,
        by: str,
        now: datetime,
        readings: Mapping[str, float] | None = None,
        items: Sequence[str] | None = None,
        note: str | None = None,
        token: str | None = None,
        texts: Mapping[str, str] | None = None,
        evidence: Sequence[Mapping[str, Any]] = (),
        allowed_markets: frozenset[str] | None = None,
        phone_at: datetime | None = None,
        phone_sent_at: datetime | None = None,
        trust: ClockTrust | None = None,
    ) -> TickRequest:
        """A request with the ledger's normalisations (whole seconds, a token, a name) and
        the limits of ``inputs``, the same on every database."""
        inputs.check_id(obligation_id, "obligation_id", what="obligation")
        by = inputs.check_text(by, "by", limit=inputs.PERSON_MAX)
        if not by:
            raise TickRefused("by: say who did the work", "by")
        if token is not None:
            token = inputs.check_text(token, "token", limit=inputs.TOKEN_MAX) or None
        if note is not None:
            note = inputs.check_text(note, "note", limit=inputs.NOTE_MAX) or None
        for key, value in (texts or {}).items():
            inputs.check_text(key, "texts", limit=inputs.PERSON_MAX)
            inputs.check_text(value, "texts", limit=inputs.NOTE_MAX)
        for item in items or ():
            inputs.check_text(item, "items", limit=inputs.PERSON_MAX)
        return cls(
            obligation_id=obligation_id,
            by=by,
            now=now.replace(microsecond=0),  # the record keeps whole seconds, as exports show
            token=token or uuid.uuid4().hex,
            readings=dict(readings or {}),
            items=items,
            note=note,
            texts=dict(texts or {}),
            evidence=tuple(evidence),
            allowed_markets=allowed_markets,
            phone_at=_whole_seconds(phone_at),
            phone_sent_at=_whole_seconds(phone_sent_at),
            trust=trust or ClockTrust(),
        )


def _whole_seconds(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise TickRefused("phone_at: give the phone's time with its UTC offset")
    return moment.replace(microsecond=0)


def tick(
    engine: sa.Engine,
    *,
    obligation_id: int,
    by: str,
    now: datetime,
    readings: Mapping[str, float] | None = None,
    items: Sequence[str] | None = None,
    note: str | None = None,
    token: str | None = None,
    texts: Mapping[str, str] | None = None,
    evidence: Sequence[Mapping[str, Any]] = (),
    phone_at: datetime | None = None,
    phone_sent_at: datetime | None = None,
    trust: ClockTrust | None = None,
) -> TickResult:
    """Record a completion of one obligation (see ``completion_outcome`` for the rule).

    The same ``token`` submitted twice records once. A completed obligation is reported
    as such and left unchanged; before its window opens a tick is refused with the time
    it opens. Readings are checked against the range of the schedule version that made
    the obligation; out of range means failed (kept, and the obligation can be redone).
    One tick, one transaction: the CLI's way. The web batches through ``TickWriter``;
    both run ``_tick_in``, so the rule is written once.
    """
    request = TickRequest.of(
        obligation_id=obligation_id,
        by=by,
        now=now,
        readings=readings,
        items=items,
        note=note,
        token=token,
        texts=texts,
        evidence=evidence,
        phone_at=phone_at,
        phone_sent_at=phone_sent_at,
        trust=trust,
    )

    def attempt() -> TickResult:
        with write(engine) as conn:
            result, events = _tick_in(conn, request)
            audit.append(conn, events)
            return result

    for _ in range(5):
        try:
            return retrying(attempt, what="tick", idempotent=True)
        except _Raced:
            continue
        except sa.exc.IntegrityError:
            # the same token was inserted by a concurrent submission: report that one
            continue
    raise Conflict(f"obligation {obligation_id} kept changing under this tick; try again")


_OBLIGATIONS = cast(sa.Table, Obligation.__table__)
_COMPLETIONS = cast(sa.Table, Completion.__table__)
_AREAS = cast(sa.Table, AreaRow.__table__)


class _TickSql:
    """A tick's statements, built once with bound parameters.

    Building a statement per tick (the ``==`` operators, ``.values()`` through the ORM
    layer, its cache key) cost more CPU than running it; a statement object built once
    keeps its cache key, so executing it only binds the values. The area's kind comes
    with the obligation (a scalar subquery), not in a statement of its own.
    """

    area_kind = (
        sa.select(_AREAS.c.kind)
        .where(
            _AREAS.c.market_id == _OBLIGATIONS.c.market_id, _AREAS.c.id == _OBLIGATIONS.c.area_id
        )
        .scalar_subquery()
        .label("area_kind")
    )
    obligation = (
        sa.select(_OBLIGATIONS, area_kind)
        .where(_OBLIGATIONS.c.id == sa.bindparam("ob_id"))
        .with_for_update(of=_OBLIGATIONS)
    )
    _prior = sa.select(
        _COMPLETIONS.c.id,
        _COMPLETIONS.c.obligation_id,
        _COMPLETIONS.c.token,
        _COMPLETIONS.c.at,
        _COMPLETIONS.c.arrived_at,
        _COMPLETIONS.c.phone_at,
        _COMPLETIONS.c.phone_sent_at,
        _COMPLETIONS.c.time_basis,
        _COMPLETIONS.c.by,
        _OBLIGATIONS.c.state.label("obligation_state"),
    ).join(_OBLIGATIONS, _OBLIGATIONS.c.id == _COMPLETIONS.c.obligation_id)
    prior = _prior.where(
        _COMPLETIONS.c.by == sa.bindparam("by"), _COMPLETIONS.c.token == sa.bindparam("token")
    )
    #: a batch's obligations (locked, in id order: writers on PostgreSQL never deadlock)
    obligations = (
        sa.select(_OBLIGATIONS, area_kind)
        .where(_OBLIGATIONS.c.id.in_(sa.bindparam("ob_ids", expanding=True)))
        .order_by(_OBLIGATIONS.c.id)
        .with_for_update(of=_OBLIGATIONS)
    )
    #: earlier submissions of a batch's tokens (their senders are matched in Python)
    priors = _prior.where(_COMPLETIONS.c.token.in_(sa.bindparam("tokens", expanding=True)))
    move = (
        sa.update(_OBLIGATIONS)
        .where(
            _OBLIGATIONS.c.id == sa.bindparam("ob_id"),
            _OBLIGATIONS.c.state == sa.bindparam("from_state"),
        )
        .values(
            state=sa.bindparam("to_state", type_=_OBLIGATIONS.c.state.type),
            state_changed_at=sa.bindparam("changed_at", type_=_OBLIGATIONS.c.state_changed_at.type),
            completed_at=sa.bindparam("done_at", type_=_OBLIGATIONS.c.completed_at.type),
        )
    )
    record = sa.insert(_COMPLETIONS).returning(_COMPLETIONS.c.id)
    #: a batch's completions in one executemany, then their ids by sender and token (the
    #: order of a multi-row RETURNING is not SQLite's promise: SQLAlchemy would insert row
    #: by row)
    records = sa.insert(_COMPLETIONS)
    recorded = sa.select(_COMPLETIONS.c.by, _COMPLETIONS.c.token, _COMPLETIONS.c.id).where(
        _COMPLETIONS.c.token.in_(sa.bindparam("tokens", expanding=True))
    )
    #: PostgreSQL: a batch's obligations read before its write, unlocked (the write's
    #: compare-and-swap on state and ``state_changed_at`` holds them to what was judged)
    seen = sa.select(_OBLIGATIONS, area_kind).where(
        _OBLIGATIONS.c.id.in_(sa.bindparam("ob_ids", expanding=True))
    )
    #: PostgreSQL: ids for a batch's completions, taken before its write, so that the
    #: events and answers that name them are built before it too
    completion_ids = sa.text(
        "SELECT nextval(pg_get_serial_sequence('completions', 'id')) FROM generate_series(1, :n)"
    )
    record_columns = (
        "obligation_id", "token", "by", "at", "outcome", "readings", "items", "failures",
        "note", "evidence", "phone_at", "phone_sent_at", "arrived_at", "time_basis",
    )  # fmt: skip


#: the dialect the PostgreSQL statement's text is compiled for (an untyped constructor)
_PG_DIALECT: sa.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


def _pg_unnest(prefix: str, columns: Sequence[tuple[str, sa.Column[Any]]]) -> str:
    """``unnest(CAST(%(prefix_name)b AS type[]), …)``: a row per array element.

    The arrays go in binary (``%(…)b``): in text form psycopg quotes every element of a
    text array with a regular expression, a match per ``"`` of the JSON texts (readings,
    items, event details), which was most of the writer's own CPU per batch.
    """
    dialect = _PG_DIALECT
    arrays = ", ".join(
        f"CAST(%({prefix}{name})b AS {postgresql.ARRAY(column.type).compile(dialect=dialect)})"
        for name, column in columns
    )
    return f"unnest({arrays})"


def _pg_write_batch() -> str:
    """PostgreSQL: every write of a batch of ticks in one statement, run on its own
    (autocommit: the statement is the transaction).

    The moves (each a compare-and-swap on the state and ``state_changed_at`` that were
    judged, the rows locked first in id order, so writers never deadlock), the
    completions with their ids, and the events, unchained (``audit.append(defer=True)``).
    The events take their ids (the chain's order, ``audit``) only once every move is
    done, each of its rows locked (their ``WHERE`` waits for ``moved``), as an append
    is its transaction's last write. The result casts a text to an integer when fewer
    rows moved than were judged, an error that undoes the whole statement; the writer
    then ticks the batch one by one.
    Before this, the batch's transaction held its rows from ``BEGIN`` over six round
    trips and the writer's Python work (judging, events, JSON) between them.
    """
    quote = _PG_DIALECT.identifier_preparer.quote
    ob, done = _OBLIGATIONS, _COMPLETIONS
    moves = (
        ("ob_id", ob.c.id), ("from_state", ob.c.state), ("seen_at", ob.c.state_changed_at),
        ("to_state", ob.c.state), ("changed_at", ob.c.state_changed_at),
        ("done_at", ob.c.completed_at),
    )  # fmt: skip
    records = [(name, done.c[name]) for name in ("id", *_TickSql.record_columns)]
    events = [(name, audit.UNCHAINED.c[name]) for name in audit.UNCHAINED_COLUMNS]

    def names(columns: Sequence[tuple[str, Any]]) -> str:
        return ", ".join(quote(name) for name, _ in columns)

    # the names are the tables' own, compiled once at import, never input (bandit B608
    # accepted); every value goes as a parameter
    sql = f"""WITH locked AS MATERIALIZED (
    SELECT id FROM {ob.name} WHERE id = ANY(CAST(%(m_ob_id)b AS BIGINT[])) ORDER BY id FOR UPDATE
), moved AS (
    UPDATE {ob.name} AS o
    SET state = m.to_state, state_changed_at = m.changed_at, completed_at = m.done_at
    FROM {_pg_unnest("m_", moves)} AS m({names(moves)})
    WHERE o.id = m.ob_id AND o.state = m.from_state AND o.state_changed_at = m.seen_at
      AND o.id IN (SELECT id FROM locked)
    RETURNING o.id
), recorded AS (
    INSERT INTO {done.name} ({names(records)}) SELECT * FROM {_pg_unnest("c_", records)}
), pending AS (
    INSERT INTO {audit.UNCHAINED.name} ({names(events)}) SELECT * FROM {_pg_unnest("e_", events)}
    WHERE (SELECT count(*) FROM moved) = CAST(%(moving)s AS BIGINT)
)
SELECT CAST(CASE WHEN count(*) = CAST(%(moving)s AS BIGINT) THEN '0'
    ELSE 'a tick batch lost its compare-and-swap: ' || count(*) END AS INTEGER) FROM moved"""  # nosec B608
    return sql


#: PostgreSQL: the one statement of a batch's writes (``_pg_write_batch``), built once
_PG_WRITE_BATCH = _pg_write_batch()


def _in_scope(request: TickRequest, found: Any) -> Any:
    """The obligation if the caller may tick it; else the same ``NotFound`` as a missing one."""
    scope = request.allowed_markets
    if found is None or (scope is not None and found.market_id not in scope):
        raise NotFound(f"obligation {request.obligation_id} does not exist")
    return found


def _obligation_to_tick(conn: sa.Connection, request: TickRequest) -> Any:
    """The obligation row (locked) with its area's kind, within the caller's scope."""
    found = conn.execute(_TickSql.obligation, {"ob_id": request.obligation_id}).one_or_none()
    return _in_scope(request, found)


@dataclass
class _Accepted:
    """A tick the rule accepted: the move and the completion to write, then ``_recorded``."""

    request: TickRequest
    ob: Any
    state: State
    outcome: State
    timing: Timing
    failures: dict[str, Any]
    item_map: dict[str, Any]

    @property
    def move(self) -> dict[str, Any]:
        """The parameters of the compare-and-swap (``_TickSql.move``)."""
        return {
            "ob_id": self.ob.id,
            "from_state": self.state.value,
            "to_state": self.outcome.value,
            "changed_at": self.timing.arrived_at,
            "done_at": self.timing.at if self.outcome in COMPLETED else None,
        }

    @property
    def record(self) -> dict[str, Any]:
        """The completion row (``_TickSql.record``)."""
        request, timing = self.request, self.timing
        evidence = request.evidence
        return {
            "obligation_id": self.ob.id,
            "token": request.token,
            "by": request.by,
            "at": timing.at,
            "outcome": self.outcome.value,
            "readings": dict(request.readings),
            "items": self.item_map,
            "failures": self.failures,
            "note": request.note,
            "evidence": {"items": [dict(e) for e in evidence]} if evidence else None,
            "phone_at": timing.phone_at,
            "phone_sent_at": timing.phone_sent_at,
            "arrived_at": timing.arrived_at,
            "time_basis": timing.basis.value,
        }


def _tick_in(conn: sa.Connection, request: TickRequest) -> tuple[TickResult, list[audit.NewEvent]]:
    """The rule of a tick, inside the caller's write transaction.

    Returns the result and the audit events that the caller appends in the same
    transaction, after this tick and in this order: ``tick`` appends them at once, the
    ``TickWriter`` appends a whole batch's events in one go (one head update, not one
    per tick). With a market scope, the obligation is looked up (and refused) before
    the token, as the web authorised before it ticked: a token is never confirmed to
    someone who may not see the record.
    """
    ob = _obligation_to_tick(conn, request) if request.allowed_markets is not None else None
    prior = conn.execute(_TickSql.prior, {"by": request.by, "token": request.token}).one_or_none()
    if prior is None and ob is None:
        ob = _obligation_to_tick(conn, request)
    judged = _judge(conn, request, ob, prior)
    if not isinstance(judged, _Accepted):
        return judged, []
    changed = conn.execute(_TickSql.move, judged.move).rowcount
    if changed != 1:
        raise _Raced()
    completion_id = conn.execute(_TickSql.record, judged.record).scalar_one()
    return _recorded(judged, completion_id)


def _judge(
    conn: sa.Connection, request: TickRequest, ob: Any, prior: Any
) -> TickResult | _Accepted:
    """The tick rule over the rows read for it: a result that changes nothing (the same
    submission again, already completed), a refusal (raised), or the move to write.

    ``ob`` is the obligation (locked; None only when ``prior`` is given), ``prior`` the
    completion sent earlier with the same token (with its obligation's state), if any.
    It reads the database only for what is rare (who completed it already, the zone of
    a refusal's message), so a batch of ticks needs no statement per tick to be judged.
    """
    if prior is not None:
        if prior.obligation_id != request.obligation_id:
            raise Conflict(
                f"token: {request.by} already used this token for obligation "
                f"{prior.obligation_id}; send a new token for another submission",
                "token",
            )
        return TickResult(
            prior.obligation_id,
            State(prior.obligation_state),
            False,
            prior.id,
            "already recorded (same submission)",
            timing=Timing(
                prior.at,
                prior.arrived_at or prior.at,
                prior.phone_at,
                prior.phone_sent_at,
                TimeBasis(prior.time_basis),
            ),
        )
    state = State(ob.state)
    if state in COMPLETED:
        done = conn.execute(
            sa.select(Completion)
            .where(
                Completion.obligation_id == ob.id,
                Completion.outcome.in_([s.value for s in COMPLETED]),
            )
            .order_by(Completion.id)
        ).first()
        who = f" by {done.by} at {done.at.isoformat(timespec='minutes')}" if done else ""
        return TickResult(
            ob.id,
            state,
            False,
            None,
            f"already {state.value}{who}; nothing changed",
            done_by=done.by if done else None,
            done_at=done.at if done else None,
        )
    if state == State.EXCUSED:
        raise TickRefused(
            f"obligation {ob.id} is excused ({ob.note or 'no reason given'}); nothing to do",
            kind=Kind.CONFLICT,
        )
    timing = judge(
        arrived_at=request.now,
        phone_at=request.phone_at,
        phone_sent_at=request.phone_sent_at,
        opens_at=ob.opens_at,
        trust=request.trust,
    )
    now = timing.at
    if now < ob.opens_at:
        zone = _market_zone(conn, ob.market_id)
        raise TickRefused(
            f"obligation {ob.id} opens at {ob.opens_at.astimezone(zone):%Y-%m-%d %H:%M %Z}; "
            "it cannot be completed before then",
            kind=Kind.CONFLICT,
        )
    if not can_tick(state, opens_at=ob.opens_at, now=now):
        raise Conflict(f"obligation {ob.id} is {state.value}")
    schedule = schedule_of_version(conn, ob.version_id)
    checklist = checklist_of(schedule, ob.task_id, ob.area_kind)
    failures, item_map = check(checklist, request.readings, request.items, request.texts)
    outcome = completion_outcome(due_at=ob.due_at, at=now, readings_ok=not failures)
    return _Accepted(request, ob, state, outcome, timing, failures, item_map)


def _recorded(accepted: _Accepted, completion_id: int) -> tuple[TickResult, list[audit.NewEvent]]:
    """The result and the audit event of a tick written as ``completion_id``."""
    ob, state, outcome, timing = accepted.ob, accepted.state, accepted.outcome, accepted.timing
    failures, now = accepted.failures, timing.at
    record = accepted.record
    # every fact of the completion, so `audit verify` can hold the row to it: both times,
    # the readings, ticked items and texts, the note and the photos' hashes
    details: dict[str, Any] = {
        "completion_id": completion_id,
        "token": accepted.request.token,
        "failures": failures,
        "readings": record["readings"],
        "items": accepted.item_map,
        "note": accepted.request.note,
        "evidence": record["evidence"]["items"] if record["evidence"] else [],
        **timing.as_json(),
    }
    event = audit.NewEvent(
        at=timing.arrived_at,
        actor=accepted.request.by,
        action="completed" if outcome != State.FAILED else "failed_check",
        obligation_id=ob.id,
        from_state=state.value,
        to_state=outcome.value,
        details=details,
    )
    if outcome == State.FAILED:
        parts = [
            f"{k}={v['value']:g} outside {format_range(_bounds(v['range']), v.get('unit'))}"
            for k, v in failures.items()
        ]
        msg = f"recorded, but failed: {'; '.join(parts)}; redo it and tick again"
    elif outcome == State.LATE:
        msg = f"recorded as late ({minutes_late(due_at=ob.due_at, completed_at=now)} min after due)"
    else:
        msg = "recorded as done on time"
    if timing.phone_at is not None:
        msg += (
            " (counted at the phone's time)"
            if timing.trusted_phone
            else f" (counted at its arrival: {timing.basis.value.replace('_', ' ')})"
        )
    return TickResult(ob.id, outcome, True, completion_id, msg, failures, timing), [event]


class _OneByOne(Exception):
    """The batch cannot be written in bulk: write it tick by tick (``_tick_in_savepoint``)."""


def _judge_batch(
    conn: sa.Connection, requests: Sequence[TickRequest], obligations: sa.Select[Any]
) -> list[TickResult | _Accepted | Exception]:
    """Each tick of a batch judged by ``_judge`` (the one rule) over two reads for the
    whole batch: its obligations (``obligations``: locked, or not) and the earlier
    submissions of its tokens.

    A refusal needs no SAVEPOINT: the rule refuses before anything is written. What this
    cannot judge alone — one obligation or token twice in the batch, a value the
    database refused — raises ``_OneByOne``.
    """
    ids = [r.obligation_id for r in requests]
    tokens = [r.token for r in requests]
    if len(set(ids)) != len(ids) or len({(r.by, r.token) for r in requests}) != len(tokens):
        raise _OneByOne()
    obs = {r.id: r for r in conn.execute(obligations, {"ob_ids": ids})}
    priors = {(r.by, r.token): r for r in conn.execute(_TickSql.priors, {"tokens": tokens})}
    outcomes: list[TickResult | _Accepted | Exception] = []
    for request in requests:
        found = obs.get(request.obligation_id)
        try:
            prior = priors.get((request.by, request.token))
            if request.allowed_markets is not None or prior is None:
                found = _in_scope(request, found)
            outcomes.append(_judge(conn, request, found, prior))
        except sa.exc.DataError:
            raise _OneByOne() from None  # a value the database refused: tick by tick
        except sa.exc.DBAPIError:
            raise  # the connection or the database itself: the whole batch is in doubt
        except Exception as exc:  # refused (TickRefused, NotFound, ...) or a bad value
            outcomes.append(exc)
    return outcomes


def _answered(
    outcomes: Sequence[TickResult | _Accepted | Exception], ids_of: Mapping[tuple[str, str], int]
) -> tuple[list[TickResult | Exception], list[audit.NewEvent]]:
    """The answers of a judged batch whose completions are ``ids_of`` (by sender and
    token), and its events in order."""
    results: list[TickResult | Exception] = []
    events: list[audit.NewEvent] = []
    for o in outcomes:
        if isinstance(o, _Accepted):
            result, made = _recorded(o, ids_of[(o.request.by, o.request.token)])
            results.append(result)
            events.extend(made)
        else:
            results.append(o)
    return results, events


def _tick_batch(
    conn: sa.Connection, requests: Sequence[TickRequest]
) -> tuple[list[TickResult | Exception], list[audit.NewEvent]]:
    """SQLite: a batch of ticks in a few statements, whatever its size, inside the
    caller's write transaction: the batch judged (``_judge_batch``, its obligations
    locked), then every move in one executemany and every completion in another (then
    their ids, by token).

    A move that lost its compare-and-swap or a token that another process inserted
    meanwhile raises ``_OneByOne``: the transaction is rolled back and the batch is
    written tick by tick instead, by the same rule.
    """
    outcomes = _judge_batch(conn, requests, _TickSql.obligations)
    accepted = [o for o in outcomes if isinstance(o, _Accepted)]
    ids_of: dict[tuple[str, str], int] = {}
    if accepted:
        moved = conn.execute(_TickSql.move, [a.move for a in accepted]).rowcount
        if moved != len(accepted):
            raise _OneByOne()
        try:
            conn.execute(_TickSql.records, [a.record for a in accepted])
        except (sa.exc.IntegrityError, sa.exc.DataError):
            raise _OneByOne() from None
        tokens = [a.request.token for a in accepted]
        ids_of = {
            (r.by, r.token): r.id for r in conn.execute(_TickSql.recorded, {"tokens": tokens})
        }
    return _answered(outcomes, ids_of)


def _pg_tick_batch(
    conn: sa.Connection, requests: Sequence[TickRequest]
) -> list[TickResult | Exception]:
    """PostgreSQL: a batch of ticks judged and built before any transaction, then written
    in one statement that is its own transaction (``_PG_WRITE_BATCH``).

    ``conn`` is in autocommit. The reads (the obligations, unlocked; earlier tokens; ids
    for the completions) each see what was committed when they ran; every answer, row,
    event and array parameter is built from them before the write, so the rows are
    locked only while the server runs the write and its commit, never while this thread
    waits for the GIL or works in Python. What was judged holds when the write succeeds:
    each move is a compare-and-swap on the obligation's state and ``state_changed_at``
    (which every move of an obligation sets), and a token inserted meanwhile breaks the
    unique constraint; either undoes the whole statement and raises ``_OneByOne``, and
    the batch is ticked one by one under locks, by the same rule. An answer that changes
    nothing (already done, refused) is as true as the read it was judged on.
    """
    outcomes = _judge_batch(conn, requests, _TickSql.seen)
    accepted = [o for o in outcomes if isinstance(o, _Accepted)]
    if not accepted:
        return _answered(outcomes, {})[0]
    ids = conn.execute(_TickSql.completion_ids, {"n": len(accepted)}).scalars().all()
    ids_of = {(a.request.by, a.request.token): i for a, i in zip(accepted, ids, strict=True)}
    results, events = _answered(outcomes, ids_of)
    records = [{"id": i, **a.record} for a, i in zip(accepted, ids, strict=True)]
    moves = [{**a.move, "seen_at": a.ob.state_changed_at} for a in accepted]
    params: dict[str, Any] = {"moving": len(accepted)}
    for name in ("ob_id", "from_state", "seen_at", "to_state", "changed_at", "done_at"):
        params[f"m_{name}"] = [m[name] for m in moves]
    for name, values in as_arrays(
        conn, _COMPLETIONS, records, ("id", *_TickSql.record_columns)
    ).items():
        params[f"c_{name}"] = values
    for name, values in audit.unchained_arrays(conn, events).items():
        params[f"e_{name}"] = values
    try:
        conn.exec_driver_sql(_PG_WRITE_BATCH, params)
    except (sa.exc.IntegrityError, sa.exc.DataError):
        raise _OneByOne() from None  # a compare-and-swap lost, a token taken: nothing written
    return results


def _tick_in_savepoint(
    conn: sa.Connection, request: TickRequest
) -> tuple[TickResult, list[audit.NewEvent]] | Exception:
    """One tick of a batch in its own SAVEPOINT: a refusal undoes this tick only.

    A refusal comes back as the exception (for that request's future); an error of the
    database itself (``OperationalError``: locked, connection lost) is raised, because
    then the whole batch's transaction is in doubt and every request must hear of it.
    """
    for _ in range(5):
        savepoint = conn.begin_nested()
        try:
            done = _tick_in(conn, request)
        except (_Raced, sa.exc.IntegrityError):
            # CAS lost or the token inserted by another process: look again from scratch
            savepoint.rollback()
            continue
        except sa.exc.DBAPIError as exc:
            if not isinstance(exc, sa.exc.DataError):
                raise  # the connection or the database itself: the whole batch is in doubt
            savepoint.rollback()
            return exc
        except Exception as exc:  # refused (TickRefused, NotFound, ...) or a bad value
            savepoint.rollback()
            return exc
        savepoint.commit()
        return done
    return Conflict(f"obligation {request.obligation_id} kept changing under this tick; try again")


@dataclass
class _Pending:
    request: TickRequest
    future: Future[TickResult]
    #: the event loop's own future of ``submit_awaitable`` (answered in ``_wake``)
    awaited: asyncio.Future[TickResult] | None = None


class TickWriter:
    """Group commit for ticks: one thread writes every waiting tick in one transaction.

    Under many concurrent clients, a transaction per tick costs a ``BEGIN``, a
    ``COMMIT`` (an fsync) and a queue in SQLite's busy handler (which sleeps up to
    100 ms between retries) per tick, and a worker thread per waiting request. Here
    requests queue in Python; the thread takes all that wait (up to ``max_batch``) and
    runs each in its own SAVEPOINT of one write transaction, so a refused tick leaves
    the others of its batch alone. Nothing waits for company: a lone tick is written at
    once, batches form only while a transaction is already running.

    A request's future is resolved only after COMMIT; when the transaction fails as a
    whole (locked past the retries, the commit itself failing) every request of the
    batch gets that exception and nothing of the batch is recorded. ``close`` stops
    taking requests and writes what was taken before returning. The batch's audit
    events are appended once, after its ticks and in their order: on SQLite chained in
    the batch's transaction (one chain-head update per batch), on PostgreSQL unchained,
    and linked after the commit by its chainer thread (``_chain_loop``). On PostgreSQL a
    batch is judged before its transaction, which is one statement (``_pg_tick_batch``).
    SAVEPOINTs (a batch tick by tick) work on SQLite inside ``BEGIN IMMEDIATE``
    (``make_engine`` issues the ``BEGIN`` itself, so pysqlite's own transaction handling
    stays out of the way) and on PostgreSQL; ``tests/test_tick_batch.py`` runs on both.
    """

    def __init__(self, engine: sa.Engine, *, max_batch: int = 64, start: bool = True) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tick-writer", daemon=True)
        #: PostgreSQL: the writer thread's own connection, kept between batches
        self._held: sa.Connection | None = None
        #: PostgreSQL: the chainer thread, woken after each batch (``_chain_loop``)
        self._chainer: threading.Thread | None = None
        if engine.dialect.name == "postgresql":
            self._chainer = threading.Thread(
                target=self._chain_loop, name="tick-chainer", daemon=True
            )
        self._to_chain = threading.Event()
        self._chaining_stops = False
        #: batches written so far (by the writer thread; the chainer compares)
        self._written = 0
        if start:
            self.start()

    def start(self) -> None:
        """Start writing (a writer made with ``start=False`` only queues until then)."""
        self._thread.start()
        if self._chainer is not None:
            self._chainer.start()

    def submit(self, request: TickRequest) -> Future[TickResult]:
        fut: Future[TickResult] = Future()
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down; tick again in a moment")
            self._queue.put(_Pending(request, fut))
        return fut

    def submit_awaitable(self, request: TickRequest) -> asyncio.Future[TickResult]:
        """Submit from the running event loop: its future is answered with the others of
        the batch, in one call into the loop per batch (``_wake``).

        ``asyncio.wrap_future`` would wake the loop once per tick (a write to its
        self-pipe, a turn of the loop, two callbacks each way); a batch of fifty ticks
        then cost fifty wake-ups where one does. Cancelling the awaitable (a client gone)
        cancels the tick if it is not being written yet, as ``wrap_future`` did.
        """
        awaited: asyncio.Future[TickResult] = asyncio.get_running_loop().create_future()
        pending = _Pending(request, Future(), awaited)
        awaited.add_done_callback(
            lambda done: pending.future.cancel() if done.cancelled() else None
        )
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down; tick again in a moment")
            self._queue.put(pending)
        return awaited

    def tick(self, request: TickRequest) -> TickResult:
        """Submit and wait (for threads; the web awaits the future instead)."""
        return self.submit(request).result()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, write every one already taken, end the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
            if self._thread.ident is None:  # never started: write what it holds all the same
                self.start()
        self._thread.join(timeout)
        if self._chainer is not None:  # one last round for the last batch's events
            self._chaining_stops = True
            self._to_chain.set()
            self._chainer.join(timeout)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_held()

    @contextmanager
    def _autocommit(self) -> Iterator[sa.Connection]:
        """PostgreSQL: the writer thread's own connection, in autocommit, for a batch.

        The thread keeps it for its life rather than taking one from the pool per batch:
        a checkout runs ``pool_pre_ping`` (a round trip) and the return a reset, both per
        batch, and the writer is the only user of it anyway. In autocommit each statement
        is its own transaction: the batch's reads lock nothing, and its one write
        (``_pg_tick_batch``) holds its rows only while the server runs it. Any failure but
        ``_OneByOne`` (the statement undone, the connection sound) drops the connection
        (a restarted server, a statement in doubt); the batch's retry (``retrying``) and
        every later batch take a new one.
        """
        if self._held is None:
            self._held = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn = self._held
        try:
            with conn.begin():  # sends nothing: autocommit
                yield conn
        except _OneByOne:
            raise
        except BaseException:
            self._drop_held()
            raise

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.invalidate()  # never back to the pool: it may be broken or mid-transaction
                held.close()
            except Exception:  # already gone with the server: nothing left to release
                log.debug("tick writer: dropping its connection failed", exc_info=True)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            try:
                self._write(batch)
            except Exception:  # never leave a caller waiting for ever, nor the thread dead
                log.exception("tick writer: a batch failed unexpectedly")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(
                            Unavailable("the tick was not recorded; send it again")
                        )

    def _write(self, batch: list[_Pending]) -> None:
        """Write a batch, then answer every awaitable of it (``_wake``), whatever happened,
        then wake the chainer to link its events (``_chain_loop``)."""
        try:
            self._write_batch(batch)
        finally:
            for p in batch:
                if not p.future.done():  # a batch that failed unexpectedly (``_run`` logs it)
                    p.future.set_exception(Unavailable("the tick was not recorded; send it again"))
            _wake(batch)
            self._written += 1
            self._to_chain.set()

    def _chain_loop(self) -> None:
        """PostgreSQL: link the committed events (this writer's and any other's) to the
        audit chain, in transactions of their own, on a thread of their own.

        A batch's transaction never takes the chain's head lock, so three daemons' writers
        commit side by side (sharing PostgreSQL's group commit) instead of queueing on one
        row from append to fsync; and the writer goes on to its next batch while this
        thread waits for the chaining's fsync. Batches written meanwhile are linked in
        the next round, together. If another chainer holds the head, this one leaves at
        once: that one, the next round, or the leader's backstop links them.
        """
        conn: sa.Connection | None = None
        linked_after = 0  # batches written before the last round began
        while True:
            self._to_chain.wait()
            self._to_chain.clear()
            last, written = self._chaining_stops, self._written
            if written == linked_after:  # nothing new since the last round
                if last:
                    break
                continue
            linked_after = written
            try:
                if conn is None:
                    conn = self.engine.connect()
                audit.chain(conn, look=False)
            except Exception as exc:  # the events stay pending: the next chainer links them
                # a database restarting is one line, as everywhere; a bug keeps its traceback
                log_failure(log, "tick writer: linking the audit chain failed", exc)
                if conn is not None:
                    with suppress(Exception):
                        conn.invalidate()
                        conn.close()
                    conn = None
            if last:
                break
        if conn is not None:
            conn.close()

    def _write_batch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return

        requests = [p.request for p in live]

        def in_bulk() -> list[TickResult | Exception]:
            if self.engine.dialect.name == "postgresql":
                with self._autocommit() as conn:
                    return _pg_tick_batch(conn, requests)
            with write(self.engine) as conn:
                outcomes, events = _tick_batch(conn, requests)
                audit.append(conn, events, defer=True)
            return outcomes

        def one_by_one() -> list[TickResult | Exception]:
            outcomes: list[TickResult | Exception] = []
            events: list[audit.NewEvent] = []
            with write(self.engine) as conn:
                for request in requests:
                    done = _tick_in_savepoint(conn, request)
                    if isinstance(done, Exception):
                        outcomes.append(done)
                    else:
                        outcomes.append(done[0])
                        events.extend(done[1])
                audit.append(conn, events, defer=True)
            return outcomes

        try:
            try:
                outcomes = retrying(in_bulk, what="tick batch", idempotent=True)
            except _OneByOne:
                outcomes = retrying(one_by_one, what="tick batch", idempotent=True)
        except Exception as exc:
            for p in live:
                p.future.set_exception(exc)
            return
        for p, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Exception):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)


def _wake(batch: Sequence[_Pending]) -> None:
    """Hand the batch's answers to the event loops awaiting them: one call per loop."""
    waiting: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
    for p in batch:
        if p.awaited is not None:
            waiting.setdefault(p.awaited.get_loop(), []).append(p)
    for loop, answered in waiting.items():
        try:
            loop.call_soon_threadsafe(_answer, answered)
        except RuntimeError:  # the loop is closed: nobody awaits these any more
            log.debug("tick writer: %d answers for a closed event loop", len(answered))


def _answer(answered: Sequence[_Pending]) -> None:
    """On the event loop: each awaitable takes its tick's outcome (unless cancelled)."""
    for p in answered:
        awaited = p.awaited
        if awaited is None or awaited.done():
            continue
        if p.future.cancelled():
            awaited.cancel()
        elif (error := p.future.exception()) is not None:
            awaited.set_exception(error)
        else:
            awaited.set_result(p.future.result())


def _bounds(value: Any) -> tuple[float | None, float | None] | None:
    return None if value is None else (value[0], value[1])


class _Raced(Exception):
    pass


def _market_zone(conn: sa.Connection, market_id: str) -> ZoneInfo:
    name = conn.execute(sa.select(MarketRow.timezone).where(MarketRow.id == market_id)).scalar_one()
    return ZoneInfo(name)
