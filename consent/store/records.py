"""The consent store's records: frozen dataclasses handed to callers, and row converters."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from consent.grants import Grant
from consent.models import GrantRow, Revocation

# Called after a subject's data is purged with (subject id, purged avatar ids), e.g. to
# delete the prepared avatars the runtime keeps elsewhere.
Purger = Callable[[str, tuple[str, ...]], None]


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def photo_hash(photo: bytes) -> str:
    """The avatar id of a photo: sha256 hex of its bytes."""
    return hashlib.sha256(photo).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    """A subject as stored."""

    id: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LivenessInfo:
    """A liveness record as stored: pass/fail per point, scores, nonce, time."""

    id: str
    subject_id: str
    avatar_id: str
    passed: bool
    points: Mapping[str, bool]
    scores: Mapping[str, float]
    nonce: str
    created_at: datetime
    used_at: datetime | None


@dataclass(frozen=True, slots=True)
class RevocationInfo:
    """A revoke: who, why, when, the epoch it produced, and whether data was destroyed."""

    grant_id: str
    subject_id: str
    revoked_by: str
    reason: str
    revoked_at: datetime
    epoch: int
    shredded: bool = False


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A stored grant and its revocation, if any."""

    grant: Grant
    revocation: RevocationInfo | None

    @property
    def revoked(self) -> bool:
        """True once revoked (forever)."""
        return self.revocation is not None


def grant_from_row(row: GrantRow) -> Grant:
    return Grant(
        id=row.id,
        subject=row.subject_id,
        avatar_id=row.avatar_id,
        allow_face=row.allow_face,
        allow_voice=row.allow_voice,
        deployments=tuple(json.loads(row.deployments)),
        purposes=tuple(json.loads(row.purposes)),
        expires_at=row.expires_at,
        issued_at=row.issued_at,
        conditions=json.loads(row.conditions),
        granted_by=row.granted_by,
        basis=row.basis,
        liveness_id=row.liveness_id,
        key_id=row.key_id,
        signature=bytes(row.signature),
    )


def revocation_info(row: Revocation) -> RevocationInfo:
    return RevocationInfo(
        row.grant_id, row.subject_id, row.revoked_by, row.reason, row.revoked_at, row.epoch
    )


__all__ = [
    "GrantRecord",
    "LivenessInfo",
    "Purger",
    "RevocationInfo",
    "SubjectInfo",
    "grant_from_row",
    "new_id",
    "photo_hash",
    "revocation_info",
    "utcnow",
]
