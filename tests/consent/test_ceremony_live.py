"""The live ceremony over real WebRTC: a Python aiortc peer plays the page.

Real aiortc on both ends (VP8, Opus, SCTP; host candidates on this machine's
non-loopback address, since aioice skips 127.0.0.1), real dlib, Whisper, Silero and a
real SQLite store. The "page" is a peer whose camera and microphone are custom
``MediaStreamTrack`` s fed in real time by a synthetic :class:`LivePerson`: it is shown
each prompt when it arrives on the data channel, acknowledges it, and answers on camera
and microphone (the flash colours light its face, as a screen would).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import random
import time

import av
import numpy as np
import pytest
import soxr
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from avatar.store import AvatarStore
from consent.ceremony import live
from consent.ceremony.actors import LivePerson, persona
from consent.ceremony.plan import Prompt
from consent.ceremony.simulate import piper_says, spoken_digits
from consent.enrolment import Enrolment, EnrolmentError, EnrolmentOptions
from consent.liveness.nonces import nonce_hash

pytestmark = pytest.mark.slow
FPS = 15
MIC_RATE = 48_000


@pytest.fixture
def store(file_store):
    return file_store  # the SQLite store with a files folder (conftest)


@pytest.fixture
def enrolment(store, analyzer, asr, tmp_path) -> Enrolment:
    return Enrolment(
        store,
        analyzer,
        asr,
        AvatarStore(tmp_path / "avatars"),
        EnrolmentOptions(),
        rng=random.Random(3),
    )


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


class Camera(MediaStreamTrack):
    """The person's camera: a frame every 1/15 s of the person's own clock."""

    kind = "video"

    def __init__(self, person: LivePerson, clock) -> None:
        super().__init__()
        self.person, self.clock, self.i = person, clock, 0

    async def recv(self) -> av.VideoFrame:
        if self.i == 0:
            self.i = round(self.clock() * FPS)
        await asyncio.sleep(max(0.0, self.i / FPS - self.clock()))
        t = self.clock()
        rgb = await asyncio.to_thread(self.person.frame, t)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = int(t * 90_000), fractions.Fraction(1, 90_000)
        self.i += 1
        return frame


class Microphone(MediaStreamTrack):
    """The person's microphone: 20 ms of 48 kHz audio at a time, paced by its clock."""

    kind = "audio"

    def __init__(self, person: LivePerson, clock) -> None:
        super().__init__()
        self.person, self.clock, self.i = person, clock, None
        self.up = soxr.ResampleStream(16_000, MIC_RATE, 1, dtype="float32")

    async def recv(self) -> av.AudioFrame:
        if self.i is None:  # a microphone starts when it is opened, not at t = 0
            self.i = self.said = round(self.clock() / 0.02)
            self.fifo = np.zeros(0, np.float32)
        await asyncio.sleep(max(0.0, self.i * 0.02 - self.clock()))
        while len(self.fifo) < 960:  # soxr gives a few samples more or less per chunk
            said = self.person.audio(self.said * 0.02, 320)
            self.fifo = np.concatenate([self.fifo, self.up.resample_chunk(said)])
            self.said += 1
        pcm, self.fifo = self.fifo[:960], self.fifo[960:]
        s16 = (np.clip(pcm, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(s16, format="s16", layout="mono")
        frame.sample_rate, frame.pts = MIC_RATE, self.i * 960
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self.i += 1
        return frame


class Page:
    """The page's side: tracks, the "ceremony" channel, what it was shown and told."""

    def __init__(self, person: LivePerson | None, hang_up_after: int | None = None) -> None:
        self.t0 = time.monotonic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.person = person
        self.prompts: list[tuple[float, dict]] = []
        self.result: dict | None = None
        self.result_at: float | None = None
        self.done = asyncio.Event()
        self.hang_up_after = hang_up_after
        if person is not None:
            self.pc.addTrack(Camera(person, self.clock))
            self.pc.addTrack(Microphone(person, self.clock))
        self.channel = self.pc.createDataChannel(live.CHANNEL)
        self.channel.on("message", self.on_message)

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def on_message(self, text: str) -> None:
        body = json.loads(text)
        now = self.clock()
        if body["type"] == "prompt":
            self.prompts.append((now, body))
            if self.person is not None:
                self.person.on_prompt(Prompt.from_json(body), now)
            self.channel.send(json.dumps({"type": "shown", "id": body["id"], "since_shown_ms": 0}))
            if self.hang_up_after is not None and len(self.prompts) >= self.hang_up_after:
                asyncio.get_running_loop().create_task(self.pc.close())  # noqa: RUF006
        elif body["type"] == "result":
            self.result, self.result_at = body, now
            self.done.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


async def run_ceremony(enrolment, store, page: Page, within_s: float = 80.0):
    subject = store.add_subject("Ann Example").id
    avatar_id = enrolment.add_photo(subject, png(LivePerson(persona(0)).photo()))
    opened = await asyncio.to_thread(enrolment.open_ceremony, subject, avatar_id, time.time())
    if page.person is not None:  # voice and face made ahead: this loop also runs the server
        await asyncio.to_thread(page.person.warm_up)
        scale = page.person.who.voice_scale
        for prompt in opened.ceremony.plan.prompts:
            if prompt.kind == "digits":
                await asyncio.to_thread(piper_says, spoken_digits(prompt.digits), scale)
    answer, running = await live.start(opened, await page.offer(), [])
    await page.answer(answer.sdp)
    try:
        await asyncio.wait_for(page.done.wait(), within_s)
    finally:
        await page.pc.close()
    print(f"frames judged {running.frames}, dropped {running.dropped}")
    return subject, avatar_id, opened


async def test_live_person_passes_over_webrtc(enrolment, store):
    person = LivePerson(persona(0))
    page = Page(person)
    subject, avatar_id, opened = await run_ceremony(enrolment, store, page)
    result = page.result
    for p in result["points"]:
        print(f"  {p['name']:12s} {p['passed']!s:5s} {p['reason']}")
    kinds = [body["kind"] for _, body in page.prompts]
    assert kinds[0] == "flash" and "digits" in kinds and kinds[-1] == "turn", kinds
    # From the end of the last answer (the head back at rest) to the result on the page.
    last_shown = page.prompts[-1][0]
    start, _ = person.body.turns[-1]
    answered = start + 0.45 + 0.35 + 0.5
    print(
        f"last prompt shown {last_shown:.2f} s, answered {answered:.2f} s, "
        f"result {page.result_at:.2f} s: {page.result_at - answered:.2f} s after the answer"
    )
    assert result["passed"], result
    assert result["avatar_id"] == avatar_id and result["retry"] is False
    record = store.liveness(result["liveness_id"])
    assert record.passed and record.subject_id == subject
    assert record.nonce == nonce_hash(opened.ceremony.plan.nonce)
    assert page.result_at - answered <= 3.0


async def test_peer_that_hangs_up_is_recorded_as_failed(enrolment, store):
    page = Page(LivePerson(persona(0)), hang_up_after=1)
    with pytest.raises(TimeoutError):  # the page left: it hears nothing more
        await run_ceremony(enrolment, store, page, within_s=12.0)
    await asyncio.wait_for(asyncio.gather(*live._RUNNING), 20)  # the server's side ends
    [(passed, reasons)] = [(r.passed, enrolment.reasons(r.id)) for r in store_rows(store)]
    assert not passed
    assert "connection was lost" in reasons["ceremony"] or "closed" in reasons["ceremony"]
    # The slot is free again: the next ceremony may start.
    subject = store.add_subject("Bo").id
    avatar = enrolment.add_photo(subject, png(LivePerson(persona(1)).photo()))
    enrolment.open_ceremony(subject, avatar, time.time()).close()


def store_rows(store):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from consent.models import LivenessRecord

    with Session(store.engine) as s:
        ids = s.execute(select(LivenessRecord.id)).scalars().all()
    return [store.liveness(i) for i in ids]


async def test_one_ceremony_at_a_time_and_offers_checked(enrolment, store):
    subject = store.add_subject("Ann").id
    avatar_id = enrolment.add_photo(subject, png(LivePerson(persona(0)).photo()))
    first = enrolment.open_ceremony(subject, avatar_id, time.time())
    with pytest.raises(EnrolmentError) as err:
        enrolment.open_ceremony(subject, avatar_id, time.time())
    assert err.value.status == 503 and "Another live check" in err.value.message
    first.close()
    enrolment.open_ceremony(subject, avatar_id, time.time()).close()

    no_media = Page(None)
    sdp = await no_media.offer()
    with pytest.raises(ValueError, match="lacks a camera and a microphone"):
        live.check_offer(sdp)
    await no_media.pc.close()
    with pytest.raises(ValueError, match="could not be read|not a WebRTC"):
        live.check_offer("v=0\r\nm=garbage\r\n")
    with pytest.raises(ValueError, match="not a WebRTC"):
        live.check_offer("hello")


def test_route_refuses_offers_it_cannot_use(store):
    from tests.consent.test_portal_support import Person, portal_app, settings_for

    async def data_only() -> str:
        page = Page(None)
        try:
            return await page.offer()
        finally:
            await page.pc.close()

    app = portal_app(store, settings_for())
    ann = Person(app).signup("ann@example.org", "Ann")
    cases = [
        ({"avatar_id": "x", "type": "offer", "sdp": "hello"}, "not a WebRTC session"),
        ({"avatar_id": "x", "type": "offer", "sdp": "v=0\r\nm=x\r\n"}, "could not be read"),
        ({"avatar_id": "x", "type": "answer", "sdp": "v=0"}, "expected a WebRTC offer"),
        (
            {"avatar_id": "x", "type": "offer", "sdp": asyncio.run(data_only())},
            "lacks a camera and a microphone",
        ),
    ]
    for body, words in cases:
        r = ann.post("/enrol/ceremony", body)
        assert r.status_code == 400 and words in r.json()["error"], (body["sdp"][:20], r.text)
    r = ann.post("/enrol/ceremony", {"type": "offer", "sdp": "v=0"})
    assert r.status_code == 422 and "avatar_id" in r.json()["error"]
