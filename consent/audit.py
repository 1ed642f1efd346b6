"""The append-only, hash-chained audit log.

Each entry has ``seq`` (1, 2, 3, ...), ``at``, ``actor``, ``action``, ``subject``,
``details`` (canonical JSON text), ``prev_hash`` (the previous entry's hash, or 64
zeros for the first) and ``hash = sha256(prev_hash + canonical entry)``. The store
also keeps the head (last seq and hash) in ``consent_state``, so deleting the newest
entries is detected too. :func:`verify_chain` reports every break it finds.

Entries are appended only by ``ConsentStore`` inside the transaction that made the
change they record; nothing in the package updates or deletes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from consent.errors import ConsentError
from consent.grants import format_time

if TYPE_CHECKING:
    from consent.store import ConsentStore

ACTIONS = frozenset(
    {
        "grant",
        "check",
        "use_start",
        "use_end",
        "revoke",
        "delete",
        "liveness",
        # the consent portal (consent/portal)
        "account",
        "signin",
        "passkey",
        "guardian_link",
        "guardian_unlink",
        "deployment",
        "export",
    }
)
GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry as stored. ``details`` is canonical JSON text; see :meth:`data`."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    details: str
    prev_hash: str
    hash: str

    def data(self) -> dict[str, Any]:
        """``details`` parsed."""
        return json.loads(self.details)


@dataclass(frozen=True, slots=True)
class Problem:
    """A break in the audit chain.

    Attributes:
        seq: the entry where it shows (for a missing head, the expected head seq).
        kind: ``"hash_mismatch"`` (entry edited), ``"gap"`` (entries deleted),
            ``"prev_mismatch"`` (chain re-linked or entry deleted), ``"head_mismatch"``
            (newest entries deleted or head edited).
        message: in plain words.
    """

    seq: int
    kind: str
    message: str


def canonical_details(details: dict[str, Any]) -> str:
    """Details as canonical JSON text (sorted keys, no whitespace)."""
    try:
        return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConsentError(f"audit details must be plain JSON values: {exc}") from exc


def entry_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str | None,
    details: str,
) -> str:
    """sha256 hex of ``prev_hash`` + the canonical JSON of the entry's fields."""
    body = json.dumps(
        {
            "seq": seq,
            "at": format_time(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def recompute(entry: AuditEntry) -> str:
    """The hash ``entry`` should have, from its own fields."""
    return entry_hash(
        entry.prev_hash,
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        subject=entry.subject,
        details=entry.details,
    )


def verify_entries(
    entries: list[AuditEntry], head_seq: int | None = None, head_hash: str | None = None
) -> list[Problem]:
    """Check a chain given in seq order against itself and (optionally) its stored head."""
    problems: list[Problem] = []
    expected_seq, prev = 1, GENESIS
    for e in entries:
        if e.seq != expected_seq:
            problems.append(
                Problem(e.seq, "gap", f"entries {expected_seq}..{e.seq - 1} are missing")
            )
        if e.prev_hash != prev:
            problems.append(
                Problem(e.seq, "prev_mismatch", f"entry {e.seq} does not follow the entry before")
            )
        if recompute(e) != e.hash:
            problems.append(
                Problem(e.seq, "hash_mismatch", f"entry {e.seq} was changed after it was written")
            )
        expected_seq, prev = e.seq + 1, e.hash
    if head_seq is not None:
        last_seq = entries[-1].seq if entries else 0
        if last_seq != head_seq or (head_hash is not None and prev != head_hash):
            problems.append(
                Problem(
                    head_seq,
                    "head_mismatch",
                    f"the log ends at entry {last_seq} but the recorded head is entry {head_seq}",
                )
            )
    return problems


def verify_chain(store: ConsentStore) -> list[Problem]:
    """Every break in ``store``'s audit chain; an empty list means it is intact."""
    entries, head_seq, head_hash = store.audit_log()
    return verify_entries(entries, head_seq, head_hash)


__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditEntry",
    "Problem",
    "canonical_details",
    "entry_hash",
    "recompute",
    "verify_chain",
    "verify_entries",
]
