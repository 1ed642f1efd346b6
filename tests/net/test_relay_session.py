"""A real session through NAT and TURN, relay-only, with and without packet loss.

``likeness serve`` runs in the lab's server namespace; an aiortc client, and the chat
page in headless Chromium, in the NAT'd client namespace ask ``POST /api/rtc/ice`` for
their ICE servers (TURN credentials minted per session) and connect with
``iceTransportPolicy = relay`` through coturn. Loss is dropped on the NAT router
(iptables statistic).

The enrolment page's live check connects the same way (``POST /api/consent/enrol/ice``).

CI cost: one server start, three sessions (two aiortc, one page) and the start of one
live check, ~3-4 min on 2 shared cores (the server's start is most of it).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.turn import page_ice, relay_candidates
from tests.conftest import piper_speech, wer
from tests.e2e.test_ceremony_browser import SESSION_COOKIE, png_bytes, until
from tests.net.conftest import TURN_SECRET
from tests.net.relay import (
    RATE,
    RecordingClient,
    chat_page_in_lab,
    chromium_in_lab,
    run_client,
    serve_in_lab,
)
from voice.audio import resample, write_wav
from voice.types import AudioChunk

pytestmark = pytest.mark.slow
# WER of Whisper tiny.en on the reply's voice as received at 5 % loss against the reply's
# text: the target (no loss: 0.00 in 5 of 5 runs).
WER_LIMIT = 0.3
ARTIFACTS = Path(
    os.environ.get(
        "LIKENESS_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
    )
)


@pytest.fixture(scope="module")
def relay_server(module_lab, tmp_path_factory):
    with serve_in_lab(module_lab, tmp_path_factory.mktemp("relay"), TURN_SECRET) as url:
        yield module_lab, url


QUESTION = "Hello! What is your favorite color?"  # Whisper spells it so


@pytest.fixture(scope="module")
def question(piper_tts):
    return piper_speech(piper_tts, QUESTION)


async def _next(client: RecordingClient, after: int, within_s: float, **match: Any) -> int:
    """Index of the first event after index ``after`` matching ``match``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for i in range(after, len(client.got.events)):
            event = client.got.events[i][1]
            if all(event.get(k) == v for k, v in match.items()):
                return i
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no event {match} within {within_s} s")


async def ask(client: RecordingClient, question: AudioChunk) -> dict[str, Any]:
    """Speak ``question``; wait for the whole spoken reply (and any further reply that
    starts within 1.5 s of it, e.g. after a barge-in set off by loss). Returns the
    replies' text, their voice as received (16 kHz) and the video frames meanwhile."""
    await _next(client, 0, 20, type="state", state="listening")
    start = len(client.got.events)
    client.mic.say(question.pcm, question.sample_rate)
    speaking = await _next(client, start, 60, type="state", state="speaking")
    while True:
        done = await _next(client, speaking, 60, type="state", state="listening")
        await asyncio.sleep(1.5)  # the tail of the voice is still in flight
        try:
            speaking = await _next(client, done, 0.01, type="state", state="speaking")
        except TimeoutError:
            break
    events = client.got.events
    # From the end of the question: under loss the "speaking" event (data channel,
    # retransmitted after >= 1 s) can come after the voice it announces.
    t0, t1 = client.mic.speech_ends[-1], events[done][0] + 0.5
    text = " ".join(e["text"] for _, e in events[start:done] if e.get("type") == "reply")
    voice = resample(client.voice_between(t0, t1), RATE, 16_000)
    frames = [t for t, _ in client.got.video if t0 <= t <= t1]
    asked = " ".join(
        e["text"] for _, e in events[start:done] if e.get("type") == "transcript" and e["final"]
    )
    return {"text": text, "voice": voice, "frames": frames, "span_s": t1 - t0, "asked": asked}


def heard(whisper, voice: np.ndarray, name: str) -> str:
    """Whisper on the received voice (also kept as test-artifacts/<name>.wav)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    write_wav(ARTIFACTS / f"{name}.wav", voice, 16_000)
    return whisper.transcribe_sync(AudioChunk(pcm=voice, sample_rate=16_000)).text


def session(
    lab, url: str, question: AudioChunk, loss: float = 0.0, direction: str = "both"
) -> dict[str, Any]:
    """One relay-only session from the client namespace; ``loss`` (``direction`` as in
    :meth:`NetLab.set_loss`) from before the question until the reply has played."""

    async def main() -> dict[str, Any]:
        config = await page_ice(url)
        async with RecordingClient(url, keep_video=False, configuration=config) as client:
            await _next(client, 0, 20, type="state", state="listening")
            await asyncio.to_thread(lab.set_loss, loss, direction)
            try:
                turn = await ask(client, question)
                turn["dropped"] = await asyncio.to_thread(lab.dropped)
            finally:
                await asyncio.to_thread(lab.set_loss, 0.0)
            await asyncio.sleep(1.0)
            turn["state"] = client.pc.connectionState
            turn["offer"] = client.pc.localDescription.sdp
            turn["frames_after"] = [t for t, _ in client.got.video if t > time.monotonic() - 1.0]
            return turn

    return run_client(lab, main)


def test_relay_only_session_through_nat(relay_server, question, whisper):
    lab, url = relay_server
    turn = session(lab, url, question)
    # Only relay candidates were offered, and coturn relayed the NAT'd client (its
    # public side is the router's address) to the server.
    assert relay_candidates(turn["offer"]) >= 1 and " typ host" not in turn["offer"]
    log = lab.coturn.log_text()
    assert f"remote {lab.ip.router_wan}:" in log and f"peer {lab.ip.server}:" in log
    assert turn["state"] == "connected"
    fps = len(turn["frames"]) / turn["span_s"]
    # Media flows: 25 fps sent; 10.7-24.6 fps received over a reply in 9 runs on 2
    # shared cores (the low end with a soak and other test runs beside it, load 12-22).
    assert fps >= 5, fps
    loud = np.abs(turn["voice"]) > 0.02
    assert loud.sum() / 16_000 >= 0.5, "the reply must be audible (0.5 s of voice)"
    error = wer(turn["text"], heard(whisper, turn["voice"], "net-relay-loss0"))
    print(f"relay, no loss: fps {fps:.1f}, WER {error:.2f}: {turn['text']!r}")
    assert error <= 0.3


def test_question_and_reply_stay_intelligible_at_5_percent_loss(relay_server, question, whisper):
    """5 % loss both ways: what the server heard of the question (its transcript), and
    Whisper on the reply's voice as received.

    Before runtime/rtp_receiver.LowDelayAudio, loss on the way up cut the question to
    pieces (aiortc's jitter buffer threw away a quarter of the frames that arrived):
    "Oh, you're the Greek color." for this question, and replies to such transcripts.
    """
    lab, url = relay_server
    turn = session(lab, url, question, 0.05, direction="both")
    assert turn["dropped"] > 0, "the loss rule dropped nothing: the test would prove nothing"
    assert turn["state"] == "connected"
    asked = wer(QUESTION, turn["asked"])
    loud = np.abs(turn["voice"]) > 0.02
    assert loud.sum() / 16_000 >= 0.5, "the reply must be audible (0.5 s of voice)"
    hypothesis = heard(whisper, turn["voice"], "net-relay-loss5")
    error = wer(turn["text"], hypothesis)
    fps = len(turn["frames"]) / turn["span_s"]
    print(
        f"relay, 5% loss both ways: dropped {turn['dropped']}, heard {turn['asked']!r} "
        f"(WER {asked:.2f}), fps {fps:.1f}, reply WER {error:.2f}"
    )
    # The target, for the question as heard and for the reply as received.
    assert asked <= WER_LIMIT, turn["asked"]
    assert error <= WER_LIMIT, (turn["text"], hypothesis)


# Shorter than the page's dead-server timeout (web/static/js/heartbeat.js: DEAD_AFTER_MS
# 1.3 s after the last message, heartbeats every 0.5 s: 0.8 s of outage can already end
# the session): a longer outage is a lost server by design and the page starts a new
# session (video back 1.4-1.8 s after a 2 s burst, 6 runs). With 1.0 s bursts, 1 of 6
# runs reconnected; the other 5 had video back 52-89 ms after.
BURST_S = 0.7


SELECTED_PAIR_JS = """async () => {
  const stats = await likeness.connection._pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId)
      pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((r) => { if (r.type === "candidate-pair" && r.nominated) pair = r; });
  return pair ? stats.get(pair.localCandidateId).candidateType : null;
}"""


async def _frames_per_20ms(page, seconds: float) -> list[tuple[float, int]]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((time.monotonic(), await page.evaluate("likeness.videoFrames()")))
        await asyncio.sleep(0.02)
    return samples


async def loss_burst(page, lab, seconds: float = BURST_S) -> dict[str, float]:
    """Drop every packet for ``seconds``; when did the page's picture move again, and
    is it still the same session?"""

    def fps(samples: list[tuple[float, int]]) -> float:
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    session = await page.evaluate("likeness.sessionId")
    before = await _frames_per_20ms(page, 1.0)
    await asyncio.to_thread(lab.set_loss, 1.0)
    burst = await _frames_per_20ms(page, seconds)
    await asyncio.to_thread(lab.set_loss, 0.0)
    ended = time.monotonic()
    after = await _frames_per_20ms(page, 3.0)
    stalled = burst[-1][1]
    moved = next((t for t, n in after if n > stalled), float("inf"))
    return {
        "fps_before": fps(before),
        "frames_during": burst[-1][1] - burst[len(burst) // 4][1],
        "recovery_s": moved - ended,
        "fps_after": fps([(t, n) for t, n in after if t >= ended + 1.0]),
        "same_session": float(await page.evaluate("likeness.sessionId") == session),
    }


async def _moving(page, seconds: float) -> dict[str, float]:
    """Frames presented per second over ``seconds`` and the longest wait for a new one."""
    samples = await _frames_per_20ms(page, seconds)
    moves = [t for (t, n), (_, m) in zip(samples[1:], samples, strict=False) if n > m]
    edges = [samples[0][0], *moves, samples[-1][0]]
    return {
        "fps": (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]),
        "longest_wait_s": max(b - a for a, b in zip(edges, edges[1:], strict=False)),
    }


async def test_the_page_relay_only_through_nat_survives_loss_and_a_burst(relay_server, tmp_path):
    """The chat page in Chromium, in the NAT'd namespace: ICE servers from the server,
    relay-only; 8 s at 20 % loss keep the session; after all packets are dropped for
    BURST_S the picture moves again within a second.

    (Chromium, not the aiortc client: aiortc's receiver NACKs a gap once and its video
    jitter buffer then waits up to 512 packets behind a retransmission that never comes,
    a freeze of several seconds that a browser does not have.)
    """
    from playwright.async_api import async_playwright

    lab, url = relay_server
    async with async_playwright() as pw:
        browser, page, errors = await chat_page_in_lab(pw, lab, url, tmp_path)
        try:
            assert await page.evaluate("likeness.iceTransportPolicy") == "relay"
            await asyncio.sleep(1.5)
            assert await page.evaluate(SELECTED_PAIR_JS) == "relay"
            session = await page.evaluate("likeness.sessionId")
            await asyncio.to_thread(lab.set_loss, 0.20)
            try:
                lossy = await _moving(page, 8.0)
                dropped = await asyncio.to_thread(lab.dropped)
            finally:
                await asyncio.to_thread(lab.set_loss, 0.0)
            same = await page.evaluate("likeness.sessionId") == session
            reconnects = await page.evaluate("likeness.reconnects")
            await asyncio.sleep(1.0)
            burst = await loss_burst(page, lab)
            connected = await page.evaluate("likeness.connected")
        finally:
            await browser.close()
    print(
        f"page, 20% loss: dropped {dropped}, {lossy['fps']:.1f} fps, longest wait "
        f"{lossy['longest_wait_s'] * 1000:.0f} ms; {BURST_S} s burst: video back "
        f"{burst['recovery_s'] * 1000:.0f} ms after, then {burst['fps_after']:.1f} fps"
    )
    # 20 % loss: the session survives (longest wait for a frame 0.42-0.74 s, 4 runs).
    assert dropped > 0 and same and reconnects == 0
    # 20 % loss, 4 runs: 16.5-19.7 fps; 7.6 fps at load 22: the face keeps moving.
    assert lossy["fps"] >= 3, lossy
    assert burst["fps_before"] >= 5, burst
    # The burst was real: the picture stopped (a frame or two may still be on its way).
    assert burst["frames_during"] <= 2, burst
    assert burst["same_session"] == 1.0, "a short burst must not end the session"
    # Recovery (6 runs of 1.0 s bursts: 52-89 ms, one reconnect): the target is 1 s.
    assert burst["recovery_s"] <= 1.0, burst
    assert burst["fps_after"] >= 5 and connected and not errors, (burst, errors)


def _signed_up(url: str) -> str:
    """A new portal account (made from the client namespace); its session cookie."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        ann = {"email": "ann@example.org", "password": "a long passphrase 42", "display_name": "A"}
        made = http.post("/api/consent/auth/signup", json=ann)
        assert made.status_code == 201, made.text
        return made.cookies[SESSION_COOKIE]  # Secure: httpx keeps it for https only


async def test_the_enrolment_check_connects_relay_only_through_nat(relay_server, tmp_path):
    """A person enrolling from behind a home NAT: the enrolment page asks ``POST
    /api/consent/enrol/ice`` for its ICE servers, connects relay-only through coturn, and
    the live check's verdict arrives on its data channel."""
    from playwright.async_api import async_playwright

    from consent.ceremony.actors import LivePerson, persona

    lab, url = relay_server
    token = await asyncio.to_thread(lab.call, "client", lambda: _signed_up(url), 90)
    photo = png_bytes(LivePerson(persona(0)).photo())
    allocations = lab.coturn.log_text().count("ALLOCATE processed, success")
    async with async_playwright() as pw:
        browser = await chromium_in_lab(pw, lab, url, tmp_path)
        try:
            context = await browser.new_context()
            cookie = {"name": SESSION_COOKIE, "value": token, "url": url, "httpOnly": True}
            await context.add_cookies([{**cookie, "secure": True, "sameSite": "Strict"}])
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            await page.goto(f"{url}/portal/enrol.html")
            await until(page, "likeness.enrol.state === 'choose_photo'", 30)
            image = {"name": "me.png", "mimeType": "image/png", "buffer": photo}
            await page.set_input_files("#photo", files=[image])
            await until(page, "likeness.enrol.state === 'photo_ok'", 120)  # models load now
            await page.click("#start-check")
            await until(page, "likeness.enrol.lastResult", 90)
            config = await page.evaluate("likeness.enrol.rtcConfig")
            result = await page.evaluate("likeness.enrol.lastResult")
        finally:
            await browser.close()
    assert config["iceTransportPolicy"] == "relay", config
    turn = [s for s in config["iceServers"] if any(u.startswith("turn:") for u in s["urls"])]
    assert turn and ":" in turn[0]["username"] and turn[0]["credential"], config
    # The check ran to its verdict and sent it on the data channel, which relay-only
    # could only cross through a relay allocated just now. (Chromium's fake camera
    # shows no face: the verdict is a plain-words failure, never a pass.)
    assert result["type"] == "result" and result["passed"] is False, result
    points = {p["name"]: p for p in result["points"]}
    assert "could not see your face" in points["ceremony"]["reason"], points["ceremony"]
    assert lab.coturn.log_text().count("ALLOCATE processed, success") > allocations
    assert not errors, errors
