"""The consent store: subjects, avatars, liveness records, grants, revocations, audit.

``ConsentStore(url, subject_keys)`` works on a SQLite file (the default under the data
dir, see :meth:`ConsentStore.open`) or a PostgreSQL URL. Call :meth:`ConsentStore.migrate`
once before use: it runs the Alembic migrations in ``consent/migrations`` to head.

Every change and its audit entry are written in one transaction that first locks the
``consent_state`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), so the audit chain and the revocation epoch never fork. Database failures are
raised as ``StoreError`` with ``retryable`` set; retry in the caller, not here.

The package is split by topic; :class:`ConsentStore` is one class made of them:

    _db.py        StoreBase: engine, URL, SQLite pragmas, transactions, audit append, epoch
    records.py    the frozen records callers get (SubjectInfo, GrantRecord, ...) + converters
    subjects.py   subjects and avatars (embeddings encrypted per subject)
    liveness.py   liveness records (single-use nonces)
    grants.py     issue, read, revoke, purge_subject
    sweep.py      the retention sweep (expired grants → data deleted after a grace period)
"""

from __future__ import annotations

from consent.store._db import StoreBase
from consent.store.grants import GrantsMixin
from consent.store.liveness import LivenessMixin
from consent.store.records import (
    GrantRecord,
    LivenessInfo,
    Purger,
    RevocationInfo,
    SubjectInfo,
    photo_hash,
    utcnow,
)
from consent.store.subjects import SubjectsMixin
from consent.store.sweep import SweepMixin


class ConsentStore(SubjectsMixin, LivenessMixin, GrantsMixin, SweepMixin, StoreBase):
    """Grants and everything they rest on, in SQLite or PostgreSQL.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/consent.db`` or ``postgresql://...``
            (run with psycopg 3).
        subject_keys: the per-subject data keys (embeddings are encrypted with them;
            a revoke that leaves no live grant shreds the subject's key).
        files_dir: where per-subject files live (:meth:`subject_dir`); deleted on purge.
        purgers: callables run with (subject id, avatar ids) after a purge, and after
            avatars lose their embedding (revoke, retention sweep).
        liveness_max_age: how old a liveness record may be when a grant is issued on it.

    Creating it opens no connection; call :meth:`migrate` before first use and
    :meth:`close` at the end.
    """


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
