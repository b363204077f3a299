"""WeasyPrint imported without the font tools the bulletin's PDF never calls.

WeasyPrint imports fontTools' subsetter, its variable-font instancer and its WOFF2 decoder
when it is imported, for three paths the bulletin never takes: subsetting without the
system's ``libharfbuzz-subset`` (which this system has, and which WeasyPrint prefers),
instancing a variable font, and decoding a WOFF2 web font (the page loads one static CFF
cut, ``bulletin_font``). Those modules import a hundred and fifty more of fontTools and,
through them, uharfbuzz (a second copy of HarfBuzz's code): 10-11 MiB of the process's
resident memory that no export pays (docs/benchmarks.md, "The bulletin's memory (issue
17, branch i17f)").

So while WeasyPrint imports, each of them is a stand-in module that imports the real one
on the first use of one of its names: a PDF that needs one (a variable font, a WOFF2
font, no HarfBuzz subsetter) still gets it, later. The stand-ins leave ``sys.modules`` as
soon as WeasyPrint is imported, so any other import of those modules gets the real ones;
a module already imported (by someone else, before) is left as it is.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
from typing import Any

#: the modules WeasyPrint imports for paths the bulletin does not take, and the names it
#: imports from them (``from module import name``: the name is needed at once)
DEFERRED: dict[str, tuple[str, ...]] = {
    "fontTools.subset": (),
    "fontTools.ttLib.woff2": (),
    "fontTools.varLib.instancer": ("instantiateVariableFont",),
}

logger = logging.getLogger(__name__)
_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """A stand-in for ``name``: the real module is imported on the first use of a name."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # the import system's questions, not a use
            raise AttributeError(attribute)
        return getattr(_real(self.__name__), attribute)


class _TooEarly(ImportError):
    """WeasyPrint used a deferred module as it imported (a version unlike this one)."""


def _real(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if isinstance(module, _Deferred):  # WeasyPrint is still importing: not yet
        raise _TooEarly(f"{name} is deferred while WeasyPrint imports")
    return importlib.import_module(name)


def _forward(module: str, name: str) -> Any:
    """A function that imports ``module`` and calls its ``name`` when it is called."""

    def forwarded(*args: Any, **kwargs: Any) -> Any:
        return getattr(_real(module), name)(*args, **kwargs)

    forwarded.__name__ = name
    return forwarded


def load() -> types.ModuleType:
    """The ``weasyprint`` module, imported (once) with ``DEFERRED`` put off."""
    with _lock:
        if "weasyprint" in sys.modules:
            return sys.modules["weasyprint"]
        stand_ins: dict[str, _Deferred] = {}
        for name, names in DEFERRED.items():
            if name in sys.modules:
                continue
            stand_in = _Deferred(name)
            for each in names:
                setattr(stand_in, each, _forward(name, each))
            stand_ins[name] = stand_in
        sys.modules.update(stand_ins)
        try:
            return importlib.import_module("weasyprint")
        except _TooEarly as early:
            # a WeasyPrint that uses one of them as it imports: imported as it is
            logger.warning("WeasyPrint imported with its font tools: %s", early)
            for name in [n for n in sys.modules if n.partition(".")[0] == "weasyprint"]:
                del sys.modules[name]
            _drop(stand_ins)
            return importlib.import_module("weasyprint")
        finally:
            _drop(stand_ins)


def _drop(stand_ins: dict[str, _Deferred]) -> None:
    for name, stand_in in stand_ins.items():
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
