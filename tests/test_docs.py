"""The documents' command examples run, so README.md and docs/ cannot drift from the program.

Every fenced ``sh`` block of README.md and docs/*.md is an example. The convention (also
written in docs/cli.md, "Examples in these documents"), as HTML comments on the lines right
before a block, invisible on the rendered page:

* ``<!-- example: not run: REASON -->`` — the block cannot run in a test (it starts the
  daemon, needs systemd or a PostgreSQL server...); the reason is required.
* ``<!-- example: setup: COMMAND -->`` — a shell command run first, out of sight (it makes
  an input file the example names, for instance).

Each document's examples run in order, in a fresh folder holding a copy of the sample
``schedules/`` and ``config/``, after ``marketcare init``, with the command on ``PATH`` and
the clock stopped at Friday 2026-11-27, 20:00 in Quanzhou (the evening's disinfections are
open); an SMTP server receives the emails. A block must exit 0. Every ``marketcare`` line of
every block, run or not, must name real commands and options.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from marketcare.cli import app

from .support.procs import CLOCKRUN, LIVENESS
from .support.smtp import SmtpServer

pytestmark = pytest.mark.heavy(45)


ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Friday 2026-11-27, 20:00 in Quanzhou (UTC+8)
INSTANT = "2026-11-27T12:00:00+00:00"
FENCE = re.compile(r"^```sh\n(?P<body>.*?)^```", re.S | re.M)
MARK = re.compile(r"^<!--\s*example:\s*(?P<what>not run|setup):\s*(?P<text>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    document: Path
    line: int
    script: str
    not_run: str | None
    setup: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def examples(document: Path) -> list[Example]:
    """The ``sh`` blocks of a document, with the marks written right before each."""
    text = document.read_text(encoding="utf-8")
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].splitlines()
        not_run, setup = None, []
        while before and MARK.match(before[-1]):
            mark = MARK.match(before.pop())
            assert mark is not None
            if mark["what"] == "not run":
                not_run = mark["text"]
            else:
                setup.insert(0, mark["text"])
        found.append(
            Example(
                document,
                text[: fence.start()].count("\n") + 2,
                fence["body"],
                not_run,
                tuple(setup),
            )
        )
    return found


def commands(script: str) -> list[list[str]]:
    """Each ``marketcare …`` command line of a script, as its arguments after the name."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        if "marketcare" not in line:
            continue  # another program's line (a JSON body may span lines and quotes)
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words = words[1:]  # VAR=value before the command
        if words and words[0] == "marketcare":
            found.append(words[1:])
    return found


ALL = [e for d in DOCUMENTS for e in examples(d)]
RUNNABLE = sorted({e.document for e in ALL if e.not_run is None})


def test_the_documents_have_examples_and_each_one_not_run_says_why() -> None:
    assert len(ALL) > 20 and len(RUNNABLE) >= 5
    for example in ALL:
        assert example.not_run is None or len(example.not_run) > 10, example.where


def test_every_code_block_of_the_documents_is_closed_on_a_line_of_its_own() -> None:
    """A closing fence with text after it opens a block instead (the text is read as its
    language), and the rest of the page is shown as code."""
    for document in DOCUMENTS:
        lines = document.read_text(encoding="utf-8").splitlines()
        fences = [
            (n, line.strip()) for n, line in enumerate(lines, 1) if line.lstrip().startswith("```")
        ]
        opened = False
        for n, fence in fences:
            where = f"{document.relative_to(ROOT)}:{n}"
            assert opened or " " not in fence[3:].strip(), f"{where}: text after a fence: {fence}"
            assert not opened or fence == "```", f"{where}: a block closed by {fence!r}"
            opened = not opened
        assert not opened, f"{document.relative_to(ROOT)}: a code block is never closed"


@pytest.mark.parametrize("example", ALL, ids=[e.where for e in ALL])
def test_every_command_in_an_example_names_real_commands_and_options(example: Example) -> None:
    root = typer.main.get_command(app)
    for args in commands(example.script):
        command, rest, name = root, list(args), "marketcare"
        while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
            sub = command.commands.get(rest[0])  # type: ignore[attr-defined]
            assert sub is not None, f"{example.where}: no command {name} {rest[0]}"
            command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
        known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
        known |= {"-h", "--help"}
        for word in rest:
            option = word.split("=", 1)[0]
            if option.startswith("-") and option != "-":
                assert option in known, f"{example.where}: {name} has no option {option}"


@pytest.fixture(scope="module")
def mail_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


def _environment(bin_folder: Path, smtp: SmtpServer) -> dict[str, str]:
    """The command under a stopped clock first on PATH, an SMTP server, and nothing of the
    caller's MARKETCARE_* settings."""
    bin_folder.mkdir(exist_ok=True)
    command = bin_folder / "marketcare"
    command.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(CLOCKRUN))} {INSTANT} "$@"\n',
        encoding="utf-8",
    )
    command.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
    env.update(
        PATH=os.pathsep.join([str(bin_folder), str(Path(sys.executable).parent), env["PATH"]]),
        MARKETCARE_SMTP_HOST="127.0.0.1",
        MARKETCARE_SMTP_PORT=str(smtp.port),
        MARKETCARE_SMTP_SECURITY="none",
        MARKETCARE_LOG_LEVEL="WARNING",
        PYTHONIOENCODING="utf-8",
        COLUMNS="120",
    )
    return env


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, mail_server: SmtpServer
) -> tuple[Path, dict[str, str]]:
    """A fresh installation, made once: the sample schedules and config, ``init`` done.
    Each document gets a copy of it."""
    base = tmp_path_factory.mktemp("installed")
    folder = base / "site"
    folder.mkdir()
    shutil.copytree(ROOT / "schedules", folder / "schedules")
    shutil.copytree(ROOT / "config", folder / "config")
    env = _environment(base / "bin", mail_server)
    init = _run("marketcare init", folder, env)
    assert init.returncode == 0, init.stderr
    return folder, env


def _run(script: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-e", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=LIVENESS * 5,
        check=False,
    )


@pytest.mark.sqlite_only("the documents describe the default installation, on SQLite")
@pytest.mark.parametrize("document", RUNNABLE, ids=[str(d.relative_to(ROOT)) for d in RUNNABLE])
def test_the_command_examples_of_a_document_run(
    document: Path, tmp_path: Path, installed: tuple[Path, dict[str, str]]
) -> None:
    fresh, env = installed
    folder = tmp_path / "site"
    shutil.copytree(fresh, folder)
    for example in examples(document):
        if example.not_run is not None:
            continue
        for step in example.setup:
            done = _run(step, folder, env)
            assert done.returncode == 0, f"{example.where}: setup {step!r}: {done.stderr}"
        done = _run(example.script, folder, env)
        assert done.returncode == 0, (
            f"{example.where} exits {done.returncode}:\n{example.script}\n"
            f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
        )
        assert "Traceback" not in done.stderr, f"{example.where}:\n{done.stderr}"
