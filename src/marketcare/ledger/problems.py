"""The rectification loop in the ledger: problems raised, rectified, re-inspected.

Each function is one unit of work in its own transaction, with compare-and-swap state
changes and an audit event, like ``tick`` and ``sweep``. Raising is idempotent through
``source_key`` (an obligation's miss raises its problem once, a spreadsheet row once).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from marketcare.domain.obligations import State, natural_key
from marketcare.domain.problems import (
    Category,
    ProblemState,
    Rate,
    TransitionRefused,
    check_transition,
    is_overdue,
    rectification_rate,
)
from marketcare.domain.schedules import Schedule
from marketcare.errors import MarketcareError, NotFound
from marketcare.ledger import audit, evidence
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import AreaRow, LedgerState, MarketRow, Obligation, ProblemRow

log = logging.getLogger(__name__)

#: the office re-inspects within this time of a rectification; then it is late, then missed
REINSPECT_DUE = timedelta(days=2)
REINSPECT_GRACE = timedelta(days=1)
REINSPECTION_KIND = "reinspection"


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


def validate(conn: sa.Connection, p: NewProblem) -> list[tuple[str, str]]:
    """Field errors of a new problem as (field, message); empty when it is valid."""
    errors: list[tuple[str, str]] = []
    if conn.execute(sa.select(MarketRow.id).where(MarketRow.id == p.market_id)).first() is None:
        known = ", ".join(conn.execute(sa.select(MarketRow.id).order_by(MarketRow.id)).scalars())
        errors.append(("market", f"unknown market {p.market_id!r} (known: {known})"))
    elif (
        p.area_id is not None
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
    if not p.description.strip():
        errors.append(("description", "a problem needs a description"))
    if not p.found_by.strip():
        errors.append(("found_by", "say who found it"))
    if p.deadline <= p.found_at:
        errors.append(("deadline", "the deadline must be after the time it was found"))
    return errors


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
    errors = validate(conn, problem)
    if errors:
        raise MarketcareError("; ".join(f"{f}: {m}" for f, m in errors))
    if problem.source_key is not None:
        existing = conn.execute(
            sa.select(ProblemRow.id).where(ProblemRow.source_key == problem.source_key)
        ).scalar_one_or_none()
        if existing is not None:
            return int(existing), False
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
        )
        .returning(ProblemRow.id)
    ).scalar_one()
    audit.append(
        conn,
        [
            audit.NewEvent(
                at=now,
                actor=actor or problem.found_by,
                action="problem_raised",
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
    try:
        target = check_transition(ProblemState(row.state), action)
    except TransitionRefused as exc:
        raise MarketcareError(f"problem {row.id}: {exc}") from None
    changed = conn.execute(
        sa.update(ProblemRow)
        .where(ProblemRow.id == row.id, ProblemRow.state == row.state)
        .values(state=target.value, **values)
    ).rowcount
    if changed != 1:
        raise MarketcareError(f"problem {row.id} changed meanwhile; look again and retry")
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
    if not note.strip():
        raise MarketcareError("--note: say what was done")

    def step() -> int:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            try:  # refuse a wrong move before anything is written (a double submit)
                check_transition(ProblemState(row.state), "rectify")
            except TransitionRefused as exc:
                raise MarketcareError(f"problem {row.id}: {exc}") from None
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
        raise MarketcareError("the ledger has no schedule yet; run marketcare init")
    zone = conn.execute(
        sa.select(MarketRow.timezone).where(MarketRow.id == row.market_id)
    ).scalar_one()
    local = now.astimezone(ZoneInfo(zone)).replace(tzinfo=None, second=0, microsecond=0)
    task_id = f"reinspect-p{row.id}-r{row.reopened + 1}"
    due = now + REINSPECT_DUE
    result = conn.execute(
        dialect_insert(conn, Obligation)
        .values(
            natural_key=natural_key(row.market_id, row.area_id, task_id, local),
            market_id=row.market_id,
            area_id=row.area_id,
            task_id=task_id,
            kind=REINSPECTION_KIND,
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
    conn: sa.Connection, row: Any, *, by: str, now: datetime, passed: bool
) -> None:
    if row.reinspection_id is None:
        return
    ob = conn.execute(sa.select(Obligation).where(Obligation.id == row.reinspection_id)).one()
    if State(ob.state) not in (State.OPEN, State.UPCOMING, State.MISSED):
        return
    outcome = State.DONE if now <= ob.due_at else State.LATE
    note = "通过" if passed else "未通过"
    conn.execute(
        sa.update(Obligation)
        .where(Obligation.id == ob.id, Obligation.state == ob.state)
        .values(state=outcome.value, state_changed_at=now, completed_at=now, note=note)
    )
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
                details={"reinspection": "passed" if passed else "failed", "note": note},
            )
        ],
    )


def verify(
    engine: sa.Engine, *, problem_id: int, by: str, now: datetime, note: str | None = None
) -> None:
    """The office re-inspected and the rectification holds: the problem is closed."""

    def step() -> None:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            _move(
                conn,
                row,
                "verify",
                {"verified_at": now, "verified_by": by},
                by=by,
                now=now,
                details={"note": note},
            )
            _close_reinspection(conn, row, by=by, now=now, passed=True)

    retrying(step, what="verify")


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
    if not note.strip():
        raise MarketcareError("--note: say why the rectification did not pass")

    def step() -> None:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            if deadline is not None and deadline <= row.found_at:
                raise MarketcareError("deadline: the deadline must be after the time it was found")
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
            _close_reinspection(conn, row, by=by, now=now, passed=False)

    retrying(step, what="reopen")


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
    to = to.strip()
    if not to:
        raise MarketcareError("assigned_to: say who must rectify it")
    if len(to) > 200:
        raise MarketcareError("assigned_to: at most 200 characters")

    def step() -> None:
        with write(engine) as conn:
            row = _load(conn, problem_id)
            if row.state == ProblemState.VERIFIED.value:
                raise MarketcareError(
                    f"problem {problem_id} is verified (closed); nothing to assign"
                )
            if deadline is not None and deadline <= row.found_at:
                raise MarketcareError("deadline: the deadline must be after the time it was found")
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
                        action="problem_assigned",
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
        if overdue:
            stmt = stmt.where(
                ProblemRow.state != ProblemState.VERIFIED.value, ProblemRow.deadline < now
            )
        rows = conn.execute(stmt).all()
    flagged = [(is_overdue(r.state, deadline=r.deadline, now=now), r) for r in rows]
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


class ImportRejected(MarketcareError):
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
    skipped: list[str] = field(default_factory=list)


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
        raise MarketcareError(f"{path}: no such file")
    data = path.read_bytes()
    file_key = hashlib.sha256(data).hexdigest()[:16]
    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not a workbook
        raise MarketcareError(
            f"{path}: not an Excel .xlsx workbook ({type(exc).__name__}: {exc})"
        ) from None
    ws = wb.worksheets[0]
    rows = ws.iter_rows(values_only=True)
    header = next(rows, None)
    if header is None:
        raise MarketcareError(
            f"{path}: the first sheet is empty; row 1 must hold the column headers"
        )
    columns: dict[str, int] = {}
    for idx, title in enumerate(header):
        key = _header_key(title)
        if key is not None and key not in columns:
            columns[key] = idx
    missing = [k for k in REQUIRED if k not in columns]
    if missing:
        names = "; ".join(f"{k} ({' / '.join(HEADERS[k][1:])})" for k in missing)
        raise MarketcareError(f"{path}: row 1: missing column(s): {names}")
    errors: list[str] = []
    good: list[tuple[int, NewProblem]] = []
    with read(engine) as conn:
        zones = {
            r.id: r.timezone
            for r in conn.execute(sa.select(MarketRow.id, MarketRow.timezone)).all()
        }
        for number, values in enumerate(rows, start=2):
            if values is None or all(v is None or str(v).strip() == "" for v in values):
                continue

            def cell(key: str, values: tuple[Any, ...] = values) -> Any:
                i = columns.get(key)
                return None if i is None or i >= len(values) else values[i]

            def where(key: str, number: int = number) -> str:
                return f"row {number}, column {get_column_letter(columns[key] + 1)} ({header[columns[key]]})"

            row_errors: list[str] = []
            market = _text(cell("market"))
            zone = ZoneInfo(zones.get(market, "UTC")) if market else ZoneInfo("UTC")
            category_raw = _text(cell("category"))
            category = CATEGORY_WORDS.get(category_raw, category_raw)
            found_at, err = parse_when(cell("found_at"), zone, end_of_day=False, default=now)
            if err:
                row_errors.append(f"{where('found_at')}: {err}")
            deadline, err = parse_when(cell("deadline"), zone, end_of_day=True, default=None)
            if err:
                row_errors.append(f"{where('deadline')}: {err}")
            problem = NewProblem(
                market_id=market,
                area_id=_text(cell("area")) or None,
                category=category,
                description=_text(cell("description")),
                found_by=_text(cell("found_by")),
                found_at=found_at or now,
                deadline=deadline or now,
                source_key=f"import:{file_key}:{number}",
            )
            if not row_errors:
                for fld, msg in validate(conn, problem):
                    key = {"found_by": "found_by"}.get(fld, fld)
                    row_errors.append(
                        f"{where(key)}: {msg}" if key in columns else f"row {number}: {msg}"
                    )
            if row_errors:
                errors.extend(row_errors)
            else:
                good.append((number, problem))
    if errors and not skip_bad:
        raise ImportRejected(path, errors)
    result = ImportResult(skipped=errors)

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
    if isinstance(value, datetime):
        local = value
    elif isinstance(value, date):
        local = datetime.combine(value, time())
        if end_of_day:
            local += timedelta(days=1, seconds=-1)
    else:
        text = str(value).strip().replace("/", "-")
        try:
            local = datetime.fromisoformat(text)
        except ValueError:
            return None, f"{str(value)!r} is not a date; write 2026-12-05 or 2026-12-05 17:00"
        if len(text) <= 10 and end_of_day:
            local += timedelta(days=1, seconds=-1)
    if local.tzinfo is None:
        local = local.replace(tzinfo=zone, fold=0)
    return local.astimezone(UTC), None


# ---------------------------------------------------------------- problems raised by obligations

RAISE_LOOKBACK = timedelta(days=7)


def raise_from_obligations(engine: sa.Engine, schedule: Schedule, *, now: datetime) -> int:
    """Raise a problem for each missed or failed obligation whose task asks for it (once).

    Looks back a week of state changes, so a daemon that was down still raises them.
    """
    wanted = {t.id: t for t in schedule.tasks if t.raise_problem is not None}
    if not wanted:
        return 0

    def step() -> int:
        n = 0
        with write(engine) as conn:
            rows = conn.execute(
                sa.select(Obligation)
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
                where = f"（{_area_name(conn, ob.market_id, ob.area_id)}）" if ob.area_id else ""
                _pid, created = add_in(
                    conn,
                    NewProblem(
                        market_id=ob.market_id,
                        area_id=ob.area_id,
                        category=rule.category,
                        description=f"{task.name}{where} {ob.local_date} {what}",
                        found_by="system",
                        found_at=ob.state_changed_at,
                        deadline=max(ob.state_changed_at, now) + rule.within,
                        source_key=f"obligation:{ob.id}:{ob.state}",
                        obligation_id=ob.id,
                    ),
                    now=now,
                    actor="system",
                )
                n += int(created)
        return n

    return retrying(step, what="raise problems")


def _area_name(conn: sa.Connection, market_id: str, area_id: str) -> str:
    """An area's name as people call it (水产区), not its id in the schedule (aquatic)."""
    name = conn.execute(
        sa.select(AreaRow.name).where(AreaRow.market_id == market_id, AreaRow.id == area_id)
    ).scalar()
    return str(name or area_id)
