"""Live sessions against a real ``likeness serve`` process, with real aiortc clients."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import numpy as np
import pytest

from avatar.synthetic import make_demo_avatar
from runtime.dialogue.base import Message
from runtime.dialogue.conversation import ConversationMemory
from runtime.label import AiLabel
from runtime.rtc_client import CompanionClient
from tests.conftest import piper_speech
from tests.runtime.openai_server import Behaviour, ChatServer
from tests.serving import Server, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve")
    running = Server(
        data,
        LIKENESS_SERVER__MAX_SESSIONS="2",
        LIKENESS_DIALOGUE__MAX_TOKENS="60",
        LIKENESS_DIALOGUE__TEMPERATURE="0",
        LIKENESS_SERVER__MEDIA_TIMEOUT_S="4",
        LIKENESS_KIOSK__PROFILES='{"lobby": {"persona_name": "Ada", "caption_scale": 2.5}}',
    ).start()
    yield running.url, data
    running.stop()


@pytest.fixture(scope="module")
def question(piper_tts):
    return piper_speech(piper_tts, "Hello! What is your favourite colour?")


def mouth_crop(image: np.ndarray) -> np.ndarray:
    marks = make_demo_avatar(size=image.shape[0]).landmarks[48:68]
    x0, y0 = marks.min(0).astype(int) - 8
    x1, y1 = marks.max(0).astype(int) + 8
    return image[y0:y1, x0:x1].astype(np.float32)


async def test_a_spoken_question_gets_a_spoken_animated_answer(server, question):
    url, _ = server
    async with CompanionClient(url) as client:
        await client.wait_for("state", 10, state="listening")
        client.mic.say(question.pcm, question.sample_rate)
        heard = await client.wait_for("transcript", 20, final=True)
        assert "colo" in heard["text"].lower()
        await client.wait_for("reply", 30)
        metrics = await client.wait_for("metrics", 30)
        await asyncio.sleep(2.0)
    stages = metrics["stages_ms"]
    for stage in (
        "transcript",
        "first_token",
        "first_audio",
        "first_video_sent",
        "first_audio_sent",
    ):
        assert stage in stages, stages
    assert stages["transcript"] <= stages["first_audio"] <= stages["first_audio_sent"]
    # One media clock: the reply's first frame and first sample go out together.
    assert abs(stages["first_video_sent"] - stages["first_audio_sent"]) <= 40
    print("turn latencies (ms after end of speech):", {k: round(v) for k, v in stages.items()})
    got = client.got
    started = got.first("reply")
    loud = [rms for t, rms in got.audio_rms if t >= started and rms > 0.01]
    assert len(loud) > 25, "the reply must be audible (over 0.5 s of non-silent audio)"
    during = [image for t, image in got.video if t >= started]
    assert len(during) > 25
    crops = np.stack([mouth_crop(image) for image in during])
    assert np.abs(crops - crops[0]).mean(axis=(1, 2, 3)).max() > 3.0, "the mouth must move"
    rows, cols = AiLabel(512).box()
    patch = got.video[-1][1][rows, cols]
    assert (patch.max(axis=2) > 180).sum() > 30, "every frame carries the AI-generated mark"
    first, last = got.video[0][0], got.video[-1][0]
    fps = (len(got.video) - 1) / (last - first)
    assert fps > 15, f"video delivered at {fps:.1f} fps"


async def test_barge_in_stops_the_reply_and_trims_history(server, question, piper_tts):
    """Spoken over 0.6 s into the reply: the audio stops, and the history keeps exactly
    the words heard (the start of what was said), until the session forgets it."""
    url, data = server
    stop = piper_speech(piper_tts, "Wait, stop, please stop.")
    async with CompanionClient(url, keep_video=False) as client:
        await client.wait_for("state", 10, state="listening")
        client.mic.say(question.pcm, question.sample_rate)
        asked = await client.wait_for("transcript", 20, final=True)
        await client.wait_for("state", 40, state="speaking")
        await asyncio.sleep(0.6)
        client.mic.say(stop.pcm, stop.sample_rate)
        spoke_at = time.monotonic()
        interrupted = await client.wait_for("interrupted", 10)
        cut_at = client.got.first("interrupted")
        await asyncio.sleep(1.5)
        # While the session lives, its memory holds only what was heard.
        memory = ConversationMemory(data / "memory")
        history = memory.history(f"session-{client.session_id}")
        session = client.session_id
    after = [(t, rms) for t, rms in client.got.audio_rms if t >= cut_at]
    # The reply's audio stops: every 20 ms frame from 500 ms after the cut is silent
    # (the answer to the second utterance needs its own end of turn, well after that).
    quiet = [rms for t, rms in after if cut_at + 0.5 <= t <= cut_at + 1.2]
    assert quiet and max(quiet) < 0.005, "reply audio still playing 500 ms after the barge-in"
    print(f"barge-in decided {1000 * (cut_at - spoke_at):.0f} ms after the user started")
    heard = interrupted["heard"]
    assert heard, "1.1 s of the reply were played: some of it was heard"
    said = " ".join(
        e["text"] for t, e in client.got.events if t < cut_at and e.get("type") == "reply"
    )
    assert said.split()[: len(heard.split())] == heard.split(), (heard, said)
    assert history[:2] == [Message("user", asked["text"]), Message("assistant", heard)], history
    await asyncio.sleep(1.0)
    fresh = ConversationMemory(data / "memory")
    assert fresh.history(f"session-{session}") == [], "a closed session forgets (privacy)"


async def test_barge_in_before_the_reply_is_heard_keeps_no_reply(tmp_path, question, piper_tts):
    """Spoken over as soon as the question is understood, before any of the reply plays:
    nothing was heard, so the history keeps the question and no reply to it.

    The model is the OpenAI-compatible test server (the real client code runs) with a
    3 s wait before its first word, so no machine is fast enough to play the reply
    before the interruption lands (about 0.5 s after the person starts speaking)."""
    stop = piper_speech(piper_tts, "Wait, stop, please stop.")
    with ChatServer() as chat:
        chat.reset(Behaviour(reply="I am so glad you asked that.", first_token_delay=3.0))
        running = Server(
            tmp_path,
            LIKENESS_DIALOGUE__BACKEND="openai",
            LIKENESS_DIALOGUE__BASE_URL=chat.base_url,
            LIKENESS_DIALOGUE__MODEL="test-model",
            LIKENESS_SERVER__MEDIA_TIMEOUT_S="4",
        ).start()
        try:
            async with CompanionClient(running.url, keep_video=False) as client:
                await client.wait_for("state", 10, state="listening")
                client.mic.say(question.pcm, question.sample_rate)
                asked = await client.wait_for("transcript", 20, final=True)
                client.mic.say(stop.pcm, stop.sample_rate)
                interrupted = await client.wait_for("interrupted", 10)
                cut_at = client.got.first("interrupted")
                await asyncio.sleep(1.5)
                memory = ConversationMemory(tmp_path / "memory")  # forgotten at the close
                history = memory.history(f"session-{client.session_id}")
        finally:
            running.stop()
    assert chat.seen.requests, "the question reached the model"
    before = [rms for t, rms in client.got.audio_rms if t < cut_at]
    assert before and max(before) < 0.005, "no reply audio reached the person before the cut"
    assert interrupted["heard"] == ""
    assert history[:1] == [Message("user", asked["text"])], history
    assert [m.role for m in history[1:2]] != ["assistant"], f"an unheard reply was kept: {history}"


async def test_offers_are_checked(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        bad = await http.post("/api/rtc/offer", json={"type": "offer", "sdp": "hello"})
        assert bad.status_code == 400 and "error" in bad.json()
        junk = await http.post("/api/rtc/offer", content=b"{not json")
        assert junk.status_code == 400
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ready"
        metrics = await http.get("/metrics")
        assert "likeness_sessions_active" in metrics.text
        assert "likeness_turn_stage_seconds_bucket" in metrics.text
    with pytest.raises(httpx.HTTPStatusError) as info:
        async with CompanionClient(url, avatar="0123456789abcdef"):
            pass
    assert info.value.response.status_code == 404


async def test_busy_when_all_sessions_are_taken(server):
    url, _ = server
    async with CompanionClient(url, keep_video=False), CompanionClient(url, keep_video=False):
        with pytest.raises(httpx.HTTPStatusError) as info:
            async with CompanionClient(url, keep_video=False):
                pass
        assert info.value.response.status_code == 503
        assert info.value.response.headers.get("retry-after")
    # Closed sessions free their places.
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/health")).json()["sessions"] == 0


async def test_trickle_ice_over_websocket(server):
    import json

    import websockets
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from runtime.rtc_client import SpeechTrack

    url, _ = server
    pc = RTCPeerConnection()
    connected = asyncio.Event()
    pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and connected.set())
    pc.addTrack(SpeechTrack())
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    lines = pc.localDescription.sdp.splitlines()
    candidates, mids, mid = [], [], None
    for line in lines:
        if line.startswith("a=mid:"):
            mid = line[6:]
            mids.append(mid)
        if line.startswith("a=candidate:"):
            candidates.append((line[2:], mid))
    trickled = ("a=candidate:", "a=end-of-candidates")  # what a trickling client leaves out
    bare = "\r\n".join(line for line in lines if not line.startswith(trickled)) + "\r\n"
    ws_url = url.replace("http", "ws") + "/api/rtc/ws"
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "candidate", "candidate": "x"}))
        assert json.loads(await ws.recv())["status"] == 400, "a candidate before the offer"
        await ws.send(json.dumps({"type": "offer", "sdp": bare}))
        answer = json.loads(await ws.recv())
        assert answer["type"] == "answer" and answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        for text, m in candidates:
            await ws.send(
                json.dumps(
                    {
                        "type": "candidate",
                        "candidate": text,
                        "sdpMid": m,
                        "sdpMLineIndex": mids.index(m),
                    }
                )
            )
        await ws.send(json.dumps({"type": "candidate", "candidate": "candidate:garbage"}))
        assert json.loads(await ws.recv())["status"] == 400
        await ws.send(json.dumps({"type": "candidate", "candidate": ""}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connected.wait(), 15)
    assert pc.connectionState == "connected"
    await pc.close()


async def test_unknown_codecs_are_a_clear_400(server):
    from aiortc import RTCPeerConnection

    from runtime.rtc_client import SpeechTrack

    url, _ = server
    pc = RTCPeerConnection()
    pc.addTrack(SpeechTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    for codec in ("opus", "PCMU", "PCMA", "G722"):
        sdp = sdp.replace(f" {codec}/", " nosuchcodec/")
    await pc.close()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.post("/api/rtc/offer", json={"type": "offer", "sdp": sdp})
    assert response.status_code == 400 and "offer" in response.json()["error"]


async def test_a_client_that_sends_no_media_is_closed(server):
    from aiortc import MediaStreamTrack

    class Mute(MediaStreamTrack):
        kind = "audio"

        async def recv(self):
            await asyncio.Event().wait()  # never sends a frame

    url, _ = server
    client = CompanionClient(url, keep_video=False)
    client.mic = Mute()
    await client.connect()
    try:
        ended = await client.wait_for("state", 15, state="ended")
        assert ended.get("reason") == "no media"
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/health")).json()["sessions"] == 0


def test_tls_for_lan_kiosks(tmp_path):
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiosk.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    args = ("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    running = Server(tmp_path, args=args).start()
    try:
        assert running.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        response = httpx.get(f"{running.url}/health", verify=trust)
        assert response.status_code == 200
    finally:
        running.stop()


async def test_llm_failure_is_answered_with_a_spoken_apology(tmp_path, question):
    running = Server(
        tmp_path,
        LIKENESS_DIALOGUE__BACKEND="openai",
        LIKENESS_DIALOGUE__BASE_URL=f"http://127.0.0.1:{free_port()}/v1",  # nobody listens
        LIKENESS_DIALOGUE__MODEL="absent",
        LIKENESS_DIALOGUE__RETRIES="0",
    ).start()
    try:
        async with CompanionClient(running.url, keep_video=False) as client:
            await client.wait_for("state", 10, state="listening")
            client.mic.say(question.pcm, question.sample_rate)
            error = await client.wait_for("error", 30)
            reply = await client.wait_for("reply", 15)
            await asyncio.sleep(1.5)
        assert "reply failed" in error["message"]
        assert "sorry" in reply["text"].lower()
        started = client.got.first("reply")
        assert any(rms > 0.01 for t, rms in client.got.audio_rms if t >= started)
    finally:
        running.stop()


async def test_kiosk_profiles_and_no_leaks(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        lobby = (await http.get("/api/config", params={"profile": "lobby"})).json()
        assert lobby["persona"]["name"] == "Ada" and lobby["kiosk"]["caption_scale"] == 2.5
        default = (await http.get("/api/config", params={"profile": "default"})).json()
        assert default["persona"]["name"] == "Robin" and default["kiosk"]["slow_speech"]
        assert (await http.get("/api/config", params={"profile": "nope"})).status_code == 404
        before = (await http.get("/health")).json()["tasks"]
    with pytest.raises(httpx.HTTPStatusError) as info:
        async with CompanionClient(url, profile="nope"):
            pass
    assert info.value.response.status_code == 404
    for _ in range(2):  # a slow-speech (eldercare) session, twice: nothing piles up
        async with CompanionClient(url, profile="lobby", keep_video=False) as client:
            await client.wait_for("state", 10, state="listening")
            await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)
    async with httpx.AsyncClient(base_url=url) as http:
        after = (await http.get("/health")).json()
    assert after["sessions"] == 0
    assert after["tasks"] <= before + 2, "session tasks must not outlive their sessions"


async def test_an_avatar_crash_keeps_the_voice_going(monkeypatch, tmp_path, question):
    """Fault knob: a generator that breaks mid-session (the rest is the real server)."""
    import uvicorn

    from avatar.errors import GeneratorError
    from avatar.procedural.generator import ProceduralGenerator
    from runtime.config import load_config
    from runtime.server import create_app

    class Breaks(ProceduralGenerator):
        frames = 0

        async def __anext__(self):
            Breaks.frames += 1
            if Breaks.frames > 40:
                raise GeneratorError("the face model crashed")
            return await super().__anext__()

    monkeypatch.setattr("avatar.procedural.generator.ProceduralGenerator", Breaks)
    port = free_port()
    app = create_app(load_config(data_dir=tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(600):  # uvicorn has no "started" event to wait on
            if server.started:
                break
            await asyncio.sleep(0.1)
        async with CompanionClient(f"http://127.0.0.1:{port}", keep_video=False) as client:
            error = await client.wait_for("error", 10)
            assert "face stopped" in error["message"]
            client.mic.say(question.pcm, question.sample_rate)
            await client.wait_for("reply", 40)
            started = client.got.first("reply")
            await asyncio.sleep(1.5)
            frames_then = len(client.got.video)
            await asyncio.sleep(1.0)
        assert any(rms > 0.01 for t, rms in client.got.audio_rms if t >= started), "voice goes on"
        assert len(client.got.video) > frames_then, "the last frame keeps being sent"
    finally:
        server.should_exit = True
        await serving
