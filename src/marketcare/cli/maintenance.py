"""Keeping the ledger safe: audit verify, backup, restore, moving to PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from marketcare.cli.common import (
    app,
    cli_settings,
    connect,
    err,
    handled,
    out,
    progress_bar,
    styled,
    utcnow,
)
from marketcare.errors import Refused

if TYPE_CHECKING:
    pass


# ------------------------------------------------------------------------------ audit


audit_app = typer.Typer(help="Check the tamper-evident event log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify", epilog="Example: marketcare audit verify --anchor 周报.eml")
@handled
def audit_verify(
    anchor: Annotated[
        list[Path] | None,
        typer.Option(
            "--anchor",
            help="A report workbook (.xlsx) or a report email saved as .eml: prove the "
            "ledger still holds exactly the history up to the chain head it carries. "
            "May be given several times.",
        ),
    ] = None,
    files: Annotated[
        bool,
        typer.Option(
            "--files/--no-files",
            help="Check that every recorded report file is there with its SHA-256 "
            "(--no-files on a machine without the exports folder).",
        ),
    ] = True,
) -> None:
    """Check the audit record: the event chain, the tables against the events, report
    files, trusted timestamps, the append-only guards, and any --anchor files."""
    from marketcare.ledger import audit, timestamps
    from marketcare.ledger.db import read
    from marketcare.ledger.verification import examine

    s, engine = connect()
    anchors = []
    if anchor:  # reading a workbook's anchor loads openpyxl: only when one is given
        from marketcare.reports.anchors import read_anchors

        anchors = [a for path in anchor for a in read_anchors(path)]
    roots = timestamps.load_roots(s.tsa_certificates) if s.tsa_certificates else None
    # events committed but not linked yet (PostgreSQL) are linked first, unless a chainer
    # holds the head now: then they are counted as pending, not judged
    audit.chain(engine)
    with read(engine) as conn:
        result = examine(
            conn,
            anchors=anchors,
            files=files,
            timestamps=lambda c, hash_at: timestamps.check(c, hash_at, roots),
        )
    chain = result.chain
    for line in result.held:
        out.print(f"ok: {line}", markup=False)
    if chain.pending and chain.oldest_pending is not None:
        age = max(0.0, (utcnow() - chain.oldest_pending).total_seconds())
        out.print(
            f"pending: {chain.pending} events committed but not chained yet (the oldest "
            f"written {age:.0f} s ago); tamper-evident once chained",
            markup=False,
        )
        if chain.late(utcnow()):
            err.print(
                f"warning: an event has waited {age:.0f} s to be chained (more than "
                f"{audit.PENDING_BOUND.total_seconds():.0f} s): is a daemon running, and "
                "does its log say why chaining fails?",
                markup=False,
            )
    for finding in result.findings:
        if finding.check == "chain":
            err.print(
                f"TAMPERED: {chain.reason} (first bad event: {chain.first_bad_seq}; "
                f"{chain.checked} events before it are intact)",
                markup=False,
            )
        else:
            err.print(f"TAMPERED ({finding.check}): {finding.message}", markup=False)
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command(
    "timestamp",
    epilog="Example: MARKETCARE_TSA_URL=https://tsa.example.org MARKETCARE_TSA_CERTIFICATES=tsa.pem marketcare audit timestamp",
)
@handled
def audit_timestamp() -> None:
    """Have the configured time-stamping authority witness the chain's head now."""
    from marketcare.ops import timestamping

    s, engine = connect()
    done = timestamping.stamp(engine, s, now=utcnow(), reason="manual")
    out.print(
        f"timestamped event {done.seq} ({done.hash}) at {done.gen_time:%Y-%m-%d %H:%M:%S} UTC",
        markup=False,
    )


# ------------------------------------------------------------------------------ backup


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _counts_table(counts: dict[str, int]) -> Table:
    table = Table("table", "rows", title_justify="left")
    for name, n in counts.items():
        table.add_row(name, str(n))
    return table


@app.command(name="backup", epilog="Example: marketcare backup /mnt/backup/")
@handled
def backup_cmd(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Where to write the copy (default var/backups/marketcare-<UTC time>.db; "
            "an existing folder receives a file of that name)."
        ),
    ] = None,
    step_pages: Annotated[
        int,
        typer.Option(
            min=1, max=1_000_000, help="Database pages copied per step of the progress bar."
        ),
    ] = 1024,
) -> None:
    """Copy the SQLite database while the daemon runs: consistent, verified, then renamed.

    PostgreSQL databases are backed up with pg_dump -Fc (see docs/operations.md)."""
    from marketcare.ops import backup as backups

    s = cli_settings()
    db = backups.sqlite_file(s.database_url)
    now = utcnow()
    target = path or backups.default_path(db, now)
    if target.is_dir():
        target = target / backups.default_path(db, now).name
    with progress_bar("copying", unit="pages") as progress:
        found = backups.backup(db, target, step_pages=step_pages, progress=progress)
    out.print(
        f"backup written: {found.path} ({_size(found.size)}), schema revision {found.revision}, "
        "integrity ok",
        markup=False,
    )
    out.print(_counts_table(found.counts))
    if not found.chain.ok:
        err.print(
            f"audit chain of the copy: TAMPERED: {found.chain.reason} (first bad event: "
            f"{found.chain.first_bad_seq}); the live database has the same damage: "
            "run marketcare audit verify",
            markup=False,
        )
        raise typer.Exit(1)
    out.print(f"audit chain: ok, {found.chain.checked} events intact", markup=False)


@app.command(
    name="restore", epilog="Example: marketcare restore var/backups/marketcare-20261127T120000Z.db"
)
@handled
def restore_cmd(
    path: Annotated[Path, typer.Argument(help="A file written by marketcare backup.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option(help="Restore even a backup whose audit chain is broken.")
    ] = False,
) -> None:
    """Put a backup in place of the SQLite database (the daemon must be stopped).

    The database it replaces is kept as <db>.before-restore-<UTC time>; the backup is then
    migrated to this version's schema. PostgreSQL: use pg_restore (docs/operations.md)."""
    from marketcare.ops import backup as backups

    s = cli_settings()
    db = backups.sqlite_file(s.database_url, restoring=True)

    def confirm(found: backups.Inspection) -> bool:
        out.print(
            f"backup {path} ({_size(found.size)}): schema revision {found.revision}, integrity ok",
            markup=False,
        )
        out.print(_counts_table(found.counts))
        if found.chain.ok:
            out.print(f"audit chain: ok, {found.chain.checked} events intact", markup=False)
        else:
            err.print(f"audit chain: TAMPERED: {found.chain.reason} (--force)", markup=False)
        if yes:
            return True
        try:
            return typer.confirm(f"Replace {db} with this backup?", default=False)
        except typer.Abort:  # no answer: standard input ended (a script, cron)
            err.print("no answer (standard input ended); give --yes to restore without asking")
            return False

    result = backups.restore(s, path, now=utcnow(), force=force, confirm=confirm)
    kept = f"; the database it replaced is kept as {result.kept}" if result.kept else ""
    out.print(f"restored {path} into {db} (schema revision {result.revision}){kept}", markup=False)


# ------------------------------------------------------------------------------ PostgreSQL


@app.command(
    name="migrate-sqlite-to-postgres",
    epilog="Example: marketcare migrate-sqlite-to-postgres --to postgresql+psycopg://marketcare@/marketcare",
)
@handled
def migrate_sqlite_to_postgres(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="The empty PostgreSQL database: postgresql+psycopg://user@host/db"
        ),
    ],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="The SQLite database (default: the configured database_url)."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=1_000_000, help="Rows per batch.")] = 5000,
) -> None:
    """Move the whole history from SQLite to an empty PostgreSQL database, then prove it:
    row counts and checksums per table, and the audit chain, compared before committing."""
    import sqlalchemy as sa

    from marketcare.ledger.leader import SqliteFileLock
    from marketcare.ops import pgmigrate

    s = cli_settings()
    source = from_ or s.database_url
    path = pgmigrate.source_file(source)
    target = pgmigrate.target_url(to)
    lock = SqliteFileLock(path)
    if not lock.try_acquire():
        raise Refused(
            f"a marketcare daemon is running on {path}; stop it first, so that nothing it "
            "writes during the move is left behind"
        )
    try:
        with progress_bar("copying") as progress:
            moved = pgmigrate.move(
                source,
                target,
                batch=batch,
                progress=lambda table, done, total: progress(done, total, f"copying {table}"),
            )
    finally:
        lock.release()
    table = Table(
        "table", "rows (SQLite)", "rows (PostgreSQL)", "checksum", "", title_justify="left"
    )
    for c in moved.comparisons:
        same = c.source.sha256 == c.target.sha256
        table.add_row(
            c.table,
            str(c.source.rows),
            str(c.target.rows),
            c.source.sha256[:12] if same else f"{c.source.sha256[:12]} ≠ {c.target.sha256[:12]}",
            styled("ok", "green") if c.ok else styled("MISMATCH", "bold red"),
        )
    out.print(table)
    shown = sa.make_url(target).render_as_string(hide_password=True)
    if not moved.chain.ok:
        err.print(
            f"error: the audit chain does not verify on {shown}: {moved.chain.reason}; "
            "the target was rolled back and is empty",
            markup=False,
        )
        raise typer.Exit(1)
    if moved.mismatched:
        err.print(
            f"error: {', '.join(moved.mismatched)} differ between SQLite and PostgreSQL; "
            "the target was rolled back and is empty",
            markup=False,
        )
        raise typer.Exit(1)
    rows = sum(c.target.rows for c in moved.comparisons)
    out.print(
        f"moved {rows} rows in {len(moved.comparisons)} tables to {shown}; audit chain ok "
        f"({moved.chain.checked} events). Point MARKETCARE_DATABASE_URL at it and start "
        "the daemon.",
        markup=False,
    )
