"""The bulletin's CJK face cut to a page's characters, by the system's HarfBuzz subsetter.

WeasyPrint lays the page out with the system's HarfBuzz (through Pango) and subsets the
fonts it embeds with the system's ``libharfbuzz-subset``: both are loaded in every process
that imports WeasyPrint. Cutting the face with the same library costs no code of its own;
a Python binding that bundles its own copy of HarfBuzz (uharfbuzz) made the bulletin's
process map a second HarfBuzz, about 2 MiB more resident memory than the export's for
the same work (docs/benchmarks.md, "The bulletin's memory").

The source face is mapped from its file, not read: a cut reads the tables and glyphs it
needs (a district's page: a few hundred of the 65,535 glyphs), then unmaps the file. It
is mapped page by page (``_Pieces``): Linux maps the neighbours of every page a process
reads from a file when they are in the page cache (16 pages, "fault-around"), which made
a cut's 1.5 MiB of glyphs and tables 5.4 MiB of the process's resident memory, the
moment of a district's bulletin's peak.
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import mmap
import os
from dataclasses import dataclass
from typing import Any

from cffi import FFI

log = logging.getLogger(__name__)

_DECLARATIONS = """
typedef struct hb_blob_t hb_blob_t;
typedef struct hb_face_t hb_face_t;
typedef struct hb_set_t hb_set_t;
typedef struct hb_subset_input_t hb_subset_input_t;
hb_blob_t *hb_blob_create_from_file_or_fail (const char *file_name);
hb_blob_t *hb_blob_create_or_fail (const char *data, unsigned int length, int mode,
                                   void *user_data, void *destroy);
void hb_blob_destroy (hb_blob_t *blob);
const char *hb_blob_get_data (hb_blob_t *blob, unsigned int *length);
hb_face_t *hb_face_create (hb_blob_t *blob, unsigned int index);
void hb_face_destroy (hb_face_t *face);
hb_blob_t *hb_face_reference_blob (hb_face_t *face);
hb_subset_input_t *hb_subset_input_create_or_fail (void);
void hb_subset_input_destroy (hb_subset_input_t *input);
hb_set_t *hb_subset_input_unicode_set (hb_subset_input_t *input);
void hb_subset_input_set_flags (hb_subset_input_t *input, unsigned int value);
void hb_set_add (hb_set_t *set, uint32_t codepoint);
hb_face_t *hb_subset_or_fail (hb_face_t *source, const hb_subset_input_t *input);
"""
#: ``HB_SUBSET_FLAGS_NO_HINTING``: WeasyPrint drops the hints anyway
NO_HINTING = 0x00000001
#: ``HB_MEMORY_MODE_READONLY``: HarfBuzz reads the data where it is, never copies it
READONLY = 1
#: the C library's mapping calls (POSIX), for ``_Pieces``
_LIBC = """
void *mmap (void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap (void *addr, size_t length);
"""
#: the names Debian (and most systems) give the subsetter's shared library
LIBRARIES = ("libharfbuzz-subset.so.0", "harfbuzz-subset")
#: and Pango's
PANGO = ("libpango-1.0.so.0", "pango-1.0")


class CutError(Exception):
    """The face could not be cut (its file gone or damaged since fontconfig saw it)."""


@dataclass(frozen=True)
class _Library:
    """A C library and the declarations it is called by."""

    ffi: FFI
    lib: Any  # the library's functions, as declared above


@functools.cache
def _harfbuzz() -> _Library | None:
    """The subsetter, loaded once a process (None without it: no cut, the whole fonts)."""
    ffi = FFI()
    ffi.cdef(_DECLARATIONS)
    # dlsym on this handle also finds libharfbuzz's functions (a dependency)
    lib = _open(ffi, LIBRARIES)
    if lib is not None:
        return _Library(ffi, lib)
    log.warning("libharfbuzz-subset is missing: the bulletin's PDF loads whole fonts")
    return None


def _open(ffi: FFI, names: tuple[str, ...]) -> Any | None:
    for name in names:
        path = name if name.endswith(".0") else ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            return ffi.dlopen(path)
        except OSError:
            continue
    return None


@functools.cache
def _pango() -> _Library | None:
    ffi = FFI()
    ffi.cdef(
        "typedef struct _PangoLanguage PangoLanguage;"
        "PangoLanguage *pango_language_from_string (const char *language);"
        "const char *pango_language_get_sample_string (PangoLanguage *language);"
    )
    lib = _open(ffi, PANGO)
    return None if lib is None else _Library(ffi, lib)


@functools.cache
def sample(lang: str) -> str:
    """Pango's sample text for ``lang`` ("" without Pango).

    Pango measures a line's height over the fonts that set this text (for zh-CN
    "我能吞下玻璃而不伤身体。"): a cut without these characters makes it load the whole
    collection behind it only to measure them (2 MiB more at the layout's peak).
    """
    pango = _pango()
    if pango is None:
        return ""
    language = pango.lib.pango_language_from_string(lang.encode())
    text = pango.lib.pango_language_get_sample_string(language)
    return "" if text == pango.ffi.NULL else str(pango.ffi.string(text).decode())


@functools.cache
def _libc() -> _Library | None:
    """The C library's ``mmap`` (None where there is none: the file is mapped whole)."""
    if os.name != "posix":
        return None
    ffi = FFI()
    ffi.cdef(_LIBC)
    try:
        return _Library(ffi, ffi.dlopen(None))
    except OSError:
        return None


class _Pieces:
    """A font file mapped read-only page by page, each page its own mapping.

    The kernel's fault-around stays inside one mapping; two mappings side by side of the
    same open file and of adjacent offsets are merged into one, so the pages come
    alternately from two descriptors of the file. HarfBuzz reads one contiguous range as
    before. Some 4,700 mappings for the 19 MB collection (the kernel allows 65,530 by
    default), made and unmade in 0.1-0.2 s, once a cut; when one fails (the limit
    reached, or no ``mmap``) the cut maps the file whole, as it did.
    """

    def __init__(self, file: str) -> None:
        libc = _libc()
        if libc is None:
            raise OSError("no mmap")
        self.ffi, self.lib = libc.ffi, libc.lib
        fds = [os.open(file, os.O_RDONLY)]
        try:
            fds.append(os.open(file, os.O_RDONLY))
            self.size = os.fstat(fds[0]).st_size
            page = mmap.PAGESIZE
            # a range reserved first (no access, no memory), then filled page by page
            self.base = self.lib.mmap(
                self.ffi.NULL, self.size, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
            )
            if self.base == self.ffi.cast("void *", -1):
                raise OSError("cannot reserve the font's range")
            start = int(self.ffi.cast("uintptr_t", self.base))
            for n, offset in enumerate(range(0, self.size, page)):
                at = self.ffi.cast("void *", start + offset)
                got = self.lib.mmap(
                    at,
                    min(page, self.size - offset),
                    mmap.PROT_READ,
                    mmap.MAP_PRIVATE | _FIXED,
                    fds[n % 2],
                    offset,
                )
                if got != at:
                    self.close()
                    raise OSError(f"cannot map {file} at {offset}")
        finally:
            for fd in fds:  # the mappings keep the file open
                os.close(fd)

    def data(self) -> Any:
        return self.ffi.cast("const char *", self.base)

    def close(self) -> None:
        self.lib.munmap(self.base, self.size)


#: ``PROT_NONE`` and ``MAP_FIXED``, which Python's mmap module does not name (POSIX's,
#: the same on Linux, the BSDs and macOS)
_PROT_NONE = 0
_FIXED = 0x10


def available() -> bool:
    """Whether the system's subsetter can be used."""
    return _harfbuzz() is not None


def cut(file: str, index: int, codepoints: set[int]) -> bytes:
    """Face ``index`` of the font file ``file`` cut to ``codepoints``: an OpenType font.

    Raises ``CutError`` when the file cannot be mapped or the subsetter fails, and
    ``RuntimeError`` without the library (ask ``available`` first).
    """
    hb = _harfbuzz()
    if hb is None:
        raise RuntimeError("libharfbuzz-subset is not loaded")
    ffi, lib = hb.ffi, hb.lib
    pieces: _Pieces | None = None
    try:
        pieces = _Pieces(file)
    except FileNotFoundError as e:
        raise CutError(f"cannot map {file}: {e.strerror}") from e
    except OSError as e:
        log.debug("the font is mapped whole (%s)", e)
    if pieces is None:
        blob = lib.hb_blob_create_from_file_or_fail(file.encode())
    else:
        blob = lib.hb_blob_create_or_fail(pieces.data(), pieces.size, READONLY, ffi.NULL, ffi.NULL)
    if blob == ffi.NULL:
        if pieces is not None:
            pieces.close()
        raise CutError(f"cannot map {file}")
    face = lib.hb_face_create(blob, index)
    lib.hb_blob_destroy(blob)  # the face holds it
    wanted = lib.hb_subset_input_create_or_fail()
    try:
        if wanted == ffi.NULL:
            raise CutError("cannot make a subset input (out of memory)")
        unicodes = lib.hb_subset_input_unicode_set(wanted)
        for codepoint in codepoints:
            lib.hb_set_add(unicodes, codepoint)
        lib.hb_subset_input_set_flags(wanted, NO_HINTING)
        result = lib.hb_subset_or_fail(face, wanted)
        if result == ffi.NULL:
            raise CutError(f"cannot subset face {index} of {file}")
        try:
            out = lib.hb_face_reference_blob(result)
            try:
                length = ffi.new("unsigned int *")
                data = lib.hb_blob_get_data(out, length)
                if data == ffi.NULL or length[0] == 0:
                    raise CutError(f"face {index} of {file} is empty or damaged")
                return bytes(ffi.buffer(data, length[0]))
            finally:
                lib.hb_blob_destroy(out)
        finally:
            lib.hb_face_destroy(result)
    finally:
        if wanted != ffi.NULL:
            lib.hb_subset_input_destroy(wanted)
        lib.hb_face_destroy(face)  # the last reference to the blob over the pieces
        if pieces is not None:
            pieces.close()
