"""Read YAML into plain data while remembering where every key and value was written.

PyYAML's composer keeps a mark (line, column) on every node; we build the Python
values ourselves from the node tree so that a validation error on any path can be
reported as ``file:line:column``. Guards against hostile input live here too: size,
encoding, duplicate keys and alias bombs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from marketcare.errors import SourceError

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 200_000
#: the values all the files of one schedule may expand to together
MAX_TOTAL_NODES = 2_000_000

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """Plain data parsed from one YAML file, with the position of every path in it."""

    file: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Return the 1-based (line, column) of a path, falling back to its nearest parent."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if not key and probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
            table = self.values
        return self.values.get((), (1, 1))

    def error(self, path: Path_, message: str, *, key: bool = False) -> SourceError:
        line, column = self.position(path, key=key)
        return SourceError(self.file, line, column, message)


#: implicit types a plain scalar may be resolved to; a value that fails as one stays text
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("timestamp", "int", "float", "bool", "null")
)


class Allowance:
    """The values all the files of one schedule may expand to together: each file keeps
    within MAX_NODES, but a thousand files just under it would still fill the memory of
    ``check`` and ``plan`` (the daemon checks in a child with a memory limit, they do
    not)."""

    def __init__(self) -> None:
        self.total = MAX_TOTAL_NODES
        self.left = self.total


class _Budget:
    def __init__(self, allowance: Allowance | None = None) -> None:
        self.left = MAX_NODES
        self.allowance = allowance or Allowance()


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def read_text(path: Path, *, display: str | None = None) -> str:
    """Read a schedule file as UTF-8, refusing oversized and mis-encoded files clearly."""
    name = display or str(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise _fail(name, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        # a FIFO would block the reader (the daemon's, too) forever, /dev/zero never end
        raise _fail(
            name,
            1,
            1,
            f"{_what(info.st_mode)}, not a file: a schedule is a plain file (remove it, or put "
            "the file itself here)",
        )
    too_large = _fail(
        name,
        1,
        1,
        f"file is {info.st_size / 1_000_000:.1f} MB; a schedule file may be at most "
        f"{MAX_FILE_BYTES // 1_000_000} MB (split it into several files)",
    )
    if info.st_size > MAX_FILE_BYTES:
        raise too_large
    try:
        # non-blocking, should the name have become a FIFO since; at most the limit and a
        # byte, should the file have grown since (an editor writing it)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _fail(name, 1, 1, "not a file: a schedule is a plain file")
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _fail(name, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _fail(
            name,
            1,
            1,
            f"file is over {MAX_FILE_BYTES // 1_000_000} MB; a schedule file may be at most "
            f"{MAX_FILE_BYTES // 1_000_000} MB (split it into several files)",
        )
    return decode(raw, name)


def _what(mode: int) -> str:
    """What a path that is not a file is, in words."""
    for test, words in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "something"


def decode(raw: bytes, name: str) -> str:
    """Decode UTF-8 (a BOM is allowed), locating the first bad byte if it is not."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise _fail(
            name,
            line,
            column,
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8",
        ) from None


class YamlSourceError(Exception):
    """Raised when a file cannot be parsed at all; wraps one located error."""

    def __init__(self, error: SourceError) -> None:
        self.error = error
        super().__init__(str(error))


def _fail(name: str, line: int, column: int, message: str) -> YamlSourceError:
    return YamlSourceError(SourceError(name, line, column, message))


def parse(text: str, name: str, allowance: Allowance | None = None) -> Located:
    """Parse one YAML document into plain data and its positions; ``allowance`` is what
    the files of one schedule share (see Allowance)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise _fail(name, 1, 1, f"text is larger than {MAX_FILE_BYTES // 1_000_000} MB")
    if "\x00" in text:
        raise _fail(name, *_offset_pos(text, text.index("\x00")), "file contains a NUL byte")
    fast = _parse_fast(text, name, allowance)
    if fast is not None:
        return fast
    try:
        loader = yaml.SafeLoader(text)  # checks every character before parsing
    except yaml.reader.ReaderError as exc:
        raise _fail(
            name,
            *_offset_pos(text, exc.position),
            f"character #x{exc.character:04x} is not allowed in YAML (a control character?)",
        ) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _from_marked(exc, name) from None
    except yaml.YAMLError as exc:
        raise _fail(name, 1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _fail(name, 1, 1, "YAML is nested too deeply") from None
    finally:
        loader.dispose()
    located = Located(file=name, data=None)
    if node is None:
        located.data = {}
        return located
    located.values[()] = _pos(node)
    try:
        located.data = _build(node, (), located, loader, _Budget(allowance), set())
    except RecursionError:
        raise _fail(name, 1, 1, "YAML is nested too deeply") from None
    if located.data is None:  # "---" or "~" alone: an empty document, like an empty file
        located.data = {}
    return located


def _parse_fast(text: str, name: str, allowance: Allowance | None) -> Located | None:
    """Parse with libyaml when it is there (about 3x faster); None means "use the pure
    Python parser", which also words every syntax error best."""
    cloader = getattr(yaml, "CSafeLoader", None)
    if cloader is None:
        return None
    try:
        loader = cloader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    located = Located(file=name, data=None)
    if node is None:
        located.data = {}
        return located
    located.values[()] = _pos(node)
    try:
        located.data = _build(node, (), located, loader, _Budget(allowance), set())
    except RecursionError:
        raise _fail(name, 1, 1, "YAML is nested too deeply") from None
    if located.data is None:
        located.data = {}
    return located


def _offset_pos(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _from_marked(exc: yaml.MarkedYAMLError, name: str) -> YamlSourceError:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "invalid YAML"
    if "\\t" in problem or "'\\t'" in problem or "tab" in problem:
        problem = "a tab character here; YAML indentation must use spaces"
    elif exc.context:
        problem = f"{problem} ({exc.context})"
    return _fail(name, line, column, f"invalid YAML: {problem}")


def _build(
    node: yaml.Node,
    path: Path_,
    located: Located,
    loader: yaml.SafeLoader,
    budget: _Budget,
    active: set[int],
) -> Any:
    budget.left -= 1
    budget.allowance.left -= 1
    if budget.allowance.left < 0:
        line, column = _pos(node)
        raise _fail(
            located.file,
            line,
            column,
            f"the schedule files together expand to more than {budget.allowance.total} "
            "values (aliases used as a bomb?); this file is where the limit was reached",
        )
    if budget.left < 0:
        line, column = _pos(node)
        raise _fail(
            located.file,
            line,
            column,
            f"document expands to more than {MAX_NODES} values (aliases used as a bomb?)",
        )
    located.values.setdefault(path, _pos(node))
    if isinstance(node, yaml.ScalarNode):
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            if node.tag in _PLAIN_TAGS:
                # e.g. 2027-02-30 looks like a date to YAML but is none: keep the text, so
                # the validation of that field explains it where it is, and every other
                # problem of the file is still reported
                return node.value
            line, column = _pos(node)
            raise _fail(located.file, line, column, f"bad value {node.value!r}: {exc}") from None
    if id(node) in active:
        line, column = _pos(node)
        raise _fail(located.file, line, column, "a recursive alias is not allowed")
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [
                _build(child, (*path, i), located, loader, budget, active)
                for i, child in enumerate(node.value)
            ]
        if isinstance(node, yaml.MappingNode):
            try:
                loader.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                raise _from_marked(exc, located.file) from None
            result: dict[Any, Any] = {}
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line, column = _pos(key_node)
                    raise _fail(located.file, line, column, "a mapping key must be a plain value")
                key = _build(key_node, (*path, "\x00key"), located, loader, budget, active)
                if isinstance(key, (list, dict)):
                    line, column = _pos(key_node)
                    raise _fail(located.file, line, column, "a mapping key must be a plain value")
                # 2027-02-05 (a date) and "2027-02-05" (text) are one key once validated
                same = key.isoformat() if isinstance(key, (date, datetime)) else str(key)
                if key in result or same in seen:
                    line, column = _pos(key_node)
                    raise _fail(located.file, line, column, f"duplicate key {same!r}")
                seen.add(same)
                kpath = (*path, key if isinstance(key, int) else str(key))
                located.keys[kpath] = _pos(key_node)
                result[key] = _build(value_node, kpath, located, loader, budget, active)
            located.values.pop((*path, "\x00key"), None)
            return result
    finally:
        active.discard(id(node))
    line, column = _pos(node)
    raise _fail(located.file, line, column, "unsupported YAML node")
