"""RFC 3161 trusted timestamps over the audit chain's head: stored, and checked.

A time-stamping authority (TSA) signs "this digest existed at this time". The daemon
asks for one over the chain's head daily and with each report (``ops/timestamping.py``);
here the tokens are kept (append-only, like the events) and checked by
``audit verify``: each token must be a valid signature of a trusted authority over the
head the ledger *still* has at that event. A chain rewritten consistently after a token
was issued cannot match it, and nobody can get a token dated in the past.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

from marketcare.errors import MarketcareError
from marketcare.ledger.db import read, retrying, write
from marketcare.ledger.models import AuditTimestamp, ReportRecord

#: how often the head is stamped when nothing else asks for it
DAILY = timedelta(days=1)


def message(seq: int, head_hash: str) -> bytes:
    """What the authority stamps: the head's sequence number and hash, named."""
    return f"marketcare audit head {seq} {head_hash}".encode()


def digest(seq: int, head_hash: str) -> bytes:
    return hashlib.sha256(message(seq, head_hash)).digest()


def load_roots(path: Path) -> list[x509.Certificate]:
    """The certificates trusted to sign timestamps (PEM; the authority's CA, or its own)."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise MarketcareError(f"tsa_certificates: cannot read {path}: {exc}") from None
    if not certs:
        raise MarketcareError(f"tsa_certificates: {path} holds no PEM certificate")
    return certs


def verifier(roots: Sequence[x509.Certificate], *, nonce: int | None = None) -> Any:
    builder = VerifierBuilder()
    for cert in roots:
        builder = builder.add_root_certificate(cert)
    if nonce is not None:
        builder = builder.nonce(nonce)
    return builder.build()


def record(
    engine: sa.Engine,
    *,
    seq: int,
    head_hash: str,
    tsa: str,
    reason: str,
    token: bytes,
    now: datetime,
) -> int:
    """Keep a token (already checked by the caller); returns its id."""
    gen_time = _utc(decode_timestamp_response(token).tst_info.gen_time)

    def step() -> int:
        with write(engine) as conn:
            return int(
                conn.execute(
                    sa.insert(AuditTimestamp)
                    .values(
                        seq=seq,
                        hash=head_hash,
                        tsa=tsa,
                        reason=reason,
                        gen_time=gen_time,
                        token=token,
                        created_at=now,
                    )
                    .returning(AuditTimestamp.id)
                ).scalar_one()
            )

    return retrying(step, what="record timestamp")


def due(engine: sa.Engine, *, now: datetime) -> str | None:
    """Why the head needs a timestamp now (``report`` or ``daily``), or None.

    Read from the ledger, so a restart, a new leader or downtime changes nothing: a
    report recorded after the last token asks for one, and so does a day without.
    """
    with read(engine) as conn:
        last = conn.execute(
            sa.select(AuditTimestamp.seq, AuditTimestamp.created_at)
            .order_by(AuditTimestamp.id.desc())
            .limit(1)
        ).first()
        newest_report = conn.execute(sa.select(sa.func.max(ReportRecord.generated_at))).scalar()
        head = conn.execute(sa.text("SELECT seq FROM audit_head WHERE id = 1")).scalar()
    if not head:
        return None
    if last is None:
        return "report" if newest_report is not None else "daily"
    if last.seq == head:
        return None  # nothing new to witness
    if newest_report is not None and newest_report > last.created_at:
        return "report"
    return "daily" if now - last.created_at >= DAILY else None


def check(
    conn: sa.Connection,
    hash_at: Callable[[int], str | None],
    roots: Sequence[x509.Certificate] | None,
) -> list[str]:
    """What is wrong with the stored tokens, one line each (empty: all hold).

    Without ``roots`` (no ``tsa_certificates`` set) a stored token cannot be checked,
    which is said once.
    """
    rows = conn.execute(sa.select(AuditTimestamp).order_by(AuditTimestamp.id)).all()
    if not rows:
        return []
    if not roots:
        return [
            f"{len(rows)} trusted timestamps stored but not checked: set tsa_certificates "
            "to the authority's certificate (docs/settings.md)"
        ]
    check_with = verifier(roots)
    out = []
    for r in rows:
        when = f"{r.gen_time:%Y-%m-%d %H:%M} UTC"
        name = f"timestamp {r.id} ({when}, event {r.seq})"
        try:
            response = decode_timestamp_response(r.token)
        except Exception as exc:  # the library raises its own kinds for a damaged token
            out.append(f"{name}: the token is damaged ({exc})")
            continue
        ledger_hash = hash_at(r.seq)
        if ledger_hash is None:
            out.append(f"{name}: the ledger no longer has event {r.seq} (history cut back)")
            continue
        try:
            check_with.verify(response, digest(r.seq, ledger_hash))
        except VerificationError as exc:
            if _holds(check_with, response, digest(r.seq, r.hash)):
                out.append(
                    f"{name}: the authority witnessed {r.hash[:16]}… at event {r.seq}, the "
                    f"ledger now has {ledger_hash[:16]}…: the history up to event {r.seq} "
                    "was rewritten"
                )
            else:
                out.append(f"{name}: refused: not a valid timestamp over this head ({exc})")
            continue
        if _utc(response.tst_info.gen_time) != _utc(r.gen_time):
            out.append(f"{name}: its recorded time differs from the token's")
    return out


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _holds(check_with: Any, response: Any, hashed: bytes) -> bool:
    try:
        return bool(check_with.verify(response, hashed))
    except VerificationError:
        return False
