"""SQLAlchemy tables of the consent portal (on ``consent.models.Base``).

Created by the Alembic revision ``c0a2_portal``; a change here needs a new revision.
Secrets are never stored in the clear: passwords as argon2id hashes, session tokens as
their sha256. Times are aware UTC in Python, naive UTC in the database
(``UTCDateTime``), as in the rest of the consent schema.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from consent.models import Base, UTCDateTime

ROLES = ("subject", "operator", "auditor")  # stored per user; "guardian" comes from links


class User(Base):
    """A portal account.

    ``role`` is the account kind: ``subject`` (a person, with ``subject_id`` pointing at
    their consent subject), ``operator`` or ``auditor`` (no subject). Being a guardian
    is not a role of its own: it follows from active rows in ``portal_guardian_links``.
    ``handle`` is the random WebAuthn user handle (never the email).
    """

    __tablename__ = "portal_users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    subject_id: Mapped[str | None] = mapped_column(
        ForeignKey("subjects.id"), nullable=True, index=True
    )
    handle: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Password(Base):
    """A user's argon2id password hash (absent for passkey-only accounts)."""

    __tablename__ = "portal_passwords"

    user_id: Mapped[str] = mapped_column(ForeignKey("portal_users.id"), primary_key=True)
    hash: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Credential(Base):
    """A registered passkey (WebAuthn credential)."""

    __tablename__ = "portal_credentials"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    credential_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)  # base64url
    user_id: Mapped[str] = mapped_column(ForeignKey("portal_users.id"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # COSE
    sign_count: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PortalSession(Base):
    """A signed-in browser: the sha256 of its cookie token and its CSRF token."""

    __tablename__ = "portal_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("portal_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(16), nullable=False)  # password | passkey
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class WebAuthnChallenge(Base):
    """A registration or sign-in challenge: single use, short expiry."""

    __tablename__ = "portal_webauthn_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)  # register | signin
    user_id: Mapped[str | None] = mapped_column(ForeignKey("portal_users.id"), nullable=True)
    challenge: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class GuardianLink(Base):
    """A guardian (a portal user) who may act for a subject, and on what basis.

    ``linked_by`` is the user id of whoever made the link (the subject or an operator);
    ``ended_at`` is set when it is removed (links are kept for the record).
    """

    __tablename__ = "portal_guardian_links"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    guardian_id: Mapped[str] = mapped_column(ForeignKey("portal_users.id"), index=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    basis: Mapped[str] = mapped_column(Text, nullable=False)
    linked_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Deployment(Base):
    """A deployment (e.g. a care home's kiosks) registered by an operator."""

    __tablename__ = "portal_deployments"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class DeploymentAvatar(Base):
    """An avatar a deployment may use (its grant must still cover the deployment)."""

    __tablename__ = "portal_deployment_avatars"

    deployment: Mapped[str] = mapped_column(
        ForeignKey("portal_deployments.name", ondelete="CASCADE"), primary_key=True
    )
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id"), primary_key=True)


__all__ = [
    "ROLES",
    "Credential",
    "Deployment",
    "DeploymentAvatar",
    "GuardianLink",
    "Password",
    "PortalSession",
    "User",
    "WebAuthnChallenge",
]
