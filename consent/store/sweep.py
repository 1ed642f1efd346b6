"""The retention sweep: data of consents that expired (not revoked) goes after a grace period.

The rule is :func:`consent.retention.plan_subject`; this applies it, one subject per
write transaction, deciding again under the lock so a grant issued meanwhile is seen.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent.grants import utc
from consent.models import Avatar, GrantRow, LivenessRecord, Revocation, State, Subject
from consent.retention import (
    DEFAULT_RETENTION,
    AvatarFacts,
    GrantFacts,
    LivenessFacts,
    SubjectFacts,
    SubjectPlan,
    SweepReport,
    plan_subject,
)
from consent.store.records import utcnow

RETENTION_ACTOR = "retention"


class SweepMixin:
    """:class:`consent.store.ConsentStore`'s retention sweep."""

    def sweep(
        self,
        now: datetime | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        dry_run: bool = False,
    ) -> SweepReport:
        """Delete what expired consents left behind, after the grace period ``retention``.

        Subjects with no live grant and nothing newer than ``now - retention`` are purged
        (embeddings, files, data key; purgers run); avatars no live grant covers lose
        their embedding once their own grace is over. Each change is audited as
        ``delete`` with ``"reason": "retention"`` and moves the revocation epoch, so
        live sessions re-check. The rule is in :mod:`consent.retention`.

        Args:
            now: the time to sweep at (aware; default: the current time).
            retention: the grace period after a grant expires
                (``settings.consent.retention_days``).
            dry_run: only report what would be deleted; change nothing.

        Returns:
            What was deleted (or would be, on a dry run). Run it again later: it is
            idempotent and only acts on what is left.

        Raises:
            StoreError: the database failed (``retryable`` says whether to retry).
        """
        at = utc(now) if now else utcnow()
        with self._read("retention sweep") as s:
            plans = [plan_subject(f, at, retention) for f in self._subject_facts(s)]
        stale = tuple(sorted(r for p in plans for r in p.stale_liveness))
        todo = [p for p in plans if p.purge or p.drop]
        if dry_run:
            return SweepReport(
                at,
                retention,
                True,
                tuple(sorted(p.subject_id for p in todo if p.purge)),
                tuple(sorted(a for p in todo for a in p.drop)),
                stale,
            )
        purged: list[str] = []
        avatars: list[str] = []
        for candidate in todo:
            done, deleted = self._sweep_subject(candidate.subject_id, at, retention)
            if done.purge:
                purged.append(done.subject_id)
            avatars.extend(deleted)
        return SweepReport(
            at, retention, False, tuple(sorted(purged)), tuple(sorted(avatars)), stale
        )

    def _sweep_subject(
        self, subject_id: str, at: datetime, retention: timedelta
    ) -> tuple[SubjectPlan, tuple[str, ...]]:
        """Decide again under the write lock and apply; returns the plan and avatars deleted."""
        with self._write("retention sweep") as (s, state):
            [facts] = self._subject_facts(s, subject_id) or [SubjectFacts(subject_id, at)]
            plan = plan_subject(facts, at, retention)
            if plan.purge:
                self._next_epoch(s, state)
                deleted = self._purge_rows(
                    s, state, subject_id, by=RETENTION_ACTOR, reason="retention", at=at
                )
            elif plan.drop:
                self._next_epoch(s, state)
                deleted = plan.drop
                self._drop_embeddings(s, state, subject_id, deleted, at)
            else:
                deleted = ()
        if plan.purge:
            self._after_purge(subject_id, deleted)
        elif deleted:
            for purger in self._purgers:
                purger(subject_id, deleted)
        return plan, deleted

    def _drop_embeddings(
        self, s: Session, state: State, subject_id: str, avatar_ids: tuple[str, ...], at: datetime
    ) -> None:
        for avatar in s.execute(select(Avatar).where(Avatar.id.in_(avatar_ids))).scalars():
            avatar.embedding, avatar.deleted_at = None, at
        self._audit(
            s,
            state,
            RETENTION_ACTOR,
            "delete",
            subject_id,
            {"avatar_ids": list(avatar_ids), "key_shredded": False, "reason": "retention"},
            at,
        )

    def _subject_facts(self, s: Session, subject_id: str | None = None) -> list[SubjectFacts]:
        """What :func:`plan_subject` needs, for one subject or (None) for every subject."""

        def only(column):
            return column == subject_id if subject_id is not None else column.is_not(None)

        avatars: dict[str, list[AvatarFacts]] = defaultdict(list)
        rows = s.execute(
            select(Avatar.subject_id, Avatar.id, Avatar.created_at, Avatar.embedding.is_not(None))
            .where(only(Avatar.subject_id))
            .order_by(Avatar.id)
        )
        for subject, avatar, created, has_embedding in rows:
            avatars[subject].append(AvatarFacts(avatar, created, bool(has_embedding)))
        grants: dict[str, list[GrantFacts]] = defaultdict(list)
        rows = s.execute(
            select(GrantRow.subject_id, GrantRow.avatar_id, GrantRow.expires_at, Revocation.id)
            .outerjoin(Revocation, Revocation.grant_id == GrantRow.id)
            .where(only(GrantRow.subject_id))
        )
        for subject, avatar, expires, revocation in rows:
            grants[subject].append(GrantFacts(avatar, expires, revocation is not None))
        liveness: dict[str, list[LivenessFacts]] = defaultdict(list)
        rows = s.execute(
            select(
                LivenessRecord.subject_id,
                LivenessRecord.id,
                LivenessRecord.avatar_id,
                LivenessRecord.created_at,
                LivenessRecord.used_at,
            ).where(only(LivenessRecord.subject_id))
        )
        for subject, record, avatar, created, used in rows:
            liveness[subject].append(LivenessFacts(record, avatar, created, used is not None))
        subjects = s.execute(
            select(Subject.id, Subject.created_at).where(only(Subject.id)).order_by(Subject.id)
        )
        return [
            SubjectFacts(
                subject,
                created,
                tuple(avatars[subject]),
                tuple(grants[subject]),
                tuple(liveness[subject]),
                self._has_key_or_files(subject),
            )
            for subject, created in subjects
        ]

    def _has_key_or_files(self, subject_id: str) -> bool:
        if self.keys.has_key(subject_id):
            return True
        if self.files_dir is None:
            return False
        return (self.files_dir / hashlib.sha256(subject_id.encode()).hexdigest()[:32]).exists()


__all__ = ["RETENTION_ACTOR", "SweepMixin"]
