"""Passkeys (WebAuthn, py_webauthn 3.x): register one while signed in, sign in with it.

Each ceremony has two steps. ``*_options`` stores a random challenge server-side
(``portal_webauthn_challenges``: single use, five minutes) and returns the options for
``navigator.credentials.create()`` / ``.get()`` with the challenge's id; the browser's
answer comes back to ``finish_*`` with that id, which consumes the challenge with one
conditional ``UPDATE`` (so two answers to one challenge cannot both pass) and verifies
it against the relying party id and origin. User verification is required: a passkey
is the only factor of its sign-in.

Every function here blocks (database): call them from a worker thread in async code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, options_to_json_dict
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from consent.grants import format_time
from consent.portal.accounts import MAX_NAME, UserInfo, check_text, user_by_email, user_by_id
from consent.portal.auth import PortalError
from consent.portal.models import Credential, WebAuthnChallenge
from consent.store import utcnow

if TYPE_CHECKING:
    from consent.store import ConsentStore

CHALLENGE_TTL = timedelta(minutes=5)
TIMEOUT_MS = 120_000


@dataclass(frozen=True, slots=True)
class PasskeyInfo:
    """A registered passkey, without its key material."""

    id: str
    user_id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """As JSON values."""
        return {
            "id": self.id,
            "name": self.name,
            "created_at": format_time(self.created_at),
            "last_used_at": format_time(self.last_used_at) if self.last_used_at else None,
        }


def _info(row: Credential) -> PasskeyInfo:
    return PasskeyInfo(row.id, row.user_id, row.name, row.created_at, row.last_used_at)


def passkeys_of(engine: Engine, user_id: str) -> list[PasskeyInfo]:
    """A user's passkeys, oldest first."""
    with Session(engine) as s:
        rows = s.execute(
            select(Credential).where(Credential.user_id == user_id).order_by(Credential.created_at)
        ).scalars()
        return [_info(r) for r in rows]


def remove_passkey(engine: Engine, user_id: str, passkey_id: str) -> None:
    """Delete one of the user's own passkeys.

    Raises:
        PortalError: 404 when the user has no passkey with that id.
    """
    with Session(engine) as s, s.begin():
        gone = s.execute(
            delete(Credential).where(Credential.id == passkey_id, Credential.user_id == user_id)
        ).rowcount
    if gone != 1:
        raise PortalError(404, "no passkey with that id")


def _store_challenge(engine: Engine, purpose: str, user_id: str | None, challenge: bytes) -> str:
    at = utcnow()
    challenge_id = uuid.uuid4().hex
    with Session(engine) as s, s.begin():
        s.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at <= at))
        s.add(
            WebAuthnChallenge(
                id=challenge_id,
                purpose=purpose,
                user_id=user_id,
                challenge=challenge,
                created_at=at,
                expires_at=at + CHALLENGE_TTL,
            )
        )
    return challenge_id


def consume_challenge(
    engine: Engine, challenge_id: Any, purpose: str, *, now: datetime | None = None
) -> tuple[bytes, str | None]:
    """Use up a stored challenge: (its bytes, the user it was issued to, if any).

    Raises:
        PortalError: 400 when it is unknown, already used, expired, or for another purpose.
    """
    if not isinstance(challenge_id, str) or len(challenge_id) > 64:
        raise PortalError(400, "challenge_id is missing; start again")
    at = now or utcnow()
    with Session(engine) as s, s.begin():
        taken = s.execute(
            update(WebAuthnChallenge)
            .where(
                WebAuthnChallenge.id == challenge_id,
                WebAuthnChallenge.purpose == purpose,
                WebAuthnChallenge.used_at.is_(None),
                WebAuthnChallenge.expires_at > at,
            )
            .values(used_at=at)
        ).rowcount
        if taken != 1:
            raise PortalError(400, "this passkey request expired or was already used; start again")
        row = s.get(WebAuthnChallenge, challenge_id)
        assert row is not None
        return bytes(row.challenge), row.user_id


def registration_options(engine: Engine, user: UserInfo, *, rp_id: str, rp_name: str) -> dict:
    """Options for ``navigator.credentials.create()`` plus ``challenge_id``.

    Returns:
        ``{"challenge_id": str, "options": {...}}`` (binary values in base64url); the
        page passes ``options`` to ``PublicKeyCredential.parseCreationOptionsFromJSON``.
    """
    existing = [
        PublicKeyCredentialDescriptor(id=base64url_to_bytes(c.credential_id))
        for c in _credentials(engine, user.id)
    ]
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_name=user.email,
        user_id=user.handle,
        user_display_name=user.display_name,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=existing,
    )
    challenge_id = _store_challenge(engine, "register", user.id, options.challenge)
    return {"challenge_id": challenge_id, "options": options_to_json_dict(options)}


def _credentials(engine: Engine, user_id: str) -> list[Credential]:
    with Session(engine) as s:
        return list(
            s.execute(select(Credential).where(Credential.user_id == user_id)).scalars().all()
        )


def finish_registration(
    store: ConsentStore,
    user: UserInfo,
    *,
    challenge_id: Any,
    credential: Any,
    name: Any,
    rp_id: str,
    origin: str,
) -> PasskeyInfo:
    """Verify the browser's new credential and keep it as one of ``user``'s passkeys.

    Raises:
        PortalError: 400 when the challenge is unusable or the answer does not verify,
            409 when this passkey is already registered.
    """
    label = check_text(name or "passkey", "passkey name", limit=MAX_NAME)
    if not isinstance(credential, dict):
        raise PortalError(400, "credential must be the browser's answer, as JSON")
    expected, owner = consume_challenge(store.engine, challenge_id, "register")
    if owner != user.id:
        raise PortalError(400, "this passkey request expired or was already used; start again")
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=expected,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PortalError(400, f"the passkey could not be verified: {exc}") from None
    at = utcnow()
    row = Credential(
        id=uuid.uuid4().hex,
        credential_id=bytes_to_base64url(verified.credential_id),
        user_id=user.id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        name=label,
        created_at=at,
    )
    info = _info(row)
    try:
        with Session(store.engine) as s, s.begin():
            s.add(row)
    except IntegrityError:
        raise PortalError(409, "this passkey is already registered") from None
    store.append_audit(
        user.id,
        "passkey",
        user.subject_id,
        {"action": "added", "user_id": user.id, "passkey_id": info.id},
        now=at,
    )
    return info


def signin_options(engine: Engine, *, rp_id: str, email: Any = None) -> dict:
    """Options for ``navigator.credentials.get()`` plus ``challenge_id``.

    With an email of an account that has passkeys, only those are allowed; otherwise
    (no email, or an unknown one: the answer looks the same) any discoverable passkey
    of this site may answer.
    """
    allowed: list[PublicKeyCredentialDescriptor] = []
    if isinstance(email, str) and email.strip():
        user = user_by_email(engine, email.strip().lower())
        if user is not None:
            allowed = [
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(c.credential_id))
                for c in _credentials(engine, user.id)
            ]
    options = generate_authentication_options(
        rp_id=rp_id,
        timeout=TIMEOUT_MS,
        allow_credentials=allowed,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    challenge_id = _store_challenge(engine, "signin", None, options.challenge)
    return {"challenge_id": challenge_id, "options": options_to_json_dict(options)}


def finish_signin(
    store: ConsentStore, *, challenge_id: Any, credential: Any, rp_id: str, origin: str
) -> UserInfo:
    """Verify a passkey's answer and return the account it signs in.

    Raises:
        PortalError: 400 for an unusable challenge, 401 when the passkey is unknown or
            its answer does not verify (the person must try again).
    """
    if not isinstance(credential, dict):
        raise PortalError(400, "credential must be the browser's answer, as JSON")
    expected, _owner = consume_challenge(store.engine, challenge_id, "signin")
    raw = credential.get("rawId") or credential.get("id")
    try:
        credential_id = bytes_to_base64url(base64url_to_bytes(str(raw)))
    except (ValueError, TypeError):
        raise PortalError(401, "this passkey is not registered here") from None
    with Session(store.engine) as s:
        row = s.execute(
            select(Credential).where(Credential.credential_id == credential_id)
        ).scalar()
        if row is None:
            raise PortalError(401, "this passkey is not registered here")
        key, count, passkey_id, user_id = bytes(row.public_key), row.sign_count, row.id, row.user_id
    user = user_by_id(store.engine, user_id)
    assert user is not None
    handle = (credential.get("response") or {}).get("userHandle")
    try:
        if handle and base64url_to_bytes(str(handle)) != user.handle:
            raise PortalError(401, "this passkey belongs to another account")
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=expected,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=key,
            credential_current_sign_count=count,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PortalError(401, f"the passkey could not be verified: {exc}") from None
    at = utcnow()
    with Session(store.engine) as s, s.begin():
        s.execute(
            update(Credential)
            .where(Credential.id == passkey_id)
            .values(sign_count=verified.new_sign_count, last_used_at=at)
        )
    return user


__all__ = [
    "CHALLENGE_TTL",
    "PasskeyInfo",
    "consume_challenge",
    "finish_registration",
    "finish_signin",
    "passkeys_of",
    "registration_options",
    "remove_passkey",
    "signin_options",
]
