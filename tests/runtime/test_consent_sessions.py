"""The consent gate in live sessions: no grant → 403; a revoke ends the session within 1 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from avatar.store import AvatarStore
from runtime import components
from runtime.config import load_config
from runtime.rtc_client import CompanionClient
from tests.serving import Server

pytestmark = pytest.mark.slow


@contextmanager
def photo_world(root: Path, subject_name: str) -> Iterator[tuple]:
    """A server whose data dir ``root`` holds a prepared photo avatar and a consent store
    with one subject (``subject_name``) owning it; no grant yet.

    Yields:
        ``(server, store, subject_id, face)``; the server stops on exit.
    """
    from skimage import data

    from avatar.face import FaceAnalyzer
    from avatar.face.prepare import prepare_photo

    face = prepare_photo(data.astronaut(), FaceAnalyzer.load(), size=512)
    AvatarStore(root / "avatars").save(face)
    store = components.consent_gate(load_config(data_dir=root)).store
    subject_id = store.add_subject(subject_name).id
    store.add_avatar(subject_id, face.id, np.zeros(128, np.float32))
    server = Server(
        root,
        LIKENESS_SERVER__AVATARS=json.dumps([face.id]),
        LIKENESS_CONSENT__RECHECK_MS="100",
    ).start()
    try:
        yield server, store, subject_id, face
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server whose data dir holds a prepared photo avatar and a consent store."""
    with photo_world(tmp_path_factory.mktemp("consent-world"), "Eileen (test subject)") as w:
        yield w


def grant(store, subject_id, face, deployments=("browser-chat",), lasts=timedelta(days=1)):
    from consent.keys import SigningKeys
    from consent.store import utcnow

    live = store.record_liveness(
        subject_id,
        face.id,
        points={"digits": True, "turns": True, "lips": True, "identity": True, "nonce": True},
        scores={"identity": 0.3},
        nonce=f"n-{time.monotonic_ns()}",
    )
    keys = SigningKeys.load(
        Path(str(store.engine.url).removeprefix("sqlite:///")).parent / "signing"
    )
    return store.issue(
        keys,
        subject_id=subject_id,
        avatar_id=face.id,
        deployments=list(deployments),
        purposes=["companionship"],
        expires_at=utcnow() + lasts,
        liveness_id=live.id,
    )


def test_no_grant_or_wrong_scope_is_403(world):
    server, store, subject_id, face = world
    with pytest.raises(httpx.HTTPStatusError) as info:
        asyncio.run(CompanionClient(server.url, avatar=face.id).connect())
    assert info.value.response.status_code == 403
    assert "permission" in info.value.response.json()["error"]
    grant(store, subject_id, face, deployments=("kiosk-lobby",))
    with pytest.raises(httpx.HTTPStatusError) as info:
        asyncio.run(CompanionClient(server.url, avatar=face.id).connect())
    assert info.value.response.status_code == 403


IN_FLIGHT_S = 0.1  # a face frame sent just before the end may arrive after it (25 fps)


def shows_face(image: np.ndarray) -> bool:
    """Anything but a black frame counts as the face (the AI label included)."""
    return bool(image.mean() >= 5)


async def test_revoke_ends_a_live_session_within_a_second(world):
    """Within 1 s of the revoke the session ends, and no frame of the face arrives after
    the end: the last one the client got came before it (one frame in flight allowed)."""
    server, store, subject_id, face = world
    issued = grant(store, subject_id, face)
    async with CompanionClient(server.url, avatar=face.id) as client:
        await client.wait_for("state", 10, state="listening")
        await asyncio.sleep(1.0)
        revoked_at = time.monotonic()
        await asyncio.to_thread(store.revoke, issued.id, by="subject", reason="changed my mind")
        ended = await client.wait_for("state", 5, state="ended")
        ended_at = client.got.first("state", state="ended")
        await asyncio.sleep(1.0)  # whatever the server still sends arrives meanwhile
    assert ended["reason"] == "permission withdrawn"
    assert ended_at - revoked_at <= 1.0, f"took {ended_at - revoked_at:.2f} s"
    shown = [image for t, image in client.got.video if revoked_at - 0.5 <= t < revoked_at]
    assert len(shown) >= 5, f"{len(shown)} frames in the 0.5 s before the revoke"
    assert all(image.mean() > 20 for image in shown), "the face is shown until the revoke"
    last_face = max(t for t, image in client.got.video if shows_face(image))
    assert last_face <= ended_at + IN_FLIGHT_S, (
        f"the face still arrived {last_face - ended_at:.2f} s after the session ended"
    )
    print(
        f"revoke → session ended in {1000 * (ended_at - revoked_at):.0f} ms, "
        f"last frame of the face {1000 * (last_face - ended_at):+.0f} ms from the end"
    )


async def test_expiry_ends_a_live_session(world):
    """An expiry moves no revocation epoch; the session watches the grant's time too."""
    server, store, subject_id, face = world
    issued = await asyncio.to_thread(grant, store, subject_id, face, lasts=timedelta(seconds=5))
    async with CompanionClient(server.url, avatar=face.id) as client:
        await client.wait_for("state", 10, state="listening")
        ended = await client.wait_for("state", 10, state="ended")
        ended_at = client.got.first("state", state="ended")
    late = ended_at + (time.time() - time.monotonic()) - issued.expires_at.timestamp()
    assert ended["reason"] == "permission withdrawn"
    assert -0.1 <= late <= 1.0, f"ended {late:+.2f} s after the expiry"
    print(f"expiry → session ended {1000 * late:.0f} ms later")


def test_a_registered_deployment_shows_only_the_faces_its_operator_listed(world):
    from consent.portal.deployments import save_deployment

    server, store, subject_id, face = world
    grant(store, subject_id, face, deployments=("kiosk-east",))
    save_deployment(
        store, name="kiosk-east", description="east wing", avatars=[], by="op", create=True
    )
    with pytest.raises(httpx.HTTPStatusError) as info:
        asyncio.run(CompanionClient(server.url, avatar=face.id, deployment="kiosk-east").connect())
    assert info.value.response.status_code == 403
    assert "not set up to show this face" in info.value.response.json()["error"]
    save_deployment(
        store, name="kiosk-east", description="", avatars=[face.id], by="op", create=False
    )

    async def connects() -> str:
        async with CompanionClient(server.url, avatar=face.id, deployment="kiosk-east") as c:
            return (await c.wait_for("state", 10, state="listening"))["state"]

    assert asyncio.run(connects()) == "listening"


def test_operator_commands(world, tmp_path):
    from tests.runtime.test_cli import run

    server, store, subject_id, face = world
    issued = grant(store, subject_id, face, deployments=("kiosk-hall",))
    env = {"LIKENESS_DATA_DIR": str(server.data)}
    listed = run("consent", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert issued.id in {g["id"] for g in json.loads(listed.stdout)}
    assert run("consent", "verify-log", env=env).returncode == 0
    out = tmp_path / "export.json"
    exported = run("consent", "export", subject_id, "-o", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(out.read_text())
    assert data["subject"]["id"] == subject_id and data["audit"]
    revoked = run("consent", "revoke", issued.id, "--by", "operator", "--reason", "test", env=env)
    assert revoked.returncode == 0, revoked.stderr
    again = run("consent", "revoke", issued.id, "--by", "operator", env=env)
    assert again.returncode == 1 and "likeness: error:" in again.stderr
    # An edited audit row is caught.
    from sqlalchemy import text

    with store.engine.begin() as db:
        db.execute(text("UPDATE audit SET actor = 'mallory' WHERE seq = 1"))
    broken = run("consent", "verify-log", env=env)
    assert broken.returncode == 1 and "broken" in broken.stderr
