"""The ``marketcare`` command: a stable contract that tests and later tools rely on.

Each subject has its own module (schedules, work, reports, problems, users, maintenance);
they register their commands on the one ``app`` from ``common``. Modules import what a
command needs inside the command, so ``marketcare --help`` loads no database, web or
spreadsheet code.
"""

from __future__ import annotations

import logging
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
from marketcare.cli.common import app


def main() -> None:
    """Entry point: no traceback reaches a user unless MARKETCARE_DEBUG is set."""
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # a bug: say so in one line, keep the details in the log
        if os.environ.get("MARKETCARE_DEBUG"):
            raise
        logging.getLogger("marketcare").error("internal error", exc_info=True)
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc} (set MARKETCARE_DEBUG=1 for details)\n"
        )
        sys.exit(70)


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
