"""Portal accounts: users, passwords, sessions and guardian links.

Plain functions over the consent store's engine (``store.engine``); the ones that
change consent-relevant state also append an audit entry through
``store.append_audit``. Every function here blocks (database, argon2): call them from
a worker thread in async code.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, delete, exists, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consent.errors import NotFoundError
from consent.grants import format_time
from consent.models import Subject
from consent.portal.auth import (
    PortalError,
    Principal,
    check_password,
    hash_password,
    new_token,
    password_needs_rehash,
    token_hash,
)
from consent.portal.models import ROLES, GuardianLink, Password, PortalSession, User
from consent.store import utcnow

if TYPE_CHECKING:
    from consent.store import ConsentStore

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.][^@\s]{0,252}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
MAX_NAME = 200
MAX_BASIS = 2000


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A portal account as stored (no password hash)."""

    id: str
    email: str
    display_name: str
    role: str
    subject_id: str | None
    handle: bytes
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The fields the account's owner may see."""
        return {
            "id": self.id,
            "email": self.email,
            "display_name": self.display_name,
            "role": self.role,
            "subject_id": self.subject_id,
            "created_at": format_time(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A guardian link with the names of both sides."""

    id: str
    guardian_id: str
    guardian_email: str
    guardian_name: str
    subject_id: str
    subject_name: str
    basis: str
    linked_by: str
    created_at: datetime
    ended_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """As JSON values (times in the grants' fixed UTC format)."""
        return {
            "id": self.id,
            "guardian_id": self.guardian_id,
            "guardian_email": self.guardian_email,
            "guardian_name": self.guardian_name,
            "subject_id": self.subject_id,
            "subject_name": self.subject_name,
            "basis": self.basis,
            "linked_by": self.linked_by,
            "created_at": format_time(self.created_at),
            "ended_at": format_time(self.ended_at) if self.ended_at else None,
            "active": self.ended_at is None,
        }


def _user(row: User) -> UserInfo:
    return UserInfo(
        row.id,
        row.email,
        row.display_name,
        row.role,
        row.subject_id,
        bytes(row.handle),
        row.created_at,
    )


# ---- validation --------------------------------------------------------------------------


def normalise_email(value: Any) -> str:
    """``value`` as a lower-case email address.

    Raises:
        PortalError: 422 when it is not text shaped like ``name@example.org``.
    """
    if not isinstance(value, str):
        raise PortalError(422, "email must be text, like name@example.org")
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise PortalError(422, "that does not look like an email address (name@example.org)")
    return email


def check_text(value: Any, what: str, *, limit: int, required: bool = True) -> str:
    """``value`` as stored text: kept exactly as given (no escaping, no trimming).

    Raises:
        PortalError: 422 when it is not text, is empty (when required), is longer than
            ``limit`` characters, or holds control characters.
    """
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PortalError(422, f"{what} must be text")
    if required and not value.strip():
        raise PortalError(422, f"{what} must not be empty")
    if len(value) > limit:
        raise PortalError(422, f"{what} is too long (at most {limit} characters)")
    if _CONTROL.search(value):
        raise PortalError(422, f"{what} must not contain control characters")
    return value


def check_password_rules(value: Any) -> str:
    """``value`` when it is an acceptable password.

    Raises:
        PortalError: 422 when it is not text or not 10 to 1024 characters long.
    """
    if not isinstance(value, str):
        raise PortalError(422, "password must be text")
    if len(value) < MIN_PASSWORD:
        raise PortalError(422, f"password must be at least {MIN_PASSWORD} characters long")
    if len(value) > MAX_PASSWORD:
        raise PortalError(422, f"password must be at most {MAX_PASSWORD} characters long")
    return value


# ---- users -------------------------------------------------------------------------------


def create_user(
    store: ConsentStore,
    *,
    email: str,
    display_name: str,
    role: str,
    password: str | None = None,
    subject_id: str | None = None,
    actor: str = "portal",
) -> UserInfo:
    """Create an account; a ``subject`` account also gets a consent subject.

    Args:
        store: the consent store.
        email: the sign-in email (normalised to lower case).
        display_name: the name shown to the person (stored as given).
        role: ``subject``, ``operator`` or ``auditor``.
        password: the password, or None for a passkey-only account.
        subject_id: an existing subject this account is (``subject`` role only);
            None creates a new subject named ``display_name``.
        actor: who creates it, for the audit log.

    Raises:
        PortalError: 422 for a bad field, 409 when the email is taken, 404 when
            ``subject_id`` names no subject.
    """
    email = normalise_email(email)
    display_name = check_text(display_name, "display name", limit=MAX_NAME)
    if role not in ROLES:
        raise PortalError(422, f"role must be one of {', '.join(ROLES)}")
    if role != "subject" and subject_id is not None:
        raise PortalError(422, f"an {role} account is not a consent subject")
    hashed = hash_password(check_password_rules(password)) if password is not None else None
    if user_by_email(store.engine, email) is not None:
        raise PortalError(409, "an account with this email already exists")
    if role == "subject":
        if subject_id is None:
            subject_id = store.add_subject(display_name).id
        else:
            try:
                store.subject(subject_id)
            except NotFoundError:
                raise PortalError(404, f"no subject {subject_id!r}") from None
    now = utcnow()
    row = User(
        id=uuid.uuid4().hex,
        email=email,
        display_name=display_name,
        role=role,
        subject_id=subject_id,
        handle=secrets.token_bytes(32),
        created_at=now,
    )
    info = _user(row)
    try:
        with Session(store.engine) as s, s.begin():
            s.add(row)
            s.flush()
            if hashed is not None:
                s.add(Password(user_id=info.id, hash=hashed, updated_at=now))
    except IntegrityError:
        raise PortalError(409, "an account with this email already exists") from None
    store.append_audit(
        actor,
        "account",
        subject_id,
        {"action": "created", "user_id": info.id, "role": role, "password": hashed is not None},
    )
    return info


def user_by_email(engine: Engine, email: str) -> UserInfo | None:
    """The account with that (normalised) email, or None."""
    with Session(engine) as s:
        row = s.execute(select(User).where(User.email == email)).scalar()
        return None if row is None else _user(row)


def user_by_id(engine: Engine, user_id: str) -> UserInfo | None:
    """The account with that id, or None."""
    with Session(engine) as s:
        row = s.get(User, user_id)
        return None if row is None else _user(row)


def list_users(engine: Engine) -> list[UserInfo]:
    """Every account, oldest first."""
    with Session(engine) as s:
        rows = s.execute(select(User).order_by(User.created_at, User.id)).scalars()
        return [_user(r) for r in rows]


def set_password(engine: Engine, user_id: str, password: str) -> None:
    """Set or replace a user's password (argon2id)."""
    hashed = hash_password(check_password_rules(password))
    with Session(engine) as s, s.begin():
        row = s.get(Password, user_id)
        if row is None:
            s.add(Password(user_id=user_id, hash=hashed, updated_at=utcnow()))
        else:
            row.hash, row.updated_at = hashed, utcnow()


def password_signin(engine: Engine, email: Any, password: Any) -> UserInfo | None:
    """The account when ``email`` and ``password`` match, else None (same time either way)."""
    if not isinstance(email, str) or not isinstance(password, str):
        return None
    if len(password) > MAX_PASSWORD:
        return None
    with Session(engine) as s:
        row = s.execute(select(User).where(User.email == email.strip().lower())).scalar()
        stored = s.get(Password, row.id) if row is not None else None
        user = None if row is None else _user(row)
        hashed = None if stored is None else stored.hash
    if not check_password(hashed, password) or user is None or hashed is None:
        return None
    if password_needs_rehash(hashed):
        set_password(engine, user.id, password)
    return user


# ---- sessions ----------------------------------------------------------------------------


def start_session(
    engine: Engine, user_id: str, method: str, hours: float, *, now: datetime | None = None
) -> str:
    """Open a session for ``user_id`` and return its cookie token (shown once, never stored).

    Expired sessions of every user are deleted on the way.
    """
    at = now or utcnow()
    token = new_token()
    with Session(engine) as s, s.begin():
        s.execute(delete(PortalSession).where(PortalSession.expires_at <= at))
        s.add(
            PortalSession(
                token_hash=token_hash(token),
                user_id=user_id,
                csrf_token=new_token(),
                method=method,
                created_at=at,
                expires_at=at + timedelta(hours=hours),
            )
        )
    return token


def session_principal(
    engine: Engine, hashed_token: str, *, now: datetime | None = None
) -> tuple[Principal, str] | None:
    """(the signed-in user, the session's CSRF token) for a session, or None if none."""
    at = now or utcnow()
    with Session(engine) as s:
        found = s.execute(
            select(PortalSession, User)
            .join(User, User.id == PortalSession.user_id)
            .where(PortalSession.token_hash == hashed_token, PortalSession.expires_at > at)
        ).first()
        if found is None:
            return None
        session, user = found
        roles = {user.role}
        if s.execute(
            select(
                exists().where(GuardianLink.guardian_id == user.id, GuardianLink.ended_at.is_(None))
            )
        ).scalar():
            roles.add("guardian")
        principal = Principal(user.id, user.email, frozenset(roles), user.subject_id)
        return principal, session.csrf_token


def end_session(engine: Engine, hashed_token: str) -> None:
    """Delete a session (sign out); nothing happens when it is already gone."""
    with Session(engine) as s, s.begin():
        s.execute(delete(PortalSession).where(PortalSession.token_hash == hashed_token))


def end_user_sessions(engine: Engine, user_id: str) -> int:
    """Delete every session of a user; returns how many there were."""
    with Session(engine) as s, s.begin():
        return s.execute(delete(PortalSession).where(PortalSession.user_id == user_id)).rowcount


# ---- guardian links ----------------------------------------------------------------------


def guardian_subjects(engine: Engine, user_id: str) -> set[str]:
    """The subjects a user is an active guardian of."""
    with Session(engine) as s:
        rows = s.execute(
            select(GuardianLink.subject_id).where(
                GuardianLink.guardian_id == user_id, GuardianLink.ended_at.is_(None)
            )
        ).scalars()
        return set(rows)


def _links(s: Session, where: Any) -> list[LinkInfo]:
    rows = s.execute(
        select(GuardianLink, User, Subject)
        .join(User, User.id == GuardianLink.guardian_id)
        .join(Subject, Subject.id == GuardianLink.subject_id)
        .where(where)
        .order_by(GuardianLink.created_at.desc(), GuardianLink.id)
    ).all()
    return [
        LinkInfo(
            link.id,
            user.id,
            user.email,
            user.display_name,
            subject.id,
            subject.display_name,
            link.basis,
            link.linked_by,
            link.created_at,
            link.ended_at,
        )
        for link, user, subject in rows
    ]


def links_of(
    engine: Engine,
    *,
    subject_ids: set[str] | None = None,
    guardian_id: str | None = None,
    include_ended: bool = False,
) -> list[LinkInfo]:
    """Guardian links of some subjects or of one guardian (either side; both None: all)."""
    parties = []
    if subject_ids is not None:
        parties.append(GuardianLink.subject_id.in_(sorted(subject_ids)))
    if guardian_id is not None:
        parties.append(GuardianLink.guardian_id == guardian_id)
    where = or_(*parties) if parties else true()
    if not include_ended:
        where = and_(where, GuardianLink.ended_at.is_(None))
    with Session(engine) as s:
        return _links(s, where)


def link(engine: Engine, link_id: str) -> LinkInfo | None:
    """One guardian link (active or ended), or None."""
    with Session(engine) as s:
        found = _links(s, GuardianLink.id == link_id)
        return found[0] if found else None


def link_guardian(
    store: ConsentStore, *, guardian_email: str, subject_id: str, basis: str, by: str
) -> LinkInfo:
    """Let the account with ``guardian_email`` act for ``subject_id``.

    The caller has checked that ``by`` may do this (the subject themself, or an
    operator with a recorded basis).

    Raises:
        PortalError: 404 no such account or subject, 422 the account is not a person's
            (operators and auditors cannot be guardians) or is the subject themself,
            409 already linked.
    """
    email = normalise_email(guardian_email)
    basis = check_text(basis, "basis", limit=MAX_BASIS)
    guardian = user_by_email(store.engine, email)
    if guardian is None:
        raise PortalError(404, "no account with that email; ask them to sign up first")
    if guardian.role != "subject":
        raise PortalError(422, "only a person's own account can be a guardian")
    if guardian.subject_id == subject_id:
        raise PortalError(422, "a person cannot be their own guardian")
    at = utcnow()
    with Session(store.engine) as s, s.begin():
        if s.get(Subject, subject_id) is None:
            raise PortalError(404, "no subject with that id")
        if s.execute(
            select(GuardianLink.id).where(
                GuardianLink.guardian_id == guardian.id,
                GuardianLink.subject_id == subject_id,
                GuardianLink.ended_at.is_(None),
            )
        ).first():
            raise PortalError(409, "that guardian is already linked")
        link_id = uuid.uuid4().hex
        row = GuardianLink(
            id=link_id,
            guardian_id=guardian.id,
            subject_id=subject_id,
            basis=basis,
            linked_by=by,
            created_at=at,
        )
        s.add(row)
    store.append_audit(
        by,
        "guardian_link",
        subject_id,
        {"link_id": link_id, "guardian_id": guardian.id, "basis": basis},
        now=at,
    )
    found = link(store.engine, link_id)
    assert found is not None
    return found


def unlink_guardian(store: ConsentStore, link_id: str, *, by: str) -> LinkInfo:
    """End an active guardian link (kept for the record, with who ended it and when).

    Raises:
        PortalError: 404 when there is no active link with that id.
    """
    at = utcnow()
    with Session(store.engine) as s, s.begin():
        ended = s.execute(
            update(GuardianLink)
            .where(GuardianLink.id == link_id, GuardianLink.ended_at.is_(None))
            .values(ended_at=at, ended_by=by)
        ).rowcount
    if ended != 1:
        raise PortalError(404, "no active guardian link with that id")
    info = link(store.engine, link_id)
    assert info is not None
    details = {"link_id": link_id, "guardian_id": info.guardian_id}
    store.append_audit(by, "guardian_unlink", info.subject_id, details)
    return info


__all__ = [
    "LinkInfo",
    "UserInfo",
    "check_password_rules",
    "check_text",
    "create_user",
    "end_session",
    "end_user_sessions",
    "guardian_subjects",
    "link",
    "link_guardian",
    "links_of",
    "list_users",
    "normalise_email",
    "password_signin",
    "session_principal",
    "set_password",
    "start_session",
    "unlink_guardian",
    "user_by_email",
    "user_by_id",
]
