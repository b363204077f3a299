"""Every command, every parameter, hostile values: no run ends in a crash (exit 70).

The commands and their parameters are read from the command itself (Typer's Click tree),
so a new command or option is fuzzed without anyone listing it. Each parameter in turn
gets hostile values of its type — numbers past any column, text that is not UTF-8, long,
or Rich markup, paths that are folders, read-only, missing or not files — while the other
required parameters get plausible values, so the hostile one is what the command meets.
Runs in-process on one initialised ledger; an answer may be any documented exit code
(0, 1, 2, 3, 75) but never an exception escaping to ``main`` (exit 70).
"""

from __future__ import annotations

import enum
import logging
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
import typer.main
from typer.testing import CliRunner

from marketcare.cli import app

from .conftest import DISINFECTION, WASTE, make_market_yaml, utc
from .support.procs import make_env

pytestmark = pytest.mark.heavy(12)

EVENING = utc(2026, 11, 27, 11, 0)
#: commands left out: ``run`` starts the daemon (its bad options are in test_cli_errors)
LEFT_OUT = {"run"}
#: plausible values for the required parameters, so a command reaches the hostile one
PLAUSIBLE = {
    "obligation_id": "1",
    "problem_id": "1",
    "by": "林秀英",
    "note": "已处理",
    "market": "lizhong",
    "category": "repair",
    "description": "排水沟堵塞",
    "found_by": "张伟",
    "period": "day",
    "username": "wang",
    "role": "office",
    "name": "a system",
    "to": "postgresql+psycopg://nobody@/nowhere?host=/nonexistent",
}
DONE = {0, 1, 2, 3, 75}


def hostile(kind: str, tmp: Path) -> list[str]:
    """Values of a parameter's kind that once crashed a command, or could."""
    read_only = Path("/sys") if os.geteuid() == 0 else tmp / "read-only"
    if kind == "int":
        return ["1180591620717411303424", "-9223372036854775809"]
    if kind == "path":
        return [str(tmp), str(read_only / "x.xlsx"), str(tmp / "missing" / "x"), "/dev/null"]
    if kind == "choice":
        return ["[/]"]
    return [
        "\udcff\udcfe",  # bytes that are not UTF-8, as Python keeps them
        "灯管[bold]损坏[/]",
        "长" * 5000,
        "a\nb\r\x00c",
        "9999-12-31",
        "99999999999999999999d",
    ]


def kind_of(param: Any) -> str:
    """int, path, choice, flag or str: from the annotation the command declares."""
    annotation = param.type_descriptor.annotation
    inner = typing.get_args(annotation)
    base = inner[0] if inner else annotation
    if base is bool:
        return "flag"
    if base is int:
        return "int"
    if base is Path:
        return "path"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "choice"
    return "str"


def commands() -> Iterator[tuple[str, Any]]:
    def walk(prefix: str, command: Any) -> Iterator[tuple[str, Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                yield from walk(f"{prefix} {name}".strip(), sub)
        elif prefix not in LEFT_OUT:
            yield prefix, command

    yield from walk("", typer.main.get_command(app))


def cases(tmp: Path) -> Iterator[tuple[str, list[str]]]:
    """(command, argv) with one parameter hostile and the required others plausible."""
    for name, command in commands():
        params = [p for p in command.params if kind_of(p) != "flag"]
        for target in params:
            for value in hostile(kind_of(target), tmp):
                argv = name.split()
                for p in params:
                    if p is target:
                        chosen = value
                    elif p.required:
                        chosen = PLAUSIBLE.get(p.name, "1" if kind_of(p) == "int" else "x")
                    else:
                        continue
                    argv += [chosen] if p.param_type_name == "argument" else [p.opts[0], chosen]
                yield name, argv


@pytest.fixture(scope="module")
def fuzz_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One initialised ledger for the whole module, with a problem and a user to act on."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "schedules").mkdir()
    (folder / "schedules" / "s.yaml").write_text(
        "markets:" + make_market_yaml() + f"\ntasks:{DISINFECTION}{WASTE}", encoding="utf-8"
    )
    if os.geteuid() != 0:
        (folder / "read-only").mkdir()
        (folder / "read-only").chmod(0o555)
    values = make_env(folder)
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in values if k.startswith("MARKETCARE_")] + ["COLUMNS"]:
            mp.setenv(key, values[key])
        mp.chdir(folder)
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        runner = CliRunner()
        with time_machine.travel(EVENING, tick=False):
            for argv in (
                ["init"],
                ["problems", "add", "--market", "lizhong", "--category", "repair",
                 "--description", "x", "--found-by", "y", "--within", "3d"],
            ):  # fmt: skip
                assert runner.invoke(app, argv).exit_code == 0
            made = runner.invoke(
                app, ["users", "add", "wang", "--role", "office", "--password-stdin"],
                input="a long enough password\n",
            )  # fmt: skip
            assert made.exit_code == 0, made.output
        try:
            yield folder
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


def test_the_fuzz_reaches_every_command() -> None:
    names = {name for name, _ in commands()}
    assert {"tick", "export", "problems add", "users add", "backup", "restore"} <= names
    assert len(names) >= 25


def test_no_command_crashes_on_hostile_arguments(fuzz_site: Path) -> None:
    runner = CliRunner()
    crashes: list[str] = []
    seen = 0
    with time_machine.travel(EVENING, tick=False):
        for name, argv in cases(fuzz_site):
            seen += 1
            stdin = "a long enough password\n" if "password-stdin" in " ".join(argv) else ""
            result = runner.invoke(app, argv, input=stdin)
            escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
            if escaped or result.exit_code not in DONE:
                shown = [a if len(a) < 40 else a[:20] + "…" for a in argv]
                crashes.append(f"{name}: {shown} → {result.exit_code} {result.exception!r}")
    assert seen > 150
    assert not crashes, "\n".join(crashes)
