"""``marketcare audit verify``: the chain, the tables against the events, the report
files, the trusted timestamps, the append-only guards, and any anchors given.

Every check says what it found in one line; the first finding of each kind names the
event or the row. Nothing here writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from marketcare.domain.replay import Difference, Replay
from marketcare.domain.schedules import digest_of
from marketcare.ledger import audit
from marketcare.ledger.models import (
    Completion,
    Event,
    Obligation,
    ProblemRow,
    ReportRecord,
    ScheduleVersion,
)

#: the triggers that keep history append-only (made by migration ``i16_audit``)
APPEND_ONLY = ("events", "completions", "audit_timestamps")
GUARDS = {
    "sqlite": tuple(f"{t}_no_{verb}" for t in APPEND_ONLY for verb in ("update", "delete")),
    "postgresql": tuple(
        f"{t}_{kind}" for t in APPEND_ONLY for kind in ("append_only", "no_truncate")
    ),
}

_TABLES: tuple[tuple[str, Any], ...] = (
    ("obligations", Obligation),
    ("completions", Completion),
    ("problems", ProblemRow),
    ("reports", ReportRecord),
)


@dataclass(frozen=True)
class Finding:
    """Something ``verify`` found wrong: which check, and one line that names it."""

    check: str  # chain | tables | events | versions | files | timestamps | guards | anchor
    message: str


@dataclass
class Examination:
    chain: audit.Verdict
    findings: list[Finding] = field(default_factory=list)
    #: what was checked and held, one line each, for the summary
    held: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.findings

    def _held(self, check: str, line: str) -> None:
        if not any(f.check == check for f in self.findings):
            self.held.append(line)


def examine(
    conn: sa.Connection,
    *,
    anchors: Sequence[audit.Anchor] = (),
    files: bool = True,
    timestamps: Callable[[sa.Connection, Callable[[int], str | None]], list[str]] | None = None,
    limit: int = 20,
) -> Examination:
    """Check everything ``audit verify`` promises (see the module docstring).

    ``timestamps`` checks the stored RFC 3161 tokens (``ledger.timestamps.check``, given
    the trusted certificates); it receives a lookup of the ledger's hash at an event.
    """
    replay = Replay()
    chain = audit.verify(conn, on_event=replay.apply)
    result = Examination(chain)
    if not chain.ok:
        result.findings.append(
            Finding("chain", f"{chain.reason} (first bad event: {chain.first_bad_seq})")
        )
    result._held("chain", f"{chain.checked} events, chain intact")

    for inconsistency in replay.inconsistencies[:limit]:
        result.findings.append(Finding("events", inconsistency.message))

    differences: list[Difference] = []
    rows_checked = 0
    for name, model in _TABLES:
        found = replay.compare(name, _rows(conn, model), limit=limit)
        differences += found
        rows_checked += _count(conn, model)
    for d in differences[:limit]:
        result.findings.append(Finding("tables", d.describe()))
    if len(differences) > limit:
        result.findings.append(Finding("tables", f"… and {len(differences) - limit} more"))
    if replay.obligation_count is not None:
        have = _count(conn, Obligation)
        if have != replay.obligation_count:
            result.findings.append(
                Finding(
                    "tables",
                    f"obligations: the table has {have} rows, the events account for "
                    f"{replay.obligation_count} (rows added or removed without an event)",
                )
            )
    if not replay.inconsistencies:
        result._held(
            "tables",
            f"{rows_checked} rows of obligations, completions, problems and reports "
            "match the events",
        )
    result.findings += _versions(conn, replay)
    result._held("versions", f"{len(replay.versions)} schedule versions match their digests")
    if files:
        found_files, n = _report_files(conn)
        result.findings += found_files
        result._held("files", f"{n} recorded report files as recorded")
    result.findings += _guards(conn)
    result._held("guards", "append-only guards in place")

    def hash_at(seq: int) -> str | None:
        value = conn.execute(sa.select(Event.hash).where(Event.seq == seq)).scalar()
        return None if value is None else str(value)

    if timestamps is not None:
        result.findings += [Finding("timestamps", m) for m in timestamps(conn, hash_at)]
        n = conn.execute(sa.text("SELECT count(*) FROM audit_timestamps")).scalar_one()
        if n:
            result._held("timestamps", f"{n} trusted timestamps hold")
    for anchor in anchors:
        verdict = audit.check_anchor(conn, anchor)
        if verdict.ok:
            named = f" ({anchor.source})" if anchor.source else ""
            result.held.append(
                f"the anchor{named} holds: event {anchor.seq} is {anchor.hash[:16]}…"
            )
        else:
            result.findings.append(Finding("anchor", verdict.reason))
    return result


def _rows(conn: sa.Connection, model: Any, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Every row of a table in id order, a batch at a time (bounded memory)."""
    table = model.__table__
    last: int | None = None
    while True:
        stmt = sa.select(table).order_by(table.c.id).limit(batch)
        if last is not None:
            stmt = stmt.where(table.c.id > last)
        rows = conn.execute(stmt).mappings().all()
        if not rows:
            return
        for r in rows:
            yield dict(r)
        last = rows[-1]["id"]


def _count(conn: sa.Connection, model: Any) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(model)).scalar_one())


def _versions(conn: sa.Connection, replay: Replay) -> list[Finding]:
    """Each schedule version the events applied still has its digest and its texts."""
    out = []
    for version_id, (digest, seq) in sorted(replay.versions.items()):
        row = conn.execute(
            sa.select(ScheduleVersion).where(ScheduleVersion.id == version_id)
        ).one_or_none()
        if row is None:
            out.append(
                Finding("versions", f"schedule version {version_id} (event {seq}) is missing")
            )
        elif row.digest != digest:
            out.append(
                Finding(
                    "versions",
                    f"schedule version {version_id}: digest {row.digest[:16]}… in the table, "
                    f"{digest[:16]}… by event {seq}",
                )
            )
        elif digest_of(row.sources, row.default_timezone) != digest:
            out.append(
                Finding(
                    "versions",
                    f"schedule version {version_id}: its texts no longer match its digest "
                    f"(applied by event {seq})",
                )
            )
    return out


def file_damage(path: Path, sha256: str) -> str | None:
    """``missing`` or ``changed`` when a recorded report file is not as recorded."""
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        return "missing"
    return None if h.hexdigest() == sha256 else "changed"


def _report_files(conn: sa.Connection) -> tuple[list[Finding], int]:
    out = []
    rows = conn.execute(sa.select(ReportRecord).order_by(ReportRecord.id)).all()
    for r in rows:
        damage = file_damage(Path(r.path), r.sha256)
        if damage is None:
            continue
        known = (
            f" (recorded as {r.damage} on {r.damage_found_at:%Y-%m-%d %H:%M} UTC)"
            if r.damage and r.damage_found_at
            else ""
        )
        out.append(
            Finding(
                "files",
                f"report {r.id} ({r.period_kind} {r.period_key}, revision {r.revision}): "
                f"the recorded file {r.path} is {damage}{known}",
            )
        )
    return out, len(rows)


def _guards(conn: sa.Connection) -> list[Finding]:
    """The append-only triggers are all there (an insider with the owner's rights can drop
    them; this says so)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        present = set(
            conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars()
        )
    else:
        present = set(
            conn.execute(
                sa.text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")
            ).scalars()
        )
    missing = [g for g in GUARDS.get(dialect, ()) if g not in present]
    if not missing:
        return []
    return [
        Finding(
            "guards",
            f"append-only trigger(s) removed or disabled: {', '.join(missing)} "
            "(history could be rewritten)",
        )
    ]
