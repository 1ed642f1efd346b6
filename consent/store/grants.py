"""Grants: issue (on a liveness record), read, revoke, and purge a subject's data.

A grant is signed and never edited (an altered field fails its signature at the gate):
narrowing a grant's deployments or purposes means issuing the narrower grant and revoking
the old one, and the revoke moves the revocation epoch. Every change here that withdraws
permission (a revoke, a subject's data deleted) moves it (``StoreBase._next_epoch``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from consent.audit import canonical_details
from consent.errors import (
    AlreadyRevokedError,
    GrantError,
    LivenessRequiredError,
    NotFoundError,
)
from consent.grants import Grant, sign, utc
from consent.keys import SigningKeys
from consent.models import Avatar, GrantRow, LivenessRecord, Revocation, State
from consent.store.records import (
    GrantRecord,
    RevocationInfo,
    grant_from_row,
    new_id,
    revocation_info,
    utcnow,
)


class GrantsMixin:
    """:class:`consent.store.ConsentStore`'s grant, revoke and purge methods."""

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
            id=new_id(),
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
            return GrantRecord(grant_from_row(row), rev and revocation_info(rev))

    def _records(self, s: Session, where) -> list[GrantRecord]:
        rows = s.execute(
            select(GrantRow, Revocation)
            .outerjoin(Revocation, Revocation.grant_id == GrantRow.id)
            .where(where)
            .order_by(GrantRow.issued_at.desc(), GrantRow.id)
        ).all()
        return [GrantRecord(grant_from_row(g), r and revocation_info(r)) for g, r in rows]

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
            self._next_epoch(s, state)
            subject = row.subject_id
            self._add_revocation(s, state, grant_from_row(row), by=by, reason=reason, at=at)
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

    def _add_revocation(
        self, s: Session, state: State, grant: Grant, *, by: str, reason: str, at: datetime
    ) -> None:
        """Inside a write transaction whose epoch was just moved: revoke ``grant``, audited."""
        s.add(
            Revocation(
                grant_id=grant.id,
                subject_id=grant.subject,
                revoked_by=by,
                reason=reason,
                revoked_at=at,
                epoch=state.epoch,
            )
        )
        details = {
            "grant_id": grant.id,
            "avatar_id": grant.avatar_id,
            "reason": reason,
            "epoch": state.epoch,
        }
        self._audit(s, state, by, "revoke", grant.subject, details, at)

    def purge_subject(
        self, subject_id: str, *, by: str, reason: str, now: datetime | None = None
    ) -> tuple[str, ...]:
        """Delete a subject: revoke their live grants, delete their embeddings and files
        and shred their data key, in one transaction (idempotent).

        A deleted subject has given no permission any more: their live grants are revoked
        (``reason``) under one new revocation epoch, so every live session of their faces
        re-asks its admission and ends. With no live grant left the epoch stays.

        Returns the ids of the subject's avatars. Grants, revocations and audit entries
        stay (they hold no biometric data); the encrypted data that may remain in backups
        cannot be read once the key is gone.
        """
        at = utc(now) if now else utcnow()
        with self._write("purge subject") as (s, state):
            live = [
                r.grant
                for r in self._records(s, GrantRow.subject_id == subject_id)
                if not r.revoked and r.grant.expires_at > at
            ]
            if live:
                self._next_epoch(s, state)
            for grant in live:
                self._add_revocation(s, state, grant, by=by, reason=reason, at=at)
            avatars = self._purge_rows(s, state, subject_id, by=by, reason=reason, at=at)
        self._after_purge(subject_id, avatars)
        return avatars

    def _purge_rows(
        self, s: Session, state: State, subject_id: str, *, by: str, reason: str, at: datetime
    ) -> tuple[str, ...]:
        """Inside a write transaction: delete the embeddings, shred the key, audit."""
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
        return avatars

    def _after_purge(self, subject_id: str, avatars: tuple[str, ...]) -> None:
        """After the purge committed: delete the subject's files, run the purgers."""
        if self.files_dir is not None:
            shutil.rmtree(
                self.files_dir / hashlib.sha256(subject_id.encode()).hexdigest()[:32],
                ignore_errors=True,
            )
        for purger in self._purgers:
            purger(subject_id, avatars)


__all__ = ["GrantsMixin"]
