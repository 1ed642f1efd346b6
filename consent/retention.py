"""Retention: what a consent that ran out (rather than was revoked) leaves behind, and when.

A revoke deletes at once (``ConsentStore.revoke``). A grant that simply expires gets a
grace period, ``retention`` (``settings.consent.retention_days``, 30 days by default),
so the person can renew it without enrolling again. After that the same happens as on
a revoke. With ``cutoff = now - retention``:

- A grant is *live* while it is neither revoked nor expired.
- An avatar's *last consent* is the latest of: when it was registered, its liveness
  records, and the expiry of its unrevoked grants.
- An avatar that no live grant covers loses its encrypted embedding (and the runtime's
  prepared copy, through the store's purgers) once its last consent is before the cutoff.
- A subject with no live grant whose last consent (the latest over the subject, its
  avatars and its liveness records) is before the cutoff is purged like on a revoke:
  embeddings deleted, files deleted, data key shredded, purgers run. A subject with
  nothing left to delete is skipped, so sweeps do not repeat themselves in the audit log.
- Liveness records are kept: they hold pass/fail per point, a few scalar scores
  (distances, correlations), a nonce and times, nothing from which a face or voice can
  be rebuilt. The clip itself is never stored in them. Stale ones (before the cutoff,
  never used for a grant) are listed in the report.

Every deletion is audited (``delete`` with ``"reason": "retention"``) and moves the
revocation epoch, so live sessions re-check their grant.

:func:`plan_subject` is the pure rule (no I/O, no clock); ``ConsentStore.sweep`` applies
it and returns a :class:`SweepReport`; :func:`sweep_forever` runs it on a timer (the
server does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from consent import ConsentError
from consent.grants import format_time

if TYPE_CHECKING:
    from consent.store import ConsentStore

DEFAULT_RETENTION = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class AvatarFacts:
    """An avatar as the sweep sees it: id, registration time, embedding still stored."""

    id: str
    created_at: datetime
    has_embedding: bool


@dataclass(frozen=True, slots=True)
class GrantFacts:
    """A grant as the sweep sees it: the avatar it covers, expiry, revoked or not."""

    avatar_id: str
    expires_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class LivenessFacts:
    """A liveness record as the sweep sees it: id, avatar, time, used for a grant or not."""

    id: str
    avatar_id: str
    created_at: datetime
    used: bool


@dataclass(frozen=True, slots=True)
class SubjectFacts:
    """Everything the retention rule needs about one subject.

    Attributes:
        id: the subject.
        created_at: when the subject was recorded.
        avatars, grants, liveness: the subject's rows.
        has_key_or_files: the subject still has a data key or a files folder.
    """

    id: str
    created_at: datetime
    avatars: tuple[AvatarFacts, ...] = ()
    grants: tuple[GrantFacts, ...] = ()
    liveness: tuple[LivenessFacts, ...] = ()
    has_key_or_files: bool = False


@dataclass(frozen=True, slots=True)
class SubjectPlan:
    """What the sweep does to one subject.

    Attributes:
        subject_id: the subject.
        purge: purge the whole subject (embeddings, files, data key).
        drop: avatars that lose their embedding while the subject stays (empty on purge).
        stale_liveness: liveness records before the cutoff that never became a grant.
    """

    subject_id: str
    purge: bool
    drop: tuple[str, ...]
    stale_liveness: tuple[str, ...]


def plan_subject(facts: SubjectFacts, now: datetime, retention: timedelta) -> SubjectPlan:
    """Apply the retention rule (module doc) to one subject. Pure: no I/O, no clock."""
    if retention < timedelta(0):
        raise ConsentError("retention must not be negative")
    cutoff = now - retention
    live = {g.avatar_id for g in facts.grants if not g.revoked and g.expires_at > now}

    def last_consent(avatar: AvatarFacts) -> datetime:
        times = [avatar.created_at]
        times += [r.created_at for r in facts.liveness if r.avatar_id == avatar.id]
        times += [g.expires_at for g in facts.grants if g.avatar_id == avatar.id and not g.revoked]
        return max(times)

    stale = tuple(sorted(r.id for r in facts.liveness if not r.used and r.created_at <= cutoff))
    subject_last = max(
        [facts.created_at]
        + [last_consent(a) for a in facts.avatars]
        + [r.created_at for r in facts.liveness]
    )
    left = facts.has_key_or_files or any(a.has_embedding for a in facts.avatars)
    if not live and subject_last <= cutoff and left:
        return SubjectPlan(facts.id, True, (), stale)
    drop = tuple(
        sorted(
            a.id
            for a in facts.avatars
            if a.has_embedding and a.id not in live and last_consent(a) <= cutoff
        )
    )
    return SubjectPlan(facts.id, False, drop, stale)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one retention sweep deleted (or, on a dry run, would delete).

    Attributes:
        at: the sweep's "now".
        retention: the grace period it applied.
        dry_run: True when nothing was changed.
        purged_subjects: subjects purged (embeddings, files, data key).
        avatars: avatars whose embedding and prepared copy were deleted: those of the
            purged subjects and those no live grant covers any more.
        stale_liveness: liveness records past the grace that never became a grant;
            kept, as they hold only pass/fail and scores.
    """

    at: datetime
    retention: timedelta
    dry_run: bool
    purged_subjects: tuple[str, ...] = ()
    avatars: tuple[str, ...] = ()
    stale_liveness: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True when the sweep deleted (or would delete) anything."""
        return bool(self.purged_subjects or self.avatars)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (the CLI prints this)."""
        return {
            "at": format_time(self.at),
            "retention_days": self.retention / timedelta(days=1),
            "dry_run": self.dry_run,
            "purged_subjects": list(self.purged_subjects),
            "avatars": list(self.avatars),
            "stale_liveness": list(self.stale_liveness),
        }


def sweep_all(store: ConsentStore, retention: timedelta, dry_run: bool = False) -> SweepReport:
    """One whole retention sweep (blocking): the store's grants and subjects
    (:meth:`ConsentStore.sweep`), then the liveness clips whose keeping time ended and
    the challenges that expired unused more than a day ago.
    """
    from consent.enrolment import sweep_clips
    from consent.liveness.nonces import DatabaseNonceBook

    report = store.sweep(retention=retention, dry_run=dry_run)
    if not dry_run:
        now = time.time()
        sweep_clips(store, now)
        DatabaseNonceBook(store.engine).purge_expired(now)
    return report


async def sweep_forever(
    store: ConsentStore,
    *,
    retention: timedelta,
    every_s: float,
    on_report: Callable[[SweepReport], None] | None = None,
    on_error: Callable[[ConsentError], None] | None = None,
) -> None:
    """Sweep now, then every ``every_s`` seconds, until cancelled.

    Each sweep (:func:`sweep_all`) runs in a worker thread. A failed sweep
    (``ConsentError``, e.g. the database is down) is handed to ``on_error`` and tried
    again at the next interval; other exceptions end the task. Cancel the task to stop
    it (the server does so on shutdown).
    """
    while True:
        try:
            report = await asyncio.to_thread(sweep_all, store, retention)
        except ConsentError as err:
            if on_error is not None:
                on_error(err)
        else:
            if on_report is not None:
                on_report(report)
        await asyncio.sleep(every_s)


__all__ = [
    "DEFAULT_RETENTION",
    "AvatarFacts",
    "GrantFacts",
    "LivenessFacts",
    "SubjectFacts",
    "SubjectPlan",
    "SweepReport",
    "plan_subject",
    "sweep_all",
    "sweep_forever",
]
