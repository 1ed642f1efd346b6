"""A purged face leaves no prepared avatar behind: revoke, ``consent sweep``, the server's sweep.

Real parts: the astronaut photo prepared with the default face backend, the SQLite
store under the data dir opened the way the runtime opens it
(``components.consent_gate``), the CLI and the server as processes.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from avatar.store import AvatarStore
from consent.keys import SigningKeys
from consent.store import utcnow
from runtime import components
from runtime.config import load_config
from runtime.server import Companion, OfferError
from tests.runtime.test_cli import run
from tests.serving import Server

OFFER = {"type": "offer", "sdp": "v=0\r\n"}


@pytest.fixture(scope="module")
def faces():
    """Two prepared photos: the astronaut and her mirror image (two avatar ids)."""
    from skimage import data

    from avatar.face import FaceAnalyzer
    from avatar.face.prepare import prepare_photo

    analyzer = FaceAnalyzer.load()
    photo = data.astronaut()
    return prepare_photo(photo, analyzer, size=256), prepare_photo(photo[:, ::-1], analyzer, 256)


def enrol(store, name: str, *faces) -> str:
    subject = store.add_subject(name).id
    for face in faces:
        store.add_avatar(subject, face.id, np.ones(128, np.float32))
    return subject


def grant(store, keys, subject, face, *, at=None, days: float = 1.0):
    """A signed grant for the face, issued at ``at`` (default now) for ``days``."""
    at = at or utcnow()
    live = store.record_liveness(
        subject,
        face.id,
        points={"digits": True, "turns": True, "identity": True},
        scores={"identity": 0.3},
        nonce=f"n-{time.monotonic_ns()}",
        now=at,
    )
    return store.issue(
        keys,
        subject_id=subject,
        avatar_id=face.id,
        deployments=["browser-chat"],
        purposes=["companionship"],
        expires_at=at + timedelta(days=days),
        liveness_id=live.id,
        now=at,
    )


def keys_of(data: Path) -> SigningKeys:
    return SigningKeys.load(data / "consent" / "signing")


def test_a_revoke_deletes_the_prepared_avatar_and_the_offer_gets_404(faces, tmp_path):
    one, two = faces
    settings = load_config(data_dir=tmp_path, server={"avatars": [one.id, two.id]})
    avatars = AvatarStore(settings.avatars_dir)
    avatars.save(one)
    avatars.save(two)
    companion = Companion(settings)
    gate = components.consent_gate(settings, (companion._forget_avatars,))
    companion.gate = gate
    store, keys = gate.store, keys_of(tmp_path)
    subject = enrol(store, "Astrid", one, two)
    first, second = grant(store, keys, subject, one), grant(store, keys, subject, two)
    assert companion.avatar(one.id).id == one.id  # served (and cached) while granted

    store.revoke(first.id, by="subject", reason="not this photo")
    assert one.id not in avatars and two.id in avatars  # the other photo is still granted
    with pytest.raises(OfferError) as refused:
        companion.avatar(one.id)
    assert refused.value.status == 404
    assert companion.avatar(two.id).id == two.id

    store.revoke(second.id, by="subject", reason="stop")  # nothing live: subject purged
    assert two.id not in avatars and not any(avatars.root.iterdir())
    with pytest.raises(OfferError):
        companion.avatar(two.id)
    store.close()


def test_consent_sweep_command_dry_run_then_for_real(faces, tmp_path):
    one, two = faces
    settings = load_config(data_dir=tmp_path)
    avatars = AvatarStore(settings.avatars_dir)
    avatars.save(one)
    avatars.save(two)
    store = components.consent_gate(settings).store
    stale = enrol(store, "Never granted", one)  # enrolled, never granted
    kept = enrol(store, "Granted", two)
    grant(store, keys_of(tmp_path), kept, two, days=30)
    store.close()
    env = {"LIKENESS_DATA_DIR": str(tmp_path), "LIKENESS_CONSENT__RETENTION_DAYS": "0"}

    dry = run("consent", "sweep", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["purged_subjects"] == [stale]
    assert "would delete: 1 subject(s)" in dry.stderr
    assert one.id in avatars, "a dry run deletes nothing"

    done = run("consent", "sweep", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["purged_subjects"] == [stale] and report["avatars"] == [one.id]
    assert one.id not in avatars and two.id in avatars
    assert run("consent", "verify-log", env=env).returncode == 0


def test_the_server_sweeps_at_start_and_the_purged_face_gets_404(faces, tmp_path):
    one, two = faces
    settings = load_config(data_dir=tmp_path)
    avatars = AvatarStore(settings.avatars_dir)
    avatars.save(one)
    avatars.save(two)
    store = components.consent_gate(settings).store
    keys = keys_of(tmp_path)
    expired = enrol(store, "Expired", one)
    grant(store, keys, expired, one, at=utcnow() - timedelta(days=3))  # ran out 2 days ago
    live = enrol(store, "Live", two)
    grant(store, keys, live, two)
    server = Server(
        tmp_path,
        LIKENESS_SERVER__AVATARS=json.dumps([one.id, two.id]),
        LIKENESS_CONSENT__RETENTION_DAYS="0",
        LIKENESS_CONSENT__SWEEP_INTERVAL_S="10",
    ).start()
    try:
        deadline = time.monotonic() + 15
        while one.id in avatars and time.monotonic() < deadline:
            time.sleep(0.2)
        assert one.id not in avatars, "the server's sweep deleted the expired face"
        gone = httpx.post(f"{server.url}/api/rtc/offer", json={**OFFER, "avatar": one.id})
        assert gone.status_code == 404, gone.text
        # The live face passes the avatar and consent checks (then this SDP is refused).
        shown = httpx.post(f"{server.url}/api/rtc/offer", json={**OFFER, "avatar": two.id})
        assert shown.status_code == 400 and "cannot use this offer" in shown.json()["error"]
    finally:
        server.stop()
    entries, _seq, _head = store.audit_log()
    [purge] = [e for e in entries if e.action == "delete"]
    assert purge.subject == expired and purge.actor == "retention"
    assert purge.data()["reason"] == "retention"
    store.close()
