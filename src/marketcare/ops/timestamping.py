"""Asking a time-stamping authority (RFC 3161, over HTTP) to witness the chain's head.

Optional: only with ``tsa_url`` set. The request carries a nonce; the answer is checked
(status, signature by a certificate of ``tsa_certificates``, the nonce, the digest) before
it is kept, so a wrong or replayed answer is never stored as a witness.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    TimestampRequestBuilder,
    VerificationError,
    decode_timestamp_response,
)

from marketcare.errors import MarketcareError
from marketcare.ledger import audit, timestamps
from marketcare.ledger.db import read
from marketcare.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stamped:
    id: int
    seq: int
    hash: str
    gen_time: datetime
    reason: str


def request_token(
    url: str, seq: int, head_hash: str, *, roots: Sequence[x509.Certificate], timeout: float
) -> bytes:
    """One request to the authority; the checked answer (DER) or MarketcareError."""
    request = (
        TimestampRequestBuilder()
        .data(timestamps.message(seq, head_hash))
        .hash_algorithm(HashAlgorithm.SHA256)
        .build()
    )
    http = urllib.request.Request(
        url,
        data=request.as_bytes(),
        headers={"Content-Type": "application/timestamp-query"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout) as answer:  # noqa: S310  # nosec B310: tsa_url is checked to be http(s) in settings
            body: bytes = answer.read()
    except (urllib.error.URLError, OSError) as exc:
        raise MarketcareError(f"time-stamping authority {url}: {exc}") from None
    try:
        response = decode_timestamp_response(body)
        timestamps.verifier(roots, nonce=request.nonce).verify(
            response, timestamps.digest(seq, head_hash)
        )
    except (VerificationError, ValueError) as exc:
        raise MarketcareError(f"time-stamping authority {url}: answer refused ({exc})") from None
    return body


def stamp(engine: sa.Engine, settings: Settings, *, now: datetime, reason: str) -> Stamped:
    """Timestamp the chain's head now and keep the token."""
    if not settings.tsa_url or settings.tsa_certificates is None:
        raise MarketcareError("set tsa_url and tsa_certificates to use trusted timestamps")
    roots = timestamps.load_roots(settings.tsa_certificates)
    audit.chain(engine)  # the head witnessed covers every event committed so far
    with read(engine) as conn:
        head = audit.head(conn)
    token = request_token(
        settings.tsa_url, head.seq, head.hash, roots=roots, timeout=settings.tsa_timeout_seconds
    )
    row_id = timestamps.record(
        engine,
        seq=head.seq,
        head_hash=head.hash,
        tsa=settings.tsa_url,
        reason=reason,
        token=token,
        now=now,
    )
    gen_time = decode_timestamp_response(token).tst_info.gen_time
    log.info(
        "audit chain head timestamped",
        extra={"seq": head.seq, "hash": head.hash[:16], "reason": reason, "tsa": settings.tsa_url},
    )
    return Stamped(row_id, head.seq, head.hash, gen_time, reason)


def stamp_if_due(engine: sa.Engine, settings: Settings, *, now: datetime) -> Stamped | None:
    """The daemon's step: a timestamp daily and after each report, when configured."""
    if not settings.tsa_url:
        return None
    reason = timestamps.due(engine, now=now)
    if reason is None:
        return None
    return stamp(engine, settings, now=now, reason=reason)
