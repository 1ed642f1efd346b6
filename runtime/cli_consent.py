"""``likeness consent ...``: what an operator does from a shell."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from runtime.cli_common import (
    check_output,
    err_console,
    fail,
    handle_errors,
    out,
    print_table,
    state,
)

consent_app = typer.Typer(help="Grants, revocations and the audit log.", no_args_is_help=True)


def _gate() -> Any:  # consent.gate.ConsentGate
    from runtime.components import consent_gate

    return consent_gate(state.load())


def _grant_row(record: Any) -> dict[str, Any]:
    g = record.grant
    return {
        "id": g.id,
        "subject": g.subject,
        "avatar": g.avatar_id,
        "face": g.allow_face,
        "voice": g.allow_voice,
        "deployments": list(g.deployments),
        "purposes": list(g.purposes),
        "expires_at": g.expires_at.isoformat(),
        "granted_by": g.granted_by,
        "revoked": record.revoked,
    }


@consent_app.command("list")
@handle_errors
def list_grants(
    subject: Annotated[str | None, typer.Option(help="only this subject's grants")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List grants, newest first."""
    store = _gate().store
    records = store.list_grants(subject) if subject else store.all_grants()
    rows = [_grant_row(r) for r in records]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    print_table(
        "grants",
        ["id", "subject", "face", "voice", "deployments", "purposes", "expires", "revoked"],
        [
            [
                r["id"],
                r["subject"],
                r["face"],
                r["voice"],
                ",".join(r["deployments"]),
                ",".join(r["purposes"]),
                r["expires_at"][:16],
                r["revoked"],
            ]
            for r in rows
        ],
    )


@consent_app.command("revoke")
@handle_errors
def revoke(
    grant_id: Annotated[str, typer.Argument(help="the grant to revoke (irreversible)")],
    by: Annotated[str, typer.Option(help="who asks: the subject, a guardian, an operator")],
    reason: Annotated[str, typer.Option(help="recorded in the audit log")] = "",
) -> None:
    """Revoke a grant now: live sessions using it end within a second."""
    info = _gate().store.revoke(grant_id, by=by, reason=reason)
    err_console.print(f"revoked {grant_id}", markup=False, highlight=False)
    out.print_json(json.dumps(asdict(info), default=str))


@consent_app.command("verify-log")
@handle_errors
def verify_log() -> None:
    """Check the hash-chained audit log; exit 1 if any entry was edited or removed."""
    from consent.audit import verify_chain

    problems = verify_chain(_gate().store)
    if problems:
        for p in problems:
            err_console.print(f"seq {p.seq}: {p.kind}: {p.message}", markup=False)
        raise fail(f"the audit log is broken in {len(problems)} place(s)", 1)
    out.print("audit log intact")


@consent_app.command("export")
@handle_errors
def export(
    subject: Annotated[str, typer.Argument(help="the subject whose data to export")],
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON file")] = Path(
        "consent-export.json"
    ),
) -> None:
    """Everything stored about a subject: profile, grants, audit entries (JSON)."""
    store = _gate().store
    person = store.subject(subject)
    entries, _seq, _head = store.audit_log()
    data = {
        "subject": asdict(person),
        "grants": [_grant_row(r) for r in store.list_grants(subject)],
        "audit": [asdict(e) for e in entries if e.subject == subject],
    }
    check_output(output).write_text(json.dumps(data, indent=2, default=str))
    err_console.print(f"wrote {output}", markup=False, highlight=False)
