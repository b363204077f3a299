"""Replaying the audit events: what the ledger's tables must hold if the events are the truth.

The event log is the record; the tables are what the pages, the CLI and the reports read.
An insider who changes a table (flips an obligation to done, edits a reading, deletes a
completion) without forging events leaves the two apart, and this replay names the first
row where they part. Each event's effect is written here once, from the same facts the
writers put in it (``ledger/tick.py``, ``ledger/sweep.py``, ``ledger/materialise.py``,
``ledger/problems.py``, ``reports/delivery.py``).

Events written before the complete format (before the ``audit_baseline`` event) lack some
facts; a column no event states is ``UNKNOWN`` and not compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from marketcare.domain.obligations import COMPLETED, State


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


#: a column whose value no event states (history written before complete events)
UNKNOWN: Any = _Unknown()

#: the columns of each table that the replay checks, in the order they are reported
OBLIGATION_COLUMNS = ("state", "state_changed_at", "completed_at", "note")
COMPLETION_COLUMNS = (
    "obligation_id",
    "token",
    "by",
    "at",
    "outcome",
    "readings",
    "items",
    "failures",
    "note",
    "evidence",
    "phone_at",
    "phone_sent_at",
    "arrived_at",
    "time_basis",
)
PROBLEM_COLUMNS = (
    "market_id",
    "area_id",
    "category",
    "description",
    "found_at",
    "found_by",
    "deadline",
    "state",
    "reopened",
    "source_key",
    "obligation_id",
    "evidence",
    "rectified_at",
    "rectified_by",
    "rectify_note",
    "verified_at",
    "verified_by",
    "reinspection_id",
    "assigned_to",
    "assigned_at",
)
REPORT_COLUMNS = (
    "kind",
    "format",
    "period_kind",
    "period_key",
    "scope",
    "language",
    "revision",
    "path",
    "sha256",
    "content_digest",
    "rows",
    "headline",
    "generated_at",
    "anchor_seq",
    "anchor_hash",
    "damage",
    "damage_found_at",
)
#: the columns that hold instants (events carry them as ISO 8601 text)
_INSTANTS = frozenset(
    {
        "state_changed_at",
        "completed_at",
        "at",
        "phone_at",
        "phone_sent_at",
        "arrived_at",
        "found_at",
        "deadline",
        "rectified_at",
        "verified_at",
        "assigned_at",
        "generated_at",
        "damage_found_at",
    }
)


class LoggedEvent(Protocol):
    """An event as stored (an ``events`` row)."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def obligation_id(self) -> int | None: ...
    @property
    def problem_id(self) -> int | None: ...
    @property
    def from_state(self) -> str | None: ...
    @property
    def to_state(self) -> str | None: ...
    @property
    def details(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Difference:
    """One place where a table and the events disagree."""

    table: str
    row: int
    column: str | None  # None: the whole row (missing, or no event records it)
    in_table: Any
    by_events: Any
    seq: int | None  # the last event that states the value

    def describe(self) -> str:
        where = f"{self.table} row {self.row}"
        if self.column is None:
            if self.in_table is None:
                return f"{where} is missing from the table; event {self.seq} recorded it"
            return f"{where} is in the table but no event records it"
        said = f"event {self.seq}" if self.seq is not None else "the events"
        return (
            f"{where}: {self.column} is {_show(self.in_table)} in the table, "
            f"{_show(self.by_events)} by {said}"
        )


@dataclass(frozen=True)
class Inconsistency:
    """The events contradict each other (one removed or reordered and the chain rehashed)."""

    seq: int
    message: str


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return repr(value)


def _same(have: Any, want: Any) -> bool:
    """Equal, as stored: PostgreSQL's text drops U+0000 (``db.make_engine``), JSON keeps it."""
    if isinstance(have, str) and isinstance(want, str):
        return have.replace("\x00", "") == want.replace("\x00", "")
    return bool(have == want)


def _when(value: Any) -> Any:
    if value is None or value is UNKNOWN or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value)).astimezone(UTC)


@dataclass
class _Row:
    values: dict[str, tuple[Any, int]] = field(default_factory=dict)

    def set(self, seq: int, **values: Any) -> None:
        for k, v in values.items():
            self.values[k] = (_when(v) if k in _INSTANTS else v, seq)

    def get(self, column: str) -> Any:
        return self.values.get(column, (UNKNOWN, 0))[0]


@dataclass
class Replay:
    """The tables as the events say they are; feed events in ``seq`` order."""

    obligations: dict[int, _Row] = field(default_factory=dict)
    completions: dict[int, _Row] = field(default_factory=dict)
    problems: dict[int, _Row] = field(default_factory=dict)
    reports: dict[int, _Row] = field(default_factory=dict)
    #: schedule version id -> (digest, seq of the event that applied it)
    versions: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: how many obligations the events account for (None: not known, legacy history)
    obligation_count: int | None = 0
    #: report and completion ids recorded before complete events, which no event may name
    #: (reports had none; older re-inspections got their completion by a migration)
    reports_before: int = 0
    completions_before: int = 0
    inconsistencies: list[Inconsistency] = field(default_factory=list)

    def apply(self, ev: LoggedEvent) -> None:
        """Apply one event's effect on the tables (events in ``seq`` order; an action
        this replay does not know changes none of the tables it checks)."""
        handler = _HANDLERS.get(ev.action)
        if handler is not None:
            handler(self, ev)

    # -- obligations -------------------------------------------------------------------

    def _move(self, ev: LoggedEvent, **values: Any) -> None:
        oid = ev.obligation_id
        if oid is None:
            return
        row = self.obligations.get(oid)
        if row is None:
            row = self.obligations[oid] = _Row()
            # first seen here: it was made by materialising (upcoming, nothing done)
            row.set(0, state=ev.from_state, completed_at=None, note=None)
            row.values["state_changed_at"] = (UNKNOWN, 0)
        else:
            seen = row.get("state")
            if seen is not UNKNOWN and ev.from_state is not None and seen != ev.from_state:
                self.inconsistencies.append(
                    Inconsistency(
                        ev.seq,
                        f"event {ev.seq} moves obligation {oid} from {ev.from_state!r}, "
                        f"but event {row.values['state'][1]} left it {seen!r}",
                    )
                )
        row.set(ev.seq, state=ev.to_state, state_changed_at=ev.at, **values)

    def _clock(self, ev: LoggedEvent) -> None:
        self._move(ev)

    def _completed(self, ev: LoggedEvent) -> None:
        d = ev.details
        if "reinspection" in d:
            # the office closed a re-inspection: its result is the obligation's note (older
            # events: no completion row, the result in ``note``)
            result = d.get("result", UNKNOWN if "completion_id" in d else d.get("note", UNKNOWN))
            self._move(ev, completed_at=ev.at, note=result)
        else:
            at = d.get("at", UNKNOWN)
            done = ev.to_state in {s.value for s in COMPLETED}
            self._move(ev, completed_at=at if done else None)
        cid = d.get("completion_id")
        if cid is None:
            return
        row = self.completions[int(cid)] = _Row()
        row.set(
            ev.seq,
            obligation_id=ev.obligation_id,
            token=d.get("token", UNKNOWN),
            by=ev.actor,
            outcome=ev.to_state,
            failures=d.get("failures", UNKNOWN),
        )
        if "readings" in d:  # the complete format: every fact of the completion
            row.set(
                ev.seq,
                at=d["at"],
                readings=d["readings"],
                items=d["items"],
                note=d["note"],
                evidence=d["evidence"],
                phone_at=d["phone_at"],
                phone_sent_at=d["phone_sent_at"],
                arrived_at=d["arrived_at"],
                time_basis=d["time_basis"],
            )

    def _excused(self, ev: LoggedEvent) -> None:
        self._move(ev, note=ev.details.get("reason", UNKNOWN))

    def _reinstated(self, ev: LoggedEvent) -> None:
        self._move(ev, note=None)  # a rest day or a closure lifted by a schedule edit

    def _materialised(self, ev: LoggedEvent) -> None:
        if self.obligation_count is not None:
            self.obligation_count += int(ev.details.get("created", 0))

    def _withdrawn(self, ev: LoggedEvent) -> None:
        if self.obligation_count is not None:
            self.obligation_count -= len(ev.details.get("natural_keys", ()))

    def _schedule_applied(self, ev: LoggedEvent) -> None:
        d = ev.details
        if d.get("version_id") is not None and d.get("digest"):
            self.versions[int(d["version_id"])] = (str(d["digest"]), ev.seq)
        if self.obligation_count is not None:
            if "created" in d:
                self.obligation_count += int(d["created"])
            else:  # written before the count was recorded: the baseline restarts it
                self.obligation_count = None

    def _baseline(self, ev: LoggedEvent) -> None:
        d = ev.details
        self.obligation_count = int(d["obligations"])
        self.reports_before = int(d.get("reports_up_to", 0))
        self.completions_before = int(d.get("completions_up_to", 0))

    # -- problems ----------------------------------------------------------------------

    def _raised(self, ev: LoggedEvent) -> None:
        if ev.problem_id is None:
            return
        d = ev.details
        row = self.problems[ev.problem_id] = _Row()
        row.set(
            ev.seq,
            market_id=d.get("market", UNKNOWN),
            area_id=d.get("area", UNKNOWN),
            category=d.get("category", UNKNOWN),
            deadline=d.get("deadline", UNKNOWN),
            state=ev.to_state,
            reopened=0,
            source_key=d.get("source", UNKNOWN),
            obligation_id=ev.obligation_id,
            rectified_at=None,
            rectified_by=None,
            rectify_note=None,
            verified_at=None,
            verified_by=None,
            reinspection_id=None,
            assigned_to=None,
            assigned_at=None,
        )
        if "description" in d:
            row.set(
                ev.seq,
                description=d["description"],
                found_at=d["found_at"],
                found_by=d["found_by"],
                evidence=d["evidence"],
            )

    def _problem(self, ev: LoggedEvent) -> _Row | None:
        if ev.problem_id is None:
            return None
        row = self.problems.get(ev.problem_id)
        if row is None:
            self.inconsistencies.append(
                Inconsistency(
                    ev.seq, f"event {ev.seq} changes problem {ev.problem_id}, never raised"
                )
            )
            return None
        seen = row.get("state")
        if seen is not UNKNOWN and ev.from_state is not None and seen != ev.from_state:
            self.inconsistencies.append(
                Inconsistency(
                    ev.seq,
                    f"event {ev.seq} moves problem {ev.problem_id} from {ev.from_state!r}, "
                    f"but event {row.values['state'][1]} left it {seen!r}",
                )
            )
        return row

    def _rectified(self, ev: LoggedEvent) -> None:
        row = self._problem(ev)
        if row is None:
            return
        d = ev.details
        evidence = row.get("evidence")
        if evidence is not UNKNOWN:
            evidence = [*evidence, *d.get("evidence", [])]
        reinspection = d.get("reinspection")
        row.set(
            ev.seq,
            state=ev.to_state,
            rectified_at=ev.at,
            rectified_by=ev.actor,
            rectify_note=d.get("note", UNKNOWN),
            evidence=evidence,
            reinspection_id=reinspection,
        )
        if reinspection is not None:
            ob = self.obligations[int(reinspection)] = _Row()
            ob.set(ev.seq, state=State.OPEN.value, state_changed_at=ev.at, completed_at=None)
            ob.set(ev.seq, note=None)
            if self.obligation_count is not None:
                self.obligation_count += 1

    def _verified(self, ev: LoggedEvent) -> None:
        row = self._problem(ev)
        if row is not None:
            row.set(ev.seq, state=ev.to_state, verified_at=ev.at, verified_by=ev.actor)

    def _reopened(self, ev: LoggedEvent) -> None:
        row = self._problem(ev)
        if row is None:
            return
        reopened = row.get("reopened")
        row.set(
            ev.seq,
            state=ev.to_state,
            reopened=reopened if reopened is UNKNOWN else reopened + 1,
            rectified_at=None,
        )
        if ev.details.get("deadline"):
            row.set(ev.seq, deadline=ev.details["deadline"])

    def _assigned(self, ev: LoggedEvent) -> None:
        row = self._problem(ev)
        if row is None:
            return
        row.set(ev.seq, assigned_to=ev.details.get("to", UNKNOWN), assigned_at=ev.at)
        if ev.details.get("deadline"):
            row.set(ev.seq, deadline=ev.details["deadline"])

    # -- reports -----------------------------------------------------------------------

    def _report(self, ev: LoggedEvent) -> None:
        d = ev.details
        row = self.reports[int(d["report_id"])] = _Row()
        row.set(
            ev.seq,
            generated_at=ev.at,
            damage=None,
            damage_found_at=None,
            **{c: d[c] for c in REPORT_COLUMNS if c in d},
        )

    def _damaged(self, ev: LoggedEvent) -> None:
        d = ev.details
        row = self.reports.get(int(d["report_id"]))
        if row is None:
            row = self.reports[int(d["report_id"])] = _Row()
        row.set(ev.seq, damage=d["damage"], damage_found_at=ev.at)

    # -- comparing ---------------------------------------------------------------------

    def compare(
        self, table: str, rows: Iterable[Mapping[str, Any]], *, limit: int = 1000
    ) -> list[Difference]:
        """The differences between ``table``'s rows (in id order) and the replay."""
        expected, columns = self._expected(table)
        out: list[Difference] = []
        seen: set[int] = set()
        for r in rows:
            rid = int(r["id"])
            seen.add(rid)
            want = expected.get(rid)
            if want is None:
                if not self._unrecorded_ok(table, r):
                    out.append(Difference(table, rid, None, rid, None, None))
            else:
                for col in columns:
                    value, seq = want.values.get(col, (UNKNOWN, 0))
                    if value is UNKNOWN:
                        continue
                    have = r[col]
                    if col in _INSTANTS:
                        have = _when(have)
                    if col == "evidence" and isinstance(have, dict | None):
                        have = [] if have is None else list(have.get("items", []))
                    if not _same(have, value):
                        out.append(Difference(table, rid, col, have, value, seq or None))
            if len(out) >= limit:
                return out
        for rid in sorted(set(expected) - seen):
            last = max((s for _v, s in expected[rid].values.values()), default=0)
            out.append(Difference(table, rid, None, None, rid, last or None))
            if len(out) >= limit:
                break
        return out

    def _expected(self, table: str) -> tuple[dict[int, _Row], tuple[str, ...]]:
        return {
            "obligations": (self.obligations, OBLIGATION_COLUMNS),
            "completions": (self.completions, COMPLETION_COLUMNS),
            "problems": (self.problems, PROBLEM_COLUMNS),
            "reports": (self.reports, REPORT_COLUMNS),
        }[table]

    def _unrecorded_ok(self, table: str, row: Mapping[str, Any]) -> bool:
        """Whether a row no event names is as it may be: an obligation materialised and
        untouched since (upcoming), or a report or completion recorded before complete
        events (the ``audit_baseline`` says up to which id)."""
        if table == "obligations":
            return row["state"] == State.UPCOMING.value and row["completed_at"] is None
        if table == "reports":
            return int(row["id"]) <= self.reports_before
        if table == "completions":
            return int(row["id"]) <= self.completions_before
        return False


_HANDLERS = {
    "opened": Replay._clock,
    "missed": Replay._clock,
    "completed": Replay._completed,
    "failed_check": Replay._completed,
    "excused": Replay._excused,
    "reinstated": Replay._reinstated,
    "materialised": Replay._materialised,
    "withdrawn": Replay._withdrawn,
    "schedule_applied": Replay._schedule_applied,
    "audit_baseline": Replay._baseline,
    "problem_raised": Replay._raised,
    "problem_rectified": Replay._rectified,
    "problem_verified": Replay._verified,
    "problem_reopened": Replay._reopened,
    "problem_assigned": Replay._assigned,
    "report_recorded": Replay._report,
    "report_file_damaged": Replay._damaged,
}
