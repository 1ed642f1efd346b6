"""SQLAlchemy 2.x tables of the consent store.

Every time is stored as naive UTC (``UTCDateTime``) and read back as aware UTC, the
same on SQLite and PostgreSQL. JSON values are stored as canonical text. The schema
is created by the Alembic migrations in ``consent/migrations``, never by
``create_all``; a change here needs a new revision there.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC in the database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the consent store; pass aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the consent tables (own metadata, own naming convention)."""

    metadata = MetaData(naming_convention=NAMING)


class State(Base):
    """One row (id 1): the revocation epoch and the audit log's head (anchor)."""

    __tablename__ = "consent_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    audit_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    audit_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class Subject(Base):
    """A person whose face (and maybe voice) may be animated."""

    __tablename__ = "subjects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Avatar(Base):
    """A photo of a subject, by its sha256; the face embedding is encrypted per subject."""

    __tablename__ = "avatars"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LivenessRecord(Base):
    """One liveness + identity challenge: pass/fail per point, scores, its single-use nonce."""

    __tablename__ = "liveness_records"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id"))
    passed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    points: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {point: bool}
    scores: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {name: float}
    nonce: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class GrantRow(Base):
    """A signed grant, exactly as signed (see ``consent.grants.canonical_bytes``)."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id"), index=True)
    allow_face: Mapped[bool] = mapped_column(Boolean, nullable=False)
    allow_voice: Mapped[bool] = mapped_column(Boolean, nullable=False)
    deployments: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    purposes: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    conditions: Mapped[str] = mapped_column(Text, nullable=False)  # JSON object
    granted_by: Mapped[str] = mapped_column(Text, nullable=False)
    basis: Mapped[str | None] = mapped_column(Text, nullable=True)
    liveness_id: Mapped[str | None] = mapped_column(
        ForeignKey("liveness_records.id"), nullable=True
    )
    key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    signature: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Revocation(Base):
    """A revoke: who, why, when, and the epoch it produced. One per grant, never removed."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"), unique=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    revoked_by: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)


class AuditRow(Base):
    """One append-only, hash-chained audit entry (see ``consent.audit``)."""

    __tablename__ = "audit"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    subject_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    details: Mapped[str] = mapped_column(Text, nullable=False)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


__all__ = [
    "AuditRow",
    "Avatar",
    "Base",
    "GrantRow",
    "LivenessRecord",
    "Revocation",
    "State",
    "Subject",
    "UTCDateTime",
]
