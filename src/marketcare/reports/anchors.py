"""Reading the audit anchors that left the building: in a workbook the office received, or
in a report email it saved (``.eml``).

A workbook carries the chain's head in a custom document property
(``marketcare.audit_head``) and in its summary sheet's printed footer; an email in its
``X-Marketcare-Audit-Head`` header and in a line of its body, and its attached workbook
carries its own. Each is read independently, so a file whose property was stripped by a
mail gateway still gives its footer, and an email whose headers were rewritten still
gives its body line.
"""

from __future__ import annotations

import codecs
import html
import re
import zipfile
import zlib
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from io import BytesIO
from pathlib import Path

from marketcare.errors import MarketcareError
from marketcare.ledger.audit import Anchor
from marketcare.reports.mail import ANCHOR_HEADER
from marketcare.reports.workbook import ANCHOR_PROPERTY

#: ``1329 3f2a…`` in a property or a header
_PLAIN = re.compile(r"^\s*(\d+)\s+([0-9a-f]{64})\s*$")
#: the footer's ``Audit chain 1329: 3f2a…`` (``审计链 1329：3f2a…``), as the catalogs word it
_FOOTER = re.compile(r"(?:chain|审计链)\s*(\d+)\s*[:：]\s*([0-9a-f]{64})")
#: the body's ``Audit chain head: event 1329, 3f2a…`` (``…第 1329 条记录，3f2a…``)
_BODY = re.compile(r"(?:event|第)\s*(\d+)\s*(?:条记录)?\s*[,，]\s*([0-9a-f]{64})")


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in a workbook (``.xlsx``) or a saved email (``.eml``), without repeats.

    Raises ``MarketcareError`` naming the file when it holds none or is neither.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MarketcareError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if data.startswith(b"PK"):
        found = _from_workbook(data, path.name)
    elif len(data) > MAX_EMAIL_BYTES:  # parsing takes some ten times the text in memory
        raise MarketcareError(
            f"{path}: neither an .xlsx workbook nor a report email (.eml): "
            f"{len(data) / 1e6:,.0f} MB, more than any email ({MAX_EMAIL_BYTES // 1_000_000} MB)"
        )
    else:
        found = _from_email(data, path.name)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise MarketcareError(
            f"{path}: no audit anchor found (a marketcare report workbook or a report "
            "email saved as .eml carries one)"
        )
    return unique


#: the largest saved email read (mail servers take 25 to 50 MB; a report's is far less)
MAX_EMAIL_BYTES = 100_000_000
#: what reading a damaged or hostile zip raises (besides OSError)
ZIP_FAULTS = (zipfile.BadZipFile, KeyError, zlib.error, EOFError, NotImplementedError, RuntimeError)
#: the most of a workbook's document properties read (marketcare writes a few hundred bytes)
MAX_PROPERTIES_BYTES = 1_000_000
#: a worksheet is read in pieces of this size ...
_CHUNK = 1 << 20
#: ... keeping this much text between two, so that a footer cut by a read is still found
_OVERLAP = 8192
_FOOTER_PART = re.compile(r"<oddFooter>([^<]*)</oddFooter>")


def read_part(book: zipfile.ZipFile, part: str, name: str) -> str:
    """A small part of a workbook as text, never reading more of it than
    ``MAX_PROPERTIES_BYTES``: a file from outside may inflate a part to gigabytes."""
    with book.open(part) as f:
        data = f.read(MAX_PROPERTIES_BYTES + 1)
    if len(data) > MAX_PROPERTIES_BYTES:
        raise MarketcareError(
            f"{name}: its part {part} is larger than {MAX_PROPERTIES_BYTES:,} bytes; "
            "not a marketcare report"
        )
    return data.decode("utf-8", "replace")


def _footers(book: zipfile.ZipFile, part: str) -> Iterator[str]:
    """The printed footers of a worksheet, read in pieces: memory stays bounded however
    large the sheet inflates."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    kept = ""
    with book.open(part) as f:
        while True:
            chunk = f.read(_CHUNK)
            text = kept + decoder.decode(chunk, final=not chunk)
            end = 0
            for m in _FOOTER_PART.finditer(text):
                yield m.group(1)
                end = m.end()
            if not chunk:
                return
            kept = text[max(end, len(text) - _OVERLAP) :]


def _from_workbook(data: bytes, name: str) -> list[Anchor]:
    out: list[Anchor] = []
    try:
        book = zipfile.ZipFile(BytesIO(data))
        names = book.namelist()
        custom = (
            read_part(book, "docProps/custom.xml", name) if "docProps/custom.xml" in names else ""
        )
        for value in re.findall(
            rf'<property[^>]*name="{re.escape(ANCHOR_PROPERTY)}"[^>]*>\s*<vt:lpwstr[^>]*>([^<]*)<',
            custom,
        ):
            if m := _PLAIN.match(html.unescape(value)):
                out.append(Anchor(int(m.group(1)), m.group(2), f"{name}, document property"))
        for part in sorted(n for n in names if n.startswith("xl/worksheets/")):
            for footer in _footers(book, part):
                for m in _FOOTER.finditer(html.unescape(footer)):
                    out.append(Anchor(int(m.group(1)), m.group(2), f"{name}, summary sheet footer"))
    except ZIP_FAULTS as exc:
        raise MarketcareError(f"{name}: not an .xlsx workbook ({exc})") from None
    return out


def _from_email(data: bytes, name: str) -> list[Anchor]:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    if not isinstance(msg, EmailMessage) or not (msg["Message-ID"] or msg["From"]):
        raise MarketcareError(f"{name}: neither an .xlsx workbook nor an email (.eml)")
    out: list[Anchor] = []
    header = msg[ANCHOR_HEADER]
    if header and (m := _PLAIN.match(str(header))):
        out.append(Anchor(int(m.group(1)), m.group(2), f"{name}, {ANCHOR_HEADER} header"))
    body = msg.get_body(("plain",))
    if body is not None:
        for line in str(body.get_content()).splitlines():
            for m in _BODY.finditer(line):
                out.append(Anchor(int(m.group(1)), m.group(2), f"{name}, body"))
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload.startswith(b"PK"):
            attached = part.get_filename() or "attachment"
            out += _from_workbook(payload, f"{name} → {attached}")
    return out
