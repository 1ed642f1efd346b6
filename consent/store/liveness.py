"""Liveness records: one per challenge, its nonce single-use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from consent.audit import canonical_details
from consent.errors import GrantError, NotFoundError, StoreError
from consent.grants import utc
from consent.models import Avatar, LivenessRecord
from consent.store.records import LivenessInfo, new_id, utcnow


class LivenessMixin:
    """:class:`consent.store.ConsentStore`'s liveness methods."""

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
            new_id(),
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


__all__ = ["LivenessMixin"]
