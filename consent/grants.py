"""Grants: what a person allowed, signed by the server (Ed25519).

A :class:`Grant` is immutable. :func:`canonical_bytes` is the exact byte string that
is signed: JSON with sorted keys, no whitespace, UTF-8, datetimes as
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, tuples as lists, behind a schema tag. Every
field except ``signature`` is covered, so altering any of them fails
:func:`verify_signature`. Storing, listing and revoking grants is
``consent.store.ConsentStore``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.errors import GrantError
from consent.keys import SigningKeys, public_keys_of

SCHEMA = "likeness.grant/1"
ALL = "*"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc(value: datetime) -> datetime:
    """``value`` in UTC. Naive datetimes are refused: their zone is unknown."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise GrantError(f"datetime {value.isoformat()} has no time zone; pass an aware UTC time")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """The fixed text form of a datetime used in signed and hashed records."""
    return utc(value).strftime(_TIME_FORMAT)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    names = tuple(value)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise GrantError(f"{what} must be a non-empty list of non-empty names (or '*')")
    return tuple(sorted(set(names)))


@dataclass(frozen=True, slots=True)
class Grant:
    """A person's permission to animate one avatar (photo) of theirs.

    Attributes:
        id: grant id.
        subject: the person whose face/voice it is.
        avatar_id: sha256 hex of the photo the grant covers.
        allow_face: the face may be animated.
        allow_voice: the voice may be cloned/spoken.
        deployments: deployment names it covers, or ``("*",)`` for all.
        purposes: purposes it covers (e.g. ``"companionship"``, ``"eldercare"``) or ``("*",)``.
        expires_at: when it stops being valid (UTC).
        conditions: what the runtime must do while using it, e.g. ``{"ai_label": True}``.
        granted_by: ``"subject"`` or ``"guardian:<guardian id>"``.
        basis: for a guardian, the recorded legal basis (e.g. the document's hash).
        liveness_id: the passed liveness record it was issued on (None for a guardian).
        issued_at: when it was issued (UTC).
        key_id: id of the signing key; set by :func:`sign`.
        signature: Ed25519 signature of :func:`canonical_bytes`; set by :func:`sign`.
    """

    id: str
    subject: str
    avatar_id: str
    allow_face: bool
    allow_voice: bool
    deployments: tuple[str, ...]
    purposes: tuple[str, ...]
    expires_at: datetime
    issued_at: datetime
    conditions: Mapping[str, Any] = field(default_factory=dict, hash=False)
    granted_by: str = "subject"
    basis: str | None = None
    liveness_id: str | None = None
    key_id: str = ""
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("id", "subject", "avatar_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise GrantError(f"grant field {name!r} must be a non-empty string")
        for name in ("allow_face", "allow_voice"):
            if not isinstance(getattr(self, name), bool):
                raise GrantError(f"grant field {name!r} must be True or False")
        object.__setattr__(self, "deployments", _names(self.deployments, "deployments"))
        object.__setattr__(self, "purposes", _names(self.purposes, "purposes"))
        object.__setattr__(self, "expires_at", utc(self.expires_at))
        object.__setattr__(self, "issued_at", utc(self.issued_at))
        try:
            frozen = json.loads(json.dumps(dict(self.conditions), sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise GrantError(f"grant conditions must be plain JSON values: {exc}") from exc
        object.__setattr__(self, "conditions", MappingProxyType(frozen))
        if self.granted_by == "subject":
            if self.basis is not None:
                raise GrantError("a basis is only recorded for a guardian's grant")
        elif self.granted_by.startswith("guardian:") and self.granted_by[9:].strip():
            if not (self.basis and self.basis.strip()):
                raise GrantError("a guardian's grant needs a recorded basis (proof of authority)")
        else:
            raise GrantError(
                f"granted_by must be 'subject' or 'guardian:<id>', not {self.granted_by!r}"
            )
        if not isinstance(self.signature, bytes):
            raise GrantError("grant signature must be bytes")

    @property
    def by_guardian(self) -> bool:
        """True when a guardian, not the subject, granted it."""
        return self.granted_by.startswith("guardian:")

    def covers(self, deployment: str, purpose: str) -> bool:
        """True when ``deployment`` and ``purpose`` are both in scope."""
        return (ALL in self.deployments or deployment in self.deployments) and (
            ALL in self.purposes or purpose in self.purposes
        )

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON values (signature as hex), e.g. for the portal API."""
        out = _fields(self)
        out["signature"] = self.signature.hex()
        return out


def _fields(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "subject": grant.subject,
        "avatar_id": grant.avatar_id,
        "allow_face": grant.allow_face,
        "allow_voice": grant.allow_voice,
        "deployments": list(grant.deployments),
        "purposes": list(grant.purposes),
        "expires_at": format_time(grant.expires_at),
        "issued_at": format_time(grant.issued_at),
        "conditions": dict(grant.conditions),
        "granted_by": grant.granted_by,
        "basis": grant.basis,
        "liveness_id": grant.liveness_id,
        "key_id": grant.key_id,
    }


def canonical_bytes(grant: Grant) -> bytes:
    """The bytes that are signed: every field but ``signature``, canonical JSON, UTF-8."""
    body = {"schema": SCHEMA, **_fields(grant)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(grant: Grant, keys: SigningKeys) -> Grant:
    """A copy of ``grant`` with ``key_id`` set to the current key and signed by it."""
    unsigned = replace(grant, key_id=keys.key_id, signature=b"")
    return replace(unsigned, signature=keys.sign(canonical_bytes(unsigned)))


def verify_signature(grant: Grant, keys: SigningKeys | Mapping[str, Ed25519PublicKey]) -> bool:
    """True only when ``grant`` is signed, by a known key, and no field was altered.

    Args:
        grant: the grant to check.
        keys: a SigningKeys, or a ``{key id: Ed25519PublicKey}`` mapping.
    """
    public = public_keys_of(keys).get(grant.key_id)
    if public is None or len(grant.signature) != 64:
        return False
    try:
        public.verify(grant.signature, canonical_bytes(grant))
    except InvalidSignature:
        return False
    return True


__all__ = [
    "ALL",
    "SCHEMA",
    "Grant",
    "canonical_bytes",
    "format_time",
    "sign",
    "utc",
    "verify_signature",
]
