"""Start-up cost of the command: CPU time of ``marketcare --help`` and ``marketcare status``,
as ratios against a bare Typer app's ``--help`` measured in the same run.

    .venv/bin/python bench/startup.py            # 15 interleaved rounds after a warm-up
    .venv/bin/python bench/startup.py --quick    # 2 rounds (seconds)

Every variant is a fresh ``python`` process (what a user's shell pays), run round by round
in turn so that the shared machine's load falls on all of them alike; the CPU time is the
child's user + system time (``resource.RUSAGE_CHILDREN``), not the wall clock. The target
(issue 14): ``--help`` within 2x the bare app's. ``status`` reads a small ledger made once
(``init`` on the sample schedules) and is shown for orientation, with the modules it loads
that ``--help`` does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 2.0

BARE = textwrap.dedent(
    '''
    """A bare Typer app with two commands: the floor of any Typer command's start-up."""
    import typer

    app = typer.Typer(help="A bare app.")


    @app.command()
    def status(json: bool = False) -> None:
        """Show something."""


    @app.command()
    def tick(obligation_id: int, by: str = "") -> None:
        """Record something."""


    app()
    '''
)

MODULES = textwrap.dedent(
    """
    import sys
    from marketcare.cli import app
    try:
        app(sys.argv[1:], standalone_mode=False)
    except SystemExit:
        pass
    sys.stderr.write("--modules--\\n" + "\\n".join(sorted(m for m in sys.modules if "." not in m)))
    """
)


def cpu_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """The CPU time (user + system) of one run of ``argv`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 15")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 15)

    with tempfile.TemporaryDirectory(prefix="mc-startup-") as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "schedules", folder / "schedules")
        (folder / "bare.py").write_text(BARE, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCARE_")}
        env.update(
            MARKETCARE_CONFIG="",  # no settings file
            MARKETCARE_DATABASE_URL=f"sqlite:///{folder / 'ledger.db'}",
            MARKETCARE_SCHEDULES_DIR=str(folder / "schedules"),
            MARKETCARE_LOG_LEVEL="WARNING",
        )
        py = sys.executable
        init = subprocess.run(
            [py, "-m", "marketcare.cli", "init"], env=env, cwd=folder, capture_output=True
        )
        if init.returncode != 0:
            raise SystemExit(init.stderr.decode(errors="replace"))
        variants = {
            "bare Typer --help": [py, "bare.py", "--help"],
            "marketcare --help": [py, "-m", "marketcare.cli", "--help"],
            "marketcare status": [py, "-m", "marketcare.cli", "status"],
        }
        for argv in variants.values():  # warm-up: file caches, .pyc files
            cpu_seconds(argv, env, folder)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, argv in variants.items():
                times[name].append(cpu_seconds(argv, env, folder))
        loaded = {
            what: set(
                subprocess.run(
                    [py, "-c", MODULES, *extra],
                    env=env,
                    cwd=folder,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stderr.split("--modules--")[-1]
                .split()
            )
            for what, extra in (("help", ["--help"]), ("status", ["status"]))
        }

    base = statistics.median(times["bare Typer --help"])
    print(
        f"CPU time per run, median of {rounds} interleaved rounds; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<20} {med * 1000:7.0f} ms   {med / base:5.2f}x the bare app")
    ratio = statistics.median(times["marketcare --help"]) / base
    heavy = sorted(
        m for m in loaded["help"] if m in {"sqlalchemy", "alembic", "pydantic", "pandas", "fastapi"}
    )
    print(f"  --help loads none of sqlalchemy, alembic, pydantic, pandas, fastapi: {not heavy}")
    print(f"  status loads besides: {', '.join(sorted(loaded['status'] - loaded['help']))}")
    verdict = "within" if ratio <= TARGET else "OVER"
    print(f"marketcare --help: {ratio:.2f}x the bare Typer app ({verdict} the {TARGET:g}x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
