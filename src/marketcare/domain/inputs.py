"""What a person may type: lengths, record ids, dates and email addresses.

One definition for every way in (the CLI, the pages, the API, spreadsheets), so a value
refused on one is refused on all, with the same words, and the same on SQLite and on
PostgreSQL: the limits are the ledger's own, not whatever a column type happens to
enforce (SQLite enforces none, PostgreSQL refuses a longer value with an error that
names no field). The ledger's columns are sized from these numbers.
"""

from __future__ import annotations

import re
from datetime import date

from marketcare.errors import BadInput

#: a record's id: ids are 64-bit integers; a larger number cannot name a record
ID_MAX = 2**62
#: the id of a market, an area or a task, as the schedules write it
KEY_MAX = 64
#: who did something (a tick's ``by``, a problem's finder, rectifier, verifier)
PERSON_MAX = 100
#: whom a problem is assigned to (a person or a team)
ASSIGNEE_MAX = 200
#: a client token that makes a submission idempotent
TOKEN_MAX = 100
#: a note on a completion or a problem's move, a text item of a checklist
NOTE_MAX = 2000
#: a problem's description
DESCRIPTION_MAX = 4000
#: an email address (RFC 5321: 64 + 1 + 255)
EMAIL_MAX = 320
#: the years a date may fall in: outside them local times cannot be formed reliably
FIRST_YEAR, LAST_YEAR = 2000, 2100

_EMAIL = re.compile(r"^[^@\s<>,;\"']+@[^@\s<>,;\"']+\.[^@\s<>,;\"'.][^@\s<>,;\"']*$")
_LOCAL = re.compile(r"^[^@\s<>,;\"']+@[A-Za-z0-9-]+$")
#: a lone surrogate: what ``undecodable`` looks for
_SURROGATE = re.compile("[\ud800-\udfff]")


def undecodable(value: str) -> bool:
    """Whether ``value`` holds what cannot be UTF-8: lone surrogates (how Python keeps bytes
    of an argument that were not UTF-8, or a JSON ``"\\udc80"``), which no database takes.

    ASCII text (ids, tokens, most notes) is answered without looking at each character,
    and the rest by one regular-expression scan: every API write checks its texts."""
    return not value.isascii() and _SURROGATE.search(value) is not None


def check_text(
    value: str, field: str, *, limit: int, required: bool = False, what: str = "text"
) -> str:
    """``value`` stripped, refused when too long, empty (if required) or not text at all."""
    if undecodable(value):
        raise BadInput(f"{field}: not valid UTF-8 text", field)
    stripped = value.strip()
    if required and not stripped:
        raise BadInput(f"{field}: give the {what}", field)
    if len(stripped) > limit:
        raise BadInput(f"{field}: at most {limit} characters (this one has {len(stripped)})", field)
    return stripped


def check_id(value: int, field: str, *, what: str = "record") -> int:
    """A record id as typed: a positive integer the ledger can hold."""
    if not 1 <= value <= ID_MAX:
        raise BadInput(f"{field}: {value} is not a {what} id (ids run from 1 to {ID_MAX})", field)
    return value


def check_date(value: date, field: str) -> date:
    """A day the ledger can reason about (local times, periods, the day after)."""
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise BadInput(f"{field}: give a date between {FIRST_YEAR} and {LAST_YEAR}", field)
    return value


def is_email(value: str, *, local_domain: bool = False) -> bool:
    """One ``local@domain.tld`` (``local_domain``: ``local@host`` will do, for a sender on
    this machine), without spaces, line breaks or list separators."""
    if len(value) > EMAIL_MAX:
        return False
    if _EMAIL.match(value) is not None:
        return True
    return local_domain and _LOCAL.match(value) is not None


def check_email(value: str, field: str) -> str:
    """An address mail can be sent to: one ``local@domain.tld``, no spaces, no line breaks."""
    stripped = value.strip()
    if not is_email(stripped):
        raise BadInput(
            f"{field}: {value!r} is not an email address (write name@example.org)", field
        )
    return stripped
