"""What a task's checklist asks for, and judging a submission against it.

Plain Python: the tick rule in the ledger and the pages that draw the form both read
the checklist from here, so "which readings, which ranges, which items" is written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marketcare.domain.obligations import format_range, in_range
from marketcare.domain.schedules import ChecklistItem, Schedule
from marketcare.errors import TickRefused


@dataclass(frozen=True)
class RequiredReading:
    id: str
    label: str
    unit: str | None
    range: tuple[float | None, float | None] | None

    @property
    def range_text(self) -> str:
        return format_range(self.range, self.unit)

    def describe(self) -> str:
        return f"{self.id} ({self.label}, {self.range_text})"


@dataclass(frozen=True)
class Checklist:
    ticks: tuple[ChecklistItem, ...]
    readings: tuple[RequiredReading, ...]
    texts: tuple[ChecklistItem, ...] = ()

    @property
    def nothing_to_enter(self) -> bool:
        """No reading and no required text: ticking it all is one tap on the board."""
        return not self.readings and not any(t.required for t in self.texts)


def checklist_of(schedule: Schedule, task_id: str, area_kind: str | None) -> Checklist:
    """The checklist an obligation of ``task_id`` in an area of ``area_kind`` must satisfy."""
    task = schedule.task_by_id.get(task_id)
    if task is None:
        return Checklist((), ())
    ticks = tuple(c for c in task.checklist if c.tick is not None)
    readings = tuple(
        RequiredReading(c.id, c.label, c.unit, c.range_for(area_kind))
        for c in task.checklist
        if c.reading is not None
    )
    texts = tuple(c for c in task.checklist if c.text is not None)
    return Checklist(ticks, readings, texts)


def check(
    checklist: Checklist,
    readings: Mapping[str, float],
    items: Sequence[str] | None,
    texts: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    known_readings = {r.id: r for r in checklist.readings}
    unknown = sorted(set(readings) - set(known_readings))
    if unknown:
        valid = ", ".join(r.describe() for r in checklist.readings) or "none"
        raise TickRefused(f"unknown reading {unknown[0]!r}; this task takes: {valid}", "readings")
    missing = [r for r in checklist.readings if r.id not in readings]
    if missing:
        raise TickRefused(
            "missing reading(s): "
            + ", ".join(r.describe() for r in missing)
            + "; give each as --reading KEY=VALUE",
            "readings",
        )
    tick_ids = [c.id for c in checklist.ticks]
    if items is None or not items:
        given = list(tick_ids)
    else:
        given = list(dict.fromkeys(items))
        bad = [i for i in given if i not in tick_ids]
        if bad:
            raise TickRefused(
                f"unknown item {bad[0]!r}; this task's items: {', '.join(tick_ids) or 'none'}",
                "items",
            )
        left = [i for i in tick_ids if i not in given]
        if left:
            raise TickRefused(
                f"items not ticked: {', '.join(left)}; tick them all (or give no --item to tick all)",
                "items",
            )
    text_ids = [t.id for t in checklist.texts]
    bad_texts = sorted(set(texts) - set(text_ids))
    if bad_texts:
        raise TickRefused(
            f"unknown text {bad_texts[0]!r}; this task's texts: {', '.join(text_ids) or 'none'}",
            "texts",
        )
    blank = [t for t in checklist.texts if t.required and not str(texts.get(t.id, "")).strip()]
    if blank:
        raise TickRefused(
            "missing text(s): "
            + ", ".join(f"{t.id} ({t.label})" for t in blank)
            + "; give each as --text KEY=VALUE",
            "texts",
        )
    failures: dict[str, Any] = {}
    for r in checklist.readings:
        value = readings[r.id]
        if not in_range(value, r.range):
            failures[r.id] = {
                "value": value,
                "range": list(r.range) if r.range else None,
                "unit": r.unit,
            }
    recorded: dict[str, Any] = dict.fromkeys(given, True)
    recorded.update({k: v.strip() for k, v in texts.items() if v.strip()})
    return failures, recorded
