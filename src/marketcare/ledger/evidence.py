"""Photos (and PDFs) kept as evidence of a completion or a rectification.

Stored once under their SHA-256 in the evidence folder, written to a temporary name and
renamed, so a crash never leaves half a photo under a real name. The type is taken from
the file's first bytes, not its name: a phone may send ``image.jpg`` that is HEIC.

A hash is not a right. A photo is read through a record that holds it (a completion or a
problem of a market the reader may view), and attached to a record only by whoever
uploaded it, or when the record's market already holds it: knowing another market's
hash gets you neither its photo nor a way to attach it to your own records.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from marketcare.errors import BadInput
from marketcare.ledger.db import dialect_insert, read, retrying, write
from marketcare.ledger.models import Completion, EvidenceUpload, Obligation, ProblemRow

MAX_BYTES = 10_000_000

#: the kinds of evidence accepted, by their first bytes → file extension
KINDS = {
    "jpeg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "heic": ".heic",
    "pdf": ".pdf",
}


class EvidenceRejected(BadInput):
    """A file is not a photo we accept, or is too large; the message says which and why."""

    def __init__(self, label: str, reason: str, field: str = "file") -> None:
        super().__init__(f"{label}: {reason}", field)
        self.reason = reason


def sniff(head: bytes) -> str | None:
    """The kind of a file from its first 16 bytes, or None when it is not one we take."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in {b"heic", b"heix", b"mif1", b"msf1", b"hevc"}:
        return "heic"
    if head.startswith(b"%PDF-"):
        return "pdf"
    return None


#: the most pixels a photo may have: a phone camera's largest is about 200 million
#: (16,320 × 12,240); more is a decompression bomb, not evidence
MAX_PIXELS = 250_000_000


def pixels(data: bytes, kind: str) -> tuple[int, int] | None:
    """A photo's width and height as its header declares them, without decoding it;
    None when the header does not say (HEIC, a PDF, a truncated file)."""
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if kind == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                width = 1 + int.from_bytes(data[24:27], "little")
                return width, 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if chunk == b"VP8 ":
                width = int.from_bytes(data[26:28], "little") & 0x3FFF
                return width, int.from_bytes(data[28:30], "little") & 0x3FFF
        if kind == "jpeg":
            at = 2
            while at + 9 < len(data):
                if data[at] != 0xFF:
                    return None
                marker = data[at + 1]
                if marker == 0xFF:  # a fill byte before the marker
                    at += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    at += 2
                    continue
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame
                    height = int.from_bytes(data[at + 5 : at + 7], "big")
                    return int.from_bytes(data[at + 7 : at + 9], "big"), height
                at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    except IndexError:
        return None
    return None


def store_bytes(
    name: str, data: bytes, evidence_dir: Path, *, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    """Keep ``data`` (named ``name`` by its sender) as evidence; returns its record."""
    label = Path(name).name or "photo"
    if not data:
        raise EvidenceRejected(label, "the file is empty")
    if len(data) > max_bytes:
        raise EvidenceRejected(
            label, f"{len(data) / 1e6:.1f} MB is more than the {max_bytes / 1e6:.0f} MB allowed"
        )
    kind = sniff(data[:16])
    if kind is None:
        raise EvidenceRejected(
            label, "not a photo; send a JPEG, PNG, WebP or HEIC image (or a PDF)"
        )
    size = pixels(data, kind)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        # kept as sent, it would be decoded by every phone that shows the record
        raise EvidenceRejected(
            label,
            f"the image says it is {size[0]} × {size[1]} pixels, more than any camera "
            f"takes (at most {MAX_PIXELS // 1_000_000} million); send the photo as taken",
        )
    digest = hashlib.sha256(data).hexdigest()
    evidence_dir.mkdir(parents=True, exist_ok=True)
    target = evidence_dir / f"{digest}{KINDS[kind]}"
    if not target.exists():
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.part")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    return {"name": label, "sha256": digest, "path": str(target), "bytes": len(data), "kind": kind}


def store_file(path: Path, evidence_dir: Path, *, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Keep a file given on the command line as evidence (see ``store_bytes``)."""
    label = f"--evidence {path}"
    if not path.is_file():
        raise EvidenceRejected(label, "no such file", "--evidence")
    size = path.stat().st_size
    if size > max_bytes:
        raise EvidenceRejected(
            label,
            f"{size / 1e6:.1f} MB is more than the {max_bytes / 1e6:.0f} MB allowed",
            "--evidence",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvidenceRejected(label, exc.strerror or str(exc), "--evidence") from None
    try:
        return store_bytes(path.name, data, evidence_dir, max_bytes=max_bytes)
    except EvidenceRejected as exc:
        raise EvidenceRejected(label, exc.reason, "--evidence") from None


def path_of(record: dict[str, Any], evidence_dir: Path) -> Path | None:
    """Where a stored record's file is, if it is still there (never outside the folder)."""
    digest = str(record.get("sha256", ""))
    if not is_digest(digest):
        return None
    for ext in KINDS.values():
        candidate = evidence_dir / f"{digest}{ext}"
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- who may use a hash


def record_upload(engine: sa.Engine, digest: str, user_id: int, *, now: datetime) -> None:
    """Remember that ``user_id`` uploaded the file ``digest`` (so they may attach it)."""

    def step() -> None:
        with write(engine) as conn:
            conn.execute(
                dialect_insert(conn, EvidenceUpload)
                .values(sha256=digest, user_id=user_id, uploaded_at=now)
                .on_conflict_do_nothing()
            )

    retrying(step, what="record upload")


def markets_holding(conn: sa.Connection, digest: str) -> set[str]:
    """The markets with a completion or a problem that keeps the file ``digest``.

    The text search only narrows the rows to read: a record's evidence also holds the
    name the phone gave the file, so a photo named after another market's hash would
    match it. Only a record whose evidence keeps ``digest`` as its ``sha256`` counts.
    """
    if not is_digest(digest):
        return set()
    pattern = f"%{digest}%"
    rows = [
        *conn.execute(
            sa.select(Obligation.market_id, Completion.evidence)
            .join(Completion, Completion.obligation_id == Obligation.id)
            .where(sa.cast(Completion.evidence, sa.Text).like(pattern))
        ),
        *conn.execute(
            sa.select(ProblemRow.market_id, ProblemRow.evidence).where(
                sa.cast(ProblemRow.evidence, sa.Text).like(pattern)
            )
        ),
    ]
    return {str(market) for market, kept in rows if keeps(kept, digest)}


def keeps(kept: Any, digest: str) -> bool:
    """Whether a record's evidence, as stored (``{"items": [file, …]}``), keeps the file
    ``digest``."""
    items = kept.get("items") if isinstance(kept, dict) else None
    return isinstance(items, list) and any(
        isinstance(i, dict) and i.get("sha256") == digest for i in items
    )


def attachable(
    engine: sa.Engine, digests: Iterable[str], *, user_id: int, market_id: str
) -> set[str]:
    """Which of ``digests`` the user may attach to a record of ``market_id``: the ones
    they uploaded, and the ones that market's records already keep."""
    wanted = [d for d in dict.fromkeys(digests) if is_digest(d)]
    if not wanted:
        return set()
    with read(engine) as conn:
        mine = set(
            conn.execute(
                sa.select(EvidenceUpload.sha256).where(
                    EvidenceUpload.user_id == user_id, EvidenceUpload.sha256.in_(wanted)
                )
            ).scalars()
        )
        held = {d for d in wanted if d not in mine and market_id in markets_holding(conn, d)}
    return mine | held


def is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
