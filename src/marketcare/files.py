"""Durable files: what a crash or a power cut must not undo.

A file is written under a temporary name, flushed, renamed into place, and its folder
flushed too, so that after a crash the name points either to the old content or to the
whole new one (exports, backups, evidence photos).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory so that a rename in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
