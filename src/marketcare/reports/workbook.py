"""Excel compliance workbooks for the district office: one report period, streamed to disk.

The workbook (documented in docs/exports.md):

* **Summary** — per market × task kind: due, on time, late, missed, failed readings, excused,
  pending and the compliance %; market subtotals and the district total; then the market
  totals again as a block that a bar chart of compliance by market refers to.
* **Overdue** — the obligations that are missed or failed (not rectified) as of the report's
  moment: for a week this is the second sheet of the weekly double report. Day and month
  workbooks have it too, built the same way.
* **Pest control** — every pest-control visit with its contractor.
* **one sheet per market** — every obligation of the period.

The rows come from ``Report.lines`` one market at a time and go straight to openpyxl's
write-only worksheets, so memory stays flat however many rows there are. One pass over the
obligations feeds the market sheet, the overdue sheet and the pest-control sheet together.
Write-only sheets need column widths and panes before their first row, so each sheet holds
back its first ``SAMPLE_ROWS`` rows, measures them with what is known in advance (headers,
labels, market names, number formats), sets the widths and then streams.

What goes into the cells is decided here, once; how the cells reach the file is a small
``BookSink`` (openpyxl below; the benchmark plugs in xlsxwriter to compare like with like).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol, cast
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.cell.cell import Cell
from openpyxl.chart import BarChart, Reference
from openpyxl.chart.text import RichText
from openpyxl.drawing.text import CharacterProperties, Paragraph, ParagraphProperties
from openpyxl.formatting.formatting import ConditionalFormatting
from openpyxl.formatting.rule import Rule
from openpyxl.packaging.custom import StringProperty
from openpyxl.styles import Alignment, Border, Font, NamedStyle, PatternFill, Side
from openpyxl.styles.cell_style import StyleArray
from openpyxl.styles.differential import DifferentialStyle
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet.dimensions import RowDimension
from openpyxl.worksheet.page import PageMargins
from openpyxl.worksheet.pagebreak import Break
from openpyxl.worksheet.properties import PageSetupProperties
from openpyxl.worksheet.worksheet import Worksheet

from marketcare.domain.compliance import CATEGORIES, Category, Counts
from marketcare.domain.problems import Rate
from marketcare.domain.vocabulary import TaskKind
from marketcare.i18n import (
    DEFAULT_LANGUAGE,
    N_,
    REINSPECTION_LABEL,
    TASK_KIND_LABELS,
    Translator,
    translator,
)
from marketcare.reports.figures import Line, MarketInfo, Reading, Rectification, Report

Value = str | int | float | date | datetime | None
Progress = Callable[[int, int], None]

#: rows a sheet holds back to measure column widths before it starts streaming
SAMPLE_ROWS: Final = 200

# Printing (docs/exports.md, "Formatting and printing"). The office prints on A4, landscape.
# Text is 11 pt; a sheet is printed at a scale chosen from its column widths, never below
# MIN_PRINT_SCALE, so nothing prints smaller than 11 pt × 0.88 ≈ 9.7 pt (the test converts
# the workbook with LibreOffice and reads every character's size back from the PDF).
#: the body font and the smallest print scale (percent)
FONT_PT: Final = 11.0
MIN_PRINT_SCALE: Final = 88
#: printable width and height of A4 landscape inside the margins below, in points
PAGE_WIDTH_PT: Final = (11.69 - 0.4 - 0.4) * 72
PAGE_HEIGHT_PT: Final = (8.27 - 0.5 - 0.6) * 72
#: what is left for rows after the slack an office suite may take for its own rounding
PAGE_SLACK: Final = 0.94
#: row heights (points) of a sheet laid out in blocks (the summary): fixed, so the
#: pagination computed here is the one printed
ROW_PT: Final = 18.0
TITLE_ROW_PT: Final = 24.0
#: each further line of wrapped text, as a share of the first line's row height
LINE_STEP: Final = 0.9
#: Excel's limits
MAX_CELL_TEXT: Final = 32767
MAX_SHEET_TITLE: Final = 31
#: characters Excel (XML 1.0) cannot store: C0 controls except tab/LF/CR, surrogates, U+FFFE/F
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_BAD_TITLE = re.compile(r"[\[\]:*?/\\]")
PEST_CONTROL: Final = TaskKind.PEST_CONTROL.value
DASH: Final = "—"


# ---------------------------------------------------------------------- styles


@dataclass(frozen=True)
class CellStyle:
    """A cell format, turned into one shared style object per workbook by the sink."""

    bold: bool = False
    size: float | None = None
    color: str | None = None
    fill: str | None = None
    number_format: str | None = None
    wrap: bool = False
    align: str | None = None
    rule_below: bool = False


#: status colours: fill, font (Excel's Good / Neutral / Bad palette); pending has none
STATUS_COLOURS: Final[dict[Category, tuple[str, str]]] = {
    Category.ON_TIME: ("C6EFCE", "006100"),
    Category.LATE: ("FFEB9C", "9C5700"),
    Category.MISSED: ("FFC7CE", "9C0006"),
    Category.FAILED: ("F8CBAD", "833C0B"),
    Category.EXCUSED: ("D9D9D9", "404040"),
}
HEADER_FILL: Final = "E7E6E6"
SUBTOTAL_FILL: Final = "F2F2F2"
TOTAL_FILL: Final = "DDEBF7"

FORMATS: Final[dict[str, str]] = {
    "date": "yyyy-mm-dd",
    "time": "mm-dd hh:mm",
    "time_s": "mm-dd hh:mm:ss",
    "percent": "0.0%",
}
#: displayed width of the formatted values
FORMAT_WIDTHS: Final[dict[str, int]] = {"date": 10, "time": 11, "time_s": 14, "percent": 6}


def _styles() -> dict[str, CellStyle]:
    s: dict[str, CellStyle] = {
        "title": CellStyle(bold=True, size=14, wrap=True),
        "subtitle": CellStyle(color="404040", wrap=True),
        "note": CellStyle(color="595959", wrap=True),
        "section": CellStyle(bold=True, size=12, wrap=True),
        "header": CellStyle(
            bold=True, fill=HEADER_FILL, align="center", wrap=True, rule_below=True
        ),
        "date": CellStyle(number_format=FORMATS["date"]),
        "time": CellStyle(number_format=FORMATS["time"]),
        "time_s": CellStyle(number_format=FORMATS["time_s"]),
        "percent": CellStyle(number_format=FORMATS["percent"]),
        "dash": CellStyle(align="center"),
        "plain": CellStyle(),
        "wrap": CellStyle(wrap=True),
    }
    for cat, (fill, font) in STATUS_COLOURS.items():
        s[f"status_{cat.value}"] = CellStyle(fill=fill, color=font)
        s[f"header_{cat.value}"] = CellStyle(
            bold=True, fill=fill, color=font, align="center", wrap=True, rule_below=True
        )
    for name, fill in (("subtotal", SUBTOTAL_FILL), ("total", TOTAL_FILL)):
        s[name] = CellStyle(bold=True, fill=fill, wrap=True)
        s[f"{name}_percent"] = CellStyle(bold=True, fill=fill, number_format=FORMATS["percent"])
        s[f"{name}_dash"] = CellStyle(bold=True, fill=fill, align="center")
    return s


STYLES: Final = _styles()


# ---------------------------------------------------------------------- text and widths


def clean(text: str) -> str:
    """Text as a cell can hold it: control characters removed, cut to Excel's limit."""
    if _ILLEGAL.search(text):
        text = _ILLEGAL.sub("", text)
    return text[:MAX_CELL_TEXT]


@lru_cache(maxsize=4096)
def display_width(text: str) -> int:
    """Columns a text takes: East Asian wide and full-width characters count two."""
    widest = 0
    for line in text.split("\n"):
        n = len(line)
        if not line.isascii():
            n += sum(1 for ch in line if unicodedata.east_asian_width(ch) in "WF")
        widest = max(widest, n)
    return widest


#: how wide a character prints, in widths of a digit of the 11 pt body font: East Asian
#: wide characters a little over two, other characters a little under one (Carlito,
#: metric-compatible with Calibri, beside Noto Sans CJK)
WIDE_UNITS: Final = 2.1
NARROW_UNITS: Final = 0.9
_TOKENS = re.compile(r"\s+|[^\s\u1100-\uffff]+|.", re.S)


@lru_cache(maxsize=65536)
def wrapped_lines(text: str, room: float) -> int:
    """Lines a text takes in a cell ``room`` digit widths wide, wrapped as office suites
    wrap: between words of Latin text, between any two East Asian characters, and a word
    too long for a line broken anywhere."""
    lines = 0
    for paragraph in text.split("\n"):
        lines += 1
        used = 0.0
        for token in _TOKENS.findall(paragraph):
            if token.isspace():
                used += NARROW_UNITS * len(token)
                continue
            w = sum(
                WIDE_UNITS if unicodedata.east_asian_width(ch) in "WF" else NARROW_UNITS
                for ch in token
            )
            if used + w <= room:
                used += w
                continue
            if used > 0:
                lines += 1
            while w > room:  # a word wider than a line
                lines += 1
                w -= room
            used = w
    return lines


def _utf16_cut(text: str, limit: int) -> str:
    out, used = [], 0
    for ch in text:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > limit:
            break
        out.append(ch)
    return "".join(out)


def sheet_title(name: str, taken: set[str]) -> str:
    """A valid, unique sheet title (≤ 31 characters, none of ``[]:*?/\\``); adds to ``taken``.

    Excel compares titles ignoring case, so ``taken`` holds case-folded titles.
    """
    base = clean(_BAD_TITLE.sub("_", name)).replace("\n", " ").strip().strip("'").strip()
    if not base:
        base = "Sheet"
    if base.casefold() == "history":  # reserved by Excel
        base += "_"
    title = _utf16_cut(base, MAX_SHEET_TITLE).rstrip("'")
    n = 2
    while title.casefold() in taken:
        suffix = f" ({n})"
        title = _utf16_cut(base, MAX_SHEET_TITLE - len(suffix)).rstrip("'") + suffix
        n += 1
    taken.add(title.casefold())
    return title


def _value_width(value: Value, style: str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return display_width(value)
    if style and style.endswith("percent"):
        return FORMAT_WIDTHS["percent"]
    if style in FORMAT_WIDTHS:
        return FORMAT_WIDTHS[style]
    if isinstance(value, datetime):
        return 16
    if isinstance(value, date):
        return 10
    return len(f"{value:g}") if isinstance(value, float) else len(str(value))


def _column_cm(width: float) -> float:
    """Printed width of a column of ``width`` characters (7 px each plus 5 px at 96 dpi)."""
    return (width * 7 + 5) / 96 * 2.54


def _footer_text(text: str) -> str:
    """Text for a header/footer section: ``&`` starts a code there, so it is doubled."""
    return text.replace("&", "&&")


# ---------------------------------------------------------------------- the sink


@dataclass(frozen=True)
class SheetLayout:
    """What a write-only sheet must know before its first row."""

    widths: tuple[float, ...]
    freeze_row: int  # first row that scrolls
    title_rows: int  # rows repeated at the top of every printed page
    footer_left: str
    footer_center: str
    footer_right: str = "&A"
    scale: int = 100  # print scale, percent


@dataclass(frozen=True)
class BarChartSpec:
    title: str
    header_row: int  # holds the series name
    first_row: int
    last_row: int
    category_col: int  # 1-based
    value_col: int
    anchor_row: int
    height_cm: float
    width_cm: float


@dataclass(frozen=True)
class BookProperties:
    title: str
    subject: str
    keywords: str
    description: str
    language: str
    created: datetime  # naive UTC
    #: custom document properties (name, text): the audit anchor and the report's identity
    custom: tuple[tuple[str, str], ...] = ()


class SheetSink(Protocol):
    def setup(self, layout: SheetLayout) -> None: ...

    def append(
        self, values: Sequence[Value], styles: Sequence[str | None], height: float | None = None
    ) -> None:
        """Write the next row; ``height`` (points) fixes its height, else it fits its text."""

    def bar_chart(self, spec: BarChartSpec) -> None: ...

    def page_break(self, after_row: int) -> None: ...

    def banner(self, row: int, columns: int) -> None:
        """Let a text row (a title, a note) span the table's ``columns`` and wrap there,
        instead of running past the printed page. Called before the row is appended."""

    def highlight(
        self, col: int, first_row: int, last_row: int, rules: Sequence[tuple[str, str]]
    ) -> None:
        """Colour the cells of a column whose text equals a rule's text with its style."""

    def close(self, autofilter: tuple[int, int, int] | None) -> None:
        """Finish the sheet; ``autofilter`` is (header row, last row, columns)."""


class BookSink(Protocol):
    def sheet(self, title: str) -> SheetSink: ...

    def save(self, path: Path, properties: BookProperties) -> None: ...

    def discard(self) -> None:
        """Give up a workbook that failed half-way: remove its temporary files."""


_EXCEL_EPOCH_ORDINAL: Final = date(1899, 12, 30).toordinal()


def excel_serial(value: date) -> float:
    """Days since Excel's epoch (1900 system; dates from 1900-03-01), seconds kept, µs cut."""
    days = value.toordinal() - _EXCEL_EPOCH_ORDINAL
    if isinstance(value, datetime):
        return days + (value.hour * 3600 + value.minute * 60 + value.second) / 86400
    return days


def _openpyxl_style(name: str, spec: CellStyle) -> NamedStyle:
    font = Font(
        name="Calibri",
        family=2,
        scheme="minor",
        size=spec.size or 11,
        bold=spec.bold,
        color=spec.color,
    )
    fill = PatternFill("solid", fgColor=spec.fill) if spec.fill else PatternFill()
    border = Border(bottom=Side(style="thin")) if spec.rule_below else Border()
    # top: a row grows with its wrapped text, and every cell of it starts on the first line
    alignment = Alignment(horizontal=spec.align, vertical="top", wrap_text=spec.wrap or None)
    return NamedStyle(
        name=f"marketcare {name}",
        font=font,
        fill=fill,
        border=border,
        alignment=alignment,
        number_format=spec.number_format or "General",
    )


class OpenpyxlBook:
    """openpyxl in write-only mode; one named style per ``CellStyle``, shared by all cells."""

    def __init__(self, styles: Mapping[str, CellStyle] = STYLES) -> None:
        self.wb = Workbook(write_only=True)
        self.specs = styles
        self.rules: dict[tuple[str, str, int], Rule] = {}
        self.arrays: dict[str, StyleArray] = {}
        for name, spec in styles.items():
            named = _openpyxl_style(name, spec)
            self.wb.add_named_style(named)
            self.arrays[name] = named.as_tuple()

    def rule(self, text: str, style: str, *, priority: int) -> Rule:
        """A conditional format "equals ``text``" in ``style``, one object for every sheet."""
        rule = self.rules.get((text, style, priority))
        if rule is None:
            spec = self.specs[style]
            fill = PatternFill("solid", start_color=spec.fill, end_color=spec.fill)
            rule = self.rules[(text, style, priority)] = Rule(
                type="cellIs",
                operator="equal",
                formula=['"' + text.replace('"', '""') + '"'],
                dxf=DifferentialStyle(font=Font(color=spec.color), fill=fill),
                priority=priority,
            )
        return rule

    def sheet(self, title: str) -> OpenpyxlSheet:
        ws = self.wb.create_sheet(title)
        assert isinstance(ws, WriteOnlyWorksheet)
        ws.__class__ = _CellStream  # the same sheet, appended to with ready-made cells
        return OpenpyxlSheet(ws, self)

    def save(self, path: Path, properties: BookProperties) -> None:
        props = self.wb.properties
        props.title = properties.title
        props.subject = properties.subject
        props.keywords = properties.keywords
        props.description = properties.description
        props.language = properties.language
        props.creator = "marketcare"
        props.lastModifiedBy = "marketcare"
        props.created = properties.created
        for name, value in properties.custom:
            # openpyxl has custom properties since 3.1; its type stubs do not say so
            cast(Any, self.wb).custom_doc_props.append(StringProperty(name=name, value=value))
        self.wb.save(path)

    def discard(self) -> None:
        # the sheets stream into temporary files that only a save removes (or the exit of
        # the process): save to a throwaway file; a workbook saved already refuses, fine
        fd, name = tempfile.mkstemp(prefix="marketcare-discard-", suffix=".xlsx")
        os.close(fd)
        try:
            with contextlib.suppress(Exception):
                self.wb.save(name)
        finally:
            os.unlink(name)


def _chart_text(points: float) -> RichText:
    props = CharacterProperties(sz=int(points * 100))
    return RichText(p=[Paragraph(pPr=ParagraphProperties(defRPr=props), endParaRPr=props)])


class _ReusedCell(Cell):
    """A cell of one column and style, given each row's value in turn.

    A constant ``repr``: should openpyxl's own row path ever be used (see ``_CellStream``),
    it tries the cell as a value first and fails with a message built from ``repr``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<marketcare cell>"


class _CellStream(WriteOnlyWorksheet):
    """A write-only sheet appended to with ready-made cells only.

    openpyxl's ``append`` binds each value to a cell of its own; a ready-made cell is first
    tried as a value (two exceptions) and then replaced by a fresh cell for the next value.
    That round trip is most of the difference from xlsxwriter (docs/benchmarks-exports.md),
    so this overrides the private step that does it. Were it renamed in a later openpyxl, the
    override would just not be called: openpyxl's own step accepts ready-made cells too,
    only slower (``test_the_row_shortcut_still_fits_openpyxl`` says so first).
    """

    def _values_to_row(self, values: Iterable[Cell | None], row_idx: int) -> Iterator[Cell]:
        for cell in values:
            if cell is not None:
                cell.row = row_idx
                yield cell


class OpenpyxlSheet:
    def __init__(self, ws: WriteOnlyWorksheet, book: OpenpyxlBook) -> None:
        self.stream = ws
        self.book = book
        # a write-only sheet has the settings of a normal one (its class copies them),
        # which the type stubs do not say
        self.ws = cast(Worksheet, ws)
        self.arrays = book.arrays
        self.cells: dict[tuple[int, str | None], Cell] = {}
        self.plans: dict[tuple[str | None, ...], list[Cell]] = {}
        self.heights: dict[float, RowDimension] = {}
        self.row = 0

    def setup(self, layout: SheetLayout) -> None:
        ws = self.ws
        for i, width in enumerate(layout.widths, 1):
            ws.column_dimensions[get_column_letter(i)].width = width
        if layout.freeze_row > 1:
            ws.freeze_panes = f"A{layout.freeze_row}"
        ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=False)
        ws.page_setup.orientation = "landscape"
        ws.page_setup.paperSize = Worksheet.PAPERSIZE_A4
        ws.page_setup.scale = layout.scale
        ws.page_margins = PageMargins(
            left=0.4, right=0.4, top=0.5, bottom=0.6, header=0.3, footer=0.3
        )
        ws.print_options.gridLines = True
        # the table's columns only: text running past them is not a page of its own
        ws.print_area = f"A1:{get_column_letter(len(layout.widths))}1048576"
        if layout.title_rows:
            ws.print_title_rows = f"1:{layout.title_rows}"
        footer = ws.oddFooter
        assert footer is not None
        footer.left.text = layout.footer_left
        footer.center.text = layout.footer_center
        footer.right.text = layout.footer_right

    def append(
        self, values: Sequence[Value], styles: Sequence[str | None], height: float | None = None
    ) -> None:
        # A write-only sheet serialises each row as it is appended, so one cell per column
        # and style is enough: it is given the next row's value. No style object and no
        # cell is made per value; rows with the same styles share one plan.
        self.row += 1
        dims = self.ws.row_dimensions
        if height is not None:  # read as the row is written: set just before, drop after
            dim = self.heights.get(height)
            if dim is None:  # one per height: it holds nothing of the row but the height
                dim = self.heights[height] = RowDimension(self.ws, ht=height, customHeight=True)
            dims[self.row] = dim
        key = tuple(styles)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = [self._cell(col, style) for col, style in enumerate(styles)]
        row: list[Cell | None] = []
        add = row.append
        for value, cell in zip(values, plan, strict=True):
            if value is None and not cell.has_style:
                add(None)
                continue
            cell.value = excel_serial(value) if isinstance(value, date) else value
            if value.__class__ is str:
                cell.data_type = "s"  # text, never a formula or an error code
            add(cell)
        self.stream.append(row)
        if height is not None:
            del dims[self.row]  # written: memory stays flat however many rows

    def _cell(self, col: int, style: str | None) -> Cell:
        cell = self.cells.get((col, style))
        if cell is None:
            cell = self.cells[(col, style)] = _ReusedCell(
                self.ws,
                row=1,
                column=col + 1,
                style_array=None if style is None else self.arrays[style],
            )
        return cell

    def bar_chart(self, spec: BarChartSpec) -> None:
        chart = BarChart()
        chart.type = "bar"
        chart.style = 10
        chart.title = spec.title
        chart.legend = None
        chart.height = spec.height_cm
        chart.width = spec.width_cm  # type: ignore[assignment]  # cm, a float in openpyxl
        data = Reference(
            self.ws, min_col=spec.value_col, min_row=spec.header_row, max_row=spec.last_row
        )
        cats = Reference(
            self.ws, min_col=spec.category_col, min_row=spec.first_row, max_row=spec.last_row
        )
        chart.add_data(data, titles_from_data=True)
        chart.set_categories(cats)
        # the axes' labels in the body's size (an office suite's default prints at 10 pt)
        for axis in (chart.x_axis, chart.y_axis):
            axis.txPr = _chart_text(FONT_PT)
        chart.y_axis.number_format = "0%"
        chart.y_axis.scaling.min = 0
        chart.y_axis.scaling.max = 1
        chart.y_axis.majorGridlines = None
        chart.x_axis.scaling.orientation = "maxMin"  # first market at the top
        chart.x_axis.delete = False
        chart.y_axis.delete = False
        self.ws.add_chart(chart, f"A{spec.anchor_row}")

    def page_break(self, after_row: int) -> None:
        self.ws.row_breaks.append(Break(id=after_row))

    def banner(self, row: int, columns: int) -> None:
        self.ws.merged_cells.add(f"A{row}:{get_column_letter(columns)}{row}")

    def highlight(
        self, col: int, first_row: int, last_row: int, rules: Sequence[tuple[str, str]]
    ) -> None:
        letter = get_column_letter(col)
        where = ConditionalFormatting(f"{letter}{first_row}:{letter}{last_row}")
        for i, (text, style) in enumerate(rules, 1):
            self.ws.conditional_formatting.add(where, self.book.rule(text, style, priority=i))

    def close(self, autofilter: tuple[int, int, int] | None) -> None:
        if autofilter is not None:
            first, last, cols = autofilter
            self.ws.auto_filter.ref = f"A{first}:{get_column_letter(cols)}{last}"
        self.stream.close()


# ---------------------------------------------------------------------- a streamed sheet


class _Sheet:
    """One sheet: holds back a sample to size the columns, then streams; keeps the digest.

    Column widths are chosen for screen and paper at once (``_fit``): each column as wide as
    its content (up to its cap), then text columns narrowed (their cells wrap) until the
    sheet prints on A4 at ``MIN_PRINT_SCALE`` or more. A ``paged`` sheet (the summary) has
    fixed row heights, so it knows where each printed page ends and ``keep`` can move a
    block (a market's rows) to the next page rather than split it.
    """

    def __init__(
        self,
        sink: SheetSink,
        title: str,
        *,
        headers: Sequence[str],
        header_styles: Sequence[str] | None = None,
        caps: Sequence[int],
        hints: Mapping[int, Iterable[str]] | None = None,
        footer_left: str,
        footer_center: str,
        footer_right: str = "&A",
        highlight: tuple[int, Sequence[tuple[str, str]]] | None = None,
        paged: bool = False,
        floors: Mapping[int, int] | None = None,
    ) -> None:
        self.sink = sink
        self.highlight = highlight
        self.title = title
        self.headers = list(headers)
        self.header_styles = list(header_styles or ["header"] * len(headers))
        self.caps = list(caps)
        self.hints = hints or {}
        self.footer = (footer_left, footer_center, footer_right)
        self.paged = paged
        self.floors = floors or {}
        self.digest = hashlib.sha256(title.encode())
        self.rows = 0
        self.header_row = 0
        self._pending: list[tuple[Sequence[Value], Sequence[str | None], bool]] | None = []
        self._widths = [0] * len(headers)
        self._text = [False] * len(headers)  # holds text: may be narrowed, its cells wrap
        self.widths: list[float] = []
        self.scale = 100
        self._written = 0
        self._title_pt = 0.0  # the rows repeated on every printed page
        self._used = 0.0  # of the current page's body, in points at 100 %
        self._height_plans: dict[
            tuple[tuple[str | None, ...], bool], tuple[list[tuple[int, float]], float]
        ] = {}

    # rows ------------------------------------------------------------------------------

    def top(
        self, values: Sequence[Value], styles: Sequence[str | None], *, digest: bool = True
    ) -> None:
        """A title row above the table (not measured for widths)."""
        self._add(values, styles, measure=False, digest=digest)

    def header(self) -> None:
        self._add(self.headers, self.header_styles, measure=False, digest=True)
        self.header_row = self.rows

    def add(self, values: Sequence[Value], styles: Sequence[str | None]) -> None:
        self._add(values, styles, measure=True, digest=True)

    def _add(
        self,
        values: Sequence[Value],
        styles: Sequence[str | None],
        *,
        measure: bool,
        digest: bool,
    ) -> None:
        self.rows += 1
        if digest:
            self.digest.update(_canonical(values))
        pending = self._pending
        if pending is None:
            self._emit(values, styles)
            return
        if measure:
            widths, text = self._widths, self._text
            for i, (v, s) in enumerate(zip(values, styles, strict=True)):
                w = _value_width(v, s)
                if w > widths[i]:
                    widths[i] = w
                if v.__class__ is str:
                    text[i] = True
        pending.append((values, styles, digest))
        if len(pending) >= SAMPLE_ROWS:
            self._flush()

    def _emit(self, values: Sequence[Value], styles: Sequence[str | None]) -> None:
        self._written += 1
        row = self._written
        banner = len(values) == 1 and isinstance(values[0], str) and len(self.headers) > 1
        if banner:
            self.sink.banner(row, len(self.headers))
        height = self._height(values, styles, banner=banner)
        if self.paged:
            if row <= self.header_row:
                self._title_pt += height
            else:
                if self._used > 0 and self._used + height > self._capacity():
                    # break here ourselves: every page then ends where it is computed to,
                    # never later (an office suite's page holds a little more than this)
                    self.sink.page_break(row - 1)
                    self._used = 0.0
                self._used += height
        self.sink.append(values, styles, height)

    def _height(
        self, values: Sequence[Value], styles: Sequence[str | None], *, banner: bool
    ) -> float:
        """A row's height in points: as many lines as its longest wrapped text needs.

        Every row's height is written: LibreOffice does not fit rows to wrapped text when
        it opens a workbook, nobody fits a merged row (a banner), and a paged sheet must
        know its heights to know where its pages end. A line is counted a little short
        (words wrap whole), so a row errs on the tall side rather than cut its text.
        """
        key = (tuple(styles), banner)
        plan = self._height_plans.get(key)
        if plan is None:
            plan = self._height_plans[key] = self._height_plan(styles, banner=banner)
        rooms, base = plan
        lines = 1
        for i, room in rooms:
            value = values[i]
            if value.__class__ is str:
                n = wrapped_lines(value, room)
                if n > lines:
                    lines = n
        return base + (lines - 1) * base * LINE_STEP

    def _height_plan(
        self, styles: Sequence[str | None], *, banner: bool
    ) -> tuple[list[tuple[int, float]], float]:
        """The wrapped columns of rows in ``styles`` with the characters a line of each
        holds (a character of width 1 is about half the font size), and one line's height."""
        widths = [sum(self.widths)] if banner else self.widths
        rooms = []
        for i, (style, width) in enumerate(zip(styles, widths, strict=False)):
            if style is not None and STYLES[style].wrap:
                size = STYLES[style].size or FONT_PT
                rooms.append((i, max(width - 0.5, 1.0) * FONT_PT / size))
        size = max((STYLES[s].size or FONT_PT for s in styles if s), default=FONT_PT)
        return rooms, TITLE_ROW_PT if size > 12 else ROW_PT

    def _capacity(self) -> float:
        """Points of rows (at 100 %) one printed page holds under the repeated title rows."""
        return PAGE_HEIGHT_PT * PAGE_SLACK * 100 / self.scale - self._title_pt

    def keep(self, rows: int, *, extra_pt: float = 0.0) -> None:
        """Keep the next ``rows`` rows (and ``extra_pt`` below them, e.g. a chart) on one
        printed page: start a new page first if they would not fit on this one."""
        if not self.paged:
            return
        self._flush()
        need = rows * ROW_PT + extra_pt
        if self._used > 0 and self._used + need > self._capacity():
            self.page_break()

    def _flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        for i, w in enumerate(self._widths):
            for hint in self.hints.get(i, ()):
                self._widths[i] = w = max(w, display_width(hint))
                self._text[i] = True
        self.widths, self.scale = _fit(
            self.headers, self._widths, self._text, self.caps, self.floors
        )
        self.sink.setup(
            SheetLayout(
                widths=tuple(self.widths),
                freeze_row=self.header_row + 1 if self.header_row else 0,
                title_rows=self.header_row,
                footer_left=self.footer[0],
                footer_center=self.footer[1],
                footer_right=self.footer[2],
                scale=self.scale,
            )
        )
        for values, styles, _digest in pending:
            self._emit(values, styles)

    def chart(self, spec: BarChartSpec) -> None:
        """Add a chart; a width of 0 means as wide as the sheet's columns."""
        self._flush()
        if not spec.width_cm:  # a little narrower: never past the last printed column
            spec = replace(spec, width_cm=0.95 * sum(_column_cm(w) for w in self.widths))
        self.sink.bar_chart(spec)

    def page_break(self) -> None:
        """Start a new printed page after the last row written."""
        self._flush()
        self.sink.page_break(self._written)
        self._used = 0.0

    def close(self, *, filter_to: int | None = None) -> None:
        """Finish; the autofilter covers the header row to ``filter_to`` (default: last row)."""
        self._flush()
        autofilter = None
        if self.highlight and self.rows > self.header_row:
            col, rules = self.highlight
            self.sink.highlight(col + 1, self.header_row + 1, self.rows, rules)
        if self.header_row:
            last = self.rows if filter_to is None else filter_to
            autofilter = (self.header_row, max(last, self.header_row), len(self.headers))
        self.sink.close(autofilter)


#: the narrowest a text column gets (its cells wrap), and any column at all
TEXT_FLOOR: Final = 8
NARROWEST: Final = 6
#: the widths are taken as this much wider than computed when choosing the scale
SPARE: Final = 1.03


def _px(widths: Sequence[float]) -> float:
    """Screen pixels of columns of these widths (7 px a character plus 5 px, at 96 dpi)."""
    return sum(w * 7 + 5 for w in widths)


def _fit(
    headers: Sequence[str],
    content: Sequence[int],
    text: Sequence[bool],
    caps: Sequence[int],
    floors: Mapping[int, int],
) -> tuple[list[float], int]:
    """Column widths and the print scale (percent) of a sheet.

    Each column would be as wide as its widest value and header (plus a margin) up to its
    cap. When that is too wide to print at ``MIN_PRINT_SCALE``, text columns wrap: the
    fewest lines L for which every text column narrowed to hold its widest value in L lines
    fits the page is chosen (so one column does not wrap to four lines while another keeps
    a line to spare), and what room is left goes to the columns that still wrap most.
    Text columns never get narrower than ``TEXT_FLOOR`` (or half their header, or their
    own floor in ``floors``); numbers and dates never narrower than their values, so they
    never show ``###``.
    """
    n = len(headers)
    desired: list[float] = []
    least: list[float] = []
    for i, (header, w, is_text, cap) in enumerate(zip(headers, content, text, caps, strict=True)):
        head = display_width(header)
        width = float(min(max(w + 2, head + 2, NARROWEST), max(cap, head + 2)))
        half_header = math.ceil(head / 2) + 2
        floor = max(TEXT_FLOOR, half_header) if is_text else max(w + 2, half_header)
        desired.append(width)
        least.append(min(float(max(floor, floors.get(i, 0))), width))
    page_px = PAGE_WIDTH_PT / 0.75
    budget = page_px * 100 / (MIN_PRINT_SCALE * SPARE)
    widths = list(desired)
    if _px(widths) > budget:
        wanted = [min(float(content[i]), desired[i] - 2) for i in range(n)]

        def narrowed(lines: int) -> list[float]:
            return [
                max(least[i], min(desired[i], math.ceil(wanted[i] / lines) + 2.0))
                if text[i]
                else least[i]
                for i in range(n)
            ]

        lines = 1
        widths = narrowed(lines)
        while _px(widths) > budget and widths != least:
            lines += 1
            widths = narrowed(lines)
        # what is left goes, a character at a time, to the column that wraps most
        while True:
            spare = budget - _px(widths)
            wrapping = [
                (wanted[i] / max(widths[i] - 2, 1.0), i)
                for i in range(n)
                if text[i] and widths[i] < desired[i]
            ]
            if spare < 7 or not wrapping:
                break
            _most, i = max(wrapping)
            widths[i] += 1
    scale = math.floor(100 * page_px / (_px(widths) * SPARE))
    return widths, max(min(scale, 100), MIN_PRINT_SCALE)


_CANONICAL: Final[dict[type, Callable[[Any], str]]] = {
    type(None): lambda v: "",
    str: lambda v: "s" + v,
    int: lambda v: f"i{v}",
    bool: lambda v: f"i{v:d}",
    float: lambda v: "f" + repr(v),
    datetime: lambda v: "t" + v.isoformat(),
    date: lambda v: "d" + v.isoformat(),
}


def _token(v: object) -> str:
    """The digest token of a value whose type is a subclass (numpy, pandas) of a known one."""
    if isinstance(v, numbers.Integral):
        return _CANONICAL[int](int(v))
    if isinstance(v, numbers.Real):
        return _CANONICAL[float](float(v))
    for kind in (str, datetime, date):
        if isinstance(v, kind):
            return _CANONICAL[kind](v)
    return "" if v is None else "r" + repr(v)


def _canonical(values: Sequence[Value]) -> bytes:
    """The cell values of a row as bytes for the digest: typed, unambiguous, stable."""
    return ("\x1f".join([_CANONICAL.get(type(v), _token)(v) for v in values]) + "\x1e").encode()


# ---------------------------------------------------------------------- the workbook


@dataclass(frozen=True)
class WorkbookInfo:
    """What was written. ``content_digest`` is a SHA-256 over every cell value in order,
    leaving out only what depends on the moment of writing (the "data as of" line and the
    document properties): two exports of the same data have the same digest."""

    path: Path
    sheets: tuple[str, ...]
    rows: int  # all rows written, titles and headers included
    lines: int  # obligations listed on the market sheets
    overdue: int
    pest_control: int
    content_digest: str


def write_workbook(
    report: Report,
    path: Path,
    *,
    language: str = DEFAULT_LANGUAGE,
    generated_at: datetime,
    progress: Progress | None = None,
    stamp: Stamp | None = None,
) -> WorkbookInfo:
    """Write the period's workbook to ``path`` (replaced atomically) with openpyxl."""
    return write_with(
        OpenpyxlBook(),
        report,
        path,
        language=language,
        generated_at=generated_at,
        progress=progress,
        stamp=stamp,
    )


def write_with(
    sink: BookSink,
    report: Report,
    path: Path,
    *,
    language: str = DEFAULT_LANGUAGE,
    generated_at: datetime,
    progress: Progress | None = None,
    stamp: Stamp | None = None,
) -> WorkbookInfo:
    """``write_workbook`` with another sink (the benchmark compares xlsxwriter this way)."""
    t = translator(language)
    writer = _WorkbookWriter(sink, report, t, progress)
    if stamp is not None:
        writer.summary_footer_right = "&A  " + _footer_text(
            t.tr("Audit chain {seq}: {hash}").format(seq=stamp.seq, hash=stamp.hash)
        )
    props = BookProperties(
        title=t.report_title(report.period),
        subject=t.period(report.period),
        keywords=f"{report.period.key} marketcare",
        description=writer.as_of_text,
        language=language.replace("_", "-"),
        created=generated_at.astimezone(UTC).replace(tzinfo=None, microsecond=0)
        if generated_at.tzinfo
        else generated_at,
        custom=() if stamp is None else stamp.properties(),
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        sheets = writer.write()
        sink.save(tmp, props)
        os.replace(tmp, path)
    except BaseException:
        sink.discard()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    book = hashlib.sha256()
    for sheet in sheets:
        book.update(sheet.title.encode() + b"\x1f" + sheet.digest.digest())
    return WorkbookInfo(
        path=path,
        sheets=tuple(s.title for s in sheets),
        rows=sum(s.rows for s in sheets),
        lines=writer.lines,
        overdue=writer.overdue_rows,
        pest_control=writer.pest_rows,
        content_digest=book.hexdigest(),
    )


@dataclass(frozen=True)
class Stamp:
    """What a recorded report carries besides its figures: the audit chain's head when it
    was written (its anchor) and whose ledger and which report it is, so that the office
    can check it (``marketcare verify-report``, ``marketcare audit verify --anchor``)."""

    seq: int
    hash: str
    installation: str
    scope: str
    language: str
    period_kind: str
    period_key: str

    def properties(self) -> tuple[tuple[str, str], ...]:
        return (
            (ANCHOR_PROPERTY, f"{self.seq} {self.hash}"),
            ("marketcare.installation", self.installation),
            ("marketcare.period", f"{self.period_kind} {self.period_key}"),
            ("marketcare.scope", self.scope),
            ("marketcare.language", self.language),
        )


#: the custom document property that holds the audit anchor (``seq hash``)
ANCHOR_PROPERTY = "marketcare.audit_head"


class _WorkbookWriter:
    #: the summary sheet's printed footer, right: the sheet's name and the audit anchor
    summary_footer_right = "&A"

    def __init__(
        self, sink: BookSink, report: Report, t: Translator, progress: Progress | None
    ) -> None:
        self.sink = sink
        self.report = report
        self.t = t
        self.progress = progress
        self.period_text = t.period(report.period)
        self.footer_left = _footer_text(self.period_text)
        self.footer_center = t.tr("Page &P of &N")
        self.whole_market = t.tr("Whole market")
        self.category_labels = {c: t.category(c) for c in CATEGORIES}
        #: values known before any row, for the column widths
        self.hints = {
            "market": [m.name for m in report.markets],
            "kind": [t.tr(label) for label in (*TASK_KIND_LABELS.values(), REINSPECTION_LABEL)],
            "status": list(self.category_labels.values()),
        }
        # status cells are coloured by conditional formats on the status column: one rule per
        # coloured category instead of a style on every cell (and they follow an edit)
        #: the status column stays wide enough for every label on one line
        self.status_width = max(display_width(v) for v in self.category_labels.values()) + 2
        self.status_rules = [
            (self.category_labels[c], f"status_{c.value}")
            for c in CATEGORIES
            if c in STATUS_COLOURS
        ]
        self.kind_labels: dict[str, str] = {}
        self.lines = 0
        self.overdue_rows = 0
        self.pest_rows = 0
        zones = {m.zone for m in report.markets}
        as_of = report.as_of
        if len(zones) == 1:
            local = as_of.astimezone(ZoneInfo(zones.pop())).replace(tzinfo=None)
            moment = t.long_datetime(local)
        else:
            moment = t.long_datetime(as_of.replace(tzinfo=None)) + " UTC"
        self.as_of_text = t.tr("Data as of {moment}").format(moment=moment)

    # -- labels --------------------------------------------------------------------------

    def kind(self, kind: str) -> str:
        label = self.kind_labels.get(kind)
        if label is None:
            label = self.kind_labels[kind] = clean(self.t.task_kind(kind))
        return label

    def readings(self, readings: Sequence[Reading], *, taken: bool) -> str | None:
        """``有效氯 1000 mg/L（要求 900–1200）``; nothing when no completion was recorded."""
        if not readings or (not taken and all(r.value is None for r in readings)):
            return None
        tr = self.t.tr
        parts = []
        for r in readings:
            value = DASH if r.value is None else f"{r.value:g}"
            if r.unit:
                value = f"{value} {r.unit}"
            if r.low is None and r.high is None:
                parts.append(tr("{label} {value}").format(label=r.label, value=value))
                continue
            if r.low is not None and r.high is not None:
                bounds = f"{r.low:g}–{r.high:g}"
            elif r.low is not None:
                bounds = f"≥ {r.low:g}"
            else:
                bounds = f"≤ {r.high:g}"
            if r.value is None or r.ok:
                template = tr("{label} {value} (required {range})")
            else:
                template = tr("{label} {value} (required {range}, out of range)")
            parts.append(template.format(label=r.label, value=value, range=bounds))
        return clean(tr("; ").join(parts))

    # -- the sheets ----------------------------------------------------------------------

    def _list_sheet(self, title: str, fields: Sequence[str], heading: str) -> _Sheet:
        hints = self.hints
        sheet = _Sheet(
            self.sink.sheet(title),
            title,
            headers=[self.t.tr(FIELDS[f][0]) for f in fields],
            caps=[FIELDS[f][1] for f in fields],
            hints={i: hints[f] for i, f in enumerate(fields) if f in hints},
            footer_left=self.footer_left,
            footer_center=self.footer_center,
            highlight=(fields.index("status"), self.status_rules),
            floors={fields.index("status"): self.status_width},
        )
        sheet.top([heading], ["title"])
        sheet.header()
        return sheet

    def write(self) -> list[_Sheet]:
        t = self.t
        taken: set[str] = set()
        summary_title = sheet_title(t.tr("Summary"), taken)
        overdue_title = sheet_title(t.tr("Overdue"), taken)
        pest_title = sheet_title(t.tr("Pest control"), taken)

        summary = self._summary(summary_title)
        overdue = self._list_sheet(
            overdue_title,
            OVERDUE_FIELDS,
            t.tr("Overdue and not rectified: {period}").format(period=self.period_text),
        )
        pest = self._list_sheet(
            pest_title,
            PEST_FIELDS,
            t.tr("Pest control visits: {period}").format(period=self.period_text),
        )
        rates_title = sheet_title(t.tr("Rectification rate"), taken)
        late_title = sheet_title(t.tr("Late problems"), taken)
        contracts = self.report.contracts()
        contracts_title = sheet_title(t.tr("Pest contracts"), taken) if contracts else None
        market_titles = [sheet_title(m.name, taken) for m in self.report.markets]
        total = self.report.count() if self.progress else 0
        sheets = [summary, overdue, pest, self._rates(rates_title), self._late_problems(late_title)]
        if contracts_title is not None:
            sheets.append(self._contracts(contracts_title, contracts))
        for market, title in zip(self.report.markets, market_titles, strict=True):
            heading = t.tr("{market} ({sub_district}): {period}").format(
                market=clean(market.name),
                sub_district=clean(market.sub_district),
                period=self.period_text,
            )
            sheet = self._list_sheet(title, MARKET_FIELDS, heading)
            n = 0
            for line in self.report.lines(market.id):
                self._line(line, market, sheet, overdue, pest)
                n += 1
                if self.progress and n % 1000 == 0:
                    self.progress(self.lines + n, total)
            self.lines += n
            if n == 0:
                sheet.top([t.tr("No obligations in this period.")], ["note"])
                sheet.close(filter_to=sheet.header_row)
            else:
                sheet.close()
            sheets.append(sheet)
            if self.progress:
                self.progress(self.lines, total)
        for extra in (overdue, pest):
            if extra.rows == extra.header_row:
                extra.top([t.tr("None.")], ["note"])
                extra.close(filter_to=extra.header_row)
            else:
                extra.close()
        return sheets

    def _line(
        self, line: Line, market: MarketInfo, sheet: _Sheet, overdue: _Sheet, pest: _Sheet
    ) -> None:
        category = line.category
        completed = line.completed.replace(microsecond=0) if line.completed else None
        note = clean(line.note) if line.note else None
        task = self.t.task_name(line.task_id, line.task_name)
        values: list[Value] = [
            clean(market.name),
            line.obligation_id,
            line.local_date,
            clean(line.area_name or line.area_id) if line.area_id else self.whole_market,
            clean(task),
            self.kind(line.kind),
            clean(line.contractor) if line.contractor else None,
            line.opens,
            line.due,
            completed,
            clean(line.by) if line.by else None,
            self.readings(line.readings, taken=line.by is not None),
            self.category_labels[category],
            line.minutes_late or None,
            note,
        ]
        styles = [None if v is None else st for v, st in zip(values, _FIELD_STYLES, strict=True)]
        sheet.add(_MARKET_PICK(values), _MARKET_PICK(styles))
        if line.overdue and line.counts_for_compliance:
            self.overdue_rows += 1
            overdue.add(_OVERDUE_PICK(values), _OVERDUE_PICK(styles))
        if line.kind == PEST_CONTROL:
            self.pest_rows += 1
            pest.add(_PEST_PICK(values), _PEST_PICK(styles))

    # -- rectification (the second half of the weekly double report) ----------------------

    def _rates(self, title: str) -> _Sheet:
        t, report = self.t, self.report
        headers = [
            t.tr("Market"),
            t.tr("Sub-district"),
            t.tr("Due"),
            t.tr("Verified"),
            t.tr("Rectification rate"),
            t.tr("Re-inspected"),
            t.tr("Re-inspection failed"),
            t.tr("Re-inspection overdue"),
        ]
        sheet = _Sheet(
            self.sink.sheet(title),
            title,
            headers=headers,
            caps=[30, 16, 12, 12, 14, 12, 12, 12],
            hints={0: [m.name for m in report.markets] + [t.tr("District total")]},
            footer_left=self.footer_left,
            footer_center=self.footer_center,
        )
        sheet.top([t.tr("Rectification: {period}").format(period=self.period_text)], ["title"])
        sheet.header()
        figures = report.rectification()
        total = Rectification(Rate(0, 0))
        for market in report.markets:
            f = figures[market.id]
            total += f
            values, styles = self._rectification(f, None)
            sheet.add(
                [clean(market.name), clean(market.sub_district), *values], [None, None, *styles]
            )
        filter_to = sheet.rows
        values, styles = self._rectification(total, "total")
        sheet.add([t.tr("District total"), None, *values], ["total", "total", *styles])
        sheet.top([None], [None])
        sheet.top([t.tr(RATE_RULE)], ["note"])
        sheet.top([t.tr(REINSPECTION_RULE)], ["note"])
        sheet.close(filter_to=filter_to)
        return sheet

    @staticmethod
    def _rectification(f: Rectification, style: str | None) -> tuple[list[Value], list[str | None]]:
        rate = f.rate.value
        values: list[Value] = [
            f.rate.due,
            f.rate.verified,
            DASH if rate is None else rate,
            f.reinspected,
            f.failed,
            f.overdue,
        ]
        shown = "percent" if rate is not None else "dash"
        styles: list[str | None] = [style, style, f"{style}_{shown}" if style else shown]
        styles += [style, "status_missed" if f.failed and not style else style, style]
        return values, styles

    def _late_problems(self, title: str) -> _Sheet:
        t, report = self.t, self.report
        headers = [
            t.tr("No."),
            t.tr("Market"),
            t.tr("Area"),
            t.tr("Category"),
            t.tr("Problem"),
            t.tr("Found at"),
            t.tr("Deadline"),
            t.tr("State"),
            t.tr("Reopened"),
            t.tr("Days overdue"),
        ]
        sheet = _Sheet(
            self.sink.sheet(title),
            title,
            headers=headers,
            caps=[10, 30, 20, 16, 50, 16, 16, 24, 12, 12],
            hints={1: [m.name for m in report.markets]},
            footer_left=self.footer_left,
            footer_center=self.footer_center,
        )
        sheet.top(
            [
                t.tr("Problems not rectified by their deadline: {period}").format(
                    period=self.period_text
                )
            ],
            ["title"],
        )
        sheet.header()
        names = {m.id: clean(m.name) for m in report.markets}
        lines = report.late_problems()
        for p in lines:
            sheet.add(
                [
                    p.id,
                    names.get(p.market_id, p.market_id),
                    clean(p.area_name or p.area_id) if p.area_id else self.whole_market,
                    t.problem_category(p.category),
                    clean(p.description),
                    p.found_at,
                    p.deadline,
                    t.problem_state(p.state),
                    p.reopened,
                    p.days_overdue,
                ],
                [None, None, None, None, "wrap", "time", "time", None, None, None],
            )
        if not lines:
            sheet.top([t.tr("None.")], ["note"])
            sheet.close(filter_to=sheet.header_row)
        else:
            sheet.close()
        return sheet

    def _contracts(self, title: str, rows: Sequence[Any]) -> _Sheet:
        t = self.t
        headers = [
            t.tr("Market"),
            t.tr("Contractor"),
            t.tr("Agreed visits"),
            t.tr("Visits done"),
            t.tr("Short"),
        ]
        sheet = _Sheet(
            self.sink.sheet(title),
            title,
            headers=headers,
            caps=[30, 36, 12, 12, 12],
            hints={0: [m.name for m in self.report.markets]},
            footer_left=self.footer_left,
            footer_center=self.footer_center,
        )
        sheet.top(
            [t.tr("Pest control contracts: {period}").format(period=self.period_text)], ["title"]
        )
        sheet.header()
        names = {m.id: clean(m.name) for m in self.report.markets}
        for c in rows:
            sheet.add(
                [
                    names.get(c.market_id, c.market_id),
                    clean(c.contractor),
                    c.agreed,
                    c.done,
                    c.short,
                ],
                [None, None, None, None, "status_missed" if c.short else None],
            )
        sheet.close()
        return sheet

    # -- the summary ---------------------------------------------------------------------

    def _counts(self, row: Counts, style: str | None) -> tuple[list[Value], list[str | None]]:
        values: list[Value] = [row.due, *(getattr(row, c.value) for c in CATEGORIES)]
        styles: list[str | None] = [style or "plain"] * len(values)
        rate = row.compliance
        if rate is not None:
            values.append(rate)
            styles.append(f"{style}_percent" if style else "percent")
        else:
            values.append(DASH)
            styles.append(f"{style}_dash" if style else "dash")
        return values, styles

    def _summary(self, title: str) -> _Sheet:
        t, report = self.t, self.report
        headers = [
            t.tr("Market"),
            t.tr("Sub-district"),
            t.tr("Task kind"),
            t.tr("Due"),
            *(self.category_labels[c] for c in CATEGORIES),
            t.tr("Compliance"),
        ]
        header_styles = [
            "header",
            "header",
            "header",
            "header",
            *(f"header_{c.value}" if c in STATUS_COLOURS else "header" for c in CATEGORIES),
            "header",
        ]
        district = t.tr("District total")
        subtotal = t.tr("Subtotal")
        kinds = [t.tr(label) for label in TASK_KIND_LABELS.values()]
        sheet = _Sheet(
            self.sink.sheet(title),
            title,
            headers=headers,
            header_styles=header_styles,
            caps=[30, 16, 30] + [14] * (len(headers) - 3),
            hints={
                0: [m.name for m in report.markets] + [district],
                1: [m.sub_district for m in report.markets],
                2: [*kinds, subtotal],
            },
            footer_left=self.footer_left,
            footer_center=self.footer_center,
            footer_right=self.summary_footer_right,
            paged=True,
        )
        ncols = len(headers)
        sheet.top([t.report_title(report.period)], ["title"])
        sheet.top([t.tr("Period: {period}").format(period=self.period_text)], ["subtitle"])
        sheet.top([self.as_of_text], ["subtitle"], digest=False)
        sheet.header()

        by_market: dict[str, list[tuple[str, Counts]]] = {}
        for (market_id, kind), row in report.summary.items():
            by_market.setdefault(market_id, []).append((kind, row))
        order = {k.value: i for i, k in enumerate(TaskKind)}
        totals = report.market_totals()
        for market in report.markets:
            name, sub = clean(market.name), clean(market.sub_district)
            rows = sorted(
                by_market.get(market.id, []), key=lambda kr: (order.get(kr[0], 99), kr[0])
            )
            sheet.keep(len(rows) + 1)  # a market's rows and its subtotal on one page
            for kind, row in rows:
                values, styles = self._counts(row, None)
                sheet.add([name, sub, self.kind(kind), *values], ["wrap"] * 3 + styles)
            values, styles = self._counts(totals[market.id], "subtotal")
            sheet.add([name, sub, subtotal, *values], ["subtotal"] * 3 + styles)
        district_row = report.district_total()
        values, styles = self._counts(district_row, "total")
        sheet.add([district, None, None, *values], ["total"] * 3 + styles)
        filter_to = sheet.rows

        sheet.top([None], [None])
        sheet.top([t.tr(RULE)], ["note"])
        sheet.top([None], [None])
        # the block by market and its chart stay together, on this page if they fit
        chart_cm = min(max(7.5, 0.7 * len(report.markets) + 2.5), 60.0)
        sheet.keep(len(report.markets) + 4, extra_pt=chart_cm / 2.54 * 72)
        sheet.top([t.tr("Compliance by market")], ["section"])
        sheet.top(headers[:2] + ["", *headers[3:]], header_styles)
        header_row = sheet.rows
        for market in report.markets:
            values, styles = self._counts(totals[market.id], None)
            sheet.add(
                [clean(market.name), clean(market.sub_district), None, *values],
                ["wrap", "wrap", None, *styles],
            )
        last_market = sheet.rows
        values, styles = self._counts(district_row, "total")
        sheet.add([district, None, None, *values], ["total"] * 3 + styles)
        if report.markets:
            sheet.chart(
                BarChartSpec(
                    title=t.tr("Compliance by market"),
                    header_row=header_row,
                    first_row=header_row + 1,
                    last_row=last_market,
                    category_col=1,
                    value_col=ncols,
                    anchor_row=sheet.rows + 2,
                    height_cm=chart_cm,
                    width_cm=0,
                )
            )
        sheet.close(filter_to=filter_to)
        return sheet


#: every field of an obligation row: header (message id), widest column, style
FIELDS: Final[dict[str, tuple[str, int, str | None]]] = {
    "market": (N_("Market"), 24, "wrap"),
    "id": (N_("No."), 10, "plain"),
    "date": (N_("Date"), 12, "date"),
    "area": (N_("Area"), 16, "wrap"),
    "task": (N_("Task"), 24, "wrap"),
    "kind": (N_("Task kind"), 18, "wrap"),
    "contractor": (N_("Contractor"), 24, "wrap"),
    "opens": (N_("Opens"), 14, "time"),
    "due": (N_("Due by"), 14, "time"),
    "completed": (N_("Completed at"), 16, "time_s"),
    "by": (N_("By"), 14, "wrap"),
    "readings": (N_("Readings (required range)"), 40, "wrap"),
    "status": (N_("Status"), 16, "wrap"),
    "late": (N_("Minutes late"), 10, "plain"),
    "note": (N_("Note"), 30, "wrap"),
}
MARKET_FIELDS: Final = (
    "id",
    "date",
    "area",
    "task",
    "kind",
    "opens",
    "due",
    "completed",
    "by",
    "readings",
    "status",
    "late",
    "note",
)
OVERDUE_FIELDS: Final = (
    "market",
    "id",
    "date",
    "area",
    "task",
    "kind",
    "due",
    "status",
    "by",
    "readings",
    "note",
)
PEST_FIELDS: Final = (
    "market",
    "id",
    "date",
    "task",
    "contractor",
    "opens",
    "due",
    "completed",
    "by",
    "readings",
    "status",
    "late",
    "note",
)
_FIELD_ORDER: Final = tuple(FIELDS)
_FIELD_STYLES: Final = tuple(FIELDS[f][2] for f in _FIELD_ORDER)


def _picker(fields: Sequence[str]) -> Callable[[Sequence[Any]], list[Any]]:
    index = [_FIELD_ORDER.index(f) for f in fields]
    return lambda row: [row[i] for i in index]


_MARKET_PICK: Final = _picker(MARKET_FIELDS)
_OVERDUE_PICK: Final = _picker(OVERDUE_FIELDS)
_PEST_PICK: Final = _picker(PEST_FIELDS)

REINSPECTION_RULE: Final = N_(
    "Re-inspections are the office's checks of rectified problems: they are not part of "
    "any market's compliance. A failed re-inspection reopens the problem."
)
RATE_RULE: Final = N_(
    "Rectification rate = problems due in the period (deadline within it) verified by now ÷ "
    "problems due in the period."
)

RULE: Final = N_(
    "Compliance = on time ÷ due. Due = on time + late + missed + failed readings; "
    "excused (market closed) and pending obligations are listed but not counted."
)
