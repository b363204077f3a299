"""Run Debian's wapiti 3.0.4 with its URL exclusions working on Python 3.11.

Its ``wildcard_translate`` appends the flags ``(?ms)`` at the end of the pattern, which
Python 3.11 refuses ("global flags not at the start"), so any ``-x`` crashed the scan.
This puts the flags first and then runs wapiti's own entry point with the same
arguments. Run with the system Python that has ``wapitiCore`` (``/usr/bin/python3``).
"""

import re
import sys

from wapitiCore.main import wapiti as main
from wapitiCore.net import crawler


def wildcard_translate(pattern: str) -> "re.Pattern[str]":
    """``*`` matches anything; every other character stands for itself."""
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.compile(r"(?ms)" + body + r"\Z")


crawler.wildcard_translate = wildcard_translate

if __name__ == "__main__":
    sys.argv[0] = "wapiti"
    sys.exit(main.wapiti_main())
