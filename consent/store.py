"""The consent store: subjects, avatars, liveness records, grants, revocations, audit.

``ConsentStore(url, subject_keys)`` works on a SQLite file (the default under the data
dir, see :meth:`ConsentStore.open`) or a PostgreSQL URL. Call :meth:`ConsentStore.migrate`
once before use: it runs the Alembic migrations in ``consent/migrations`` to head.

Every change and its audit entry are written in one transaction that first locks the
``consent_state`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), so the audit chain and the revocation epoch never fork. Database failures are
raised as ``StoreError`` with ``retryable`` set; retry in the caller, not here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, select, true, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consent import ConsentError
from consent.audit import ACTIONS, AuditEntry, canonical_details, entry_hash
from consent.errors import (
    AlreadyRevokedError,
    GrantError,
    LivenessRequiredError,
    NotFoundError,
    ShreddedError,
    StoreError,
)
from consent.grants import Grant, sign, utc
from consent.keys import SigningKeys, SubjectKeys
from consent.models import (
    AuditRow,
    Avatar,
    GrantRow,
    LivenessRecord,
    Revocation,
    State,
    Subject,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_WRITE = "consent_write"

# Called after a subject's data is purged with (subject id, purged avatar ids), e.g. to
# delete the prepared avatars the runtime keeps elsewhere.
Purger = Callable[[str, tuple[str, ...]], None]


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def photo_hash(photo: bytes) -> str:
    """The avatar id of a photo: sha256 hex of its bytes."""
    return hashlib.sha256(photo).hexdigest()


def _new_id() -> str:
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


def _normalise_url(url: str) -> str:
    # psycopg 3 is the PostgreSQL driver this project installs.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _sqlite_events(engine: Engine) -> None:
    """Foreign keys on; writers take the lock when they begin (BEGIN IMMEDIATE)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _grant_from_row(row: GrantRow) -> Grant:
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


def _revocation_info(row: Revocation) -> RevocationInfo:
    return RevocationInfo(
        row.grant_id, row.subject_id, row.revoked_by, row.reason, row.revoked_at, row.epoch
    )


class ConsentStore:
    """Grants and everything they rest on, in SQLite or PostgreSQL.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/consent.db`` or ``postgresql://...``
            (run with psycopg 3).
        subject_keys: the per-subject data keys (embeddings are encrypted with them;
            a revoke that leaves no live grant shreds the subject's key).
        files_dir: where per-subject files live (:meth:`subject_dir`); deleted on purge.
        purgers: callables run with (subject id, avatar ids) after a purge.
        liveness_max_age: how old a liveness record may be when a grant is issued on it.

    Creating it opens no connection; call :meth:`migrate` before first use and
    :meth:`close` at the end.
    """

    def __init__(
        self,
        url: str,
        subject_keys: SubjectKeys,
        *,
        files_dir: Path | None = None,
        purgers: Sequence[Purger] = (),
        liveness_max_age: timedelta = timedelta(minutes=10),
    ) -> None:
        self.url = _normalise_url(url)
        self.keys = subject_keys
        self.files_dir = files_dir
        self._purgers = tuple(purgers)
        self.liveness_max_age = liveness_max_age
        self._sqlite = self.url.startswith("sqlite")
        if self._sqlite:
            self._engine = create_engine(self.url, connect_args={"timeout": 30})
            _sqlite_events(self._engine)
        else:
            self._engine = create_engine(self.url, pool_pre_ping=True)
        self._writer = self._engine.execution_options(**{_WRITE: True})

    @classmethod
    def open(cls, data_dir: str | Path, *, url: str | None = None, **kwargs: Any) -> ConsentStore:
        """The store of a data dir, migrated and ready.

        Uses ``<data_dir>/consent/consent.db`` unless ``url`` names another database;
        keys in ``<data_dir>/consent/keys`` and files in ``<data_dir>/consent/files``.
        """
        root = Path(data_dir) / "consent"
        root.mkdir(parents=True, exist_ok=True)
        subject_keys = SubjectKeys.load(root / "keys")
        kwargs.setdefault("files_dir", root / "files")
        store = cls(url or f"sqlite:///{root / 'consent.db'}", subject_keys, **kwargs)
        store.migrate()
        return store

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for migrations and tests; use the methods otherwise)."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def migrate(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to ``revision`` (idempotent)."""
        from consent.migrations import upgrade

        with self._guard("migrate"):
            upgrade(self._engine, revision)

    # ---- transactions -------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except ConsentError:
            raise
        except OperationalError as exc:
            raise StoreError(f"{what}: database unavailable: {exc.orig}", retryable=True) from exc
        except DBAPIError as exc:
            retry = bool(exc.connection_invalidated)
            raise StoreError(f"{what}: database error: {exc.orig}", retryable=retry) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"{what}: {exc}") from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[tuple[Session, State]]:
        """A write transaction holding the state row lock (serialises all writers)."""
        with self._guard(what), Session(self._writer) as s, s.begin():
            state = s.execute(select(State).where(State.id == 1).with_for_update()).scalar_one()
            yield s, state

    @contextmanager
    def _read(self, what: str) -> Iterator[Session]:
        with self._guard(what), Session(self._engine) as s:
            yield s

    def _audit(
        self,
        s: Session,
        state: State,
        actor: str,
        action: str,
        subject: str | None,
        details: Mapping[str, Any],
        at: datetime,
    ) -> AuditEntry:
        if action not in ACTIONS:
            raise ConsentError(f"unknown audit action {action!r}; one of {sorted(ACTIONS)}")
        text = canonical_details(dict(details))
        seq = state.audit_seq + 1
        digest = entry_hash(
            state.audit_hash,
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            details=text,
        )
        s.add(
            AuditRow(
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                subject_id=subject,
                details=text,
                prev_hash=state.audit_hash,
                hash=digest,
            )
        )
        entry = AuditEntry(seq, at, actor, action, subject, text, state.audit_hash, digest)
        state.audit_seq, state.audit_hash = seq, digest
        return entry

    # ---- epoch and audit ----------------------------------------------------------

    def epoch(self) -> int:
        """The revocation epoch: one primary-key read; it grows by one on every revoke."""
        with self._guard("epoch"), self._engine.connect() as conn:
            return int(conn.execute(select(State.epoch).where(State.id == 1)).scalar_one())

    def append_audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        details: Mapping[str, Any],
        *,
        now: datetime | None = None,
    ) -> AuditEntry:
        """Append one entry (e.g. ``check``, ``use_start``, ``use_end`` with the deployment)."""
        with self._write("audit") as (s, state):
            return self._audit(s, state, actor, action, subject, details, now or utcnow())

    def audit_log(self) -> tuple[list[AuditEntry], int, str]:
        """Every audit entry in seq order, and the recorded head (seq, hash)."""
        with self._read("audit log") as s:
            rows = s.execute(select(AuditRow).order_by(AuditRow.seq)).scalars().all()
            state = s.execute(select(State).where(State.id == 1)).scalar_one()
            entries = [
                AuditEntry(
                    r.seq, r.at, r.actor, r.action, r.subject_id, r.details, r.prev_hash, r.hash
                )
                for r in rows
            ]
            return entries, state.audit_seq, state.audit_hash

    # ---- subjects and avatars -----------------------------------------------------

    def add_subject(self, display_name: str, *, subject_id: str | None = None) -> SubjectInfo:
        """Record a new subject. ``display_name`` is stored as given (any text)."""
        if not isinstance(display_name, str) or not display_name.strip():
            raise GrantError("a subject needs a non-empty display name")
        info = SubjectInfo(subject_id or _new_id(), display_name, utcnow())
        try:
            with self._write("add subject") as (s, _state):
                s.add(Subject(id=info.id, display_name=display_name, created_at=info.created_at))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise GrantError(f"subject {info.id!r} already exists") from exc
            raise
        return info

    def subject(self, subject_id: str) -> SubjectInfo:
        """The subject with that id (``NotFoundError`` if none)."""
        with self._read("subject") as s:
            row = s.get(Subject, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id!r}")
            return SubjectInfo(row.id, row.display_name, row.created_at)

    def add_avatar(self, subject_id: str, avatar_id: str, embedding: Any) -> str:
        """Record a photo of a subject and its face embedding (encrypted with the subject key).

        Args:
            subject_id: the subject.
            avatar_id: the photo's sha256 hex (:func:`photo_hash`).
            embedding: the face embedding (any 1-d float array); stored as float32.
        """
        if not _HEX64.match(avatar_id):
            raise GrantError("avatar id must be the photo's sha256 in lower-case hex")
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.size == 0 or not np.all(np.isfinite(vector)):
            raise GrantError("face embedding must be a non-empty vector of finite numbers")
        with self._write("add avatar") as (s, _state):
            if s.get(Subject, subject_id) is None:
                raise NotFoundError(f"no subject {subject_id!r}")
            existing = s.get(Avatar, avatar_id)
            if existing is not None and existing.subject_id != subject_id:
                raise GrantError("this photo is already registered to another subject")
            blob = self.keys.encrypt(subject_id, vector.tobytes())
            if existing is None:
                s.add(
                    Avatar(id=avatar_id, subject_id=subject_id, embedding=blob, created_at=utcnow())
                )
            else:
                existing.embedding, existing.deleted_at = blob, None
        return avatar_id

    def avatar_embedding(self, avatar_id: str) -> np.ndarray:
        """The decrypted face embedding of an avatar.

        Raises:
            NotFoundError: no such avatar.
            ShreddedError: it was deleted or its subject's key was shredded.
        """
        with self._read("avatar embedding") as s:
            row = s.get(Avatar, avatar_id)
            if row is None:
                raise NotFoundError(f"no avatar {avatar_id!r}")
            subject, blob = row.subject_id, row.embedding
        if blob is None:
            raise ShreddedError(f"the embedding of avatar {avatar_id} was deleted")
        return np.frombuffer(self.keys.decrypt(subject, bytes(blob)), dtype=np.float32).copy()

    def encrypted_embedding(self, avatar_id: str) -> bytes | None:
        """The stored ciphertext of an avatar's embedding (None once deleted)."""
        with self._read("avatar embedding") as s:
            row = s.get(Avatar, avatar_id)
            if row is None:
                raise NotFoundError(f"no avatar {avatar_id!r}")
            return None if row.embedding is None else bytes(row.embedding)

    def subject_of_avatar(self, avatar_id: str) -> str | None:
        """The subject a photo belongs to, or None when unknown."""
        with self._read("avatar") as s:
            row = s.get(Avatar, avatar_id)
            return None if row is None else row.subject_id

    def subject_dir(self, subject_id: str) -> Path:
        """The directory for this subject's files (created); removed when it is purged."""
        if self.files_dir is None:
            raise ConsentError("this store has no files_dir")
        path = self.files_dir / hashlib.sha256(subject_id.encode()).hexdigest()[:32]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    # ---- liveness -----------------------------------------------------------------

    def record_liveness(
        self,
        subject_id: str,
        avatar_id: str,
        *,
        points: Mapping[str, bool],
        scores: Mapping[str, float],
        nonce: str,
        actor: str = "liveness",
        now: datetime | None = None,
    ) -> LivenessInfo:
        """Record one liveness challenge. It passed only when every point passed.

        ``nonce`` is single-use: recording it twice raises ``GrantError``.
        """
        if not points:
            raise GrantError("a liveness record needs at least one checked point")
        checked = {str(k): bool(v) for k, v in points.items()}
        values = {str(k): float(v) for k, v in scores.items()}
        at = utc(now) if now else utcnow()
        info = LivenessInfo(
            _new_id(),
            subject_id,
            avatar_id,
            all(checked.values()),
            checked,
            values,
            nonce,
            at,
            None,
        )
        try:
            with self._write("record liveness") as (s, state):
                avatar = s.get(Avatar, avatar_id)
                if avatar is None or avatar.subject_id != subject_id:
                    raise NotFoundError(f"subject {subject_id!r} has no avatar {avatar_id!r}")
                if s.execute(
                    select(LivenessRecord.id).where(LivenessRecord.nonce == nonce)
                ).first():
                    raise GrantError("this liveness nonce was already used")
                s.add(
                    LivenessRecord(
                        id=info.id,
                        subject_id=subject_id,
                        avatar_id=avatar_id,
                        passed=info.passed,
                        points=canonical_details(checked),
                        scores=canonical_details(values),
                        nonce=nonce,
                        created_at=at,
                    )
                )
                self._audit(
                    s,
                    state,
                    actor,
                    "liveness",
                    subject_id,
                    {
                        "liveness_id": info.id,
                        "avatar_id": avatar_id,
                        "passed": info.passed,
                        "points": checked,
                        "scores": values,
                    },
                    at,
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise GrantError("this liveness nonce was already used") from exc
            raise
        return info

    def liveness(self, liveness_id: str) -> LivenessInfo:
        """The liveness record with that id."""
        with self._read("liveness") as s:
            r = s.get(LivenessRecord, liveness_id)
            if r is None:
                raise NotFoundError(f"no liveness record {liveness_id!r}")
            return LivenessInfo(
                r.id,
                r.subject_id,
                r.avatar_id,
                r.passed,
                json.loads(r.points),
                json.loads(r.scores),
                r.nonce,
                r.created_at,
                r.used_at,
            )

    # ---- grants -------------------------------------------------------------------

    def issue(
        self,
        keys: SigningKeys,
        *,
        subject_id: str,
        avatar_id: str,
        deployments: Sequence[str],
        purposes: Sequence[str],
        expires_at: datetime,
        allow_face: bool = True,
        allow_voice: bool = False,
        conditions: Mapping[str, Any] | None = None,
        granted_by: str = "subject",
        basis: str | None = None,
        liveness_id: str | None = None,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> Grant:
        """Sign and store a grant.

        The subject's own grant needs ``liveness_id``: a passed, unused record of this
        subject and avatar, younger than ``liveness_max_age`` (it is used up here). A
        guardian's grant (``granted_by="guardian:<id>"``) needs a ``basis`` instead.
        ``conditions`` default to ``{"ai_label": True}``.

        Raises:
            LivenessRequiredError: no usable liveness record (run the challenge again).
            GrantError: a field is wrong (the message names it).
            NotFoundError: no such subject or avatar.
        """
        at = utc(now) if now else utcnow()
        grant = Grant(
            id=_new_id(),
            subject=subject_id,
            avatar_id=avatar_id,
            allow_face=allow_face,
            allow_voice=allow_voice,
            deployments=tuple(deployments),
            purposes=tuple(purposes),
            expires_at=expires_at,
            issued_at=at,
            conditions=dict(conditions) if conditions is not None else {"ai_label": True},
            granted_by=granted_by,
            basis=basis,
            liveness_id=liveness_id,
        )
        if grant.expires_at <= at:
            raise GrantError("expires_at must be in the future")
        signed = sign(grant, keys)
        with self._write("issue grant") as (s, state):
            avatar = s.get(Avatar, avatar_id)
            if avatar is None or avatar.subject_id != subject_id:
                raise NotFoundError(f"subject {subject_id!r} has no avatar {avatar_id!r}")
            if avatar.embedding is None:
                raise GrantError(f"avatar {avatar_id} was deleted; register the photo again")
            if not grant.by_guardian or liveness_id is not None:
                self._use_liveness(s, grant, at)
            s.add(
                GrantRow(
                    id=signed.id,
                    subject_id=subject_id,
                    avatar_id=avatar_id,
                    allow_face=signed.allow_face,
                    allow_voice=signed.allow_voice,
                    deployments=json.dumps(list(signed.deployments)),
                    purposes=json.dumps(list(signed.purposes)),
                    expires_at=signed.expires_at,
                    issued_at=signed.issued_at,
                    conditions=canonical_details(dict(signed.conditions)),
                    granted_by=signed.granted_by,
                    basis=signed.basis,
                    liveness_id=signed.liveness_id,
                    key_id=signed.key_id,
                    signature=signed.signature,
                )
            )
            self._audit(
                s,
                state,
                actor or signed.granted_by,
                "grant",
                subject_id,
                {
                    "grant_id": signed.id,
                    **{
                        k: v
                        for k, v in signed.to_json().items()
                        if k not in ("id", "subject", "signature")
                    },
                },
                at,
            )
        return signed

    def _use_liveness(self, s: Session, grant: Grant, at: datetime) -> None:
        if grant.liveness_id is None:
            raise LivenessRequiredError(
                "the subject's own grant needs a passed liveness record; run the challenge"
            )
        rec = s.get(LivenessRecord, grant.liveness_id, with_for_update=True)
        if rec is None:
            raise LivenessRequiredError(f"no liveness record {grant.liveness_id!r}")
        if rec.subject_id != grant.subject or rec.avatar_id != grant.avatar_id:
            raise LivenessRequiredError("the liveness record is for another subject or photo")
        if not rec.passed:
            raise LivenessRequiredError("the liveness challenge did not pass")
        if rec.used_at is not None:
            raise LivenessRequiredError("the liveness record was already used for a grant")
        if at - rec.created_at > self.liveness_max_age:
            raise LivenessRequiredError("the liveness record is too old; run the challenge again")
        rec.used_at = at

    def grant(self, grant_id: str) -> GrantRecord:
        """The stored grant with that id and its revocation, if any."""
        with self._read("grant") as s:
            row = s.get(GrantRow, grant_id)
            if row is None:
                raise NotFoundError(f"no grant {grant_id!r}")
            rev = s.execute(select(Revocation).where(Revocation.grant_id == grant_id)).scalar()
            return GrantRecord(_grant_from_row(row), rev and _revocation_info(rev))

    def _records(self, s: Session, where) -> list[GrantRecord]:
        rows = s.execute(
            select(GrantRow, Revocation)
            .outerjoin(Revocation, Revocation.grant_id == GrantRow.id)
            .where(where)
            .order_by(GrantRow.issued_at.desc(), GrantRow.id)
        ).all()
        return [GrantRecord(_grant_from_row(g), r and _revocation_info(r)) for g, r in rows]

    def list_grants(self, subject_id: str) -> list[GrantRecord]:
        """Every grant of a subject, newest first, with its revocation."""
        with self._read("list grants") as s:
            return self._records(s, GrantRow.subject_id == subject_id)

    def all_grants(self) -> list[GrantRecord]:
        """Every grant, newest first (operators' listing)."""
        with self._read("list grants") as s:
            return self._records(s, true())

    def grants_for_avatar(self, avatar_id: str) -> list[tuple[Grant, bool]]:
        """(grant, revoked) for every grant of a photo, newest first (for the gate)."""
        with self._read("grants for avatar") as s:
            return [(r.grant, r.revoked) for r in self._records(s, GrantRow.avatar_id == avatar_id)]

    def revoke(
        self, grant_id: str, *, by: str, reason: str, now: datetime | None = None
    ) -> RevocationInfo:
        """Revoke a grant now, for good, and bump the revocation epoch.

        Photos no live grant covers any more lose their stored embedding; when the
        subject has no live grant left, their data key is shredded and their files
        deleted (:meth:`purge_subject`).

        Raises:
            NotFoundError: no such grant.
            AlreadyRevokedError: it was revoked before.
        """
        if not by or not isinstance(reason, str):
            raise GrantError("a revoke records who revoked (by) and why (reason)")
        at = utc(now) if now else utcnow()
        with self._write("revoke") as (s, state):
            row = s.get(GrantRow, grant_id)
            if row is None:
                raise NotFoundError(f"no grant {grant_id!r}")
            if s.execute(select(Revocation.id).where(Revocation.grant_id == grant_id)).first():
                raise AlreadyRevokedError(f"grant {grant_id} was already revoked")
            state.epoch += 1
            subject = row.subject_id
            s.add(
                Revocation(
                    grant_id=grant_id,
                    subject_id=subject,
                    revoked_by=by,
                    reason=reason,
                    revoked_at=at,
                    epoch=state.epoch,
                )
            )
            self._audit(
                s,
                state,
                by,
                "revoke",
                subject,
                {
                    "grant_id": grant_id,
                    "avatar_id": row.avatar_id,
                    "reason": reason,
                    "epoch": state.epoch,
                },
                at,
            )
            s.flush()
            live = [
                r.grant
                for r in self._records(s, GrantRow.subject_id == subject)
                if not r.revoked and r.grant.expires_at > at
            ]
            covered = {g.avatar_id for g in live}
            avatars = (
                s.execute(
                    select(Avatar).where(
                        Avatar.subject_id == subject, Avatar.embedding.is_not(None)
                    )
                )
                .scalars()
                .all()
            )
            dropped = tuple(sorted(a.id for a in avatars if a.id not in covered))
            for a in avatars:
                if a.id in dropped:
                    a.embedding, a.deleted_at = None, at
            if dropped and live:
                self._audit(
                    s,
                    state,
                    by,
                    "delete",
                    subject,
                    {"avatar_ids": list(dropped), "key_shredded": False},
                    at,
                )
            info = RevocationInfo(grant_id, subject, by, reason, at, state.epoch)
        if not live:
            self.purge_subject(subject, by=by, reason=f"revoked grant {grant_id}", now=at)
            return RevocationInfo(grant_id, subject, by, reason, at, info.epoch, shredded=True)
        for purger in self._purgers:
            purger(subject, dropped)
        return info

    def purge_subject(
        self, subject_id: str, *, by: str, reason: str, now: datetime | None = None
    ) -> tuple[str, ...]:
        """Delete a subject's embeddings and files and shred their data key (idempotent).

        Returns the ids of the subject's avatars. Grants and audit entries stay (they
        hold no biometric data); the encrypted data that may remain in backups cannot
        be read once the key is gone.
        """
        at = utc(now) if now else utcnow()
        with self._write("purge subject") as (s, state):
            avatars = tuple(
                s.execute(select(Avatar.id).where(Avatar.subject_id == subject_id)).scalars()
            )
            s.execute(
                update(Avatar)
                .where(Avatar.subject_id == subject_id, Avatar.embedding.is_not(None))
                .values(embedding=None, deleted_at=at)
            )
            shredded = self.keys.shred(subject_id)
            self._audit(
                s,
                state,
                by,
                "delete",
                subject_id,
                {
                    "avatar_ids": list(avatars),
                    "key_shredded": True,
                    "reason": reason,
                    "key_existed": shredded,
                },
                at,
            )
        if self.files_dir is not None:
            shutil.rmtree(
                self.files_dir / hashlib.sha256(subject_id.encode()).hexdigest()[:32],
                ignore_errors=True,
            )
        for purger in self._purgers:
            purger(subject_id, avatars)
        return avatars


__all__ = [
    "ConsentStore",
    "GrantRecord",
    "LivenessInfo",
    "Purger",
    "RevocationInfo",
    "SubjectInfo",
    "photo_hash",
    "utcnow",
]
