"""The stack's known failure modes, guarded: over real aiortc peers (``rtc_loopback``)
and, where only time matters, on the session harness's virtual clock.

- A track whose ``recv()`` raises: aiortc ends it while the connection says "connected";
  ours send a fallback frame and go on, and a session whose track fails for good (or
  ends under it) ends with a reason the client sees on the events channel.
- Inbound tracks nobody reads are drained; the microphone waits in a bounded backlog.
- A client that vanishes without a word ends its session in about two seconds; a
  heartbeat goes the other way, and a stalled event loop is not mistaken for a dead peer.
- A reply far longer than the queues hold waits instead of piling up.

CI cost: 25-40 s on the 2-core machine under load (most of it ICE and DTLS set-up);
the tests over 2.5 s are marked slow.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

from avatar.synthetic import make_demo_avatar
from runtime import components
from runtime.config import load_config
from runtime.inbound import InboundStats, drain, inbound_audio
from runtime.liveness import HEARTBEAT_S, PEER_TIMEOUT_S
from runtime.media import AudioOut, MediaClock, VideoOut
from runtime.session import REPLY_AHEAD_S, Session, SharedModels
from tests.runtime.rtc_loopback import rtc_loopback
from tests.runtime.session_harness import (
    SIZE,
    EnergyVAD,
    FakeASR,
    FakeGenerator,
    FakeLLM,
    FakeTTS,
    Harness,
    run,
)
from voice.vad import TurnDetector


class Broken(RuntimeError):
    """The bug a test plants in a track's recv()."""


def faulty(track: AudioOut | VideoOut, fail: range | None) -> None:
    """Make ``track``'s frame source raise on the calls numbered in ``fail`` (None: all)."""
    produce = track._produce
    calls = 0

    async def produce_or_fail() -> Any:
        nonlocal calls
        calls += 1
        if fail is None or calls in fail:
            raise Broken(f"planted failure {calls}")
        return await produce()

    track._produce = produce_or_fail  # type: ignore[method-assign]


async def arrivals(track: MediaStreamTrack, seconds: float) -> list[float]:
    """Arrival times of the frames a received track delivers for ``seconds`` (stops at its end)."""
    times: list[float] = []
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            await asyncio.wait_for(track.recv(), left)
            times.append(time.monotonic())
    except (TimeoutError, Exception):  # noqa: BLE001 - MediaStreamError or the window ended
        pass
    return times


# ------------------------------------------------------------------ outbound tracks


class PlainRaiser(MediaStreamTrack):
    """An unguarded track (what aiortc's examples write) whose 10th recv() raises."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inner = VideoStreamTrack()

    async def recv(self) -> av.VideoFrame:
        self.calls += 1
        if self.calls == 10:
            raise Broken("planted failure")
        return await self.inner.recv()


async def test_aiortc_ends_a_track_whose_recv_raises_while_the_peer_stays_connected():
    """The failure mode the guard exists for (if aiortc changes this, the guard may go)."""
    track = PlainRaiser()
    async with rtc_loopback(server_tracks=[track]) as link:
        await asyncio.sleep(1.5)  # 10 frames at 30 fps, then nothing
        assert track.calls == 10 and track.readyState == "ended"
        assert link.server.connectionState == "connected"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["audio", "video"])
async def test_a_guarded_track_sends_fallback_frames_and_recovers(kind):
    clock = MediaClock()
    track = AudioOut(clock) if kind == "audio" else VideoOut(clock, fps=25)
    failures: list[tuple[str, int, bool]] = []
    track.on_failure = lambda k, _err, n, fatal: failures.append((k, n, fatal))
    planted = range(20, 30)  # 10 calls in a row: under max_failures
    faulty(track, planted)
    async with rtc_loopback(server_tracks=[track]) as link:
        (received,) = link.client_received
        times = await arrivals(received, 3.0)
        assert track.readyState == "live" and link.server.connectionState == "connected"
    assert failures == [(kind, n, False) for n in range(1, 11)]
    assert track.failures == 10 and not track.gave_up
    # The peer saw no hole: frames kept coming through the failures and after them.
    # 5 runs at load 12-17: audio 132-148 of 150 frames, largest gap 0.07-0.24 s;
    # video 72-75 of 75, largest gap 0.05-0.17 s (an ended track sends nothing at all).
    period = 0.02 if kind == "audio" else 0.04
    print(f"{kind}: {len(times)} frames in 3 s, largest gap {max(np.diff(times)):.3f} s")
    assert len(times) >= 0.6 * 3.0 / period, len(times)
    assert max(np.diff(times)) < 0.5, "the received track stalled"


async def test_a_track_failing_for_good_stops_after_a_second_and_says_so():
    clock = MediaClock()
    track = VideoOut(clock, fps=25)
    fatal: list[bool] = []
    ended = asyncio.Event()
    track.on_failure = lambda _k, _err, _n, is_fatal: fatal.append(is_fatal)
    track.on("ended", ended.set)
    faulty(track, None)
    async with rtc_loopback(server_tracks=[track]) as link:
        started = time.monotonic()
        await asyncio.wait_for(ended.wait(), 5)
        took = time.monotonic() - started
        assert link.server.connectionState == "connected"
    print(f"a track failing for good ended {took:.2f} s after the fault")
    assert track.gave_up and track.readyState == "ended"
    assert fatal == [False] * (VideoOut.max_failures - 1) + [True]
    # 25 frames at 25 fps: 0.90-0.93 s in 5 runs.
    assert 0.8 <= took <= 2.5, f"{VideoOut.max_failures} failed frames took {took:.2f} s"


# ------------------------------------------------------------------ a session over aiortc


class SessionLink:
    """A real Session (scripted models at its edges) sending over real aiortc peers, its
    events on a real "events" data channel, an aiortc silence track as the microphone."""

    def __init__(self, tmp_path: Any, **session: Any) -> None:
        settings = load_config(data_dir=tmp_path)
        options = components.vad_options(settings)
        models = SharedModels(FakeASR([]), FakeTTS(), FakeLLM([]), None)  # type: ignore[arg-type]
        self._channel: Any = None
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.session = Session(
            settings,
            models,
            make_demo_avatar(SIZE),
            FakeGenerator(),  # type: ignore[arg-type]
            self._send,
            turn_detector=lambda: TurnDetector(EnergyVAD(), options),  # type: ignore[arg-type]
            **session,
        )
        self.mic = AudioStreamTrack()

    def _send(self, message: dict[str, Any]) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(message))

    async def __aenter__(self) -> SessionLink:
        s = self.session
        self._link = rtc_loopback(
            server_tracks=[s.audio_out, s.video_out], client_tracks=[self.mic], events=True
        )
        self.link = await self._link.__aenter__()
        self._channel = self.link.server_channel
        self.link.server_channel.on("message", lambda _m: s.liveness.client_alive())
        self.link.client_channel.on(
            "message", lambda m: self.events.append((time.monotonic(), json.loads(m)))
        )
        s.start(self.link.server_received[0])
        self.video = self.link.client_received[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.close("test over")
        await self._link.__aexit__(*exc)

    async def event(self, kind: str, within: float, **match: Any) -> tuple[float, dict]:
        end = time.monotonic() + within
        while time.monotonic() < end:
            for t, e in self.events:
                if e.get("type") == kind and all(e.get(k) == v for k, v in match.items()):
                    return t, e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind} {match} within {within} s: {self.events[-5:]}")


async def test_a_session_recovers_from_a_failing_video_recv_and_tells_the_client(tmp_path):
    async with SessionLink(tmp_path) as s:
        await s.event("state", 5, state="listening")
        faulty(s.session.video_out, range(1, 6))  # the next five frames fail
        _, error = await s.event("error", 5)
        after = await arrivals(s.video, 1.5)
        assert not s.session.closed.is_set()
    print(f"{len(after)} frames in the 1.5 s after the failures")
    assert error["message"] == "the face stalled; recovering"
    # 32-40 frames of the 37 due in 5 runs (load 12-17).
    assert len(after) >= 20, "video frames must keep arriving after the failures"


async def test_a_session_whose_video_fails_for_good_ends_with_a_reason(tmp_path):
    async with SessionLink(tmp_path) as s:
        await s.event("state", 5, state="listening")
        broke = time.monotonic()
        faulty(s.session.video_out, None)
        ended_at, ended = await s.event("state", 5, state="ended")
        assert s.session.closed.is_set()
    print(f"the session ended {ended_at - broke:.2f} s after its video broke for good")
    assert ended["reason"] == "video track failed"
    # 25 failed frames (1 s): 0.97-0.99 s in 5 runs.
    assert ended_at - broke <= 2.5, f"ended {ended_at - broke:.2f} s after the fault"


async def test_a_track_the_sender_stops_ends_the_session(tmp_path):
    """aiortc's sender stops the track after any exception of its own (an encoder error)."""
    async with SessionLink(tmp_path) as s:
        await s.event("state", 5, state="listening")
        s.session.audio_out.stop()
        _, ended = await s.event("state", 3, state="ended")
    assert ended["reason"] == "audio track ended"


@pytest.mark.slow
async def test_a_client_that_vanishes_ends_its_session_in_about_two_seconds(tmp_path):
    async with SessionLink(tmp_path) as s:
        await s.event("state", 5, state="listening")
        await s.event("heartbeat", 2)
        s.link.client_channel.send(json.dumps({"type": "heartbeat"}))
        s.mic.stop()  # no more audio, no more messages: gone without a word
        gone = time.monotonic()
        await asyncio.wait_for(s.session.closed.wait(), 6)
        took = time.monotonic() - gone
    print(f"a vanished client's session ended {took:.2f} s after its last packet left")
    assert s.session.liveness.ended_by == "client gone"
    # The rule: 2 s of silence, checked every 0.25 s (+ Opus' last packets in flight):
    # 2.01-2.26 s in 5 runs.
    assert PEER_TIMEOUT_S <= took <= PEER_TIMEOUT_S + 1.0, f"ended {took:.2f} s after"


# ------------------------------------------------------------------ inbound tracks


@pytest.mark.slow
async def test_an_unread_camera_track_grows_and_a_drained_one_does_not():
    async with rtc_loopback(client_tracks=[VideoStreamTrack(), VideoStreamTrack()]) as link:
        unread, drained = link.server_received
        task = asyncio.create_task(drain(drained))
        sizes = []
        for _ in range(10):
            await asyncio.sleep(0.25)
            sizes.append((unread._queue.qsize(), drained._queue.qsize()))
        task.cancel()
    # 30 fps for 2.5 s: aiortc queued every decoded frame of the unread track (77-80
    # after 2.5 s in 5 runs, growing ~30/s); the drained one held 0-1.
    print("queued frames (unread, drained) every 0.25 s:", sizes)
    assert sizes[-1][0] >= 30, sizes
    assert max(d for _, d in sizes) <= 3, sizes


async def test_the_microphone_backlog_is_bounded_when_the_listener_falls_behind():
    stats = InboundStats()
    async with rtc_loopback(client_tracks=[AudioStreamTrack()]) as link:
        (mic,) = link.server_received
        stream = inbound_audio(mic, backlog=10, stats=stats)
        pts = []
        for _ in range(20):  # a listener 5x slower than real time
            pts.append((await anext(stream)).pts)
            await asyncio.sleep(0.1)
        queued = mic._queue.qsize()
        await stream.aclose()
    print(f"backlog {stats.max_backlog}, dropped {stats.dropped}, aiortc queue {queued}")
    assert stats.max_backlog == 10 and stats.dropped > 0
    # 5 runs: backlog 10, 70-77 dropped of ~100 arrived, aiortc's queue 0.
    assert queued <= 2, "aiortc's own queue is emptied as frames arrive"
    # Dropped to catch up, so not made up again (that would keep the listener behind).
    assert stats.dropped_samples == 960 * stats.dropped and stats.concealed_s == 0.0
    assert np.allclose(np.diff(pts), 0.02), "the chunks read follow on, gapless"


# ------------------------------------------------------------------ virtual clock


def test_heartbeats_every_half_second_and_a_vanished_page_ends_after_two(tmp_path):
    async def scenario(clock):
        async with Harness(clock, tmp_path) as h:
            await h.until(3.0)
            h.mic.vanish()
            gone = clock.t
            ended_at, ended = await h.wait_for("state", 10, state="ended")
            beats = [t for t, e in h.events if e["type"] == "heartbeat"]
            return gone, ended_at, ended, beats

    gone, ended_at, ended, beats = run(scenario)
    assert ended["reason"] == "client gone"
    # Exact on the virtual clock: 2 s after the last frame (20 ms before the vanishing),
    # seen at the watchdog's next 0.25 s tick.
    assert PEER_TIMEOUT_S - 0.05 <= ended_at - gone <= PEER_TIMEOUT_S + 0.25
    assert np.allclose(np.diff(beats), HEARTBEAT_S)


def test_heartbeats_from_the_page_keep_a_silent_microphone_until_the_media_timeout(tmp_path):
    async def scenario(clock):
        async with Harness(clock, tmp_path, config={"server": {"media_timeout_s": 6}}) as h:
            await h.until(1.0)
            h.mic.vanish()
            gone = clock.t
            while not h.session.closed.is_set():
                h.session.liveness.client_alive()  # the page's heartbeat goes on
                await asyncio.sleep(HEARTBEAT_S)
            return gone, h.first("state", state="ended")

    gone, (ended_at, ended) = run(scenario)
    assert ended["reason"] == "no media"
    assert gone + 6 <= ended_at <= gone + 6 + 0.3  # media_timeout_s after the last frame


def test_a_stalled_event_loop_is_not_taken_for_a_vanished_page(tmp_path):
    async def scenario(clock):
        async with Harness(clock, tmp_path) as h:
            await h.until(2.0)
            clock.t += 3.0  # the loop stood still for 3 s (the host was busy)
            await h.until(clock.t + 2.0)
            return h.session.closed.is_set()

    assert run(scenario) is False


@pytest.mark.slow
def test_a_reply_longer_than_the_queues_waits_instead_of_piling_up(tmp_path):
    words = " ".join(["word"] * 150) + "."  # 30 s of speech at 0.2 s a word
    peak = {"audio": 0.0, "face": 0.0}

    async def sample(h: Harness, clock: Any) -> None:
        while True:
            s = h.session
            peak["audio"] = max(peak["audio"], s.audio_out.queued_until - clock.now())
            pushed = sum(seg.pushed for seg in h.generator.segments)
            shown = sum(seg.shown for seg in h.generator.segments) / h.generator.fps
            peak["face"] = max(peak["face"], pushed - shown)
            await asyncio.sleep(0.05)

    async def scenario(clock):
        async with Harness(clock, tmp_path, ["Tell me everything."], [words]) as h:
            sampler = asyncio.create_task(sample(h, clock))
            h.mic.say(1.0, at=0.5)
            await h.wait_for("reply")
            assert h.session._reply is not None
            await h.session._reply  # the whole reply pushed (it waited for the queues)
            await h.until(h.session.audio_out.queued_until + 0.5)
            sampler.cancel()
            return h.sinks.speech(), h.tts.blocks

    speech, blocks = run(scenario)
    print("peaks (s of speech waiting):", peak)
    # Bounded: at most REPLY_AHEAD_S of speech waits, plus the word (0.2 s) being pushed.
    assert peak["audio"] <= REPLY_AHEAD_S + 0.25, peak
    assert peak["face"] <= REPLY_AHEAD_S + 0.25, peak
    # Nothing dropped: every block of the 30 s reply was played, in order, once.
    played = [b for _, b in speech]
    assert played == list(range(blocks)), (len(played), blocks)


async def test_frames_the_listener_has_not_taken_yet_still_show_a_live_client():
    """The reader takes frames off the track while the listener awaits Whisper (the end
    of a turn on a loaded machine): the client is there. Found by ``bench soak``, whose
    sessions ended as "client gone" at a turn's end under load."""
    from runtime.liveness import SessionLiveness

    ended: list[str] = []
    live = SessionLiveness("s", lambda _e: None, ended.append, 20.0, peer_timeout_s=0.4)
    tasks: list[asyncio.Task] = []
    live.start(lambda coro, _name: tasks.append(asyncio.ensure_future(coro)))
    for _ in range(60):  # 1.2 s of frames that reach the reader, none the listener
        live.inbound.frames += 1
        await asyncio.sleep(0.02)
    assert ended == []
    await asyncio.sleep(0.8)  # no frames at all: now the client is gone
    assert ended == ["client gone"]
    live.closed = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
