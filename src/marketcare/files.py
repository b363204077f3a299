"""Durable files: what a crash or a power cut must not undo.

A file is written under a temporary name, flushed, renamed into place, and its folder
flushed too, so that after a crash the name points either to the old content or to the
whole new one (exports, backups, evidence photos). And a zip from outside is looked at
before it is inflated.
"""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path

from marketcare.errors import BadInput, Unavailable

#: a part of a zip (a workbook) that inflates more than this many times its stored size,
#: beyond INFLATE_FLOOR bytes, is a zip bomb: the XML of a workbook inflates 5 to 20
#: times (Apache POI's ZipSecureFile refuses 100 as well)
MAX_INFLATE_RATIO = 100
INFLATE_FLOOR = 1_000_000


def refuse_zip_bomb(data: bytes, name: str) -> None:
    """Refuse a zip (a workbook from outside) with a part that would inflate to far more
    than any spreadsheet writes, before a reader inflates it into memory.

    The sizes are the ones the zip declares; Python's ``zipfile`` (which openpyxl uses)
    never inflates a part beyond its declared size, so a part cannot lie its way past.
    Not a zip: nothing to say here, the reader says what the file is.
    """
    try:
        parts = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        return
    for part in parts:
        if part.file_size > max(INFLATE_FLOOR, MAX_INFLATE_RATIO * part.compress_size):
            raise BadInput(
                f"{name}: its part {part.filename} would inflate from "
                f"{part.compress_size:,} to {part.file_size:,} bytes, more than any "
                "spreadsheet writes; refused unread"
            )


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory so that a rename in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def probe_folder(path: Path) -> None:
    """Write, flush and remove a small file in ``path``: raises OSError when the folder
    cannot take a write (a full or read-only disk), as the next export or photo would."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"marketcare write probe\n")
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)


def folder_fault(exc: OSError) -> Unavailable:
    """An error of the filesystem (a folder read-only, missing or not a folder, a full
    disk) as "cannot be used for now": someone must fix the folder, then try again."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENOENT: "no such file or folder",
    }.get(exc.errno or 0, reason)
    return Unavailable(f"cannot use {where}: {hint}", retry_after=60)
