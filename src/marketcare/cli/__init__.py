"""The ``marketcare`` command: a stable contract that tests and later tools rely on.

Each subject has its own module (schedules, work, reports, problems, users, maintenance);
they register their commands on the one ``app`` from ``common``. Modules import what a
command needs inside the command, so ``marketcare --help`` loads no database, web or
spreadsheet code.
"""

from __future__ import annotations

import os
import sys

from marketcare.cli import (  # noqa: F401
    inspections,
    maintenance,
    problems,
    reports,
    schedules,
    users,
    work,
)
from marketcare.cli.common import EXIT_INTERNAL, EXIT_INTERRUPTED, app


def main() -> None:
    """Entry point: no traceback reaches a user unless MARKETCARE_DEBUG is set.

    A bug (anything ``handled`` does not know) is one line on stderr and exit 70; its
    traceback goes to a file whose name that line gives, for a bug report, and nowhere
    else (not through the log handler either, which would print it on stderr).
    """
    _stop_on_sigterm()
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:  # before or after a command's own handling (``handled``)
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line, keep the details in a file
        if os.environ.get("MARKETCARE_DEBUG"):
            raise
        details = _keep_details()
        where = f"details in {details}; " if details else ""
        summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        sys.stderr.write(
            f"internal error: {summary} ({where}set MARKETCARE_DEBUG=1 to print them)\n"
        )
        sys.exit(EXIT_INTERNAL)


def _stop_on_sigterm() -> None:
    """Make SIGTERM (a service manager, ``timeout``, ``kill``) stop a command as Ctrl-C
    does: its cleanups run (a backup's ``.partial`` file is removed, a transaction rolled
    back) and it exits 130, instead of dying where it stands. ``run`` installs its own."""
    import signal

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _keep_details() -> str | None:
    """Write the traceback being handled to a new file in the temporary folder."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="marketcare-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(" ".join(sys.argv) + "\n\n")
            f.write(traceback.format_exc())
    except OSError:
        return None
    return path


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
