"""RFC 3161 trusted timestamps over the chain's head, against a local authority made with
``openssl ts`` (``tests/support/tsa.py``): no outside network."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from marketcare.cli import app
from marketcare.ledger import audit, timestamps
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.db import read, write
from marketcare.ledger.models import AuditTimestamp, Event
from marketcare.ledger.verification import Examination, examine
from marketcare.ops import timestamping
from marketcare.reports import delivery
from marketcare.settings import Settings, load_settings

from .conftest import database_url, utc
from .support.history import WEEK, History, make_history
from .support.procs import make_env
from .support.tamper import rehash, unguarded
from .support.tsa import Authority, local_authority

NOW = utc(2026, 11, 24, 2, 0)


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    with local_authority() as tsa:
        yield tsa


@pytest.fixture
def history(engine: sa.Engine, tmp_path: Path) -> History:
    return make_history(engine, tmp_path / "exports")


def settings_for(tmp_path: Path, tsa: Authority) -> Settings:
    return load_settings(
        database_url=database_url(tmp_path),
        tsa_url=tsa.url,
        tsa_certificates=tsa.ca_cert,
        exports_dir=tmp_path / "exports",
    )


def checked(engine: sa.Engine, tsa: Authority) -> Examination:
    roots = timestamps.load_roots(tsa.ca_cert)
    with read(engine) as conn:
        return examine(conn, timestamps=lambda c, hash_at: timestamps.check(c, hash_at, roots))


def problems(result: Examination) -> str:
    return "\n".join(f.message for f in result.findings)


def test_the_head_is_timestamped_and_the_token_verifies(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    done = timestamping.stamp(engine, settings_for(tmp_path, authority), now=NOW, reason="daily")
    with read(engine) as conn:
        head = audit.head(conn)
        row = conn.execute(sa.select(AuditTimestamp)).one()
    assert (done.seq, done.hash) == (head.seq, head.hash) == (row.seq, row.hash)
    assert row.tsa == authority.url and row.reason == "daily" and len(row.token) > 500
    result = checked(engine, authority)
    assert result.ok, problems(result)
    assert "1 trusted timestamps hold" in result.held


def test_a_token_over_a_different_head_is_refused(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    with read(engine) as conn:
        head = audit.head(conn)
    roots = timestamps.load_roots(authority.ca_cert)
    other = timestamping.request_token(authority.url, head.seq, "0" * 64, roots=roots, timeout=30)
    # stored as if it witnessed the real head: a genuine token, over another digest
    timestamps.record(
        engine, seq=head.seq, head_hash=head.hash, tsa=authority.url, reason="daily",
        token=other, now=NOW,
    )  # fmt: skip
    result = checked(engine, authority)
    assert not result.ok
    assert f"event {head.seq}): refused: not a valid timestamp over this head" in problems(result)


def test_a_token_of_an_untrusted_authority_is_refused(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    with local_authority() as stranger:
        timestamping.stamp(engine, settings_for(tmp_path, stranger), now=NOW, reason="daily")
    result = checked(engine, authority)
    assert "refused: not a valid timestamp over this head" in problems(result)


def test_a_chain_rewritten_after_a_timestamp_is_named_by_plain_verify(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    stamped = timestamping.stamp(engine, settings_for(tmp_path, authority), now=NOW, reason="daily")
    with write(engine) as conn, unguarded(conn):
        first = conn.execute(sa.select(Event).where(Event.seq == 1)).one()
        conn.execute(
            sa.update(Event).where(Event.seq == 1).values(at=first.at - timedelta(hours=1))
        )
        rehash(conn, 1)
    result = checked(engine, authority)
    assert result.chain.ok  # the chain itself verifies: it was rehashed
    assert f"the authority witnessed {stamped.hash[:16]}… at event {stamped.seq}" in problems(
        result
    )
    assert f"the history up to event {stamped.seq} was rewritten" in problems(result)


def test_the_daemon_stamps_after_each_report_and_daily_otherwise(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    settings = settings_for(tmp_path, authority)
    first = timestamping.stamp_if_due(engine, settings, now=NOW)
    assert first is not None and first.reason == "report"
    assert timestamping.stamp_if_due(engine, settings, now=NOW) is None  # nothing new
    ledger_tick.tick(engine, obligation_id=history.waste, by="补录", now=NOW)
    assert timestamping.stamp_if_due(engine, settings, now=NOW + timedelta(hours=2)) is None
    daily = timestamping.stamp_if_due(engine, settings, now=NOW + timedelta(days=1))
    assert daily is not None and daily.reason == "daily"
    delivery.export(
        engine, period=WEEK, exports_dir=tmp_path / "exports", now=NOW + timedelta(days=1, hours=1)
    )
    after_report = timestamping.stamp_if_due(engine, settings, now=NOW + timedelta(days=1, hours=1))
    assert after_report is not None and after_report.reason == "report"
    assert len(authority.requests) >= 3
    assert checked(engine, authority).ok


def test_audit_verify_checks_the_stored_tokens_with_the_configured_certificate(
    engine: sa.Engine, history: History, tmp_path: Path, authority: Authority
) -> None:
    timestamping.stamp(engine, settings_for(tmp_path, authority), now=NOW, reason="daily")
    env = make_env(tmp_path, exports_dir=str(tmp_path / "exports"))
    runner = CliRunner()
    unchecked = runner.invoke(app, ["audit", "verify"], env=env)
    assert unchecked.exit_code == 1
    assert "1 trusted timestamps stored but not checked: set tsa_certificates" in unchecked.output
    env.update(MARKETCARE_TSA_URL=authority.url, MARKETCARE_TSA_CERTIFICATES=str(authority.ca_cert))
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "ok: 1 trusted timestamps hold" in ok.output
    stamped = runner.invoke(app, ["audit", "timestamp"], env=env)
    assert stamped.exit_code == 0 and "timestamped event" in stamped.output


def test_a_timestamp_authority_without_its_certificate_is_a_settings_error() -> None:
    with pytest.raises(Exception, match="tsa_certificates"):
        load_settings(tsa_url="http://127.0.0.1:9/tsa")
