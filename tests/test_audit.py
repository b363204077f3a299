"""The audit record against an insider: complete events, the replay of the tables, anchors
outside the database, append-only history. Runs on SQLite and on PostgreSQL.

The tamper matrix is the issue's table plus its additions: each tamper is made as someone
with the database password would make it (the append-only guards lifted for the change and
put back, ``tests/support/tamper.py``), and each is found by ``audit verify`` (or by
``audit verify --anchor``) and named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from marketcare.cli import app
from marketcare.ledger import audit
from marketcare.ledger import materialise as ledger_materialise
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read, write
from marketcare.ledger.models import AuditHead, Completion, Event, Obligation, ReportRecord
from marketcare.ledger.verification import Examination, examine
from marketcare.reports import delivery
from marketcare.reports.anchors import read_anchors
from marketcare.reports.mail import ANCHOR_HEADER, SmtpConfig

from .conftest import make_schedule, utc
from .support.history import PHOTO, START, History, make_history
from .support.procs import make_env
from .support.smtp import SmtpServer
from .support.tamper import insert_event, rehash, remove_event, swap_events, unguarded


@pytest.fixture
def history(engine: sa.Engine, tmp_path: Path) -> History:
    return make_history(engine, tmp_path / "exports")


def examined(engine: sa.Engine, anchors: list[audit.Anchor] | None = None) -> Examination:
    with read(engine) as conn:
        return examine(conn, anchors=anchors or [])


def findings(result: Examination) -> str:
    return "\n".join(f"{f.check}: {f.message}" for f in result.findings)


# ---------------------------------------------------------------- complete events


def test_an_untouched_ledger_verifies_in_every_check(engine: sa.Engine, history: History) -> None:
    result = examined(engine, [history.report.anchor] if history.report.anchor else [])
    assert result.ok, findings(result)
    assert any("match the events" in line for line in result.held)
    assert any("anchor" in line and "holds" in line for line in result.held)


def test_a_completion_event_holds_every_fact_a_report_counts(
    engine: sa.Engine, history: History
) -> None:
    with read(engine) as conn:
        ev = conn.execute(
            sa.select(Event).where(
                Event.obligation_id == history.aquatic, Event.action == "completed"
            )
        ).one()
    d = ev.details
    assert ev.actor == "林秀英" and ev.to_state == "done"
    assert d["readings"] == {"chlorine": 1000} and d["note"] == "已冲洗，浸泡30分钟"
    assert d["items"]["washed"] is not None
    assert d["evidence"] == [PHOTO]  # the photo's hash, not the photo
    assert d["phone_at"] == "2026-11-23T11:02:00+00:00"
    assert d["arrived_at"] == "2026-11-23T11:20:00+00:00"
    assert d["at"] == "2026-11-23T11:02:00+00:00" and d["time_basis"] == "phone"


def test_every_problem_move_and_schedule_version_is_in_the_event_log(
    engine: sa.Engine, history: History
) -> None:
    with read(engine) as conn:
        actions = [
            r.action
            for r in conn.execute(
                sa.select(Event.action)
                .where(Event.problem_id == history.problem)
                .order_by(Event.seq)
            )
        ]
        applied = conn.execute(
            sa.select(Event.details).where(Event.action == "schedule_applied")
        ).scalar_one()
    assert actions == [
        "problem_raised",
        "problem_assigned",
        "problem_rectified",
        "problem_verified",
        "completed",  # its re-inspection, closed by the office
    ]
    assert applied["digest"] == make_schedule().digest and applied["created"] == 0


# ---------------------------------------------------------------- the tamper matrix


def _last_event_and_head_back(conn: sa.Connection, h: History) -> str:
    last = conn.execute(sa.select(sa.func.max(Event.seq))).scalar_one()
    before = conn.execute(sa.select(Event.hash).where(Event.seq == last - 1)).scalar_one()
    conn.execute(sa.delete(Event).where(Event.seq == last))
    conn.execute(sa.update(AuditHead).values(seq=last - 1, hash=before))
    return f"reports row {h.report.report_id} is in the table but no event records it"


def _forge_and_rehash(conn: sa.Connection, h: History) -> str:
    """A completion that never happened, slipped in before the report, hashes redone."""
    last = conn.execute(sa.select(sa.func.max(Event.seq))).scalar_one()
    insert_event(
        conn,
        last,
        audit.NewEvent(
            at=utc(2026, 11, 23, 11, 25),
            actor="林秀英",
            action="completed",
            obligation_id=h.waste,
            from_state="missed",
            to_state="late",
            details={"completion_id": 999999, "token": "forged", "failures": {}},
        ),
    )
    return f"obligations row {h.waste}: state is 'missed' in the table, 'late' by event {last}"


def _missed_to_done(conn: sa.Connection, h: History) -> str:
    conn.execute(
        sa.update(Obligation)
        .where(Obligation.id == h.waste)
        .values(state="done", completed_at=utc(2026, 11, 23, 11, 0))
    )
    return f"obligations row {h.waste}: state is 'done' in the table, 'missed' by event"


def _author(conn: sa.Connection, h: History) -> str:
    conn.execute(sa.update(Completion).where(Completion.id == h.done).values(by="张三"))
    return f"completions row {h.done}: by is '张三' in the table, '林秀英' by event"


def _reading(conn: sa.Connection, h: History) -> str:
    conn.execute(
        sa.update(Completion).where(Completion.id == h.failed).values(readings={"chlorine": 450})
    )
    return f"completions row {h.failed}: readings is {{'chlorine': 450}} in the table"


def _delete_completion(conn: sa.Connection, h: History) -> str:
    conn.execute(sa.delete(Completion).where(Completion.id == h.redone))
    return f"completions row {h.redone} is missing from the table; event"


def _delete_middle_event(conn: sa.Connection, h: History) -> str:
    conn.execute(sa.delete(Event).where(Event.seq == 5))
    return "event 5 was removed"


def _delete_middle_event_and_rehash(conn: sa.Connection, h: History) -> str:
    """The failed reading's event goes, the later events renumbered and rehashed."""
    seq = conn.execute(
        sa.select(Event.seq).where(Event.action == "failed_check", Event.obligation_id == h.veg)
    ).scalar_one()
    remove_event(conn, seq)
    return f"completions row {h.failed} is in the table but no event records it"


def _reorder(conn: sa.Connection, h: History) -> str:
    a, b = conn.execute(
        sa.select(Event.seq)
        .where(Event.obligation_id == h.veg, Event.action.in_(["failed_check", "completed"]))
        .order_by(Event.seq)
    ).scalars()
    swap_events(conn, a, b, rehash_after=False)
    return f"event {a} was altered"


def _reorder_and_rehash(conn: sa.Connection, h: History) -> str:
    a, b = conn.execute(
        sa.select(Event.seq)
        .where(Event.obligation_id == h.veg, Event.action.in_(["failed_check", "completed"]))
        .order_by(Event.seq)
    ).scalars()
    swap_events(conn, a, b, rehash_after=True)
    return f"event {a} moves obligation {h.veg} from 'failed', but event"


MATRIX: dict[str, Callable[[sa.Connection, History], str]] = {
    "delete the last event and roll the head back": _last_event_and_head_back,
    "forge an event and recompute every later hash and the head": _forge_and_rehash,
    "flip an obligation from missed to done": _missed_to_done,
    "change a completion's author": _author,
    "change a reading in completions only": _reading,
    "delete a completion": _delete_completion,
    "delete a middle event": _delete_middle_event,
    "delete a middle event and rehash the rest": _delete_middle_event_and_rehash,
    "reorder two events": _reorder,
    "reorder two events and rehash the rest": _reorder_and_rehash,
}


@pytest.mark.parametrize("tamper", list(MATRIX), ids=list(MATRIX))
def test_audit_verify_finds_and_names_each_tamper(
    engine: sa.Engine, history: History, tamper: str
) -> None:
    assert examined(engine).ok
    with write(engine) as conn, unguarded(conn):
        expected = MATRIX[tamper](conn, history)
    result = examined(engine)
    assert not result.ok
    assert expected in findings(result), findings(result)


def test_a_deleted_recorded_report_file_is_found_and_named(
    engine: sa.Engine, history: History
) -> None:
    history.report.path.unlink()
    result = examined(engine)
    assert not result.ok
    assert f"report {history.report.report_id} (week 2026-W48, revision 1)" in findings(result)
    assert "is missing" in findings(result)


def test_a_whole_chain_rewritten_consistently_passes_verify_but_not_the_anchor(
    engine: sa.Engine, history: History
) -> None:
    with read(engine) as conn:
        anchor = audit.head(conn)  # as an email sent now carries it
    with write(engine) as conn, unguarded(conn):
        # a reading changed in the table *and* in its event, every later hash redone:
        # nothing in the database is left to contradict it
        ev = conn.execute(
            sa.select(Event).where(
                Event.action == "failed_check", Event.obligation_id == history.veg
            )
        ).one()
        conn.execute(
            sa.update(Event)
            .where(Event.seq == ev.seq)
            .values(details={**ev.details, "readings": {"chlorine": 450}})
        )
        conn.execute(
            sa.update(Completion)
            .where(Completion.id == history.failed)
            .values(readings={"chlorine": 450})
        )
        rehash(conn, ev.seq)
    assert examined(engine).ok  # the database alone cannot tell
    result = examined(engine, [anchor])
    assert not result.ok
    assert f"event {anchor.seq} differs from the anchor" in findings(result)
    assert "was rewritten" in findings(result)


def test_history_cut_back_after_an_anchor_is_named(engine: sa.Engine, history: History) -> None:
    with read(engine) as conn:
        anchor = audit.head(conn)
    with write(engine) as conn, unguarded(conn):
        # the report and its event both gone, the head rolled back: consistent inside
        last = anchor.seq
        before = conn.execute(sa.select(Event.hash).where(Event.seq == last - 1)).scalar_one()
        conn.execute(sa.delete(Event).where(Event.seq == last))
        conn.execute(sa.update(AuditHead).values(seq=last - 1, hash=before))
        conn.execute(sa.delete(ReportRecord).where(ReportRecord.id == history.report.report_id))
    assert examined(engine).ok  # nothing inside the database contradicts it
    result = examined(engine, [anchor])
    assert f"events {last}–{last} were removed (history cut back)" in findings(result)


# ---------------------------------------------------------------- anchors outside the database


def test_the_export_carries_the_chain_head_in_a_property_and_the_summary_footer(
    engine: sa.Engine, history: History
) -> None:
    anchors = read_anchors(history.report.path)
    sources = sorted(a.source.split(", ")[1] for a in anchors)
    assert sources == ["document property", "summary sheet footer"]
    assert {(a.seq, a.hash) for a in anchors} == {
        (history.report.anchor.seq, history.report.anchor.hash)  # type: ignore[union-attr]
    }
    with read(engine) as conn:
        record = conn.execute(sa.select(ReportRecord)).one()
        at_anchor = conn.execute(sa.select(Event.hash).where(Event.seq == record.anchor_seq))
        assert at_anchor.scalar_one() == record.anchor_hash


def _smtp(server: SmtpServer) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=server.port,
        security="none",
        user=None,
        password=None,
        sender="marketcare@licheng.example.org",
        timeout=10.0,
    )


def test_an_email_received_and_saved_is_an_anchor_that_catches_a_later_rewrite(
    engine: sa.Engine, history: History, tmp_path: Path, smtp: SmtpServer
) -> None:
    delivery.enqueue(
        engine,
        history.report.report_id,
        ["jianguan@licheng.example.org"],
        now=utc(2026, 11, 24, 1, 5),
        sender="marketcare@licheng.example.org",
    )
    assert delivery.send_due(engine, _smtp(smtp), now=utc(2026, 11, 24, 1, 5)).sent == 1
    saved = tmp_path / "周报.eml"
    saved.write_bytes(smtp.received[0].content)  # the office's mail client saves it
    message = smtp.received[0].message
    with read(engine) as conn:
        head = audit.head(conn)
    assert message[ANCHOR_HEADER] == head.text()
    body = message.get_body(("plain",))
    assert body is not None and head.hash in body.get_content()

    env = make_env(tmp_path)
    runner = CliRunner()
    good = runner.invoke(app, ["audit", "verify", "--anchor", str(saved)], env=env)
    assert good.exit_code == 0, good.output
    assert f"holds: event {head.seq}" in good.output
    assert "X-Marketcare-Audit-Head header" in good.output and "body" in good.output

    with write(engine) as conn, unguarded(conn):
        first = conn.execute(sa.select(sa.func.min(Event.seq))).scalar_one()
        ev = conn.execute(sa.select(Event).where(Event.seq == first)).one()
        conn.execute(
            sa.update(Event).where(Event.seq == first).values(at=ev.at - timedelta(days=1))
        )
        rehash(conn, first)
    bad = runner.invoke(app, ["audit", "verify", "--anchor", str(saved)], env=env)
    assert bad.exit_code == 1
    assert f"event {head.seq} differs from the anchor (周报.eml" in bad.output
    assert "Traceback" not in bad.output


# ---------------------------------------------------------------- append-only in the database


@pytest.mark.parametrize("table", ["events", "completions"])
def test_the_ledger_refuses_to_change_or_remove_history(
    engine: sa.Engine, history: History, table: str
) -> None:
    for statement in (f"UPDATE {table} SET at = at", f"DELETE FROM {table}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), write(engine) as conn:
            conn.execute(sa.text(statement))
    assert examined(engine).ok


def test_a_lifted_guard_is_itself_a_finding(engine: sa.Engine, history: History) -> None:
    with write(engine) as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER completions_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE completions DISABLE TRIGGER completions_append_only")
    result = examined(engine)
    assert "append-only trigger(s) removed or disabled: completions_" in findings(result)


@pytest.mark.postgresql_only("roles and grants exist only on PostgreSQL")
def test_the_applications_role_cannot_alter_history(engine: sa.Engine, history: History) -> None:
    role = f"mc_app_{hashlib.sha256(str(engine.url).encode()).hexdigest()[:10]}"
    grants = (
        Path(__file__).resolve().parent.parent / "deploy" / "postgresql-roles.sql"
    ).read_text()
    with engine.begin() as conn:
        owner = conn.execute(sa.text("SELECT current_user")).scalar_one()
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        body = "\n".join(line for line in grants.splitlines() if not line.lstrip().startswith("--"))
        for statement in (
            body.replace(':"app"', f'"{role}"').replace(':"owner"', f'"{owner}"').split(";")
        ):
            if statement.strip():
                conn.exec_driver_sql(statement)
        # the owner lifts the triggers: only the grants stand between the role and history
        for t in ("events", "completions", "audit_timestamps"):
            conn.exec_driver_sql(f"ALTER TABLE {t} DISABLE TRIGGER USER")
    app_engine = sa.create_engine(engine.url.set(username=role), poolclass=sa.pool.NullPool)
    try:
        for statement in (
            "UPDATE events SET actor = 'someone else' WHERE seq = 3",
            "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)",
            "TRUNCATE events",
            f"UPDATE completions SET readings = '{{}}' WHERE id = {history.done}",
            f"DELETE FROM completions WHERE id = {history.redone}",
        ):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                with app_engine.begin() as conn:
                    conn.exec_driver_sql(statement)
        # and it still does its work: a tick appends a completion and its event
        with read(engine) as conn:
            upcoming = conn.execute(
                sa.select(Obligation.id).where(Obligation.state == "missed").limit(1)
            ).scalar_one()
        result = ledger_tick.tick(
            app_engine, obligation_id=upcoming, by="补录", now=utc(2026, 11, 24, 2),
            readings={"chlorine": 1000} if upcoming != history.waste else None,
        )  # fmt: skip
        assert result.changed
    finally:
        app_engine.dispose()
        with engine.begin() as conn:
            for t in ("events", "completions", "audit_timestamps"):
                conn.exec_driver_sql(f"ALTER TABLE {t} ENABLE TRIGGER USER")
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
    assert examined(engine).ok


def test_upgrading_a_ledger_with_history_marks_where_complete_events_begin(
    engine: sa.Engine,
) -> None:
    from alembic import command

    from marketcare.ledger.db import alembic_config

    ledger_materialise.materialise(engine, make_schedule(), now=START, horizon=timedelta(days=1))
    ledger_sweep.sweep_all(engine, now=utc(2026, 11, 24, 0, 0))
    config = alembic_config(engine)
    command.downgrade(config, "i10_phone_time")  # the ledger as the version before had it
    command.upgrade(config, "head")
    with read(engine) as conn:
        baseline = conn.execute(sa.select(Event).where(Event.action == "audit_baseline")).one()
        obligations = conn.execute(sa.select(sa.func.count()).select_from(Obligation)).scalar()
        assert baseline.seq == audit.head(conn).seq
    assert baseline.details["obligations"] == obligations
    result = examined(engine)
    assert result.ok, findings(result)


def _event(i: int) -> audit.NewEvent:
    return audit.NewEvent(
        at=START + timedelta(seconds=i, microseconds=7),
        actor="李管理员",
        action="note",
        from_state="open" if i % 2 else None,
        to_state="done",
        details={"seq": i, "读数": 1000.5, "note": 'a "quote"\n'},
    )


def test_an_actor_with_a_nul_character_is_hashed_as_the_ledger_stores_it(
    engine: sa.Engine,
) -> None:
    """PostgreSQL's text cannot hold U+0000 and the ledger drops it there; the hash covers
    the name as stored, so the chain verifies on both databases."""
    with write(engine) as conn:
        audit.append(conn, [_event(0)])
    with write(engine) as conn:
        audit.append(
            conn, [replace(_event(1), actor="李\x00管理员", details={"note": "空\x00字符"})]
        )
    with read(engine) as conn:
        rows = conn.execute(sa.select(Event).order_by(Event.seq)).all()
        assert audit.verify(conn).ok
    kept = "李\x00管理员" if engine.dialect.name == "sqlite" else "李管理员"
    assert rows[-1].actor == kept
    assert rows[-1].details == {"note": "空\x00字符"}
