"""The rectification loop in the ledger: problems raised, rectified, re-inspected.

Each function is one unit of work in its own transaction, with compare-and-swap state
changes and an audit event, like ``tick`` and ``sweep``. Raising is idempotent through
``source_key`` (an obligation's miss raises its problem once, a spreadsheet row once).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain import inputs
from marketcare.domain.obligations import State, natural_key
from marketcare.domain.problems import (
    Category,
    ProblemState,
    Rate,
    TransitionRefused,
    can_assign,
    check_transition,
    deadline_errors,
    found_when,
    is_overdue,
    rectification_rate,
    reinspection_task_id,
    text_errors,
    time_errors,
)
from marketcare.domain.schedules import Schedule
from marketcare.domain.vocabulary import REINSPECTION
from marketcare.errors import BadInput, Conflict, NotFound
from marketcare.files import refuse_zip_bomb
from marketcare.ledger import audit, evidence
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import (
    AreaRow,
    Completion,
    LedgerState,
    MarketRow,
    Obligation,
    ProblemRow,
)

log = logging.getLogger(__name__)

#: the office re-inspects within this time of a rectification; then it is late, then missed
REINSPECT_DUE = timedelta(days=2)
REINSPECT_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class NewProblem:
    market_id: str
    category: str
    description: str
    found_by: str
    found_at: datetime
    deadline: datetime
    area_id: str | None = None
    source_key: str | None = None
    obligation_id: int | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    inspection_result_id: int | None = None


def token_key(channel: str, owner: str, token: str) -> str:
    """The ``source_key`` of a problem reported with a client token.

    A token is scoped to who sent it (``owner``: a user name, or the CLI's ``--found-by``)
    and to the channel, so two people's tokens never meet; the same person sending the
    same token for a different problem is a conflict (``add_in``).
    """
    token = inputs.check_text(token, "token", limit=inputs.TOKEN_MAX, required=True)
    who = hashlib.sha256(owner.strip().encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{channel}:{who}:{token}"


def validate(conn: sa.Connection, p: NewProblem, *, now: datetime) -> list[tuple[str, str]]:
    """Every field error of a new problem as (field, message); empty when it is valid.

    All of them, not the first: a spreadsheet row with three bad cells is told about three.
    """
    errors: list[tuple[str, str]] = text_errors(
        {
            "market": p.market_id,
            "area": p.area_id,
            "description": p.description.strip(),
            "found_by": p.found_by.strip(),
        }
    )
    too_long = {f for f, _m in errors}
    if "market" in too_long:
        pass  # said already; an id that long cannot exist
    elif conn.execute(sa.select(MarketRow.id).where(MarketRow.id == p.market_id)).first() is None:
        known = ", ".join(conn.execute(sa.select(MarketRow.id).order_by(MarketRow.id)).scalars())
        what = f"unknown market {p.market_id!r}" if p.market_id else "say which market"
        errors.append(("market", f"{what} (known: {known})"))
    elif (
        p.area_id is not None
        and "area" not in too_long
        and conn.execute(
            sa.select(AreaRow.id).where(AreaRow.market_id == p.market_id, AreaRow.id == p.area_id)
        ).first()
        is None
    ):
        errors.append(("area", f"market {p.market_id!r} has no area {p.area_id!r}"))
    if p.category not in {c.value for c in Category}:
        errors.append(
            ("category", f"{p.category!r} is not one of {', '.join(c.value for c in Category)}")
        )
    for name, value in (("description", p.description), ("found_by", p.found_by)):
        if inputs.undecodable(value):
            errors.append((name, "not valid UTF-8 text"))
    if not p.description.strip():
        errors.append(("description", "a problem needs a description"))
    if not p.found_by.strip():
        errors.append(("found_by", "say who found it"))
    errors += time_errors(found_at=p.found_at, deadline=p.deadline, now=now)
    order = ("market", "area", "category", "description", "found_at", "found_by", "deadline")
    return sorted(errors, key=lambda fm: order.index(fm[0]) if fm[0] in order else len(order))


def add(
    engine: sa.Engine, problem: NewProblem, *, now: datetime, actor: str | None = None
) -> tuple[int, bool]:
    """Record a problem (once per ``source_key``); returns (id, created)."""

    def step() -> tuple[int, bool]:
        with write(engine) as conn:
            return add_in(conn, problem, now=now, actor=actor)

    return retrying(step, what="add problem")


def add_in(
    conn: sa.Connection, problem: NewProblem, *, now: datetime, actor: str | None = None
) -> tuple[int, bool]:
    errors = validate(conn, problem, now=now)
    if errors:
        raise BadInput.of_fields(errors)
    if problem.source_key is not None:
        existing = conn.execute(
            sa.select(
                ProblemRow.id,
                ProblemRow.market_id,
                ProblemRow.area_id,
                ProblemRow.category,
                ProblemRow.description,
            ).where(ProblemRow.source_key == problem.source_key)
        ).one_or_none()
        if existing is not None:
            same = (
                existing.market_id,
                existing.area_id,
                existing.category,
                existing.description,
            ) == (
                problem.market_id,
                problem.area_id,
                problem.category,
                problem.description.strip(),
            )
            if not same:
                raise Conflict(
                    "token: this token was already used for another problem; send a new one",
                    "token",
                )
            return int(existing.id), False
    pid = conn.execute(
        dialect_insert(conn, ProblemRow)
        .values(
            market_id=problem.market_id,
            area_id=problem.area_id,
            category=problem.category,
            description=problem.description.strip(),
            found_at=problem.found_at,
            found_by=problem.found_by.strip(),
            deadline=problem.deadline,
            state=ProblemState.OPEN.value,
            reopened=0,
            source_key=problem.source_key,
            obligation_id=problem.obligation_id,
            evidence={"items": problem.evidence},
            created_at=now,
            inspection_result_id=problem.inspection_result_id,
        )
        .returning(ProblemRow.id)
    ).scalar_one()
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=actor or problem.found_by,
                action=RAISED,
                problem_id=pid,
                obligation_id=problem.obligation_id,
                to_state=ProblemState.OPEN.value,
                details={
                    "market": problem.market_id,
                    "area": problem.area_id,
                    "category": problem.category,
                    "deadline": problem.deadline.isoformat(),
                    "source": problem.source_key,
                    "description": problem.description.strip(),
                    "found_at": problem.found_at.isoformat(),
                    "found_by": problem.found_by.strip(),
                    "evidence": problem.evidence,
                },
            )
        ],
    )
    return int(pid), True


def _load(conn: sa.Connection, problem_id: int) -> Any:
    row = conn.execute(
        sa.select(ProblemRow).where(ProblemRow.id == problem_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"problem {problem_id} does not exist")
    return row


#: the audit action each move records
_ACTIONS = {
    "rectify": "problem_rectified",
    "verify": "problem_verified",
    "reopen": "problem_reopened",
}
#: the audit actions of a problem's own writes: its raising, then its moves and
#: assignments (each move's ``from_state`` is the state the problem left); those that may
#: move the deadline record the new one as ``details["deadline"]`` (None: not moved)
RAISED: Final = "problem_raised"
ASSIGNED: Final = "problem_assigned"
CHANGES: Final = frozenset({*_ACTIONS.values(), ASSIGNED})
SETS_DEADLINE: Final = frozenset({RAISED, ASSIGNED, _ACTIONS["reopen"]})


def _move(
    conn: sa.Connection,
    row: Any,
    action: str,
    values: dict[str, Any],
    *,
    by: str,
    now: datetime,
    details: dict[str, Any],
) -> ProblemState:
    """Move a problem by the state machine (compare-and-swap) and log the move."""
    for fld, msg in text_errors({"by": by}):
        raise BadInput(f"{fld}: {msg}", fld)
    try:
        target = check_transition(ProblemState(row.state), action)
    except TransitionRefused as exc:
        raise Conflict(f"problem {row.id}: {exc}") from None
    changed = conn.execute(
        sa.update(ProblemRow)
        .where(ProblemRow.id == row.id, ProblemRow.state == row.state)
        .values(state=target.value, **values)
    ).rowcount
    if changed != 1:
        raise Conflict(f"problem {row.id} changed meanwhile; look again and retry")
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=by,
                action=_ACTIONS[action],
                problem_id=row.id,
                from_state=row.state,
                to_state=target.value,
                details=details,
            )
        ],
    )
    return target


def rectify(
    engine: sa.Engine,
    *,
    problem_id: int,
    by: str,
    note: str,
    now: datetime,
    evidence: Sequence[dict[str, Any]] = (),
) -> int:
    """The market reports the problem fixed; this schedules the office's re-inspection.

    Returns the id of the re-inspection obligation.
    """
    by = inputs.check_text(by, "by", limit=inputs.PERSON_MAX, required=True, what="name")
    note = inputs.check_text(note, "note", limit=inputs.NOTE_MAX)
    if not note:
        raise BadInput("note: say what was done", "note")

    def step() -> int:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            try:  # refuse a wrong move before anything is written (a double submit)
                check_transition(ProblemState(row.state), "rectify")
            except TransitionRefused as exc:
                raise Conflict(f"problem {row.id}: {exc}") from None
            kept = list((row.evidence or {}).get("items", []))
            ob_id = _schedule_reinspection(conn, row, now=now)
            _move(
                conn,
                row,
                "rectify",
                {
                    "rectified_at": now,
                    "rectified_by": by,
                    "rectify_note": note,
                    "evidence": {"items": kept + list(evidence)},
                    "reinspection_id": ob_id,
                },
                by=by,
                now=now,
                details={"note": note, "reinspection": ob_id, "evidence": list(evidence)},
            )
            return ob_id

    return retrying(step, what="rectify")


def _schedule_reinspection(conn: sa.Connection, row: Any, *, now: datetime) -> int:
    version_id = conn.execute(
        sa.select(LedgerState.version_id).where(LedgerState.id == 1)
    ).scalar_one_or_none()
    if version_id is None:
        raise Conflict("the ledger has no schedule yet; run marketcare init")
    zone = conn.execute(
        sa.select(MarketRow.timezone).where(MarketRow.id == row.market_id)
    ).scalar_one()
    local = now.astimezone(ZoneInfo(zone)).replace(tzinfo=None, second=0, microsecond=0)
    task_id = reinspection_task_id(row.id, row.reopened + 1)
    due = now + REINSPECT_DUE
    result = conn.execute(
        dialect_insert(conn, Obligation)
        .values(
            natural_key=natural_key(row.market_id, row.area_id, task_id, local),
            market_id=row.market_id,
            area_id=row.area_id,
            task_id=task_id,
            kind=REINSPECTION,
            local_date=local.strftime("%Y-%m-%d"),
            occurrence=local.strftime("%Y-%m-%dT%H:%M"),
            opens_at=now,
            due_at=due,
            missed_at=due + REINSPECT_GRACE,
            state=State.OPEN.value,
            state_changed_at=now,
            version_id=version_id,
            created_at=now,
        )
        .returning(Obligation.id)
    ).scalar_one()
    return int(result)


def _close_reinspection(
    conn: sa.Connection, row: Any, *, by: str, now: datetime, passed: bool, note: str | None
) -> None:
    """Complete the problem's re-inspection: done (or late) by the officer who decided,
    with the result kept as the completion's ``passed`` item, like any other record."""
    if row.reinspection_id is None:
        return
    ob = conn.execute(sa.select(Obligation).where(Obligation.id == row.reinspection_id)).one()
    if State(ob.state) not in (State.OPEN, State.UPCOMING, State.MISSED):
        return
    outcome = State.DONE if now <= ob.due_at else State.LATE
    result = "通过" if passed else "未通过"
    conn.execute(
        sa.update(Obligation)
        .where(Obligation.id == ob.id, Obligation.state == ob.state)
        .values(
            state=outcome.value,
            state_changed_at=now,
            completed_at=now,
            note=result,
        )
    )
    token = f"reinspection:{row.id}:{ob.id}"
    items: dict[str, Any] = {"passed": passed}
    failures: dict[str, Any] = {} if passed else {"passed": False}
    completion_note = f"{result}：{note}" if note else result
    completion_id = conn.execute(
        sa.insert(Completion)
        .values(
            obligation_id=ob.id,
            token=token,
            by=by,
            at=now,
            outcome=outcome.value,
            readings={},
            items=items,
            failures=failures,
            note=completion_note,
            arrived_at=now,
        )
        .returning(Completion.id)
    ).scalar_one()
    # every fact of the completion, as a tick's event holds them (``audit verify``)
    timing = {
        "at": now.isoformat(),
        "arrived_at": now.isoformat(),
        "phone_at": None,
        "phone_sent_at": None,
        "time_basis": "arrival",
    }
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=by,
                action="completed",
                obligation_id=ob.id,
                problem_id=row.id,
                from_state=ob.state,
                to_state=outcome.value,
                details={
                    "reinspection": "passed" if passed else "failed",
                    "result": result,
                    "completion_id": completion_id,
                    "token": token,
                    "readings": {},
                    "items": items,
                    "failures": failures,
                    "note": completion_note,
                    "evidence": [],
                    **timing,
                },
            )
        ],
    )


def verify(
    engine: sa.Engine, *, problem_id: int, by: str, now: datetime, note: str | None = None
) -> None:
    """The office re-inspected and the rectification holds: the problem is closed."""
    by = inputs.check_text(by, "by", limit=inputs.PERSON_MAX, required=True, what="name")
    if note is not None:
        note = inputs.check_text(note, "note", limit=inputs.NOTE_MAX) or None

    def step() -> None:
        with write(engine) as conn:
            verify_in(conn, _load(conn, problem_id), by=by, now=now, note=note)

    retrying(step, what="verify")


def verify_in(conn: sa.Connection, row: Any, *, by: str, now: datetime, note: str | None) -> None:
    """``verify`` inside the caller's transaction (an inspection re-checks its items)."""
    _move(
        conn,
        row,
        "verify",
        {"verified_at": now, "verified_by": by},
        by=by,
        now=now,
        details={"note": note},
    )
    _close_reinspection(conn, row, by=by, now=now, passed=True, note=note)


def reopen(
    engine: sa.Engine,
    *,
    problem_id: int,
    by: str,
    note: str,
    now: datetime,
    deadline: datetime | None = None,
) -> None:
    """The re-inspection failed: back to open (the count of reopenings goes up)."""
    by = inputs.check_text(by, "by", limit=inputs.PERSON_MAX, required=True, what="name")
    note = inputs.check_text(note, "note", limit=inputs.NOTE_MAX)
    if not note:
        raise BadInput("note: say why the rectification did not pass", "note")

    def step() -> None:
        with write(engine) as conn:
            reopen_in(conn, _load(conn, problem_id), by=by, note=note, now=now, deadline=deadline)

    retrying(step, what="reopen")


def reopen_in(
    conn: sa.Connection,
    row: Any,
    *,
    by: str,
    note: str,
    now: datetime,
    deadline: datetime | None = None,
) -> None:
    """``reopen`` inside the caller's transaction."""
    _check_deadline(deadline, row, now)
    values: dict[str, Any] = {"reopened": row.reopened + 1, "rectified_at": None}
    if deadline is not None:
        values["deadline"] = deadline
    _move(
        conn,
        row,
        "reopen",
        values,
        by=by,
        now=now,
        details={"note": note, "deadline": deadline.isoformat() if deadline else None},
    )
    _close_reinspection(conn, row, by=by, now=now, passed=False, note=note)


def assign(
    engine: sa.Engine,
    *,
    problem_id: int,
    by: str,
    to: str,
    now: datetime,
    deadline: datetime | None = None,
) -> None:
    """The office names who must rectify a problem (and may move its deadline).

    Not a state change: an open problem stays open; assigning again replaces the name.
    A verified problem is closed and cannot be assigned.
    """
    to = inputs.check_text(to, "assigned_to", limit=inputs.ASSIGNEE_MAX)
    if not to:
        raise BadInput("assigned_to: say who must rectify it", "assigned_to")
    for fld, msg in text_errors({"assigned_to": to}):
        raise BadInput(f"{fld}: {msg}", fld)

    def step() -> None:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            if not can_assign(row.state):
                raise Conflict(f"problem {problem_id} is verified (closed); nothing to assign")
            _check_deadline(deadline, row, now)
            values: dict[str, Any] = {"assigned_to": to, "assigned_at": now}
            if deadline is not None:
                values["deadline"] = deadline
            conn.execute(sa.update(ProblemRow).where(ProblemRow.id == row.id).values(**values))
            audit.append(
                conn,
                [
                    audit.NewEvent(
                        at=now,
                        actor=by,
                        action=ASSIGNED,
                        problem_id=row.id,
                        from_state=row.state,
                        to_state=row.state,
                        details={
                            "to": to,
                            "deadline": deadline.isoformat() if deadline else None,
                        },
                    )
                ],
            )

    retrying(step, what="assign")


def _check_deadline(deadline: datetime | None, row: Any, now: datetime) -> None:
    if deadline is None:
        return
    for fld, msg in deadline_errors(deadline, found_at=row.found_at, now=now):
        raise BadInput(f"{fld}: {msg}", fld)


def listing(
    engine: sa.Engine,
    *,
    now: datetime,
    markets: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    overdue: bool = False,
) -> list[Any]:
    """Problems, overdue first then by deadline; each row has an ``overdue`` flag."""
    with read(engine) as conn:
        stmt = sa.select(ProblemRow).order_by(ProblemRow.deadline, ProblemRow.id)
        if markets:
            stmt = stmt.where(ProblemRow.market_id.in_(list(markets)))
        if states:
            stmt = stmt.where(ProblemRow.state.in_(list(states)))
        if overdue:  # only narrows the read: ``is_overdue`` below decides
            stmt = stmt.where(ProblemRow.state != ProblemState.VERIFIED.value)
        rows = conn.execute(stmt).all()
    flagged = [(is_overdue(r.state, deadline=r.deadline, now=now), r) for r in rows]
    if overdue:
        flagged = [(o, r) for o, r in flagged if o]
    flagged.sort(key=lambda fr: (not fr[0], fr[1].deadline, fr[1].id))
    return [_Flagged(r, o) for o, r in flagged]


class _Flagged:
    """A problem row plus whether it is overdue now."""

    def __init__(self, row: Any, overdue: bool) -> None:
        self._row = row
        self.overdue = overdue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def rates(
    conn: sa.Connection,
    *,
    start: datetime,
    end: datetime,
    as_of: datetime,
    markets: Sequence[str] | None = None,
) -> dict[str, Rate]:
    """Rectification rate per market for problems due in ``[start, end)``, by the one rule
    in ``problems.rectification_rate``."""
    stmt = sa.select(
        ProblemRow.market_id, ProblemRow.state, ProblemRow.deadline, ProblemRow.verified_at
    ).where(ProblemRow.deadline >= start, ProblemRow.deadline < end)
    if markets:
        stmt = stmt.where(ProblemRow.market_id.in_(list(markets)))
    by_market: dict[str, list[tuple[str, datetime, datetime | None]]] = {}
    for r in conn.execute(stmt).all():
        by_market.setdefault(r.market_id, []).append((r.state, r.deadline, r.verified_at))
    return {
        m: rectification_rate(items, start=start, end=end, as_of=as_of)
        for m, items in by_market.items()
    }


# ---------------------------------------------------------------- evidence and spreadsheets


def store_evidence(path: Path, evidence_dir: Path) -> dict[str, Any]:
    """Keep a photo given on the command line (``evidence.store_file``)."""
    return evidence.store_file(path, evidence_dir)


HEADERS: dict[str, tuple[str, ...]] = {
    "market": ("market", "市场", "市场编号"),
    "area": ("area", "区域", "区域编号"),
    "category": ("category", "类别", "问题类别"),
    "description": ("description", "问题描述", "描述"),
    "found_at": ("found_at", "发现时间", "督查时间"),
    "found_by": ("found_by", "发现人", "督查人"),
    "deadline": ("deadline", "整改期限", "限期"),
}
REQUIRED = ("market", "category", "description", "found_by", "deadline")
CATEGORY_WORDS = {
    "sanitation": "sanitation",
    "卫生": "sanitation",
    "环境卫生": "sanitation",
    "repair": "repair",
    "设施维修": "repair",
    "维修": "repair",
    "设施": "repair",
    "pest": "pest",
    "病媒": "pest",
    "虫害": "pest",
    "灭四害": "pest",
    "order": "order",
    "秩序": "order",
    "市场秩序": "order",
}


class ImportRejected(BadInput):
    """A spreadsheet had bad rows; every one is listed as ``row N, column X (header): …``."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(
            f"{path}: {len(errors)} problem(s); nothing was imported (fix them, or use --skip-bad):\n"
            + "\n".join(f"  {e}" for e in errors)
        )


@dataclass
class ImportResult:
    imported: int = 0
    already: int = 0
    #: every error of the rows skipped (a row may have several)
    skipped: list[str] = field(default_factory=list)
    #: how many rows were skipped
    bad_rows: int = 0


def import_xlsx(
    engine: sa.Engine, path: Path, *, now: datetime, skip_bad: bool = False, actor: str = "import"
) -> ImportResult:
    """Import inspection findings from a spreadsheet: all rows or none (unless ``skip_bad``).

    Row numbers are the spreadsheet's own (the header is row 1). Importing the same file
    again adds nothing: each row's problem is keyed by the file's SHA-256 and the row number.
    """
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    if not path.is_file():
        raise BadInput(f"{path}: no such file (or not a file)", "file")
    data = path.read_bytes()
    file_key = hashlib.sha256(data).hexdigest()[:16]
    refuse_zip_bomb(data, str(path))
    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not a workbook
        raise BadInput(
            f"{path}: not an Excel .xlsx workbook: {_what_file_is(data, exc)}; open it in "
            "Excel, WPS or LibreOffice and save it as an Excel Workbook (.xlsx)"
        ) from None
    if not wb.worksheets:
        raise BadInput(f"{path}: the workbook has no sheet of cells (only charts)")
    ws = wb.worksheets[0]
    rows = ws.iter_rows()
    header_cells = next(rows, None)
    if header_cells is None:
        raise BadInput(
            f"{path}: the first sheet ({ws.title!r}) is empty; row 1 must hold the column headers"
        )
    header = tuple(c.value for c in header_cells)
    columns: dict[str, int] = {}
    for idx, title in enumerate(header):
        key = _header_key(title)
        if key is not None and key not in columns:
            columns[key] = idx
    missing = [k for k in REQUIRED if k not in columns]
    if missing:
        names = "; ".join(f"{k} ({' / '.join(HEADERS[k][1:])})" for k in missing)
        found = ", ".join(repr(_text(t)) for t in header if _text(t)) or "nothing"
        raise BadInput(
            f"{path}: the first sheet ({ws.title!r}), row 1: missing column(s): {names}; "
            f"row 1 holds {found[:300]}"
        )
    errors: list[str] = []
    bad_rows = 0
    good: list[tuple[int, NewProblem]] = []
    blanks = _Blanks(data)
    with read(engine) as conn:
        zones = {
            r.id: r.timezone
            for r in conn.execute(sa.select(MarketRow.id, MarketRow.timezone)).all()
        }
        for number, cells in enumerate(rows, start=2):
            values = tuple(_cell_value(c) for c in cells)
            if all(v is None or str(v).strip() == "" for v in values):
                continue

            def cell(key: str, values: tuple[Any, ...] = values) -> Any:
                i = columns.get(key)
                return None if i is None or i >= len(values) else values[i]

            def where(key: str, number: int = number) -> str:
                if key not in columns:
                    return f"row {number}"
                column = get_column_letter(columns[key] + 1)
                return f"row {number}, column {column} ({header[columns[key]]})"

            unreadable: dict[str, str] = {}
            market = _text(cell("market"))
            zone = ZoneInfo(zones.get(market, "UTC")) if market else ZoneInfo("UTC")
            category_raw = _text(cell("category"))
            category = CATEGORY_WORDS.get(category_raw, category_raw)
            found_at, err = parse_when(cell("found_at"), zone, end_of_day=False, default=now)
            if err:
                unreadable["found_at"] = err
            deadline, err = parse_when(cell("deadline"), zone, end_of_day=True, default=None)
            if err:
                unreadable["deadline"] = err
            # a time that could not be read stands in just beside the other one, so the
            # other is still checked on its own and nothing is said twice
            if deadline is None:
                deadline = (found_at or now) + timedelta(seconds=1)
            if found_at is None:
                found_at = deadline - timedelta(seconds=1)
            problem = NewProblem(
                market_id=market,
                area_id=_text(cell("area")) or None,
                category=category,
                description=_text(cell("description")),
                found_by=_text(cell("found_by")),
                found_at=found_at,
                deadline=deadline,
                source_key=f"import:{file_key}:{number}",
            )
            faults = list(unreadable.items())
            faults += [(f, m) for f, m in validate(conn, problem, now=now) if f not in unreadable]
            row_errors = [
                f"{where(f)}: {m}" + blanks.why(number, columns[f] + 1)
                if f in columns and _text(cell(f)) == ""
                else f"{where(f)}: {m}"
                for f, m in faults
            ]
            if row_errors:
                errors.extend(sorted(row_errors, key=_column_order))
                bad_rows += 1
            else:
                good.append((number, problem))
    if errors and not skip_bad:
        raise ImportRejected(path, errors)
    result = ImportResult(skipped=errors, bad_rows=bad_rows)

    def step() -> None:
        with write(engine) as conn:
            for _number, problem in good:
                _pid, created = add_in(conn, problem, now=now, actor=actor)
                if created:
                    result.imported += 1
                else:
                    result.already += 1

    retrying(step, what="import problems")
    return result


class _Blanks:
    """Why a cell of the first sheet reads empty when the office sees a value in it: part
    of merged cells (the value is kept in the first cell only), or a formula whose result
    the file does not keep (written by a program, never saved by Excel). Asked only about
    a required cell found empty, it reads the workbook again, whole, at the first question.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sheet: Any = None

    def why(self, row: int, column: int) -> str:
        from openpyxl import load_workbook
        from openpyxl.utils import get_column_letter

        if self._sheet is None:
            try:
                self._sheet = load_workbook(io.BytesIO(self._data)).worksheets[0]
            except Exception:  # read once already: an explanation is not worth failing for
                self._sheet = False
        if self._sheet is False:
            return ""
        coordinate = f"{get_column_letter(column)}{row}"
        for merged in self._sheet.merged_cells.ranges:
            if coordinate in merged:
                return (
                    f" (the cell is part of the merged cells {merged.coord}, whose value is "
                    f"in {merged.coord.split(':')[0]} only: unmerge them and fill in every row)"
                )
        cell = self._sheet.cell(row=row, column=column)
        if cell.data_type == "f":
            formula = str(getattr(cell.value, "text", cell.value))[:100]
            return (
                f" (the cell holds the formula {formula} but the file keeps no result of it: "
                "open and save the file in Excel or WPS, or type the value)"
            )
        return ""


def _what_file_is(data: bytes, exc: Exception) -> str:
    """What a file openpyxl cannot read seems to be, so the office knows what to do with it."""
    if not data.strip():
        return "the file is empty"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # an OLE2 compound file
        return "it is an Excel 97-2003 workbook (.xls), or a workbook locked by a password"
    if data.startswith(b"PK"):
        if b"opendocument.spreadsheet" in data[:200]:  # the ODF's first, stored entry
            return "it is an OpenDocument spreadsheet (.ods)"
        return f"it is a zip archive without a workbook in it ({type(exc).__name__})"
    if b"\x00" not in data[:4096]:
        return "it is text (a .csv file?)"
    return f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})"


def _column_order(message: str) -> tuple[int, str]:
    """Errors of a row in the order of its columns (``row 3, column G …``)."""
    head = message.split(":", 1)[0]
    _row, _sep, rest = head.partition(", column ")
    letters = rest.split(" ", 1)[0]
    return len(letters) or 99, letters


_TIME_CODES = re.compile(r"[hs]")
_QUOTED = re.compile(r'"[^"]*"|\[[^\]]*\]')


def _cell_value(cell: Any) -> Any:
    """A cell's value; a date cell (a date number format, no time in it) as a ``date``.

    Excel has no date type: a date cell is a number displayed as a date, which openpyxl
    reads as a ``datetime`` at 00:00. Its number format says whether the office typed a
    date (a deadline then means the end of that day) or a date and time.
    """
    value = getattr(cell, "value", None)
    if isinstance(value, datetime) and value.time() == time():
        fmt = _QUOTED.sub("", str(getattr(cell, "number_format", "") or "")).lower()
        if not _TIME_CODES.search(fmt):
            return value.date()
    return value


def _header_key(title: Any) -> str | None:
    text = _text(title).lower()
    for key, names in HEADERS.items():
        if text in names:
            return key
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_when(
    value: Any, zone: ZoneInfo, *, end_of_day: bool, default: datetime | None
) -> tuple[datetime | None, str | None]:
    """A cell as an aware time: an Excel date/time, or text YYYY-MM-DD [HH:MM], in the
    market's zone. A date alone means the start of the day (or, for a deadline, its end)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is None:
            return None, "empty; give a date such as 2026-12-05 or 2026-12-05 17:00"
        return default, None
    local: datetime
    whole_day = False
    if isinstance(value, datetime):
        local = value
    elif isinstance(value, date):
        local = datetime.combine(value, time())
        whole_day = True
    else:
        text = str(value).strip().replace("/", "-")
        try:
            local = datetime.fromisoformat(text)
        except ValueError:
            return None, f"{str(value)!r} is not a date; write 2026-12-05 or 2026-12-05 17:00"
        whole_day = len(text) <= 10
    try:
        if whole_day and end_of_day:
            local += timedelta(days=1, seconds=-1)
        if local.tzinfo is None:
            local = local.replace(tzinfo=zone, fold=0)
        return local.astimezone(UTC), None
    except OverflowError:  # the end of 9999-12-31, the first hours of year 1 in UTC
        return None, (
            f"{str(value)!r} is out of range; give a date between "
            f"{inputs.FIRST_YEAR} and {inputs.LAST_YEAR}"
        )


# ---------------------------------------------------------------- problems raised by obligations

RAISE_LOOKBACK = timedelta(days=7)


def raise_from_obligations(engine: sa.Engine, schedule: Schedule, *, now: datetime) -> int:
    """Raise a problem for each missed or failed obligation whose task asks for it (once).

    Looks back a week of state changes, so a daemon that was down still raises them. Each
    problem is found when the obligation was missed or failed (``problems.found_when``),
    not when this runs: catch-up after downtime (or after ``demo``) puts every problem in
    the week of its miss, with the deadline the task gives from then.
    """
    wanted = {t.id: t for t in schedule.tasks if t.raise_problem is not None}
    if not wanted:
        return 0

    def step() -> int:
        n = 0
        with write(engine) as conn:
            rows = conn.execute(
                sa.select(Obligation, AreaRow.name.label("area_name"))
                .outerjoin(
                    AreaRow,
                    (AreaRow.market_id == Obligation.market_id)
                    & (AreaRow.id == Obligation.area_id),
                )
                .where(
                    Obligation.task_id.in_(list(wanted)),
                    Obligation.state.in_([State.MISSED.value, State.FAILED.value]),
                    Obligation.state_changed_at >= now - RAISE_LOOKBACK,
                )
                .order_by(Obligation.id)
            ).all()
            for ob in rows:
                task = wanted[ob.task_id]
                rule = task.raise_problem
                assert rule is not None
                if ob.state not in rule.when:
                    continue
                what = "未完成（漏做）" if ob.state == State.MISSED.value else "读数不合格"
                where = f"（{ob.area_name or ob.area_id}）" if ob.area_id else ""
                found_at = found_when(
                    State(ob.state), missed_at=ob.missed_at, changed_at=ob.state_changed_at
                )
                _pid, created = add_in(
                    conn,
                    NewProblem(
                        market_id=ob.market_id,
                        area_id=ob.area_id,
                        category=rule.category,
                        description=f"{task.name}{where} {ob.local_date} {what}",
                        found_by="system",
                        found_at=found_at,
                        deadline=found_at + rule.within,
                        source_key=f"obligation:{ob.id}:{ob.state}",
                        obligation_id=ob.id,
                    ),
                    now=now,
                    actor="system",
                )
                n += int(created)
        return n

    return retrying(step, what="raise problems")
