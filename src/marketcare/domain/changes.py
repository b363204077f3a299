"""What a schedule edit changes, in the operator's terms.

Two expansions of the same window — one by the schedule that runs, one by the edited
files — are compared by natural key: obligations added, withdrawn, re-timed (old → new)
or newly excused / reinstated; and the tasks themselves are compared for what a window
does not show: checklist items and reading ranges. ``plan --diff`` prints this, and the
daemon logs it when it takes an edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from marketcare.domain.obligations import Planned, format_range
from marketcare.domain.schedules import ChecklistItem, Schedule, Task
from marketcare.domain.timespec import format_duration


@dataclass(frozen=True)
class Moved:
    """One obligation both schedules make, with different times or a different state."""

    old: Planned
    new: Planned


@dataclass(frozen=True)
class TaskChange:
    """One changed property of a task: what, and its old and new values (None: absent)."""

    task_id: str
    what: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        if self.old is None:
            return f"task {self.task_id}: {self.what} added ({self.new})"
        if self.new is None:
            return f"task {self.task_id}: {self.what} removed (was {self.old})"
        return f"task {self.task_id}: {self.what} {self.old} → {self.new}"


@dataclass(frozen=True)
class PlanChanges:
    added: list[Planned]
    withdrawn: list[Planned]
    moved: list[Moved]
    tasks: list[TaskChange]

    @property
    def empty(self) -> bool:
        return not (self.added or self.withdrawn or self.moved or self.tasks)


def compare(
    old_plan: Sequence[Planned],
    new_plan: Sequence[Planned],
    old: Schedule | None,
    new: Schedule,
) -> PlanChanges:
    """The differences between two expansions of one window and between the two schedules'
    tasks (checklists, ranges and the other settings a window does not show)."""
    before = {p.natural_key: p for p in old_plan}
    after = {p.natural_key: p for p in new_plan}
    added = [p for k, p in after.items() if k not in before]
    withdrawn = [p for k, p in before.items() if k not in after]
    moved = [
        Moved(before[k], p)
        for k, p in after.items()
        if k in before
        and (before[k].opens_at, before[k].due_at, before[k].missed_at, before[k].excused)
        != (p.opens_at, p.due_at, p.missed_at, p.excused)
    ]
    return PlanChanges(added, withdrawn, moved, task_changes(old, new))


def _range_text(item: ChecklistItem, kind: str | None) -> str:
    return format_range(item.range_for(kind), item.unit)


def _item_text(item: ChecklistItem) -> str:
    what = "tick" if item.tick is not None else "reading" if item.reading is not None else "text"
    return f"{what} {item.label!r}"


def _checklist_changes(task_id: str, old: Task, new: Task) -> list[TaskChange]:
    out: list[TaskChange] = []
    before = {c.id: c for c in old.checklist}
    after = {c.id: c for c in new.checklist}
    for cid in [*before, *(c for c in after if c not in before)]:
        a, b = before.get(cid), after.get(cid)
        label = f"checklist item {cid!r}"
        if a is None or b is None:
            out.append(
                TaskChange(
                    task_id,
                    label,
                    None if a is None else _item_text(a),
                    None if b is None else _item_text(b),
                )
            )
            continue
        if _item_text(a) != _item_text(b):
            out.append(TaskChange(task_id, label, _item_text(a), _item_text(b)))
        if a.unit != b.unit:
            out.append(TaskChange(task_id, f"{label} unit", a.unit or "—", b.unit or "—"))
        if a.reading is None or b.reading is None:
            continue
        kinds = sorted({*a.by_area_kind, *b.by_area_kind})
        if a.range != b.range:
            out.append(
                TaskChange(task_id, f"{label} range", _range_text(a, None), _range_text(b, None))
            )
        for kind in kinds:
            ra, rb = a.range_for(kind), b.range_for(kind)
            if ra != rb:
                out.append(
                    TaskChange(
                        task_id,
                        f"{label} range for {kind}",
                        _range_text(a, kind),
                        _range_text(b, kind),
                    )
                )
    return out


def _settings(task: Task) -> dict[str, str]:
    r = task.recurrence
    recurrence = r.rrule_text or "rest_days"
    if r.every_hours is not None:
        recurrence += f", every {r.every_hours}h while open"
    if r.season is not None:
        recurrence += f", season {r.season}"
    if r.except_dates:
        recurrence += f", except {', '.join(d.isoformat() for d in r.except_dates)}"
    if r.extra:
        recurrence += f", extra {', '.join(d.isoformat() for d in r.extra)}"
    return {
        "name": task.name,
        "kind": task.kind_id,
        "scope": task.scope,
        "markets": "all" if task.markets == "all" else ", ".join(task.markets),
        "area_kinds": "all"
        if task.area_kinds is None
        else ", ".join(k.value for k in task.area_kinds),
        "recurrence": recurrence,
        "opens": str(task.opens),
        "due": str(task.due),
        "grace": format_duration(task.grace),
        "skip_closed": str(task.skip_closed).lower(),
        "contractor": task.contractor or "—",
    }


def task_changes(old: Schedule | None, new: Schedule) -> list[TaskChange]:
    """Task by task: added, removed, and each changed setting, checklist item and range."""
    before = old.task_by_id if old is not None else {}
    after = new.task_by_id
    out: list[TaskChange] = []
    for tid in [*before, *(t for t in after if t not in before)]:
        a, b = before.get(tid), after.get(tid)
        if a is None or b is None:
            out.append(
                TaskChange(
                    tid, "task", None if a is None else a.name, None if b is None else b.name
                )
            )
            continue
        sa, sb = _settings(a), _settings(b)
        out.extend(TaskChange(tid, key, sa[key], sb[key]) for key in sa if sa[key] != sb[key])
        out.extend(_checklist_changes(tid, a, b))
    return out


def _clock(value: datetime, zone: ZoneInfo, day: datetime) -> str:
    local = value.astimezone(zone)
    return f"{local:%H:%M}" if local.date() == day.date() else f"{local:%m-%d %H:%M}"


def describe_move(m: Moved, zone: ZoneInfo) -> str:
    """``opens 18:30 → 19:00, due 19:30 → 20:00`` (only what changed), or the new state."""
    day = m.new.occurrence
    parts = []
    for name, a, b in (
        ("opens", m.old.opens_at, m.new.opens_at),
        ("due", m.old.due_at, m.new.due_at),
        ("missed after", m.old.missed_at, m.new.missed_at),
    ):
        if a != b:
            parts.append(f"{name} {_clock(a, zone, day)} → {_clock(b, zone, day)}")
    if m.old.excused != m.new.excused:
        parts.append(
            f"now excused ({m.new.excused})"
            if m.new.excused
            else f"no longer excused ({m.old.excused})"
        )
    return ", ".join(parts)


def summary(changes: PlanChanges, zone_of: Callable[[str], ZoneInfo]) -> list[str]:
    """One line per task and market (and one per changed task setting), for a log."""
    groups: dict[tuple[str, str], dict[str, list[object]]] = {}
    for what, items in (("added", changes.added), ("withdrawn", changes.withdrawn)):
        for p in items:
            groups.setdefault((p.task_id, p.market_id), {}).setdefault(what, []).append(p)
    for m in changes.moved:
        groups.setdefault((m.new.task_id, m.new.market_id), {}).setdefault("moved", []).append(m)
    lines = []
    for (task_id, market_id), kinds in sorted(groups.items()):
        parts = []
        for what in ("added", "withdrawn"):
            if what in kinds:
                parts.append(f"{len(kinds[what])} {what}")
        if "moved" in kinds:
            first = kinds["moved"][0]
            assert isinstance(first, Moved)
            parts.append(
                f"{len(kinds['moved'])} changed (e.g. {describe_move(first, zone_of(market_id))})"
            )
        lines.append(f"task {task_id} at {market_id}: {', '.join(parts)}")
    lines.extend(str(c) for c in changes.tasks)
    return lines
