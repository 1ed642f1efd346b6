"""The database nonce book on SQLite and PostgreSQL: single use, expiry, owner, concurrency."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import select

from consent.liveness.challenge import issue_challenge
from consent.liveness.nonces import ChallengeRow, DatabaseNonceBook, nonce_hash
from consent.store import photo_hash

from .conftest import World

NOW = 1_700_000_000.0


@pytest.fixture
def book(store) -> DatabaseNonceBook:
    return DatabaseNonceBook(store.engine, store.keys)


def issued(book: DatabaseNonceBook, world: World, *, now: float = NOW, ttl_s: float = 90):
    challenge = issue_challenge(random.Random(), ttl_s=ttl_s, now=now)
    book.register(challenge, world.subject, world.avatar)
    return challenge


def test_register_then_consume_once(book, world):
    challenge = issued(book, world)
    found = book.lookup(challenge.nonce, world.subject)
    assert found is not None and found.avatar_id == world.avatar
    assert found.challenge == challenge  # times survive the round trip to the microsecond
    first = book.consume(challenge.nonce, NOW + 30, world.subject)
    assert first.ok, first.reason
    replay = book.consume(challenge.nonce, NOW + 31, world.subject)
    assert not replay and "already used" in replay.reason
    assert book.lookup(challenge.nonce, world.subject).used_at == pytest.approx(NOW + 30)
    with pytest.raises(ValueError, match="already registered"):
        book.register(challenge, world.subject, world.avatar)


def test_only_the_hash_is_stored(book, world, store):
    challenge = issued(book, world)
    with store.engine.connect() as conn:
        rows = conn.execute(select(ChallengeRow.__table__)).all()
    assert [r.nonce_hash for r in rows] == [nonce_hash(challenge.nonce)]
    dump = repr([tuple(r) for r in rows]).encode()
    assert challenge.nonce.encode() not in dump
    assert challenge.nonce.encode() not in bytes(rows[0].nonce_sealed)  # sealed, not in clear


def test_expired_is_refused_and_used_up(book, world):
    challenge = issued(book, world, ttl_s=60)
    late = book.consume(challenge.nonce, NOW + 61, world.subject)
    assert not late and "expired 1 s before" in late.reason
    assert "already used" in book.consume(challenge.nonce, NOW + 62, world.subject).reason


def test_unknown_nonce(book, world):
    verdict = book.consume("never-issued", NOW, world.subject)
    assert not verdict and "unknown" in verdict.reason


def test_another_subject_is_refused_and_the_owner_keeps_it(book, world, store, signing_keys):
    challenge = issued(book, world)
    other = World(store, signing_keys, name="Bob Other")
    stolen = book.consume(challenge.nonce, NOW + 1, other.subject)
    assert not stolen and "unknown" in stolen.reason  # says nothing about whose it is
    assert book.lookup(challenge.nonce, other.subject) is None
    assert book.pending(other.subject, NOW + 1) is None
    wrong_photo = book.bound(world.subject, photo_hash(b"another photo")).consume(
        challenge.nonce, NOW + 1
    )
    assert not wrong_photo and "unknown" in wrong_photo.reason
    assert book.bound(world.subject, world.avatar).consume(challenge.nonce, NOW + 2)


def test_pending_is_the_newest_unused_unexpired(book, world):
    assert book.pending(world.subject, NOW) is None
    older = issued(book, world, now=NOW)
    newer = issued(book, world, now=NOW + 5)
    pending = book.pending(world.subject, NOW + 6)
    assert pending is not None and pending.challenge == newer  # the nonce is unsealed
    body = pending.to_json()
    assert body["nonce"] == newer.nonce and body["turns"] == list(newer.turns)
    assert body["avatar_id"] == world.avatar and "Read this code" in body["instructions"]
    assert book.consume(newer.nonce, NOW + 7, world.subject)
    assert book.pending(world.subject, NOW + 8).challenge == older
    assert book.pending(world.subject, older.expires_at + 1) is None
    assert book.issued_since(world.subject, NOW) == 2
    assert book.issued_since(world.subject, NOW + 1) == 1


def test_shredded_key_leaves_no_nonce_to_resume(book, world, store):
    challenge = issued(book, world)
    store.keys.shred(world.subject)
    pending = book.pending(world.subject, NOW + 1)
    assert pending is not None and pending.challenge.nonce == ""
    assert book.consume(challenge.nonce, NOW + 2, world.subject)  # the hash still works


def test_outcome_is_linked(book, world):
    challenge = issued(book, world)
    assert book.consume(challenge.nonce, NOW + 1, world.subject)
    book.record_outcome(challenge.nonce, "liveness-1", {"digits": "We heard the code."})
    found = book.by_liveness("liveness-1")
    assert found is not None and found.reasons == {"digits": "We heard the code."}
    assert found.challenge.digits == challenge.digits and found.challenge.nonce == ""


def test_purge_expired_keeps_used(book, world):
    stale = issued(book, world, now=NOW)
    used = issued(book, world, now=NOW)
    assert book.consume(used.nonce, NOW + 1, world.subject)
    assert book.purge_expired(NOW + 90 + 3 * 86400) == 1
    assert book.lookup(stale.nonce, world.subject) is None
    assert book.lookup(used.nonce, world.subject) is not None


def race(book: DatabaseNonceBook, nonce: str, subject: str, threads: int) -> list:
    """``threads`` threads released together, each trying to use ``nonce`` once."""
    gate = threading.Barrier(threads)
    verdicts: list = []
    errors: list = []

    def use() -> None:
        try:
            gate.wait()
            verdicts.append(book.consume(nonce, NOW + 10, subject))
        except Exception as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=use) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    return verdicts


def test_concurrent_consumers_exactly_one_wins(book, world):
    for _round in range(3):
        challenge = issued(book, world)
        verdicts = race(book, challenge.nonce, world.subject, threads=8)
        assert len(verdicts) == 8
        assert sum(v.ok for v in verdicts) == 1
        assert all("already used" in v.reason for v in verdicts if not v.ok)
