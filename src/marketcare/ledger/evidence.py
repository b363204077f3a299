"""Photos (and PDFs) kept as evidence of a completion or a rectification.

Stored once under their SHA-256 in the evidence folder, written to a temporary name and
renamed, so a crash never leaves half a photo under a real name. The type is taken from
the file's first bytes, not its name: a phone may send ``image.jpg`` that is HEIC.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from marketcare.errors import BadInput

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
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        return None
    for ext in KINDS.values():
        candidate = evidence_dir / f"{digest}{ext}"
        if candidate.is_file():
            return candidate
    return None
