"""Reports as evidence: files that never collide, damage said out loud, and
``marketcare verify-report`` as the office runs it on a workbook it received."""

from __future__ import annotations

import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from marketcare.cli import app
from marketcare.errors import MarketcareError
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import make_engine, migrate, read
from marketcare.ledger.models import Event, ReportRecord
from marketcare.reports import delivery
from marketcare.reports.anchors import read_anchors
from marketcare.web.health import LedgerCollector

from .conftest import database_url, utc
from .support.history import WEEK, History, make_history
from .support.procs import make_env

LATER = utc(2026, 11, 24, 2, 0)


@pytest.fixture
def history(engine: sa.Engine, tmp_path: Path) -> History:
    return make_history(engine, tmp_path / "exports")


def test_two_ledgers_sharing_an_exports_folder_never_overwrite_each_other(
    engine: sa.Engine, history: History, tmp_path: Path
) -> None:
    other = make_engine(database_url(tmp_path / "demo"))
    migrate(other)
    try:
        theirs = make_history(other, tmp_path / "exports").report
    finally:
        other.dispose()
    mine = history.report
    assert mine.path.name == theirs.path.name == "marketcare_week_2026-W48.xlsx"
    assert mine.path.parent != theirs.path.parent
    assert mine.path.parent.parent == theirs.path.parent.parent == (tmp_path / "exports").resolve()
    assert delivery.file_name(WEEK, "all", "zh_CN", 1) == mine.path.name
    with read(engine) as conn:
        (recorded,) = conn.execute(sa.select(ReportRecord.sha256)).scalars()
    assert recorded == mine.sha256 and mine.path.exists()


def test_a_missing_recorded_file_is_reported_logged_and_counted_before_a_new_revision(
    engine: sa.Engine, history: History, caplog: object
) -> None:
    history.report.path.unlink()
    again = delivery.export(
        engine, period=WEEK, exports_dir=history.report.path.parent.parent, now=LATER
    )
    assert again.created and again.revision == 2
    assert again.damaged == (
        f"recorded report {history.report.path} (revision 1) is missing; a new revision is written",
    )
    with read(engine) as conn:
        first = conn.execute(
            sa.select(ReportRecord).where(ReportRecord.id == history.report.report_id)
        ).one()
        event = conn.execute(sa.select(Event).where(Event.action == "report_file_damaged")).one()
    assert first.damage == "missing" and first.damage_found_at == LATER
    assert event.details["report_id"] == first.id
    metrics = {
        m.name: m.samples[0].value
        for m in LedgerCollector(engine, lambda: LATER, None).collect()
        if m.samples
    }
    assert metrics["marketcare_report_files_damaged"] == 1


def test_a_changed_recorded_file_is_not_reused_and_is_said_to_be_changed(
    engine: sa.Engine, history: History
) -> None:
    with history.report.path.open("ab") as f:
        f.write(b"\0")
    again = delivery.export(
        engine, period=WEEK, exports_dir=history.report.path.parent.parent, now=LATER
    )
    assert again.created and again.revision == 2
    assert "(revision 1) is changed" in again.damaged[0]


# ---------------------------------------------------------------- verify-report


def verify_report(tmp_path: Path, path: Path) -> tuple[int, str]:
    env = make_env(tmp_path)
    result = CliRunner().invoke(app, ["verify-report", str(path)], env=env)
    return result.exit_code, result.output


def test_verify_report_confirms_a_genuine_unchanged_workbook(
    history: History, tmp_path: Path
) -> None:
    received = tmp_path / "inbox" / "周报.xlsx"
    received.parent.mkdir()
    shutil.copyfile(history.report.path, received)
    code, output = verify_report(tmp_path, received)
    assert code == 0, output
    assert "revision 1 of week 2026-W48 (all, zh_CN)" in output
    assert "SHA-256 matches the record" in output
    assert f"history up to event {history.report.anchor.seq}" in output  # type: ignore[union-attr]
    assert "the ledger gives the same figures today" in output


def test_verify_report_lists_what_a_late_correction_changed(
    engine: sa.Engine, history: History, tmp_path: Path
) -> None:
    ledger_tick.tick(engine, obligation_id=history.waste, by="补录", now=LATER)
    code, output = verify_report(tmp_path, history.report.path)
    assert code == 3, output
    assert "SHA-256 matches the record" in output
    assert "changed since" in output
    assert "lizhong 农贸市场 / 垃圾日产日清: 逾期完成 0 → 1" in output
    assert "lizhong 农贸市场 / 垃圾日产日清: 未完成（漏做） 1 → 0" in output


def test_verify_report_refuses_an_altered_workbook(history: History, tmp_path: Path) -> None:
    altered = tmp_path / "altered.xlsx"
    altered.write_bytes(history.report.path.read_bytes() + b"\0")
    code, output = verify_report(tmp_path, altered)
    assert code == 1
    assert "NOT GENUINE" in output and "matches none of the recorded revisions" in output
    assert "Traceback" not in output


def _inflated(report: Path, to: Path, part: str, size: int) -> Path:
    """The report with one part that inflates to ``size`` bytes of blanks (a zip bomb:
    a few hundred kB on disk)."""
    with zipfile.ZipFile(report) as original, zipfile.ZipFile(to, "w", zipfile.ZIP_DEFLATED) as z:
        for name in original.namelist():
            if name != part:
                z.writestr(name, original.read(name))
        with z.open(part, "w") as inflating:
            for _ in range(size >> 20):
                inflating.write(b" " * (1 << 20))
    return to


def test_a_workbook_that_inflates_to_hundreds_of_megabytes_is_read_in_bounded_memory(
    history: History, tmp_path: Path
) -> None:
    bomb = _inflated(history.report.path, tmp_path / "收到.xlsx", "xl/worksheets/zz.xml", 300 << 20)
    assert bomb.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        anchors = read_anchors(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    head = history.report.anchor
    assert head is not None
    found = {(a.seq, a.hash, a.source.split(", ")[-1]) for a in anchors}
    assert found == {
        (head.seq, head.hash, "document property"),
        (head.seq, head.hash, "summary sheet footer"),
    }
    assert peak < 50 << 20, f"{peak / 2**20:.0f} MiB to read a {bomb.stat().st_size} B file"


def test_an_anchor_file_larger_than_any_email_is_refused_before_it_is_parsed(
    tmp_path: Path,
) -> None:
    """The email parser holds some ten times the text: 1 GB given as an .eml took 12 GB."""
    huge = tmp_path / "周报.eml"
    with huge.open("wb") as f:
        f.write(b"From: office@example.org\r\n\r\n")
        f.truncate(100_000_001)
    with pytest.raises(MarketcareError, match=r"more than any email \(100 MB\)"):
        read_anchors(huge)


@pytest.mark.parametrize(
    "part", ["docProps/custom.xml", "docProps/core.xml", "xl/worksheets/sheet1.xml"]
)
def test_a_received_workbook_with_a_part_that_inflates_a_thousandfold_is_refused_unread(
    history: History, tmp_path: Path, part: str
) -> None:
    bomb = _inflated(history.report.path, tmp_path / "收到.xlsx", part, 64 << 20)
    code, output = verify_report(tmp_path, bomb)
    assert code == 1, output
    assert f"its part {part} would inflate from " in output and "refused unread" in output
    assert "Traceback" not in output


def test_verify_report_refuses_a_workbook_from_another_ledger(
    history: History, tmp_path: Path
) -> None:
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    other = make_engine(database_url(other_folder))
    migrate(other)
    try:
        theirs = make_history(other, tmp_path / "exports").report
    finally:
        other.dispose()
    code, output = verify_report(tmp_path, theirs.path)
    assert code == 1
    assert "written by another marketcare installation" in output


def test_export_prints_the_anchor_and_warns_of_a_missing_recorded_file(
    engine: sa.Engine, history: History, tmp_path: Path
) -> None:
    history.report.path.unlink()
    env = make_env(tmp_path)
    env["MARKETCARE_EXPORTS_DIR"] = str(history.report.path.parent.parent)
    result = CliRunner().invoke(
        app, ["export", "--period", "week", "--date", "2026-11-24"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "warning: recorded report" in result.output and "is missing" in result.output
    assert "audit anchor: event" in result.output


def test_a_bulletin_is_recorded_in_the_ledgers_folder_and_verifies(
    engine: sa.Engine, history: History
) -> None:
    from marketcare.ledger.verification import examine
    from marketcare.reports import bulletin

    exports = history.report.path.parent.parent
    made = bulletin.produce(engine, period=WEEK, exports_dir=exports, now=LATER)
    assert made.xlsx.parent == made.pdf.parent == history.report.path.parent
    with read(engine) as conn:
        result = examine(conn)
        recorded = conn.execute(
            sa.select(Event.details).where(Event.action == "report_recorded")
        ).scalars()
        formats = sorted((d["kind"], d["format"]) for d in recorded)
    assert result.ok, [f.message for f in result.findings]
    assert formats == [("bulletin", "pdf"), ("bulletin", "xlsx"), ("compliance", "xlsx")]
