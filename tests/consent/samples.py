"""A sample grant for the consent tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consent.grants import Grant

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def make_grant(**changes) -> Grant:
    """An unsigned grant valid for a day from NOW; ``changes`` override fields."""
    fields = dict(
        id="g1",
        subject="s1",
        avatar_id="a" * 64,
        allow_face=True,
        allow_voice=False,
        deployments=("kiosk",),
        purposes=("eldercare",),
        expires_at=NOW + timedelta(days=1),
        issued_at=NOW,
        conditions={"ai_label": True},
        liveness_id="l1",
    )
    fields.update(changes)
    return Grant(**fields)
