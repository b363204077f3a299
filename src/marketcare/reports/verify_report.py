"""``marketcare verify-report``: the office checks a workbook it received.

Three questions, answered from the ledger:

1. *Is it ours, unaltered?* Its SHA-256 against the recorded revisions (which revision
   of which period it is), and whose ledger wrote it (``marketcare.installation``).
2. *Does the ledger still hold the history it was written from?* Its anchor (the chain's
   head in the file) against the chain (``audit.check_anchor``).
3. *Would the ledger say the same today?* Its summary sheet against the same report
   computed now from the ledger, for the moment the file was made; a late correction
   since shows up here, cell by cell (time passing alone changes nothing).
"""

from __future__ import annotations

import hashlib
import html
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from marketcare.domain.compliance import percent
from marketcare.domain.periods import Period, from_key
from marketcare.errors import MarketcareError
from marketcare.files import refuse_zip_bomb
from marketcare.ledger import audit
from marketcare.ledger.db import read
from marketcare.ledger.models import Installation, ReportRecord
from marketcare.reports.anchors import ZIP_FAULTS, read_anchors, read_part


@dataclass
class ReportCheck:
    path: Path
    sha256: str
    #: the recorded revision this file is (None: it matches none)
    record: Any | None = None
    #: why the file is not genuine, one line each (empty: it is)
    refusals: list[str] = field(default_factory=list)
    #: what holds, one line each
    holds: list[str] = field(default_factory=list)
    #: the summary's cells that the ledger, recomputed now, gives differently
    differences: list[str] = field(default_factory=list)

    @property
    def genuine(self) -> bool:
        return self.record is not None and not self.refusals


def properties(data: bytes) -> dict[str, str]:
    """The workbook's custom document properties (``marketcare.*``)."""
    try:
        custom = read_part(zipfile.ZipFile(BytesIO(data)), "docProps/custom.xml", "the file")
    except ZIP_FAULTS:
        return {}
    found = re.findall(r'<property[^>]*name="([^"]+)"[^>]*>\s*<vt:lpwstr[^>]*>([^<]*)<', custom)
    return {html.unescape(k): html.unescape(v) for k, v in found}


def check(engine: sa.Engine, path: Path, *, now: datetime) -> ReportCheck:
    """Answer the three questions of the module docstring for the workbook at ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MarketcareError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not data.startswith(b"PK"):
        raise MarketcareError(f"{path}: not an .xlsx workbook")
    refuse_zip_bomb(data, str(path))
    result = ReportCheck(path, hashlib.sha256(data).hexdigest())
    props = properties(data)
    with read(engine) as conn:
        me = conn.execute(sa.select(Installation.uid, Installation.name)).first()
        record = conn.execute(
            sa.select(ReportRecord)
            .where(ReportRecord.sha256 == result.sha256)
            .order_by(ReportRecord.id)
            .limit(1)
        ).first()
        theirs = props.get("marketcare.installation")
        if theirs and (me is None or theirs != me.uid):
            result.refusals.append(
                f"written by another marketcare installation ({theirs[:8]}…), "
                f"not this ledger ({me.uid[:8] + '…' if me else 'which has written no report'})"
            )
        if record is None:
            result.refusals.append(_no_match(conn, result.sha256, props))
        else:
            result.record = record
            result.holds.append(
                f"revision {record.revision} of {record.period_kind} {record.period_key} "
                f"({record.scope}, {record.language}), recorded "
                f"{record.generated_at:%Y-%m-%d %H:%M} UTC; SHA-256 matches the record"
            )
            if record.damage:
                result.holds.append(
                    f"(the ledger's own copy was found {record.damage} on "
                    f"{record.damage_found_at:%Y-%m-%d %H:%M} UTC)"
                )
        anchors = read_anchors(path) if "marketcare.audit_head" in props else []
        if anchors:
            chain = audit.verify(conn)
            if not chain.ok:
                result.refusals.append(f"the ledger's audit chain is broken: {chain.reason}")
            for anchor in anchors[:1] if chain.ok else []:
                verdict = audit.check_anchor(conn, anchor)
                if verdict.ok:
                    result.holds.append(
                        f"the ledger still holds the history up to event {anchor.seq} "
                        "that the file carries"
                    )
                else:
                    result.refusals.append(verdict.reason)
        else:
            result.refusals.append("the file carries no audit anchor")
    period, markets, language = _identity(record, props)
    if period is not None:
        # the same report, from the ledger as it is now, for the moment it was made: what
        # differs was changed in the ledger since (a late correction), not by time passing
        as_of = record.generated_at if record is not None else now
        result.differences = _compare(engine, data, period, markets, language, as_of=as_of)
    return result


def _no_match(conn: sa.Connection, sha256: str, props: dict[str, str]) -> str:
    kind, _, key = props.get("marketcare.period", "").partition(" ")
    recorded = conn.execute(
        sa.select(ReportRecord.revision, ReportRecord.sha256)
        .where(
            ReportRecord.period_kind == kind,
            ReportRecord.period_key == key,
            ReportRecord.scope == props.get("marketcare.scope", "all"),
            ReportRecord.language == props.get("marketcare.language", ""),
        )
        .order_by(ReportRecord.revision)
    ).all()
    if not recorded:
        return f"SHA-256 {sha256[:16]}… matches no report this ledger recorded"
    listed = ", ".join(f"r{r.revision} {r.sha256[:16]}…" for r in recorded)
    return (
        f"SHA-256 {sha256[:16]}… matches none of the recorded revisions of {kind} {key} "
        f"({listed}): the file was altered after it was written"
    )


def _identity(record: Any, props: dict[str, str]) -> tuple[Period | None, list[str] | None, str]:
    if record is not None:
        kind, key, scope, language = (
            record.period_kind,
            record.period_key,
            record.scope,
            record.language,
        )
    else:
        kind, _, key = props.get("marketcare.period", "").partition(" ")
        scope = props.get("marketcare.scope", "all")
        language = props.get("marketcare.language", "zh_CN")
    try:
        period = from_key(kind, key)
    except ValueError:
        return None, None, language
    return period, None if scope == "all" else scope.split("+"), language


def _compare(
    engine: sa.Engine,
    data: bytes,
    period: Period,
    markets: list[str] | None,
    language: str,
    *,
    as_of: datetime,
) -> list[str]:
    """The summary sheet's cells that differ between the file and the ledger now."""
    from marketcare.reports.figures import Report
    from marketcare.reports.workbook import write_workbook

    with tempfile.TemporaryDirectory(prefix="marketcare-verify-") as folder:
        fresh = Path(folder) / "now.xlsx"
        with read(engine) as conn:
            report = Report(conn, period, as_of=as_of, markets=markets)
            write_workbook(report, fresh, language=language, generated_at=as_of)
        then = _summary(data)
        today = _summary(fresh.read_bytes())
    header = today.header or then.header
    out = []
    for key in list(dict.fromkeys([*then.rows, *today.rows])):
        old, new = then.rows.get(key), today.rows.get(key)
        label = " / ".join(str(k) for k in key if k not in (None, ""))
        if old is None:
            out.append(f"{label}: not in the file, in the ledger now")
            continue
        if new is None:
            out.append(f"{label}: in the file, no longer in the ledger")
            continue
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b and not (_number(a) and _number(b) and abs(float(a) - float(b)) < 1e-9):
                column = header[i + 3] if i + 3 < len(header) else f"column {i + 4}"
                shares = i in then.percent or i in today.percent
                out.append(f"{label}: {column} {_cell(a, shares)} → {_cell(b, shares)}")
    return out


@dataclass
class _Summary:
    header: list[str] = field(default_factory=list)
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    #: the columns (after the three that name a row) formatted as percentages
    percent: set[int] = field(default_factory=set)


def _summary(data: bytes) -> _Summary:
    """The summary sheet's table: its header and each row keyed by market and task kind."""
    from openpyxl import load_workbook

    book = load_workbook(BytesIO(data), read_only=True, data_only=True)
    try:
        sheet = book.worksheets[0]
        out = _Summary()
        market = None
        for cells in sheet.iter_rows():
            values = tuple(getattr(c, "value", None) for c in cells)
            if not out.header:
                # the header is the first row that fills every column of the table
                if len(values) >= 4 and all(v not in (None, "") for v in values):
                    out.header = [str(v) for v in values]
                continue
            if not any(v not in (None, "") for v in values):
                continue
            market = values[0] or market
            out.rows[(market, values[2] if len(values) > 2 else None)] = tuple(values[3:])
            out.percent.update(
                i - 3
                for i, c in enumerate(cells)
                if i >= 3 and "%" in str(getattr(c, "number_format", ""))
            )
        return out
    finally:
        book.close()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any, share: bool = False) -> str:
    """A cell as the workbook shows it: a share as a percentage (``85.2%``)."""
    if share and (value is None or _number(value)):
        return percent(None if value is None else float(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
