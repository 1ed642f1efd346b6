"""``likeness consent user ...`` and ``likeness consent guardian ...``: portal accounts.

Operators and auditors are only made here (the portal's open sign-up makes people's
own accounts). Passwords are read from stdin (``--password-stdin``), never from the
command line, so they stay out of shell history and process lists.
"""

from __future__ import annotations

import json
import sys
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runtime.cli_common import err_console, fail, handle_errors, out, print_table, state

if TYPE_CHECKING:
    from consent.store import ConsentStore

user_app = typer.Typer(help="Consent portal accounts.", no_args_is_help=True)
guardian_app = typer.Typer(help="Guardians who may act for a person.", no_args_is_help=True)

ROLES = ("subject", "operator", "auditor")


def _store() -> ConsentStore:
    from runtime.components import consent_gate

    return consent_gate(state.load()).store


def _portal_errors(func):
    """Portal refusals: exit 2 for bad input (4xx), 1 otherwise, with the plain message."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from consent.portal.auth import PortalError

        try:
            return func(*args, **kwargs)
        except PortalError as err:
            raise fail(err.message, 2 if 400 <= err.status < 500 else 1) from None

    return wrapper


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    if not password:
        raise fail("--password-stdin: no password on stdin (one line expected)", 2)
    return password


@user_app.command("add")
@handle_errors
@_portal_errors
def add(
    email: Annotated[str, typer.Argument(help="the sign-in email")],
    role: Annotated[str, typer.Option(help="subject, operator or auditor")] = "subject",
    name: Annotated[str | None, typer.Option(help="display name (default: the email)")] = None,
    subject: Annotated[
        str | None, typer.Option(help="an existing subject id this person is (subject role)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin (one line)")
    ] = False,
) -> None:
    """Create a portal account (a person, an operator or an auditor)."""
    from consent.portal.accounts import create_user

    if role not in ROLES:
        raise fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}", 2)
    password = _read_password() if password_stdin else None
    user = create_user(
        _store(),
        email=email,
        display_name=name or email.strip(),
        role=role,
        password=password,
        subject_id=subject,
        actor="cli",
    )
    if password is None:
        err_console.print(
            "this account has no password: set one with "
            f"`likeness consent user password {user.email} --password-stdin`",
            markup=False,
            highlight=False,
        )
    out.print_json(json.dumps(user.to_json()))


@user_app.command("password")
@handle_errors
@_portal_errors
def password(
    email: Annotated[str, typer.Argument(help="the account's email")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin (one line)")
    ] = False,
) -> None:
    """Set an account's password (and sign out its sessions)."""
    from consent.portal.accounts import (
        end_user_sessions,
        normalise_email,
        set_password,
        user_by_email,
    )

    if not password_stdin:
        raise fail("pass --password-stdin and the password on stdin", 2)
    store = _store()
    user = user_by_email(store.engine, normalise_email(email))
    if user is None:
        raise fail(f"no account with email {email!r}", 2)
    set_password(store.engine, user.id, _read_password())
    ended = end_user_sessions(store.engine, user.id)
    err_console.print(
        f"password set for {user.email}; {ended} session(s) signed out",
        markup=False,
        highlight=False,
    )


@user_app.command("list")
@handle_errors
def list_users(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List portal accounts, oldest first."""
    from consent.portal.accounts import list_users as all_users

    users = [u.to_json() for u in all_users(_store().engine)]
    if as_json:
        out.print_json(json.dumps(users))
        return
    print_table(
        "portal accounts",
        ["id", "email", "role", "subject", "created"],
        [
            [u["id"], u["email"], u["role"], u["subject_id"] or "", u["created_at"][:16]]
            for u in users
        ],
    )


@guardian_app.command("link")
@handle_errors
@_portal_errors
def link(
    email: Annotated[str, typer.Argument(help="the guardian's account email")],
    subject: Annotated[str, typer.Option(help="the subject id they may act for")],
    basis: Annotated[
        str, typer.Option(help="the recorded basis, e.g. the court order's reference or hash")
    ],
    by: Annotated[str, typer.Option(help="who links them, for the audit log")] = "operator-cli",
) -> None:
    """Let a person's account act for another person (a guardian), with a recorded basis."""
    from consent.portal.accounts import link_guardian

    if not basis.strip():
        raise fail("--basis must say on what authority the guardian acts", 2)
    info = link_guardian(
        _store(), guardian_email=email, subject_id=subject, basis=basis, by=f"cli:{by}"
    )
    out.print_json(json.dumps(info.to_json()))


@guardian_app.command("list")
@handle_errors
def list_links(
    subject: Annotated[str | None, typer.Option(help="only this subject's guardians")] = None,
) -> None:
    """List active guardian links as JSON."""
    from consent.portal.accounts import links_of

    found = links_of(_store().engine, subject_ids={subject} if subject else None)
    out.print_json(json.dumps([x.to_json() for x in found]))


__all__ = ["guardian_app", "user_app"]
