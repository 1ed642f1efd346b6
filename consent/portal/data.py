"""A subject's data as the portal shows it: grants with their use, the export, deletion.

"Where and when my face was used" comes from the audit log's ``use_start`` entries
(their details name the avatar, the deployment and the session). A use is counted for
a grant when it is of the grant's avatar, in a deployment the grant covers, between
its issue and its revocation or expiry.

Every function here blocks (database): call them from a worker thread in async code.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent.grants import ALL, format_time
from consent.models import AuditRow, Avatar, LivenessRecord
from consent.portal.accounts import links_of
from consent.portal.deployments import forget_avatars

if TYPE_CHECKING:
    from consent.store import ConsentStore, GrantRecord

DELETE_WORD = "delete"


@dataclass(frozen=True, slots=True)
class Use:
    """One start of a live session on a subject's face."""

    at: datetime
    avatar_id: str
    deployment: str
    session: str

    def to_json(self) -> dict[str, Any]:
        """As JSON values."""
        return {
            "at": format_time(self.at),
            "avatar_id": self.avatar_id,
            "deployment": self.deployment,
            "session": self.session,
        }


def audit_entries(store: ConsentStore, subject_id: str) -> list[AuditRow]:
    """The audit rows about a subject, in seq order (detached copies)."""
    with Session(store.engine, expire_on_commit=False) as s:
        rows = s.execute(
            select(AuditRow).where(AuditRow.subject_id == subject_id).order_by(AuditRow.seq)
        ).scalars()
        return list(rows)


def uses(store: ConsentStore, subject_id: str) -> list[Use]:
    """Every ``use_start`` of the subject's face, oldest first."""
    found = []
    for row in audit_entries(store, subject_id):
        if row.action != "use_start":
            continue
        details = json.loads(row.details)
        found.append(
            Use(
                row.at,
                str(details.get("avatar_id", "")),
                str(details.get("deployment", "")),
                str(details.get("session", "")),
            )
        )
    return found


def usage_summary(items: list[Use]) -> dict[str, Any]:
    """Counts per deployment, the first and last use, and the ten newest uses."""
    per = Counter(u.deployment for u in items)
    return {
        "total": len(items),
        "by_deployment": [{"deployment": d, "count": n} for d, n in sorted(per.items())],
        "first_at": format_time(items[0].at) if items else None,
        "last_at": format_time(items[-1].at) if items else None,
        "recent": [u.to_json() for u in reversed(items[-10:])],
    }


def _grant_uses(record: GrantRecord, items: list[Use]) -> list[Use]:
    g = record.grant
    end = g.expires_at
    if record.revocation is not None:
        end = min(end, record.revocation.revoked_at)
    return [
        u
        for u in items
        if u.avatar_id == g.avatar_id
        and (ALL in g.deployments or u.deployment in g.deployments)
        and g.issued_at <= u.at <= end
    ]


def grant_json(record: GrantRecord, items: list[Use], now: datetime) -> dict[str, Any]:
    """A grant for the portal: its signed fields, status, revocation and usage."""
    g = record.grant
    out = g.to_json()
    rev = record.revocation
    status = "revoked" if rev else ("expired" if g.expires_at <= now else "active")
    out.update(
        status=status,
        revoked=rev is not None,
        revocation=None
        if rev is None
        else {
            "revoked_at": format_time(rev.revoked_at),
            "revoked_by": rev.revoked_by,
            "reason": rev.reason,
        },
        usage=usage_summary(_grant_uses(record, items)),
    )
    return out


def grants_json(store: ConsentStore, subject_id: str, now: datetime) -> list[dict[str, Any]]:
    """Every grant of a subject, newest first, with status and usage."""
    items = uses(store, subject_id)
    return [grant_json(r, items, now) for r in store.list_grants(subject_id)]


def export(store: ConsentStore, subject_id: str, *, by: str, now: datetime) -> dict[str, Any]:
    """Everything stored about a subject, as JSON values (no embeddings, no key material).

    Appends an ``export`` audit entry (who asked, when) after reading.
    """
    person = store.subject(subject_id)
    records = store.list_grants(subject_id)
    items = uses(store, subject_id)
    with Session(store.engine) as s:
        avatars = [
            {
                "id": a.id,
                "created_at": format_time(a.created_at),
                "deleted_at": format_time(a.deleted_at) if a.deleted_at else None,
                "embedding_stored": a.embedding is not None,
            }
            for a in s.execute(
                select(Avatar).where(Avatar.subject_id == subject_id).order_by(Avatar.created_at)
            ).scalars()
        ]
        liveness = [
            {
                "id": r.id,
                "avatar_id": r.avatar_id,
                "passed": r.passed,
                "points": json.loads(r.points),
                "scores": json.loads(r.scores),
                "created_at": format_time(r.created_at),
                "used_at": format_time(r.used_at) if r.used_at else None,
            }
            for r in s.execute(
                select(LivenessRecord)
                .where(LivenessRecord.subject_id == subject_id)
                .order_by(LivenessRecord.created_at)
            ).scalars()
        ]
    audit = [
        {
            "seq": r.seq,
            "at": format_time(r.at),
            "actor": r.actor,
            "action": r.action,
            "details": json.loads(r.details),
            "hash": r.hash,
        }
        for r in audit_entries(store, subject_id)
    ]
    data = {
        "format": "likeness.consent-export/1",
        "exported_at": format_time(now),
        "subject": {
            "id": person.id,
            "display_name": person.display_name,
            "created_at": format_time(person.created_at),
        },
        "avatars": avatars,
        "grants": [grant_json(r, items, now) for r in records],
        "revocations": [
            {
                "grant_id": r.grant.id,
                "revoked_at": format_time(r.revocation.revoked_at),
                "revoked_by": r.revocation.revoked_by,
                "reason": r.revocation.reason,
                "epoch": r.revocation.epoch,
            }
            for r in records
            if r.revocation is not None
        ],
        "liveness": liveness,
        "guardians": [
            link.to_json()
            for link in links_of(store.engine, subject_ids={subject_id}, include_ended=True)
        ],
        "usage": usage_summary(items) | {"all": [u.to_json() for u in items]},
        "audit": audit,
    }
    store.append_audit(by, "export", subject_id, {"by": by})
    return data


def delete_data(store: ConsentStore, subject_id: str, *, by: str, now: datetime) -> dict[str, Any]:
    """Revoke every live grant of a subject and purge their data and shred their key,
    in one transaction (``ConsentStore.purge_subject``: live sessions of their faces end).

    Grants, revocations and audit entries stay (they hold no biometric data).

    Returns:
        ``{"revoked": [grant ids], "avatars": [purged avatar ids]}``.
    """
    records = store.list_grants(subject_id)
    live = [r.grant.id for r in records if not r.revoked and r.grant.expires_at > now]
    avatars = store.purge_subject(
        subject_id, by=by, reason="deleted from the consent portal", now=now
    )
    forget_avatars(store, avatars)
    return {"revoked": live, "avatars": list(avatars)}


__all__ = [
    "DELETE_WORD",
    "Use",
    "audit_entries",
    "delete_data",
    "export",
    "grant_json",
    "grants_json",
    "usage_summary",
    "uses",
]
