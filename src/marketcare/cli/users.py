"""People who use the web app and the API: the users group.

Tables use the words of the settings' language (``i18n`` catalogs); JSON keeps codes and
writes times as ``clock.iso`` does.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from marketcare.cli.common import (
    app,
    connect,
    err,
    handled,
    out,
    styled,
    utcnow,
    words,
)
from marketcare.domain.inputs import undecodable
from marketcare.errors import BadInput

if TYPE_CHECKING:
    import sqlalchemy as sa


# ------------------------------------------------------------------------------ users

users_app = typer.Typer(
    help="People who use the web app and the API: managers, the district office, operators.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")


class RoleName(enum.StrEnum):
    manager = "manager"
    office = "office"
    operator = "operator"


def _read_password(from_stdin: bool) -> str:
    """The new password: from standard input with ``--password-stdin``, else asked twice
    on the terminal (without one, asking would only fail: say how to give it instead)."""
    if from_stdin:
        try:
            given = sys.stdin.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            given = "\udcff"  # a strict decoder refused it; a lenient one keeps surrogates
        if undecodable(given):
            raise BadInput("--password-stdin: the password is not UTF-8 text", "password")
        return given
    if not sys.stdin.isatty():
        raise BadInput(
            "password: no terminal to ask it on; pipe it in with --password-stdin "
            "(e.g. printf '%s\\n' \"$PASSWORD\" | marketcare users add ... --password-stdin)",
            "password",
        )
    first: str = typer.prompt("Password", hide_input=True)
    again: str = typer.prompt("Repeat the password", hide_input=True)
    if first != again:
        raise BadInput("the two passwords differ; nothing changed", "password")
    if undecodable(first):
        raise BadInput("the password is not UTF-8 text; nothing changed", "password")
    return first


def first_operator(engine: sa.Engine, username: str) -> None:
    import secrets

    from marketcare.domain.access import Role
    from marketcare.ledger import accounts

    if accounts.count_users(engine, Role.OPERATOR):
        return
    password = secrets.token_urlsafe(12)
    accounts.add_user(
        engine,
        accounts.NewUser(username, "Operator", Role.OPERATOR, password),
        now=utcnow(),
    )
    out.print(
        f"made the first operator {username!r} with password {password} "
        "(shown once: sign in and make the other users, or run `marketcare users add`)"
    )


@users_app.command(
    "add", epilog="Example: marketcare users add wang --role manager --market lizhong"
)
@handled
def users_add(
    username: Annotated[str, typer.Argument(help="Sign-in name: a-z 0-9 . _ -")],
    role: Annotated[RoleName, typer.Option(help="manager, office or operator")],
    market: Annotated[
        list[str] | None, typer.Option(help="A market a manager manages (repeat for more)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name shown on pages (default: the user name)")
    ] = None,
    language: Annotated[str | None, typer.Option(help="zh_CN or en (default: the site's)")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create a user (the password is asked for, or read with --password-stdin)."""
    from marketcare.domain.access import Role
    from marketcare.ledger import accounts

    s, engine = connect()
    password = _read_password(password_stdin)
    accounts.add_user(
        engine,
        accounts.NewUser(
            username, name or username, Role(role.value), password, tuple(market or ()), language
        ),
        now=utcnow(),
    )
    where = f" for {', '.join(market)}" if market else ""
    out.print(f"user {username.lower()!r} ({role.value}{where}) created")


@users_app.command("passwd", epilog="Example: marketcare users passwd wang")
@handled
def users_passwd(
    username: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    keep_tokens: Annotated[
        bool,
        typer.Option(
            "--keep-tokens", help="Keep the user's API tokens (by default they are revoked)"
        ),
    ] = False,
) -> None:
    """Set a user's password; their sessions end and their API tokens are revoked."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    revoked = accounts.set_password(
        engine, username, _read_password(password_stdin), keep_tokens=keep_tokens, now=utcnow()
    )
    tokens = "their API tokens are kept" if keep_tokens else f"{revoked} API token(s) revoked"
    out.print(
        f"password of {username!r} changed; their sessions are signed out, {tokens}",
        markup=False,
    )


@users_app.command("disable", epilog="Example: marketcare users disable wang")
@handled
def users_disable(
    username: str,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again")] = False,
) -> None:
    """Disable a user: sign-in refused, sessions ended, API tokens stop working."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    accounts.set_disabled(engine, username, not enable, now=utcnow())
    out.print(f"user {username!r} {'enabled' if enable else 'disabled'}", markup=False)


@users_app.command("list", epilog="Example: marketcare users list --json")
@handled
def users_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every user with role, markets and status."""
    from zoneinfo import ZoneInfo

    from marketcare.ledger import accounts

    s, engine = connect()
    users = accounts.list_users(engine, zone=ZoneInfo(s.timezone))
    if as_json:
        out.print(json.dumps(users, ensure_ascii=False, indent=1))
        return
    t = words(s)
    table = Table(title=t.tr("Users"), title_justify="left")
    for header in (
        t.tr("User name"),
        t.tr("Name shown on pages"),
        t.tr("Role"),
        t.tr("Markets"),
        t.tr("Language"),
        t.tr("Status"),
    ):
        table.add_column(header)
    for u in users:
        table.add_row(
            u["username"],
            u["display_name"],
            u["role"],
            ", ".join(u["markets"]) or "—",
            u["language"] or "—",
            styled(t.tr("Disabled"), "red") if u["disabled"] else t.tr("Active"),
        )
    out.print(table)


@users_app.command("token", epilog="Example: marketcare users token wang --name 数据平台")
@handled
def users_token(
    username: str,
    name: Annotated[str, typer.Option(help="What the token is for, e.g. the system using it")],
) -> None:
    """Make an API token for a user (printed once; only its hash is kept)."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    uid = accounts.user_id_of(engine, username)
    tid, token = accounts.create_token(engine, uid, name, now=utcnow())
    out.print(token, markup=False, soft_wrap=True)
    err.print(
        f"token {tid} for {username!r}: send it as 'Authorization: Bearer <token>'", markup=False
    )


@users_app.command("tokens", epilog="Example: marketcare users tokens wang")
@handled
def users_tokens(
    username: Annotated[
        str | None, typer.Argument(help="A user (default: every user's active tokens)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List API tokens (never their values): one user's, or every active one."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    if username is None:
        rows = accounts.active_tokens(engine)
    else:
        name = username.strip().lower()
        rows = [
            {**t, "username": name}
            for t in accounts.tokens_of(engine, accounts.user_id_of(engine, name))
        ]
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("id", "user", "name", "made", "last used", "status")
    for t in rows:
        table.add_row(
            str(t["id"]),
            t["username"],
            t["name"],
            t["created_at"][:16],
            (t["last_used_at"] or "—")[:16],
            "revoked" if t["revoked"] else "active",
        )
    out.print(table)


@users_app.command("revoke-token", epilog="Example: marketcare users revoke-token wang 3")
@handled
def users_revoke_token(
    username: str,
    token_id: Annotated[
        int, typer.Argument(help="The token id (see users tokens)", min=1, max=2**31 - 1)
    ],
) -> None:
    """Revoke one of a user's API tokens; it stops working at once (within 5 s elsewhere)."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    accounts.revoke_token(engine, accounts.user_id_of(engine, username), token_id, now=utcnow())
    out.print(f"token {token_id} of {username.lower()!r} revoked", markup=False)


@users_app.command("rotate-feed", epilog="Example: marketcare users rotate-feed wang")
@handled
def users_rotate_feed(username: str) -> None:
    """Give a user new calendar feed addresses; the old ones answer 404 from now on."""
    from marketcare.ledger import accounts

    _s, engine = connect()
    accounts.rotate_feed(engine, username, now=utcnow())
    out.print(
        f"calendar addresses of {username.lower()!r} rotated; they find the new ones on "
        "their account page",
        markup=False,
    )
