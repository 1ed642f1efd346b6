"""Retention sweeps on SQLite and PostgreSQL: expired consents lose their data after the grace.

Time travels through the ``now=`` parameters: the records are made at the real time,
the sweep runs days or weeks later.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest

from consent import ConsentError
from consent.audit import verify_chain
from consent.errors import ShreddedError
from consent.retention import (
    AvatarFacts,
    GrantFacts,
    LivenessFacts,
    SubjectFacts,
    plan_subject,
)
from consent.store import ConsentStore, photo_hash, utcnow

from .conftest import World

GRACE = timedelta(days=30)


@pytest.fixture
def purged() -> list[tuple[str, tuple[str, ...]]]:
    return []


@pytest.fixture
def world(store: ConsentStore, signing_keys, purged) -> Iterator[World]:
    """The conftest world, on a store over the same database that records its purges."""
    recording = ConsentStore(
        store.url,
        store.keys,
        files_dir=store.files_dir,
        purgers=[lambda subject, avatars: purged.append((subject, avatars))],
    )
    yield World(recording, signing_keys)
    recording.close()


def deletes(store: ConsentStore) -> list[dict]:
    entries, _seq, _head = store.audit_log()
    return [e.data() for e in entries if e.action == "delete"]


def test_expired_past_the_grace_is_purged_and_the_key_shredded(world: World, purged):
    store = world.store
    grant = world.grant(expires_at=utcnow() + timedelta(days=1))
    blob = store.encrypted_embedding(world.avatar)
    (store.subject_dir(world.subject) / "voice.wav").write_bytes(b"RIFF")
    epoch = store.epoch()

    report = store.sweep(now=grant.expires_at + GRACE + timedelta(hours=1), retention=GRACE)

    assert report.purged_subjects == (world.subject,) and report.avatars == (world.avatar,)
    assert not report.dry_run and report.changed
    with pytest.raises(ShreddedError):
        store.keys.decrypt(world.subject, blob)  # the old ciphertext is unreadable for good
    with pytest.raises(ShreddedError):
        store.avatar_embedding(world.avatar)
    assert not store.keys.has_key(world.subject)
    assert not any(store.files_dir.iterdir()), "the subject's files are deleted"
    assert purged == [(world.subject, (world.avatar,))]
    [entry] = deletes(store)
    assert entry["reason"] == "retention" and entry["key_shredded"] is True
    assert store.epoch() == epoch + 1, "live sessions are told to re-check"
    assert verify_chain(store) == []
    # The grant itself stays (no biometric data), marked neither revoked nor live.
    assert store.grant(grant.id).grant == grant
    # Idempotent: a second sweep finds nothing and writes nothing.
    again = store.sweep(now=grant.expires_at + GRACE * 2, retention=GRACE)
    assert not again.changed and len(deletes(store)) == 1 and purged == purged[:1]


def test_still_in_grace_is_kept_and_dry_run_changes_nothing(world: World, purged):
    store = world.store
    grant = world.grant(expires_at=utcnow() + timedelta(days=1))
    entries_before, _seq, head_before = store.audit_log()
    epoch = store.epoch()

    kept = store.sweep(now=grant.expires_at + GRACE - timedelta(days=1), retention=GRACE)
    assert not kept.changed and kept.purged_subjects == () and kept.avatars == ()

    later = grant.expires_at + GRACE + timedelta(days=1)
    dry = store.sweep(now=later, retention=GRACE, dry_run=True)
    assert dry.dry_run and dry.purged_subjects == (world.subject,)
    assert dry.avatars == ()  # a purge covers every avatar of the subject

    assert np.allclose(store.avatar_embedding(world.avatar), [0.25, -1.5, 3.0])
    assert store.keys.has_key(world.subject) and purged == []
    entries, _seq, head = store.audit_log()
    assert len(entries) == len(entries_before) and head == head_before
    assert store.epoch() == epoch
    # A shorter grace (the operator's setting) purges the same data earlier.
    assert store.sweep(now=later - GRACE, retention=timedelta(days=1)).purged_subjects == (
        world.subject,
    )


def test_a_live_grant_keeps_the_subject_only_the_uncovered_avatar_goes(world: World, purged):
    store = world.store
    second = store.add_avatar(world.subject, photo_hash(b"second photo"), [1.0, 2.0])
    old = world.grant(expires_at=utcnow() + timedelta(days=1))
    world.grant(avatar_id=second, expires_at=utcnow() + timedelta(days=365))

    report = store.sweep(now=old.expires_at + GRACE + timedelta(days=1), retention=GRACE)

    assert report.purged_subjects == () and report.avatars == (world.avatar,)
    with pytest.raises(ShreddedError, match="deleted"):
        store.avatar_embedding(world.avatar)
    assert np.allclose(store.avatar_embedding(second), [1.0, 2.0])  # key not shredded
    assert purged == [(world.subject, (world.avatar,))]
    [entry] = deletes(store)
    assert entry == {"avatar_ids": [world.avatar], "key_shredded": False, "reason": "retention"}
    assert verify_chain(store) == []


def test_a_new_enrolment_is_kept_a_stale_one_keeps_only_its_scores(world: World):
    store = world.store
    record = store.liveness(world.liveness())  # passed, never used for a grant

    assert not store.sweep(retention=GRACE).changed  # enrolling now: in its grace

    report = store.sweep(now=record.created_at + GRACE + timedelta(minutes=1), retention=GRACE)
    assert report.stale_liveness == (record.id,)
    assert report.purged_subjects == (world.subject,)
    with pytest.raises(ShreddedError):
        store.avatar_embedding(world.avatar)
    # What a liveness record holds: pass/fail per point and scalar scores, nothing from
    # which a face could be rebuilt. It stays as the evidence of what was checked.
    kept = store.liveness(record.id)
    assert kept == record
    assert all(isinstance(v, bool) for v in kept.points.values())
    assert all(isinstance(v, float) for v in kept.scores.values())


def test_revoked_then_swept_does_not_repeat_the_purge(world: World, purged):
    store = world.store
    grant = world.grant()
    store.revoke(grant.id, by="subject", reason="no longer")
    assert len(purged) == 1
    report = store.sweep(now=grant.expires_at + GRACE * 2, retention=GRACE)
    assert not report.changed and len(purged) == 1 and len(deletes(store)) == 1


def test_the_rule_decides_on_the_latest_consent():
    t0 = utcnow()
    avatar = AvatarFacts("a" * 64, t0, True)
    facts = SubjectFacts(
        "s",
        t0,
        (avatar,),
        (GrantFacts(avatar.id, t0 + timedelta(days=5), revoked=False),),
        (LivenessFacts("l", avatar.id, t0, used=True),),
    )
    assert not plan_subject(facts, t0 + timedelta(days=34), GRACE).purge
    assert plan_subject(facts, t0 + timedelta(days=36), GRACE).purge
    # A revoked grant gives no grace (the revoke itself deleted the data).
    revoked = SubjectFacts(
        "s", t0, (avatar,), (GrantFacts(avatar.id, t0 + timedelta(days=90), revoked=True),)
    )
    assert plan_subject(revoked, t0 + timedelta(days=31), GRACE).purge
    # Nothing left to delete: nothing to do (no audit noise from repeated sweeps).
    gone = SubjectFacts("s", t0, (AvatarFacts(avatar.id, t0, False),))
    assert not plan_subject(gone, t0 + timedelta(days=99), GRACE).purge
    with pytest.raises(ConsentError, match="negative"):
        plan_subject(facts, t0, -GRACE)


def test_the_whole_sweep_also_drops_stale_challenges_and_ended_clips(world: World):
    """``sweep_all`` (what the server and ``likeness consent sweep`` run) goes beyond grants."""
    import random
    import time

    from consent.liveness.challenge import issue_challenge
    from consent.liveness.nonces import DatabaseNonceBook
    from consent.retention import sweep_all

    book = DatabaseNonceBook(world.store.engine, world.store.keys)
    long_ago = time.time() - 3 * 86400
    stale = issue_challenge(random.Random(1), now=long_ago)
    fresh = issue_challenge(random.Random(2))
    for challenge in (stale, fresh):
        book.register(challenge, world.subject, world.avatar)
    clips = world.store.subject_dir(world.subject) / "clips"
    clips.mkdir()
    ended = clips / f"clip-{'a' * 32}-{long_ago:.0f}.enc"
    kept = clips / f"clip-{'b' * 32}-{time.time() + 86400:.0f}.enc"
    for path in (ended, kept):
        path.write_bytes(b"sealed")
    sweep_all(world.store, GRACE, dry_run=True)
    assert ended.exists() and book.lookup(stale.nonce, world.subject) is not None
    sweep_all(world.store, GRACE)
    assert not ended.exists() and kept.exists()
    assert book.lookup(stale.nonce, world.subject) is None
    assert book.lookup(fresh.nonce, world.subject) is not None
