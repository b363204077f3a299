"""A concurrent writer for the daemon tests: one process that ticks what its stdin asks.

``python ticker.py`` reads lines ``OBLIGATION_ID TOKEN`` from stdin and records each as a
tick by 林秀英, at the real now, through the ledger's own ``tick`` (what ``marketcare tick``
calls, with the settings and the engine the command would use), printing one JSON line
per tick as soon as it returns. It ends when stdin is closed, after the lines sent.

A separate process, as the command is, but started once: a ``marketcare tick`` process
per tick costs a second of a core in imports, and the SIGKILL test ran them back to
back, taking that core from the suite's other worker for the whole test.
"""

from __future__ import annotations

import json
import sys

from marketcare.cli.common import connect
from marketcare.clock import now_utc
from marketcare.ledger.tick import tick


def main() -> None:
    _settings, engine = connect()
    try:
        for line in sys.stdin:
            oid, token = line.split()
            result = tick(engine, obligation_id=int(oid), by="林秀英", now=now_utc(), token=token)
            answer = {
                "obligation": result.obligation_id,
                "token": token,
                "state": result.state.value,
                "changed": result.changed,
                "message": result.message,
            }
            print(json.dumps(answer, ensure_ascii=False), flush=True)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
