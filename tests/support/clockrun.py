"""Run the real CLI under a moved clock: ``python clockrun.py 2026-11-30T12:00:00+00:00 run``.

The clock starts at the given instant and keeps ticking (``time_machine.travel(dest,
tick=True)``) in every thread of the process, so the daemon's scheduler, its steps and
the CLI's ``now`` all see the same moved time. The monotonic clock is not moved.
"""

from __future__ import annotations

import sys
from datetime import datetime

import time_machine


def main() -> None:
    if len(sys.argv) < 3:
        sys.stderr.write("usage: clockrun.py ISO-INSTANT MARKETCARE-ARGS...\n")
        sys.exit(2)
    destination = datetime.fromisoformat(sys.argv[1])
    if destination.tzinfo is None:
        sys.stderr.write("clockrun.py: give the instant with its offset, e.g. +00:00\n")
        sys.exit(2)
    sys.argv = ["marketcare", *sys.argv[2:]]
    with time_machine.travel(destination, tick=True):
        from marketcare.cli import main as cli_main

        cli_main()


if __name__ == "__main__":
    main()
