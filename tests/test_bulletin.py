"""The bulletin's PDF font: the CJK face cut to the page's text (``bulletin.cjk_subset``),
and what a PDF leaves behind in the process.

The whole PDF (a long week, rare characters, no split rows) is proven in
``test_inspections_web.py``; these tests hold the cut itself and what happens without it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import uharfbuzz as hb

from marketcare.reports import bulletin, bulletin_font

pytestmark = pytest.mark.no_database

TEXT = "周双通报 鲤中第1农贸市场 ↑3 ↓2 → — 95.0% 逾期未整改 堃记水产 𬌗"


@pytest.fixture(autouse=True)
def no_cut_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test cuts from nothing: the process keeps its last cut for the next page, and
    a bigger page's cut from an earlier test (in any order) would be reused."""
    monkeypatch.setattr(bulletin, "_last_cut", None)


@pytest.fixture
def without_cjk_fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fontconfig that knows no font at all (as on a server without fonts-noto-cjk)."""
    empty = tmp_path / "no-fonts"
    empty.mkdir()
    conf = tmp_path / "fonts.conf"
    conf.write_text(
        f"<?xml version='1.0'?><fontconfig><dir>{empty}</dir>"
        f"<cachedir>{tmp_path / 'cache'}</cachedir></fontconfig>",
        encoding="utf-8",
    )
    monkeypatch.setenv("FONTCONFIG_FILE", str(conf))
    bulletin.cjk_face.cache_clear()
    yield
    bulletin.cjk_face.cache_clear()  # the next test asks the real fontconfig again


def test_the_cut_has_every_character_of_the_page_and_little_else() -> None:
    data = bulletin.cjk_subset(TEXT)
    assert data is not None
    cut = hb.Face(hb.Blob(data))
    covered = cut.unicodes
    assert all(ord(c) in covered for c in TEXT)  # 堃 and 𬌗 too: outside GB 2312 and the BMP
    assert all(c in covered for c in range(0x20, 0x7F))  # page numbers, figures, Latin names
    assert cut.glyph_count < 200  # of the face's 65,535
    assert len(data) < 100_000  # the collection is 19 MB


def test_the_font_mapped_page_by_page_cuts_as_mapped_whole_and_is_unmapped_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    face = bulletin.cjk_face()
    assert face is not None
    wanted = {*map(ord, TEXT), *range(0x20, 0x7F)}
    maps = Path("/proc/self/maps")
    before = maps.read_text().count(face[0])
    by_pages = bulletin_font.cut(*face, wanted)
    assert maps.read_text().count(face[0]) == before  # none of its ~4,700 mappings left
    monkeypatch.setattr(bulletin_font, "_libc", lambda: None)  # no mmap: the file whole
    assert bulletin_font.cut(*face, wanted) == by_pages


def test_the_page_loads_its_cut_from_a_file_by_the_subset_family(tmp_path: Path) -> None:
    page = bulletin.with_cjk_subset(
        f'<style>{bulletin.FONT_SLOT} html {{ font-family: "{bulletin.SUBSET_FAMILY}"; }}'
        "</style><p>市场排名</p>",
        tmp_path,
    )
    (cut,) = tmp_path.iterdir()
    rule = f'@font-face {{ font-family: "{bulletin.SUBSET_FAMILY}"; src: url({cut.as_uri()}); }}'
    assert rule in page and bulletin.FONT_SLOT not in page
    assert ord("排") in hb.Face(hb.Blob(cut.read_bytes())).unicodes


@pytest.mark.usefixtures("without_cjk_fonts")
def test_without_the_cjk_font_there_is_no_cut_and_the_log_says_what_to_install(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING, logger="marketcare.reports.bulletin"):
        assert bulletin.cjk_subset(TEXT) is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "Noto Sans CJK SC:style=Regular is not installed (make runtime-deps)" in warning
    page = f"<style>{bulletin.FONT_SLOT}</style><p>市场排名</p>"
    folder = tmp_path / "cut"
    folder.mkdir()
    assert bulletin.with_cjk_subset(page, folder) == page  # the installed fonts, as before
    assert not any(folder.iterdir())


def test_a_font_file_gone_since_fontconfig_saw_it_means_no_cut_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bulletin, "cjk_face", lambda: (str(tmp_path / "gone.ttc"), 2))
    with caplog.at_level(logging.WARNING, logger="marketcare.reports.bulletin"):
        assert bulletin.cjk_subset(TEXT) is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"cannot subset Noto Sans CJK SC:style=Regular from {tmp_path}")


def test_a_next_page_with_the_same_characters_reuses_the_last_cut() -> None:
    first = bulletin.cjk_subset(TEXT + " 十月")
    assert first is not None
    assert bulletin.cjk_subset(TEXT) is first  # no second mapping of the collection


def test_a_page_with_a_new_character_is_cut_again_and_has_it() -> None:
    before = bulletin.cjk_subset(TEXT)
    after = bulletin.cjk_subset(TEXT + "鑫")
    assert after is not None and after is not before
    assert ord("鑫") in hb.Face(hb.Blob(after)).unicodes


def test_a_last_cut_more_than_twice_the_page_is_not_reused() -> None:
    big = bulletin.cjk_subset(TEXT + "".join(map(chr, range(0x4E00, 0x4F00))))
    small = bulletin.cjk_subset(TEXT)
    assert small is not None and small is not big
    assert hb.Face(hb.Blob(small)).glyph_count < 200


def test_the_cut_has_pangos_sample_text_and_the_signs_a_first_period_does_not_show() -> None:
    sample = bulletin_font.sample("zh-CN")
    assert any("\u4e00" <= c <= "\u9fff" for c in sample)  # Pango measures lines by it
    data = bulletin.cjk_subset("周双通报 第1农贸市场", lang="zh-CN")
    assert data is not None
    covered = hb.Face(hb.Blob(data)).unicodes
    assert all(ord(c) in covered for c in sample + bulletin.SIGNS)


def test_a_pdf_leaves_none_of_its_layout_behind_and_the_collector_as_it_was(
    tmp_path: Path,
) -> None:
    from weasyprint.formatting_structure.boxes import Box

    page = (
        f'<html lang="zh-CN"><style>{bulletin.FONT_SLOT} html {{ font-family: '
        f'"{bulletin.SUBSET_FAMILY}"; }}</style><table><tr><td>市场排名 ↑3</td></tr></table>'
    )
    gc.disable()  # only the PDF's own collection frees its cycles
    try:
        bulletin.render_pdf(page, tmp_path / "b.pdf", lang="zh-CN")
        left = [o for o in gc.get_objects() if isinstance(o, Box)]
    finally:
        gc.enable()
    assert not left
    assert (tmp_path / "b.pdf").read_bytes().startswith(b"%PDF")
    assert gc.get_freeze_count() == 0  # what was frozen meanwhile is collected as before


def test_a_pdf_made_in_a_serving_daemon_leaves_its_settled_heap_frozen(tmp_path: Path) -> None:
    """The web app freezes its start-up heap so full collections stay short (the tick's
    p99); the weekly bulletin, made in the same process, must not thaw it."""
    from marketcare import heap

    def collected_generations_hold(thing: object) -> bool:
        return any(o is thing for g in range(3) for o in gc.get_objects(g))

    kept: list[object] = [[]]  # alive before the server settles, as its schedule is
    heap.settle()
    try:
        assert not collected_generations_hold(kept)
        bulletin.render_pdf("<p>周报</p>", tmp_path / "b.pdf", lang="zh-CN")
        assert not collected_generations_hold(kept)
    finally:
        heap.unsettle()
    assert gc.get_freeze_count() == 0 and collected_generations_hold(kept)


def test_without_harfbuzzs_subsetter_there_is_no_cut_and_the_log_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bulletin_font, "LIBRARIES", ("libmarketcare-no-such-library.so.0",))
    bulletin_font._harfbuzz.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="marketcare.reports.bulletin_font"):
            assert bulletin.cjk_subset(TEXT) is None
    finally:
        bulletin_font._harfbuzz.cache_clear()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "libharfbuzz-subset is missing" in warning


PDF_WITHOUT_FONT_TOOLS = """
import json, sys, tempfile
from pathlib import Path
from marketcare.reports import bulletin
with tempfile.TemporaryDirectory() as folder:
    bulletin.render_pdf(sys.argv[1], Path(folder) / "b.pdf", lang="zh-CN")
    made = (Path(folder) / "b.pdf").read_bytes().startswith(b"%PDF")
deferred = ["fontTools.subset", "fontTools.ttLib.woff2", "fontTools.varLib.instancer"]
print(json.dumps({"made": made, "loaded": [m for m in [*deferred, "uharfbuzz"] if m in sys.modules]}))
"""


def test_a_bulletins_pdf_is_made_without_importing_fonttools_subsetter_instancer_or_woff2() -> None:
    """They are 10 MiB of a bulletin's process the export does not pay (and a second
    HarfBuzz, uharfbuzz, under the subsetter): WeasyPrint imports them for fonts the page
    never has. A fresh process, as a daemon's first bulletin."""
    import json
    import subprocess
    import sys

    page = (
        f'<html lang="zh-CN"><style>{bulletin.FONT_SLOT} html {{ font-family: '
        f'"{bulletin.SUBSET_FAMILY}"; }}</style><table><tr><td>{TEXT}</td></tr></table>'
    )
    done = subprocess.run(
        [sys.executable, "-c", PDF_WITHOUT_FONT_TOOLS, page],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(done.stdout) == {"made": True, "loaded": []}


FONT_TOOLS_AT_FIRST_USE = """
import sys
from marketcare.reports import bulletin, bulletin_weasyprint
bulletin.page_class()
import weasyprint.pdf.fonts as pdf_fonts, weasyprint.text.fonts as text_fonts
assert not any(isinstance(m, bulletin_weasyprint._Deferred) for m in sys.modules.values())
import fontTools.subset, fontTools.ttLib.woff2, fontTools.varLib.instancer as instancer
assert pdf_fonts.subset.Subsetter is fontTools.subset.Subsetter
assert text_fonts.woff2.decompress is fontTools.ttLib.woff2.decompress
instancer.instantiateVariableFont = lambda font, axes, static: (font, axes, static)
assert pdf_fonts.instantiateVariableFont("font", {"wght": 400}, static=True) == (
    "font", {"wght": 400}, True)
print("ok")
"""


def test_the_font_tools_weasyprint_imported_deferred_are_the_real_ones_at_their_first_use() -> None:
    """A PDF that needs one (a variable font, a WOFF2 font, no HarfBuzz subsetter) gets
    it then; nothing of the stand-ins is left where another import would find it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FONT_TOOLS_AT_FIRST_USE],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert done.stdout.strip() == "ok"


FONT_TOOL_USED_AT_IMPORT = """
import logging, sys
logging.basicConfig(format="%(message)s")
from marketcare.reports import bulletin_weasyprint
bulletin_weasyprint.DEFERRED["fontTools.ttLib"] = ()  # WeasyPrint imports TTFont from it
weasyprint = bulletin_weasyprint.load()
import weasyprint.pdf.fonts as pdf_fonts, fontTools.ttLib
assert pdf_fonts.TTFont is fontTools.ttLib.TTFont and weasyprint.HTML
print("ok")
"""


def test_a_weasyprint_that_uses_a_deferred_module_as_it_imports_is_imported_whole_and_says_so() -> (
    None
):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FONT_TOOL_USED_AT_IMPORT],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert done.stdout.strip() == "ok"
    assert "WeasyPrint imported with its font tools: fontTools.ttLib is deferred" in done.stderr
