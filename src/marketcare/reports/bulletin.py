"""The weekly double report (双通报): the ranking, and the problems past their deadline.

One bulletin per period (a week, or a month), in two files made from the same data:

* an Excel workbook, written with the exporter's machinery (``workbook.OpenpyxlBook``
  and its sheets: styles, widths, print titles, footers);
* a printable PDF, from HTML and CSS (``bulletin.html`` beside this module) laid out by
  WeasyPrint with the Noto CJK fonts; table headers repeat on every page and no row is
  split across pages. The CJK face is cut to the page's characters before the layout
  (``cjk_subset``): WeasyPrint would copy the whole 19 MB font collection into memory
  and subset it there, which cost a district's bulletin more memory than its own work.
  The page is laid out under its own user-agent stylesheet (``bulletin_ua.css``, see
  ``page_class``), not WeasyPrint's rules for every HTML element.

Both are recorded as reports (``kind = bulletin``, format ``xlsx`` and ``pdf``) with
their SHA-256 and one content digest: the same data again reuses the recorded files;
changed data is a new revision of both. A scheduled bulletin is emailed with both files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess  # nosec B404: fc-match, with a fixed argument list (cjk_face)
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketcare import heap
from marketcare.domain.periods import Period
from marketcare.errors import MarketcareError, NotFound
from marketcare.files import fsync_path
from marketcare.i18n import Translator, translator
from marketcare.ledger import standings
from marketcare.ledger.db import read, retrying, write
from marketcare.ledger.models import ReportRecord
from marketcare.reports import bulletin_font, bulletin_weasyprint
from marketcare.reports.figures import ProblemLine, Report, late_problems
from marketcare.reports.scores import Ranking, closed, ranking

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KIND = "bulletin"
#: the printed copy lists every market up to this many; a province's prints the best and
#: the worst ``PDF_ENDS`` (the red and black list) and every sub-district, and the
#: workbook keeps every market (a 20,000-row table is 500 pages nobody prints)
PDF_ALL_MARKETS = 200
PDF_ENDS = 30
#: likewise for the overdue list
PDF_OVERDUE = 200
BETWEEN_TAGS = re.compile(r">[ \t\r\n]+<")
#: the face the PDF is set in (Debian's fonts-noto-cjk), as fontconfig names it
CJK_FACE = "Noto Sans CJK SC:style=Regular"
#: the family a page's own subset of it is known by (the PDF's embedded font is named so)
SUBSET_FAMILY = "Noto Sans CJK SC Subset"
#: where the template has the subset's ``@font-face``, made once the page's text is known
FONT_SLOT = "/* the @font-face of the subset of the CJK face made for this page */"
#: the user-agent rules of the page's own elements (see ``page_class``)
UA_SHEET = HERE / "bulletin_ua.css"


@dataclass(frozen=True)
class Bulletin:
    """Everything the two files say, gathered in one read snapshot."""

    period: Period
    as_of: datetime
    ranking: Ranking
    overdue: list[ProblemLine]
    names: dict[str, str]
    sub_districts: dict[str, str]

    def digest(self) -> str:
        """SHA-256 of the content (not of the moment it was written)."""
        body = self.as_json()
        body.pop("as_of", None)
        body["ranking"].pop("as_of", None)
        text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period.key,
            "kind": self.period.kind,
            "as_of": self.as_of.isoformat(),
            "ranking": self.ranking.as_json(),
            "overdue": [
                {
                    "problem": p.id,
                    "market": p.market_id,
                    "market_name": self.names.get(p.market_id, p.market_id),
                    "sub_district": self.sub_districts.get(p.market_id, ""),
                    "category": p.category,
                    "description": p.description,
                    "found": p.found_at.isoformat(),
                    "deadline": p.deadline.isoformat(),
                    "state": p.state,
                    "days_overdue": p.days_overdue,
                }
                for p in self.overdue
            ],
        }


def gather(
    conn: sa.Connection, period: Period, *, as_of: datetime, markets: list[str] | None = None
) -> Bulletin:
    """Read one bulletin's data (inside a read transaction)."""
    report = Report(conn, period, as_of=as_of, markets=markets)
    if markets:
        unknown = sorted(set(markets) - {m.id for m in report.markets})
        if unknown:
            raise NotFound(f"unknown market {unknown[0]!r}")
    return Bulletin(
        period=period,
        as_of=as_of,
        ranking=ranking(conn, period, as_of=as_of, markets=markets, report=report),
        overdue=late_problems(report),
        names={m.id: m.name for m in report.markets},
        sub_districts={m.id: m.sub_district for m in report.markets},
    )


# ---------------------------------------------------------------- words and numbers


#: what the figures are printed with, beside ASCII: a page that shows none of them yet
#: (the first period, with no movement) still has them in its cut, for the next to reuse
SIGNS = "—↑↓→"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def movement(value: int | None) -> str:
    if value is None:
        return "—"
    return "↑" + str(value) if value > 0 else "↓" + str(-value) if value < 0 else "→"


def title(t: Translator, period: Period) -> str:
    return t.tr("Weekly double report") if period.kind == "week" else t.tr("Monthly double report")


def _market_rows(b: Bulletin) -> list[list[Any]]:
    rows = []
    for s in b.ranking.markets:
        f = s.figures
        m = b.ranking.info[s.key]
        rows.append(
            [
                s.rank,
                movement(s.movement),
                m.name,
                m.sub_district,
                len(f.scores),
                f.inspection_score,
                f.compliance,
                f.rectification,
                f.past_deadline,
            ]
        )
    return rows


def _district_rows(b: Bulletin) -> list[list[Any]]:
    return [
        [
            s.rank,
            movement(s.movement),
            s.key,
            len(s.figures.scores),
            s.figures.inspection_score,
            s.figures.compliance,
            s.figures.rectification,
            s.figures.past_deadline,
        ]
        for s in b.ranking.sub_districts
    ]


def _overdue_rows(b: Bulletin, t: Translator) -> list[list[Any]]:
    return [
        [
            i,
            b.names.get(p.market_id, p.market_id),
            b.sub_districts.get(p.market_id, ""),
            p.description,
            t.problem_category(p.category),
            p.deadline,
            p.days_overdue,
            t.problem_state(p.state),
        ]
        for i, p in enumerate(b.overdue, start=1)
    ]


def _headers(t: Translator) -> dict[str, list[str]]:
    return {
        "markets": [
            t.tr("Rank"),
            t.tr("Change"),
            t.tr("Market"),
            t.tr("Sub-district"),
            t.tr("Number of inspections"),
            t.tr("Inspection score"),
            t.tr("Daily-work compliance"),
            t.tr("Rectification rate"),
            t.tr("Past deadline"),
        ],
        "districts": [
            t.tr("Rank"),
            t.tr("Change"),
            t.tr("Sub-district"),
            t.tr("Markets inspected"),
            t.tr("Inspection score"),
            t.tr("Daily-work compliance"),
            t.tr("Rectification rate"),
            t.tr("Past deadline"),
        ],
        "overdue": [
            t.tr("No."),
            t.tr("Market"),
            t.tr("Sub-district"),
            t.tr("Problem"),
            t.tr("Category"),
            t.tr("Deadline"),
            t.tr("Days overdue"),
            t.tr("State"),
        ],
    }


# ---------------------------------------------------------------- the workbook


def write_xlsx(b: Bulletin, path: Path, *, language: str, generated_at: datetime) -> None:
    """The bulletin as a workbook: three sheets, made with the exporter's machinery."""
    from marketcare.reports.workbook import BookProperties, OpenpyxlBook, _Sheet

    t = translator(language)
    heads = _headers(t)
    book = OpenpyxlBook()
    period_text = t.period(b.period)
    head = title(t, b.period)
    as_of = t.tr("Data as of {moment}").format(moment=f"{b.as_of:%Y-%m-%d %H:%M} UTC")
    footer = t.tr("Page &P of &N")

    def table(
        name: str,
        headers: list[str],
        rows: list[list[Any]],
        styles: list[str | None],
        caps: list[int],
    ) -> None:
        sheet = _Sheet(
            book.sheet(name),
            name,
            headers=headers,
            caps=caps,
            footer_left=period_text,
            footer_center=footer,
        )
        sheet.top(
            [f"{head} · {name}"] + [None] * (len(headers) - 1),
            ["title"] + [None] * (len(headers) - 1),
        )
        sheet.top(
            [period_text] + [None] * (len(headers) - 1), ["subtitle"] + [None] * (len(headers) - 1)
        )
        sheet.top(
            [as_of] + [None] * (len(headers) - 1),
            ["note"] + [None] * (len(headers) - 1),
            digest=False,
        )
        sheet.header()
        for row in rows:
            sheet.add(
                [
                    ("—" if v is None and s == "percent" else v)
                    for v, s in zip(row, styles, strict=True)
                ],
                [
                    ("dash" if v is None and s == "percent" else s)
                    for v, s in zip(row, styles, strict=True)
                ],
            )
        sheet.close()

    pct_styles: list[str | None] = [
        None,
        "dash",
        None,
        None,
        None,
        None,
        "percent",
        "percent",
        None,
    ]
    table(
        t.tr("Market ranking"),
        heads["markets"],
        _market_rows(b),
        pct_styles,
        [6, 6, 30, 12, 8, 10, 12, 12, 10],
    )
    table(
        t.tr("Sub-district ranking"),
        heads["districts"],
        _district_rows(b),
        [None, "dash", None, None, None, "percent", "percent", None],
        [6, 6, 14, 10, 10, 12, 12, 10],
    )
    table(
        t.tr("Past deadline"),
        heads["overdue"],
        _overdue_rows(b, t),
        [None, None, None, "wrap", None, "time", None, None],
        [6, 24, 12, 50, 10, 12, 10, 18],
    )
    book.save(
        path,
        BookProperties(
            title=head,
            subject=period_text,
            keywords=f"{b.period.key} marketcare bulletin",
            description=as_of,
            language=language.replace("_", "-"),
            created=generated_at.replace(tzinfo=None, microsecond=0),
        ),
    )


# ---------------------------------------------------------------- the PDF


def page_lang(language: str) -> str:
    """The page's ``lang`` (Pango chooses fonts and line metrics by it)."""
    return "zh-CN" if language == "zh_CN" else "en"


def html(b: Bulletin, *, language: str) -> str:
    """The bulletin as one HTML page (what the PDF is made from)."""
    t = translator(language)
    env = Environment(
        loader=FileSystemLoader(str(HERE)),
        autoescape=select_autoescape(["html"]),
    )
    markets: list[list[Any] | None] = list(_market_rows(b))
    between = len(markets) - 2 * PDF_ENDS
    if len(markets) > PDF_ALL_MARKETS:
        markets = [*markets[:PDF_ENDS], None, *markets[-PDF_ENDS:]]
    overdue = _overdue_rows(b, t)
    words = {
        "between": t.tr("… {count} markets ranked in between: see the workbook").format(
            count=between
        ),
        "more": t.tr("… and {count} more: see the workbook").format(
            count=len(overdue) - PDF_OVERDUE
        ),
        "as_of": t.tr("Data as of {moment}").format(moment=f"{b.as_of:%Y-%m-%d %H:%M} UTC"),
        "red": t.tr("Red list"),
        "black": t.tr("Black list"),
        "markets": t.tr("Market ranking"),
        "districts": t.tr("Sub-district ranking"),
        "overdue": t.tr("Problems not rectified by their deadline"),
        "none": t.tr("No problem is past its deadline."),
    }
    page = env.get_template("bulletin.html").render(
        words=words,
        more=len(overdue) > PDF_OVERDUE,
        lang=page_lang(language),
        title=title(t, b.period),
        period_text=t.period(b.period),
        heads=_headers(t),
        markets=markets,
        districts=_district_rows(b),
        overdue=overdue[:PDF_OVERDUE],
        pct=pct,
        red=[b.ranking.info[k].name for k in _red_black(b)[0]],
        black=[b.ranking.info[k].name for k in _red_black(b)[1]],
        font_slot=FONT_SLOT,
        subset_family=SUBSET_FAMILY,
    )
    # the layout engine parses every character: the template's line breaks and indents
    # between tags are a tenth of a PDF's time (ASCII only: the text's own spaces stay)
    return BETWEEN_TAGS.sub("><", page)


@functools.cache
def cjk_face() -> tuple[str, int] | None:
    """The file and face index of ``CJK_FACE`` (asked of fontconfig once a process)."""
    exe = shutil.which("fc-match")
    if exe is None:
        log.warning("fc-match (fontconfig) is missing: the bulletin's PDF loads whole fonts")
        return None
    try:
        done = subprocess.run(  # nosec B603: a fixed argument list, no shell
            [exe, "--format=%{file}\\n%{index}\\n%{family}", CJK_FACE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("fc-match failed (%s): the bulletin's PDF loads whole fonts", e)
        return None
    file, _, rest = done.stdout.partition("\n")
    index, _, families = rest.partition("\n")
    if done.returncode != 0 or CJK_FACE.split(":")[0] not in families.split(","):
        log.warning(
            "%s is not installed (make runtime-deps): the bulletin's PDF is set in %s",
            CJK_FACE,
            families or "another font",
        )
        return None
    return file, int(index)


#: the last cut made (the face, its characters, the font), for the next page to reuse
_last_cut: tuple[tuple[str, int], frozenset[int], bytes] | None = None


def cjk_subset(text: str, *, lang: str = "zh-CN") -> bytes | None:
    """``CJK_FACE`` cut to the characters of ``text`` (and ASCII): an OpenType font.

    HarfBuzz (the system's, which WeasyPrint uses too: ``bulletin_font``) maps the
    collection and reads only what the subset needs; a bulletin's few hundred characters
    make a font of tens of kilobytes, which WeasyPrint then copies and subsets again at no
    cost. None without the face or the subsetter (the page then names the installed
    fonts, as before); a character the face lacks is left to Pango's fallback.

    Pango's sample text of ``lang`` is cut too (see ``bulletin_font.sample``), and the
    ``SIGNS`` the figures are printed with. The cut is
    the moment of the bulletin's peak memory (the collection's tables mapped, HarfBuzz's
    plan): the last cut is reused when it has every character of this page and at most
    twice as many (the next period's page mostly has the same names and words), so a
    daemon cuts again only for new characters.
    """
    global _last_cut
    face = cjk_face()
    if face is None or not bulletin_font.available():
        return None
    wanted = frozenset({*map(ord, text + SIGNS + bulletin_font.sample(lang)), *range(0x20, 0x7F)})
    last = _last_cut
    if (
        last is not None
        and last[0] == face
        and wanted <= last[1]
        and len(last[1]) <= 2 * len(wanted)
    ):
        return last[2]
    try:
        data = bulletin_font.cut(*face, set(wanted))
    # the file gone or damaged since fontconfig saw it
    except bulletin_font.CutError as e:
        log.warning("cannot subset %s from %s: %s", CJK_FACE, face[0], e)
        return None
    _last_cut = (face, wanted, data)
    return data


def with_cjk_subset(page: str, folder: Path, *, lang: str = "zh-CN") -> str:
    """The page with the ``@font-face`` of its own subset (written in ``folder``) in its slot.

    A file, not a ``data:`` URL: the CSS parser reads and writes a URL character by
    character, a tenth of a district's PDF for a 40 kB font.
    """
    font = cjk_subset(page, lang=lang)
    if font is None:
        return page
    file = folder / "cjk-subset.otf"
    file.write_bytes(font)
    rule = f'@font-face {{ font-family: "{SUBSET_FAMILY}"; src: url({file.as_uri()}); }}'
    return page.replace(FONT_SLOT, rule, 1)


def _red_black(b: Bulletin) -> tuple[list[str], list[str]]:
    from marketcare.domain.inspections import red_and_black

    return red_and_black(b.ranking.markets)


@functools.cache
def page_class() -> Any:
    """WeasyPrint's ``HTML`` with ``UA_SHEET`` as its user-agent stylesheet.

    WeasyPrint's own sheet has rules for every HTML element and pseudo-element: matched
    against each cell of a table they give it three more computed styles (``::marker``,
    ``::footnote-call``, ``::footnote-marker``) and a longer cascade: at 50 markets the
    layout's Python memory peaked at 11.7 MiB with them, 6.6 without (docs/benchmarks.md). The page uses a dozen elements; their rules are in
    ``UA_SHEET``, and the test renders the page under both sheets and compares the images.
    ``_ua_stylesheets`` is WeasyPrint's hook for its subclasses (its ``HTML`` and forms
    use it); a version without it lays the page out under its whole sheet, as before.
    """
    weasyprint = bulletin_weasyprint.load()
    sheet = weasyprint.CSS(filename=str(UA_SHEET))
    html_class: Any = weasyprint.HTML

    class BulletinPage(html_class):  # type: ignore[misc]  # WeasyPrint has no type hints
        def _ua_stylesheets(self, forms: bool = False) -> list[Any]:
            return [sheet]

    return BulletinPage


def write_pdf(b: Bulletin, path: Path, *, language: str) -> None:
    render_pdf(html(b, language=language), path, lang=page_lang(language))


def render_pdf(page: str, path: Path, *, lang: str) -> None:
    """``page`` (the bulletin's HTML) laid out and written to ``path`` as a PDF.

    WeasyPrint's boxes, pages and font map are held in reference cycles: left to the next
    full collection, a daemon's next report is made on top of them (3 MiB of a district's
    peak). A full collection scans every object of the process (0.2-0.3 s on a loaded
    machine); what lived before the PDF cannot be the PDF's garbage, so it is set aside
    (frozen) while the PDF's is collected (``heap.collecting``, which leaves a serving
    daemon's settled heap frozen). Freezing only narrows what a collection scans: another
    thread's objects are collected later, never wrongly.
    """
    html_page = page_class()
    with heap.collecting():
        with tempfile.TemporaryDirectory(prefix="marketcare-bulletin-font-") as folder:
            page = with_cjk_subset(page, Path(folder), lang=lang)
            html_page(string=page, base_url=str(HERE)).write_pdf(str(path))


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class BulletinResult:
    xlsx_id: int
    pdf_id: int
    xlsx: Path
    pdf: Path
    revision: int
    created: bool
    headline: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _headline(b: Bulletin) -> dict[str, Any]:
    top = b.ranking.markets[0] if b.ranking.markets else None
    return {
        "markets": len(b.ranking.markets),
        "inspected": sum(1 for s in b.ranking.markets if s.figures.scores),
        "overdue": len(b.overdue),
        "first": None if top is None else top.key,
    }


def produce(
    engine: sa.Engine,
    *,
    period: Period,
    exports_dir: Path,
    now: datetime,
    markets: list[str] | None = None,
    language: str = "zh_CN",
) -> BulletinResult:
    """Write (or reuse) the bulletin's two files and record them (see the module)."""
    from marketcare.ledger import installation
    from marketcare.reports.delivery import (
        exports_folder,
        file_name,
        note_damage,
        record_report,
        scope_of,
    )

    scope = scope_of(markets)
    # this ledger's own folder, as the workbook's (``delivery.export``)
    target = exports_folder(exports_dir, installation.identity(engine, now=now).name)
    stem = f".marketcare-bulletin-{os.getpid()}-{now.timestamp():.0f}"
    tmp_x, tmp_p = target / f"{stem}.xlsx.part", target / f"{stem}.pdf.part"
    try:
        with read(engine) as conn:
            b = gather(conn, period, as_of=now, markets=markets)
        digest = b.digest()
        write_xlsx(b, tmp_x, language=language, generated_at=now)
        write_pdf(b, tmp_p, language=language)
        fsync_path(tmp_x)
        fsync_path(tmp_p)
        headline = _headline(b)

        def same(fmt: str) -> Any:
            return (
                ReportRecord.kind == KIND,
                ReportRecord.format == fmt,
                ReportRecord.period_kind == period.kind,
                ReportRecord.period_key == period.key,
                ReportRecord.scope == scope,
                ReportRecord.language == language,
            )

        def keep_places(conn: sa.Connection) -> None:
            """A closed period's places, for the next period's movement."""
            if closed(period, as_of=now, markets=list(b.ranking.info.values())):
                standings.keep(
                    conn,
                    period=period,
                    scope=scope,
                    as_of=now,
                    markets=b.ranking.markets,
                    sub_districts=b.ranking.sub_districts,
                )

        def record() -> BulletinResult:
            with write(engine) as conn:
                latest = {
                    fmt: conn.execute(
                        sa.select(ReportRecord)
                        .where(*same(fmt))
                        .order_by(ReportRecord.revision.desc())
                        .limit(1)
                    ).one_or_none()
                    for fmt in ("xlsx", "pdf")
                }
                x, p = latest["xlsx"], latest["pdf"]
                for recorded in (x, p):  # a recorded file gone or changed is said so
                    if recorded is not None:
                        note_damage(conn, recorded, now=now)
                if (
                    x is not None
                    and p is not None
                    and x.revision == p.revision
                    and x.content_digest == digest
                    and all(
                        Path(r.path).exists() and _sha256(Path(r.path)) == r.sha256 for r in (x, p)
                    )
                ):
                    if not standings.kept(conn, period=period, scope=scope):
                        keep_places(conn)  # recorded before places were kept
                    return BulletinResult(
                        x.id, p.id, Path(x.path), Path(p.path), x.revision, False, x.headline
                    )
                revision = 1 + max((r.revision for r in (x, p) if r is not None), default=0)
                ids: dict[str, tuple[int, Path]] = {}
                for fmt, tmp in (("xlsx", tmp_x), ("pdf", tmp_p)):
                    final = target / file_name(
                        period, scope, language, revision, report="bulletin", fmt=fmt
                    )
                    if (
                        final.exists()
                        and conn.execute(
                            sa.select(ReportRecord.id).where(ReportRecord.path == str(final))
                        ).first()
                    ):
                        raise MarketcareError(
                            f"{final} is a recorded report; it is never overwritten"
                        )
                    os.replace(tmp, final)
                    rid = record_report(
                        conn,
                        {
                            "kind": KIND,
                            "format": fmt,
                            "period_kind": period.kind,
                            "period_key": period.key,
                            "scope": scope,
                            "language": language,
                            "revision": revision,
                            "path": str(final),
                            "sha256": _sha256(final),
                            "content_digest": digest,
                            "rows": len(b.ranking.markets) + len(b.overdue),
                            "headline": headline,
                        },
                        now=now,
                    )
                    ids[fmt] = (int(rid), final)
                keep_places(conn)
                return BulletinResult(
                    ids["xlsx"][0],
                    ids["pdf"][0],
                    ids["xlsx"][1],
                    ids["pdf"][1],
                    revision,
                    True,
                    headline,
                )

        result = retrying(record, what="record bulletin")
        log.info(
            "bulletin written"
            if result.created
            else "bulletin unchanged; reusing the recorded files",
            extra={"period": period.key, "revision": result.revision, "pdf": str(result.pdf)},
        )
        return result
    finally:
        tmp_x.unlink(missing_ok=True)
        tmp_p.unlink(missing_ok=True)


def companion_pdf(conn: sa.Connection, record: Any) -> Any | None:
    """The PDF recorded with a bulletin's workbook (same period, scope, revision)."""
    return conn.execute(
        sa.select(ReportRecord).where(
            ReportRecord.kind == KIND,
            ReportRecord.format == "pdf",
            ReportRecord.period_kind == record.period_kind,
            ReportRecord.period_key == record.period_key,
            ReportRecord.scope == record.scope,
            ReportRecord.language == record.language,
            ReportRecord.revision == record.revision,
        )
    ).one_or_none()


def mail_text(record: Any, *, language: str) -> tuple[str, str, str]:
    """Subject, body and attachment name (``.xlsx``; the PDF takes the same stem)."""
    from marketcare.domain.periods import from_key

    t = translator(language)
    period = from_key(record.period_kind, record.period_key)
    head = title(t, period)
    h = record.headline or {}
    body = "\n".join(
        [
            t.tr("{title}: {period} ({key}), revision {revision}.").format(
                title=head, period=t.period(period), key=period.key, revision=record.revision
            ),
            "",
            t.tr("Markets inspected: {inspected} of {markets}").format(
                inspected=h.get("inspected", 0), markets=h.get("markets", 0)
            ),
            t.tr("Problems not rectified by their deadline: {overdue}").format(
                overdue=h.get("overdue", 0)
            ),
            "",
            t.tr("Attachment SHA-256: {sha}").format(sha=record.sha256),
            "",
        ]
    )
    name = f"{head}_{period.key}"
    if record.revision > 1:
        name += "_" + t.tr("revision {revision}").format(revision=record.revision)
    name = re.sub(r'\s*[\\/:*?"<>|]+\s*', " ", name).strip()
    return f"{head} {period.key}", body, name + ".xlsx"
