"""The store on SQLite and PostgreSQL: migrations, issue, revoke, epoch, shredding, injection."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

import consent.liveness.nonces
import consent.portal.models  # noqa: F401  (their tables join Base.metadata on import)
from consent.audit import verify_chain
from consent.errors import (
    AlreadyRevokedError,
    GrantError,
    LivenessRequiredError,
    NotFoundError,
    ShreddedError,
)
from consent.gate import ConsentGate
from consent.grants import verify_signature
from consent.keys import SubjectKeys
from consent.migrations import VERSION_TABLE, downgrade
from consent.models import Base
from consent.store import ConsentStore, photo_hash, utcnow

from .conftest import World

TABLES = {
    "subjects",
    "avatars",
    "grants",
    "revocations",
    "liveness_records",
    "audit",
    "consent_state",
    VERSION_TABLE,
}


def test_migrations_from_empty_match_models(store):
    assert set(inspect(store.engine).get_table_names()) >= TABLES
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
            Base.metadata,
        )
    assert diff == []
    store.migrate()  # idempotent
    assert store.epoch() == 0


def test_downgrade_then_upgrade(store):
    downgrade(store.engine, "base")
    assert set(inspect(store.engine).get_table_names()) <= {VERSION_TABLE}
    store.migrate()
    assert store.epoch() == 0 and verify_chain(store) == []


def test_open_uses_data_dir(tmp_path):
    st = ConsentStore.open(tmp_path)
    try:
        assert (tmp_path / "consent" / "consent.db").exists()
        assert st.epoch() == 0
    finally:
        st.close()


def test_issue_and_list(world: World):
    g = world.grant(conditions={"ai_label": True, "watermark": "v1"})
    [rec] = world.store.list_grants(world.subject)
    assert rec.grant == g and not rec.revoked
    assert verify_signature(rec.grant, world.keys)  # round-trips through the database intact
    assert dict(rec.grant.conditions) == {"ai_label": True, "watermark": "v1"}
    assert np.allclose(world.store.avatar_embedding(world.avatar), [0.25, -1.5, 3.0])
    blob = world.store.encrypted_embedding(world.avatar)
    assert np.float32(0.25).tobytes() not in blob  # stored encrypted


def test_issue_needs_liveness(world: World):
    with pytest.raises(LivenessRequiredError):
        world.grant(liveness_id=None)
    failed = world.liveness(passed=False)
    with pytest.raises(LivenessRequiredError, match="did not pass"):
        world.grant(liveness_id=failed)
    ok = world.liveness()
    world.grant(liveness_id=ok)
    with pytest.raises(LivenessRequiredError, match="already used"):
        world.grant(liveness_id=ok)
    old = world.liveness()
    with pytest.raises(LivenessRequiredError, match="too old"):
        world.grant(
            liveness_id=old,
            now=utcnow() + timedelta(hours=1),
            expires_at=utcnow() + timedelta(days=2),
        )
    other = World(world.store, world.keys, name="Bob Other")
    with pytest.raises(LivenessRequiredError, match="another subject"):
        world.grant(liveness_id=other.liveness())
    with pytest.raises(GrantError, match="nonce"):
        world.liveness(nonce="same")
        world.liveness(nonce="same")


def test_guardian_grant_needs_basis(world: World):
    with pytest.raises(GrantError, match="basis"):
        world.grant(granted_by="guardian:daughter-1")
    g = world.grant(granted_by="guardian:daughter-1", basis="lasting power of attorney #A17")
    assert g.by_guardian and g.liveness_id is None


def test_revoke_bumps_epoch_shreds_and_is_irreversible(world: World):
    store = world.store
    g = world.grant()
    gate = ConsentGate(store, world.keys)
    assert gate.check(avatar_id=world.avatar, deployment="kiosk", purpose="eldercare").allowed
    subject_dir = store.subject_dir(world.subject)
    (subject_dir / "photo.jpg").write_bytes(b"jpeg")
    blob = store.encrypted_embedding(world.avatar)
    purged: list = []
    store._purgers = (lambda s, a: purged.append((s, a)),)
    before = store.epoch()

    info = store.revoke(g.id, by="subject", reason="changed my mind")
    assert info.epoch == before + 1 == store.epoch() == gate.epoch()
    assert info.shredded
    assert purged == [(world.subject, (world.avatar,))]
    assert not subject_dir.exists()
    assert not store.keys.has_key(world.subject)
    with pytest.raises(ShreddedError):
        store.avatar_embedding(world.avatar)
    with pytest.raises(ShreddedError):
        store.keys.decrypt(world.subject, blob)  # the ciphertext kept earlier is dead
    d = gate.check(avatar_id=world.avatar, deployment="kiosk", purpose="eldercare")
    assert not d.allowed and "revoked" in d.reason

    with pytest.raises(AlreadyRevokedError):
        store.revoke(g.id, by="operator", reason="again")
    assert store.epoch() == before + 1
    assert store.grant(g.id).revoked
    # A new grant needs the photo registered again (new key); the old data stays unreadable.
    with pytest.raises(GrantError, match="deleted"):
        world.grant()
    store.add_avatar(world.subject, world.avatar, [1.0, 2.0])
    world.grant()
    with pytest.raises(Exception, match="ciphertext"):
        store.keys.decrypt(world.subject, blob)
    assert store.grant(g.id).revoked
    assert verify_chain(store) == []


def test_revoke_keeps_key_while_another_grant_lives(world: World):
    store = world.store
    second = store.add_avatar(world.subject, photo_hash(b"second photo"), [9.0])
    g1 = world.grant()
    g2 = world.grant(avatar_id=second)
    info = store.revoke(g1.id, by="subject", reason="not this photo")
    assert not info.shredded and store.keys.has_key(world.subject)
    with pytest.raises(ShreddedError):
        store.avatar_embedding(world.avatar)  # the revoked photo's embedding is deleted
    assert np.allclose(store.avatar_embedding(second), [9.0])
    store.revoke(g2.id, by="subject", reason="all of it")
    assert not store.keys.has_key(world.subject)
    assert store.epoch() == 2


def test_revoke_unknown(store):
    with pytest.raises(NotFoundError):
        store.revoke("nope", by="x", reason="y")


PAYLOADS = [
    "Robert'); DROP TABLE subjects;--",
    "<script>alert('x')</script>",
    '" OR 1=1 --',
    "名前 ☃ \\x00-free",
    "'; UPDATE consent_state SET epoch = 99; --",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_payloads_are_inert(store, signing_keys, payload):
    w = World(store, signing_keys, name=payload)
    assert store.subject(w.subject).display_name == payload
    g = w.grant(deployments=[payload], purposes=[payload], conditions={"note": payload})
    info = store.revoke(g.id, by=payload, reason=payload)
    assert info.reason == payload and info.revoked_by == payload
    rec = store.grant(g.id)
    assert rec.revocation.reason == payload and rec.grant.deployments == (payload,)
    assert verify_signature(rec.grant, signing_keys)
    assert store.epoch() == 1
    assert set(inspect(store.engine).get_table_names()) >= TABLES
    assert verify_chain(store) == []


def test_times_are_utc(world: World):
    g = world.grant()
    rec = world.store.grant(g.id)
    assert rec.grant.expires_at.tzinfo is not None
    assert rec.grant.expires_at == g.expires_at


def test_stores_share_nothing(tmp_path, signing_keys):
    a = ConsentStore(f"sqlite:///{tmp_path / 'a.db'}", SubjectKeys.load(tmp_path / "ka"))
    a.migrate()
    with a.engine.begin() as conn:
        assert conn.execute(text("SELECT epoch FROM consent_state")).scalar_one() == 0
    a.close()


def test_voice_clone_gate(world: World, tmp_path):
    from voice.tts.base import VoiceCloneRequest

    face_only = World(world.store, world.keys, name="Face Only")
    world.grant(allow_voice=True)
    face_only.grant(allow_voice=False)
    allow = ConsentGate(world.store, world.keys).voice_clone_gate("kiosk")
    ref = tmp_path / "ref.wav"
    assert allow(VoiceCloneRequest(ref, world.avatar, "eldercare"))
    assert not allow(VoiceCloneRequest(ref, world.avatar, "companionship"))
    assert not allow(VoiceCloneRequest(ref, face_only.avatar, "eldercare"))
    assert not allow(VoiceCloneRequest(ref, None, "eldercare"))
    checks = [e for e in world.store.audit_log()[0] if e.action == "check"]
    assert len(checks) == 3 and {e.actor for e in checks} == {"tts"}


def test_postgresql_connections_give_up_on_a_dead_link(store):
    """A link that died without a word must not hold a read for the kernel's ~15 minutes
    of TCP retransmissions: every pooled PostgreSQL connection carries libpq's guards."""
    if store.url.startswith("sqlite"):
        pytest.skip("SQLite has no link")
    with store.engine.connect() as conn:
        params = conn.connection.dbapi_connection.info.get_parameters()
    assert params["connect_timeout"] == "5"
    assert params["tcp_user_timeout"] == "10000"
    assert (params["keepalives"], params["keepalives_idle"]) == ("1", "5")
    assert (params["keepalives_interval"], params["keepalives_count"]) == ("2", "3")
