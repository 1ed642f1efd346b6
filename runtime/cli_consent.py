"""``likeness consent ...``: what an operator does from a shell."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runtime.cli_accounts import guardian_app, user_app
from runtime.cli_common import (
    check_output,
    err_console,
    fail,
    handle_errors,
    out,
    print_table,
    state,
)

if TYPE_CHECKING:
    from consent.gate import ConsentGate

consent_app = typer.Typer(help="Grants, revocations and the audit log.", no_args_is_help=True)
consent_app.add_typer(user_app, name="user")
consent_app.add_typer(guardian_app, name="guardian")


def _gate() -> ConsentGate:
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


@consent_app.command("sweep")
@handle_errors
def sweep(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only show what would be deleted")
    ] = False,
) -> None:
    """Delete the data of consents that expired more than consent.retention_days ago.

    Prints what was (or would be) deleted as JSON. The server also runs this every
    consent.sweep_interval_s.
    """
    from datetime import timedelta

    from consent.retention import sweep_all

    settings = state.load()
    store = _gate().store
    retention = timedelta(days=settings.consent.retention_days)
    report = sweep_all(store, retention, dry_run=dry_run)
    what = "would delete" if dry_run else "deleted"
    err_console.print(
        f"{what}: {len(report.purged_subjects)} subject(s), {len(report.avatars)} avatar(s)",
        markup=False,
        highlight=False,
    )
    out.print_json(json.dumps(report.to_json()))


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


@consent_app.command("detect-watermark")
@handle_errors
def detect_watermark(
    image: Annotated[Path, typer.Argument(help="a frame: PNG, JPEG, a screenshot of the video")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Read the invisible watermark of a frame: its grant id, or "synthetic".

    Exit 0 with the grant id (or "synthetic") and a confidence; exit 1 with "no likeness
    watermark found" when the image carries no mark of this data dir's key.
    """
    from avatar.face.images import read_image
    from consent.watermark import detect
    from consent.watermark_key import WatermarkKey, key_dir
    from runtime.errors import InputError

    pixels = read_image(image)
    settings = state.load()
    key = WatermarkKey.load(key_dir(settings.data_dir), create=False)
    grant_ids = [record.grant.id for record in _gate().store.all_grants()]
    try:
        found = detect(key, pixels, grant_ids)
    except ValueError as err:  # e.g. an image too small to carry a mark
        raise InputError(f"{image}: {err}") from None
    confidence = 1.0 - found.false_match
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "found": found.found,
                    "grant_id": found.grant_id,
                    "synthetic": found.synthetic,
                    "confidence": confidence if found.found else 0.0,
                    "false_match": found.false_match,
                    "score": round(found.score, 2),
                    "needed": round(found.needed, 2),
                    "present": found.present,
                }
            )
        )
    elif found.found:
        what = "synthetic (made by likeness, no grant)" if found.synthetic else found.grant_id
        out.print(
            f"{what}  confidence {confidence:.9f} (chance of a false match <= "
            f"{found.false_match:.1e}; score {found.score:.1f}, needed {found.needed:.1f})",
            markup=False,
            highlight=False,
        )
    elif found.present:
        out.print(
            "no likeness watermark found for any grant in this store, but the image carries "
            "a mark of this server's key (a purged grant?)",
            markup=False,
            highlight=False,
        )
    else:
        out.print("no likeness watermark found", markup=False, highlight=False)
    if not found.found:
        raise typer.Exit(1)
