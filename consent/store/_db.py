"""The store's database plumbing: engine, URL, SQLite pragmas, transactions, audit append.

:class:`StoreBase` is the base of :class:`consent.store.ConsentStore`; the mixins in
this package use its ``_write`` / ``_read`` transactions and ``_audit``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consent import ConsentError
from consent.audit import ACTIONS, AuditEntry, canonical_details, entry_hash
from consent.errors import StoreError
from consent.keys import SubjectKeys
from consent.models import AuditRow, State
from consent.store.records import Purger, utcnow

_WRITE = "consent_write"

EPOCH_CHANNEL = "likeness_consent_epoch"
"""The PostgreSQL NOTIFY channel of revocation epoch moves; the payload is the new epoch
(``consent.epoch_feed`` listens on it)."""


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


# libpq's guards against a link that died without a word (a partition, a dropped NAT
# entry): without them a read sent into it waits for the kernel's TCP retransmissions,
# about 15 minutes, holding a worker thread (asyncio's pool has 6 on 2 cores) and the
# offer that asked. With them a connect gives up after 5 s, unacknowledged data after
# 10 s, and an idle pooled connection is found dead by keepalives within ~11 s; the
# StoreError that follows is retryable (offers answer 503). The epoch feed has its own
# bound (consent.blind_after_s) and does not wait for these.
_PG_LINK = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,  # ms
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class StoreBase:
    """Connection, transactions and the audit chain (see :class:`consent.store.ConsentStore`)."""

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
            self._engine = create_engine(self.url, pool_pre_ping=True, connect_args=_PG_LINK)
        self._writer = self._engine.execution_options(**{_WRITE: True})

    @classmethod
    def open(cls, data_dir: str | Path, *, url: str | None = None, **kwargs: Any) -> Self:
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

    def move_epoch(self, what: str) -> int:
        """Move the revocation epoch without a change of its own, so every live session
        asks its admission again; returns the new epoch. A change that withdraws
        permission moves it in its own transaction instead (:meth:`withdrawing`)."""
        with self._write(what) as (s, state):
            return self._next_epoch(s, state)

    @contextmanager
    def withdrawing(self, what: str) -> Iterator[Session]:
        """A write transaction whose changes may withdraw permission (a deployment's list
        of faces edited): the epoch moves inside it, so live sessions re-ask exactly when
        the change commits, and a crash between the change and the move cannot happen."""
        with self._write(what) as (s, state):
            yield s
            self._next_epoch(s, state)

    def _next_epoch(self, s: Session, state: State) -> int:
        """Move the revocation epoch by one inside write transaction ``s``; returns it.

        Every epoch move goes through here. On PostgreSQL it also sends
        ``NOTIFY likeness_consent_epoch, '<new epoch>'`` in the same transaction, so the
        other nodes hear of it when it commits (never when it rolls back).
        """
        state.epoch += 1
        if not self._sqlite:
            s.execute(select(func.pg_notify(EPOCH_CHANNEL, str(state.epoch))))
        return int(state.epoch)

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


__all__ = ["EPOCH_CHANNEL", "StoreBase"]
