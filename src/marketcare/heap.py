"""The process's frozen heap: one owner for ``gc.freeze()``.

Python has one frozen set per process, not one per caller: ``gc.unfreeze()`` thaws
everything, whoever froze it. The web app freezes what is alive after start-up so that
full collections stop walking the parsed schedule (``settle``; the tick's p99), and the
bulletin freezes what lived before its PDF so that collecting the PDF's garbage is
quick (``collecting``). Each used ``gc`` directly, so a daemon's first weekly bulletin
thawed the web app's start-up set and its full collections grew long again until the
next restart. Both now go through here: a thaw happens only when nobody still relies on
the frozen set.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # web apps served by this process that settled their heap


def settle() -> None:
    """Collect, then freeze everything alive: what a server keeps for its whole life
    (modules, the app, the parsed schedule) leaves the collector's way."""
    global _holders
    with _lock:
        gc.collect()
        gc.freeze()
        _holders += 1


def unsettle() -> None:
    """The server that settled stops: thaw, unless another one still serves."""
    global _holders
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0:
            gc.unfreeze()


@contextmanager
def collecting() -> Iterator[None]:
    """Freeze what is alive, run the block, then collect only the block's garbage.

    Without a settled server the frozen set is thawed afterwards, as before. With one,
    it stays frozen: thawing would undo the server's settling. So that no garbage is
    frozen for good, what is not frozen yet is collected first (quick: the server's big
    set is already out of the way); what was alive when the block began (its caller's
    data) stays frozen too: reference counting still frees it, and only cycles among
    those objects wait for the server's shutdown.
    """
    if _holders:
        gc.collect()
    gc.freeze()
    try:
        yield
        gc.collect()
    finally:
        with _lock:
            if _holders == 0:
                gc.unfreeze()
