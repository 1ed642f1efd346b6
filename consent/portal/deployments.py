"""Deployments (e.g. one care home's kiosks) and the avatars each may use.

An operator registers a deployment with a description and a list of allowed avatar
ids. This is a second lock next to the grant, not a replacement for it: the gate
still needs a grant that covers the deployment, and :func:`deployment_allows` lets it
also refuse avatars the operator did not put on the deployment's list.

Every function here blocks (database): call them from a worker thread in async code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from consent.grants import format_time
from consent.models import Avatar
from consent.portal.accounts import check_text
from consent.portal.auth import PortalError
from consent.portal.models import Deployment, DeploymentAvatar

if TYPE_CHECKING:
    from consent.store import ConsentStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
MAX_DESCRIPTION = 2000
MAX_AVATARS = 500


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """A registered deployment and its allowed avatars."""

    name: str
    description: str
    avatars: tuple[str, ...]
    created_by: str
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """As JSON values."""
        return {
            "name": self.name,
            "description": self.description,
            "avatars": list(self.avatars),
            "created_by": self.created_by,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }


def _engine(store_or_engine: Any) -> Engine:
    return store_or_engine if isinstance(store_or_engine, Engine) else store_or_engine.engine


def check_name(value: Any) -> str:
    """``value`` when it is a usable deployment name.

    Raises:
        PortalError: 422 unless it is 1 to 80 letters, digits, dots, dashes or
            underscores, starting with a letter or digit.
    """
    if not isinstance(value, str) or not NAME.match(value):
        raise PortalError(
            422,
            "deployment name must be 1 to 80 letters, digits, '.', '-' or '_' "
            "(starting with a letter or digit)",
        )
    return value


def _check_avatars(s: Session, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
        raise PortalError(422, "avatars must be a list of avatar ids")
    if len(value) > MAX_AVATARS:
        raise PortalError(422, f"a deployment may list at most {MAX_AVATARS} avatars")
    ids = tuple(sorted(set(value)))
    if ids:
        known = set(s.execute(select(Avatar.id).where(Avatar.id.in_(ids))).scalars())
        unknown = [a for a in ids if a not in known]
        if unknown:
            raise PortalError(422, f"no avatar with id {unknown[0][:64]!r}")
    return ids


def _info(s: Session, row: Deployment) -> DeploymentInfo:
    avatars = s.execute(
        select(DeploymentAvatar.avatar_id)
        .where(DeploymentAvatar.deployment == row.name)
        .order_by(DeploymentAvatar.avatar_id)
    ).scalars()
    return DeploymentInfo(
        row.name, row.description, tuple(avatars), row.created_by, row.created_at, row.updated_at
    )


def list_deployments(store_or_engine: Any) -> list[DeploymentInfo]:
    """Every registered deployment, by name."""
    with Session(_engine(store_or_engine)) as s:
        rows = s.execute(select(Deployment).order_by(Deployment.name)).scalars().all()
        return [_info(s, r) for r in rows]


def get_deployment(store_or_engine: Any, name: str) -> DeploymentInfo | None:
    """One deployment, or None."""
    with Session(_engine(store_or_engine)) as s:
        row = s.get(Deployment, name)
        return None if row is None else _info(s, row)


def save_deployment(
    store: ConsentStore,
    *,
    name: Any,
    description: Any,
    avatars: Any,
    by: str,
    create: bool,
) -> DeploymentInfo:
    """Register a deployment (``create``) or replace an existing one's description and avatars.

    Raises:
        PortalError: 422 for a bad field or an unknown avatar id, 409 when creating a
            name that exists, 404 when updating one that does not.
    """
    from consent.store import utcnow

    name = check_name(name)
    description = check_text(description, "description", limit=MAX_DESCRIPTION, required=False)
    at = utcnow()
    # The list and the epoch change together: a live session of a face taken off the
    # list re-asks (and ends) when this commits.
    with store.withdrawing("deployment list") as s:
        ids = _check_avatars(s, avatars if avatars is not None else [])
        row = s.get(Deployment, name)
        if create:
            if row is not None:
                raise PortalError(409, f"a deployment called {name!r} already exists")
            row = Deployment(
                name=name, description=description, created_by=by, created_at=at, updated_at=at
            )
            s.add(row)
            s.flush()
        else:
            if row is None:
                raise PortalError(404, f"no deployment called {name!r}")
            row.description, row.updated_at = description, at
            s.execute(delete(DeploymentAvatar).where(DeploymentAvatar.deployment == name))
        s.add_all([DeploymentAvatar(deployment=name, avatar_id=a) for a in ids])
        s.flush()
        info = _info(s, row)
    store.append_audit(
        by,
        "deployment",
        None,
        {"action": "created" if create else "updated", "name": name, "avatars": list(ids)},
        now=at,
    )
    return info


def delete_deployment(store: ConsentStore, name: str, *, by: str) -> None:
    """Remove a deployment and its avatar list.

    Raises:
        PortalError: 404 when there is no deployment with that name.
    """
    with store.withdrawing("deployment list") as s:
        s.execute(delete(DeploymentAvatar).where(DeploymentAvatar.deployment == name))
        if s.execute(delete(Deployment).where(Deployment.name == name)).rowcount != 1:
            raise PortalError(404, f"no deployment called {name[:80]!r}")
    store.append_audit(by, "deployment", None, {"action": "deleted", "name": name})


def forget_avatars(store_or_engine: Any, avatar_ids: tuple[str, ...] | list[str]) -> int:
    """Take avatars off every deployment's list (after their data was deleted)."""
    if not avatar_ids:
        return 0
    with Session(_engine(store_or_engine)) as s, s.begin():
        return s.execute(
            delete(DeploymentAvatar).where(DeploymentAvatar.avatar_id.in_(list(avatar_ids)))
        ).rowcount


def deployment_allows(store_or_engine: Any, deployment: str, avatar_id: str) -> bool | None:
    """Whether a registered deployment may use an avatar.

    Args:
        store_or_engine: a ``ConsentStore`` or its SQLAlchemy engine.
        deployment: the deployment name the session asks for.
        avatar_id: the avatar (photo sha256).

    Returns:
        True when the avatar is on the deployment's list, False when it is not, None
        when no deployment by that name is registered (the caller decides whether
        unregistered deployments are refused). A grant is needed in every case.
    """
    with Session(_engine(store_or_engine)) as s:
        if s.get(Deployment, deployment) is None:
            return None
        return s.get(DeploymentAvatar, (deployment, avatar_id)) is not None


__all__ = [
    "DeploymentInfo",
    "check_name",
    "delete_deployment",
    "deployment_allows",
    "forget_avatars",
    "get_deployment",
    "list_deployments",
    "save_deployment",
]
