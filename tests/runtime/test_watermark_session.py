"""Frames received over WebRTC from a live session carry the grant id (or "synthetic").

A real ``likeness serve`` process, a real consent store with signed grants, a real aiortc
client: what the client decodes (VP8 at aiortc's bitrate) is read back with the data
dir's watermark key, as ``likeness consent detect-watermark`` does.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from consent.watermark import detect
from consent.watermark_key import WatermarkKey, key_dir
from runtime.rtc_client import CompanionClient
from tests.runtime.test_consent_sessions import grant, photo_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server whose data dir holds a prepared photo avatar and a consent store."""
    with photo_world(tmp_path_factory.mktemp("watermark-world"), "Wanda (test subject)") as w:
        yield w


async def frames_after(client: CompanionClient, seconds: float) -> list[np.ndarray]:
    """The frames the client decodes during the next ``seconds``."""
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return [image for t, image in client.got.video if t >= start]


def read_marks(root, store, frames: list[np.ndarray]):
    key = WatermarkKey.load(key_dir(root), create=False)
    candidates = [record.grant.id for record in store.all_grants()]
    return [detect(key, image, candidates) for image in frames]


async def test_received_frames_carry_the_grant_id_and_follow_a_new_grant(world):
    server, store, subject_id, face = world
    first = grant(store, subject_id, face)
    async with CompanionClient(server.url, avatar=face.id) as client:
        await client.wait_for("state", 10, state="listening")
        await asyncio.sleep(1.0)  # past the encoder's first, coarse keyframe
        under_first = await frames_after(client, 1.0)
        # A second grant, then the first is revoked: the session goes on under the
        # second one, and its frames now carry the second grant's id.
        second = grant(store, subject_id, face)
        await asyncio.to_thread(store.revoke, first.id, by="subject", reason="new grant")
        await asyncio.sleep(1.0)
        under_second = await frames_after(client, 1.0)
        assert client.got.first("state", state="ended") is None, "still allowed: it goes on"
    assert len(under_first) >= 15 and len(under_second) >= 15
    marks = await asyncio.to_thread(read_marks, server.data, store, under_first + under_second)
    before, after = marks[: len(under_first)], marks[len(under_first) :]
    assert all(m.found and m.grant_id == first.id for m in before), [m.score for m in before]
    assert all(m.found and m.grant_id == second.id for m in after), [m.score for m in after]
    scores = [m.score for m in marks]
    print(
        f"{len(marks)} frames received over WebRTC: score min {min(scores):.1f}, "
        f"median {np.median(scores):.1f} (a match needs {marks[0].needed:.1f})"
    )


async def test_synthetic_session_frames_say_synthetic(world):
    server, store, _subject_id, _face = world
    async with CompanionClient(server.url, avatar="synthetic") as client:
        await client.wait_for("state", 10, state="listening")
        await asyncio.sleep(1.0)
        frames = await frames_after(client, 1.0)
    assert len(frames) >= 15
    marks = await asyncio.to_thread(read_marks, server.data, store, frames)
    assert all(m.found and m.synthetic and m.grant_id is None for m in marks), [
        m.score for m in marks
    ]
    print(f"synthetic session: score min {min(m.score for m in marks):.1f}")
