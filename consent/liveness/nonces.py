"""Issued liveness challenges in the consent database: single use, bound to a person.

Life of a challenge::

    book = DatabaseNonceBook(store.engine, store.keys)
    challenge = issue_challenge(now=time.time())
    book.register(challenge, subject_id, avatar_id)     # then show it to the person
    ...
    found = book.lookup(nonce, subject_id)              # None: unknown, or someone else's
    verdict = book.bound(subject_id).consume(nonce, now=time.time())   # once, ever

What is stored (table ``liveness_challenges``): the sha256 of the nonce (never the
nonce in clear), the subject and photo it was issued for, the code, the turns, when it
was issued, expires and was used, and, after the check, the liveness record it led to
with the plain-words reason of every point. So that a person can resume a challenge
after reloading the page, the nonce is also kept sealed with the subject's data key
(``SubjectKeys``): unreadable from the database alone, and gone when the key is
shredded.

Single use holds across threads, processes and servers: :meth:`DatabaseNonceBook.consume`
is one conditional ``UPDATE ... WHERE used_at IS NULL`` whose row count says who won
(PostgreSQL re-checks the condition after a concurrent writer commits; SQLite runs one
writer at a time). A nonce offered by another subject is answered "unknown" and stays
unused for its owner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Engine,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from consent.errors import ShreddedError, StoreError
from consent.keys import SubjectKeys
from consent.liveness.challenge import Challenge, NonceVerdict
from consent.models import Base, UTCDateTime

UNKNOWN = "This challenge is unknown to the server: start again."
USED = "This challenge was already used once: ask for a new one."


class ChallengeRow(Base):
    """One issued liveness challenge (see the module docstring for what is kept)."""

    __tablename__ = "liveness_challenges"

    nonce_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"))
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id"))
    digits: Mapped[str] = mapped_column(String(16), nullable=False)
    turns: Mapped[str] = mapped_column(String(64), nullable=False)  # "left,right,left"
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    nonce_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    liveness_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reasons: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {point: words}

    __table_args__ = (Index("ix_liveness_challenges_subject_issued", "subject_id", "issued_at"),)


def nonce_hash(nonce: str) -> str:
    """The sha256 hex of a nonce: what the database keeps, and the liveness record's nonce."""
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(at: datetime) -> float:
    return at.timestamp()


@dataclass(frozen=True, slots=True)
class StoredChallenge:
    """An issued challenge as the database holds it.

    Attributes:
        challenge: the challenge itself; its ``nonce`` is "" when the sealed copy could
            not be opened (the subject's key was shredded).
        subject_id: whom it was issued to.
        avatar_id: the photo the clip's face is compared with.
        used_at: seconds since the epoch when it was used, or None.
        liveness_id: the liveness record the check produced, once checked.
        reasons: the plain-words reason of every checked point, once checked.
    """

    challenge: Challenge
    subject_id: str
    avatar_id: str
    used_at: float | None = None
    liveness_id: str | None = None
    reasons: Mapping[str, str] | None = None

    def to_json(self) -> dict:
        """The wire body of ``/api/consent/enrol/challenge`` (times in unix seconds)."""
        c = self.challenge
        return {
            "nonce": c.nonce,
            "digits": c.digits,
            "turns": list(c.turns),
            "issued_at": c.issued_at,
            "expires_at": c.expires_at,
            "instructions": c.instructions(),
            "avatar_id": self.avatar_id,
        }


class DatabaseNonceBook:
    """Issued challenges in the consent database (SQLite or PostgreSQL).

    Args:
        engine: the consent store's engine (``ConsentStore.engine``), migrated.
        keys: the subject keys that seal the nonce for resuming; None keeps no sealed
            copy (then :meth:`pending` returns challenges with an empty nonce).

    Call :meth:`register` when a challenge is issued and hand :meth:`bound` to
    ``verify_clip`` as its ``nonces``. Database failures raise ``StoreError``.
    """

    def __init__(self, engine: Engine, keys: SubjectKeys | None = None) -> None:
        self.engine = engine
        self.keys = keys

    # ---- writing ------------------------------------------------------------------

    def register(self, challenge: Challenge, subject_id: str, avatar_id: str) -> StoredChallenge:
        """Keep ``challenge`` as issued to ``subject_id`` for the photo ``avatar_id``.

        Returns:
            The challenge as stored (times rounded to the database's microseconds):
            show this one to the person.

        Raises:
            ValueError: this nonce was registered before.
            StoreError: the database failed, or the subject or photo does not exist.
        """
        sealed = None
        if self.keys is not None:
            sealed = self.keys.encrypt(subject_id, challenge.nonce.encode("utf-8"))
        row = ChallengeRow(
            nonce_hash=nonce_hash(challenge.nonce),
            subject_id=subject_id,
            avatar_id=avatar_id,
            digits=challenge.digits,
            turns=",".join(challenge.turns),
            issued_at=_at(challenge.issued_at),
            expires_at=_at(challenge.expires_at),
            nonce_sealed=sealed,
        )
        try:
            with Session(self.engine) as s, s.begin():
                if s.get(ChallengeRow, row.nonce_hash) is not None:
                    raise ValueError("this nonce was already registered")
                s.add(row)
        except IntegrityError as exc:
            raise StoreError(f"register challenge: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"register challenge: {exc}", retryable=True) from exc
        stored = replace(
            challenge,
            issued_at=_seconds(_at(challenge.issued_at)),
            expires_at=_seconds(_at(challenge.expires_at)),
        )
        return StoredChallenge(stored, subject_id, avatar_id)

    def consume(
        self, nonce: str, now: float, subject_id: str, avatar_id: str | None = None
    ) -> NonceVerdict:
        """Use ``nonce`` for ``subject_id``: accepted at most once, only before it expires.

        An expired nonce is marked used too (a failed attempt needs a new challenge). A
        nonce of another subject (or, when ``avatar_id`` is given, for another photo) is
        answered as unknown and left untouched.
        """
        digest = nonce_hash(nonce)
        owner = [ChallengeRow.nonce_hash == digest, ChallengeRow.subject_id == subject_id]
        if avatar_id is not None:
            owner.append(ChallengeRow.avatar_id == avatar_id)
        try:
            with Session(self.engine) as s, s.begin():
                won = s.execute(
                    update(ChallengeRow)
                    .where(*owner, ChallengeRow.used_at.is_(None))
                    .values(used_at=_at(now))
                    .execution_options(synchronize_session=False)
                ).rowcount
                row = s.execute(select(ChallengeRow.expires_at).where(*owner)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"consume challenge: {exc}", retryable=True) from exc
        if row is None:
            return NonceVerdict(False, UNKNOWN)
        if won != 1:
            return NonceVerdict(False, USED)
        if now > _seconds(row.expires_at):
            return NonceVerdict(
                False,
                f"This challenge expired {now - _seconds(row.expires_at):.0f} s before the "
                "clip arrived: ask for a new one and record within the time shown.",
            )
        return NonceVerdict(True, "The challenge was fresh and used for the first time.")

    def bound(self, subject_id: str, avatar_id: str | None = None) -> BoundNonceBook:
        """This book seen by one subject (and photo): a ``NonceBook`` for ``verify_clip``."""
        return BoundNonceBook(self, subject_id, avatar_id)

    def record_outcome(self, nonce: str, liveness_id: str, reasons: Mapping[str, str]) -> None:
        """Link a used challenge to the liveness record of its check and keep the reasons."""
        text = json.dumps(dict(reasons), sort_keys=True, ensure_ascii=False)
        try:
            with Session(self.engine) as s, s.begin():
                s.execute(
                    update(ChallengeRow)
                    .where(ChallengeRow.nonce_hash == nonce_hash(nonce))
                    .values(liveness_id=liveness_id, reasons=text)
                    .execution_options(synchronize_session=False)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"record challenge outcome: {exc}", retryable=True) from exc

    # ---- reading ------------------------------------------------------------------

    def lookup(self, nonce: str, subject_id: str) -> StoredChallenge | None:
        """The challenge with this nonce if it was issued to ``subject_id`` (used or not)."""
        with self._read("look up challenge") as s:
            row = s.get(ChallengeRow, nonce_hash(nonce))
            if row is None or row.subject_id != subject_id:
                return None
            return self._stored(row, nonce)

    def by_liveness(self, liveness_id: str) -> StoredChallenge | None:
        """The challenge whose check produced liveness record ``liveness_id`` (nonce "")."""
        with self._read("look up challenge") as s:
            row = s.execute(
                select(ChallengeRow).where(ChallengeRow.liveness_id == liveness_id)
            ).scalar()
            return None if row is None else self._stored(row, "")

    def pending(self, subject_id: str, now: float) -> StoredChallenge | None:
        """The subject's newest challenge that is unused and unexpired at ``now``, or None.

        Its nonce is unsealed with the subject key; without keys (or after a shred) it
        is "" and the person must ask for a new challenge.
        """
        at = _at(now)
        with self._read("pending challenge") as s:
            row = s.execute(
                select(ChallengeRow)
                .where(
                    ChallengeRow.subject_id == subject_id,
                    ChallengeRow.used_at.is_(None),
                    ChallengeRow.expires_at > at,
                    ChallengeRow.issued_at <= at,
                )
                .order_by(ChallengeRow.issued_at.desc())
                .limit(1)
            ).scalar()
            if row is None:
                return None
            return self._stored(row, self._unseal(row))

    def issued_since(self, subject_id: str, since: float) -> int:
        """How many challenges ``subject_id`` was issued at or after ``since`` (rate limits)."""
        with self._read("count challenges") as s:
            return int(
                s.execute(
                    select(func.count())
                    .select_from(ChallengeRow)
                    .where(
                        ChallengeRow.subject_id == subject_id,
                        ChallengeRow.issued_at >= _at(since),
                    )
                ).scalar_one()
            )

    def purge_expired(self, now: float, keep: timedelta = timedelta(days=1)) -> int:
        """Delete unused challenges that expired more than ``keep`` before ``now``.

        Used challenges stay (their row links the liveness record to its reasons); a
        replay of a deleted nonce reads "unknown", still refused. Returns the count.
        """
        cutoff = _at(now) - keep
        try:
            with Session(self.engine) as s, s.begin():
                rows = s.execute(
                    ChallengeRow.__table__.delete().where(
                        ChallengeRow.used_at.is_(None), ChallengeRow.expires_at < cutoff
                    )
                )
                return int(rows.rowcount or 0)
        except SQLAlchemyError as exc:
            raise StoreError(f"purge challenges: {exc}", retryable=True) from exc

    # ---- helpers ------------------------------------------------------------------

    @contextmanager
    def _read(self, what: str) -> Iterator[Session]:
        try:
            with Session(self.engine) as s:
                yield s
        except SQLAlchemyError as exc:
            raise StoreError(f"{what}: {exc}", retryable=True) from exc

    def _unseal(self, row: ChallengeRow) -> str:
        if self.keys is None or row.nonce_sealed is None:
            return ""
        try:
            return self.keys.decrypt(row.subject_id, bytes(row.nonce_sealed)).decode("utf-8")
        except ShreddedError:
            return ""

    @staticmethod
    def _stored(row: ChallengeRow, nonce: str) -> StoredChallenge:
        challenge = Challenge(
            nonce=nonce,
            digits=row.digits,
            turns=tuple(row.turns.split(",")),  # type: ignore[arg-type]
            issued_at=_seconds(row.issued_at),
            expires_at=_seconds(row.expires_at),
        )
        return StoredChallenge(
            challenge=challenge,
            subject_id=row.subject_id,
            avatar_id=row.avatar_id,
            used_at=None if row.used_at is None else _seconds(row.used_at),
            liveness_id=row.liveness_id,
            reasons=None if row.reasons is None else json.loads(row.reasons),
        )


@dataclass(frozen=True, slots=True)
class BoundNonceBook:
    """A :class:`~consent.liveness.challenge.NonceBook` that acts for one subject only."""

    book: DatabaseNonceBook
    subject_id: str
    avatar_id: str | None = None

    def register(self, challenge: Challenge) -> None:
        """Keep ``challenge`` as issued to this subject for this photo.

        Raises:
            ValueError: the book was bound without a photo, or the nonce is not new.
        """
        if self.avatar_id is None:
            raise ValueError("bind the book to a photo (bound(subject, avatar)) to register")
        self.book.register(challenge, self.subject_id, self.avatar_id)

    def consume(self, nonce: str, now: float) -> NonceVerdict:
        """Use ``nonce`` once for this subject (see :meth:`DatabaseNonceBook.consume`)."""
        return self.book.consume(nonce, now, self.subject_id, self.avatar_id)


__all__ = [
    "BoundNonceBook",
    "ChallengeRow",
    "DatabaseNonceBook",
    "StoredChallenge",
    "nonce_hash",
]
