"""A WebRTC client of ``likeness serve`` (aiortc): for benchmarks, tests and tools.

It speaks the signaling contract (one POST), sends a microphone track that plays
given speech and silence in between, and records what comes back: events from
the ``events`` data channel, audio loudness and video frames, each with arrival
times.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from runtime.rtp_receiver import ArrivalStamps, low_delay_audio
from voice.audio import resample

RATE = 48_000
FRAME = 960  # 20 ms


class SpeechTrack(MediaStreamTrack):
    """A microphone that plays queued speech and silence otherwise, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.float32)
        self._start: float | None = None
        self._sent = 0
        self.speech_ends: list[float] = []  # monotonic times when queued speech finished

    def say(self, pcm: np.ndarray, sample_rate: int) -> float:
        """Queue mono float32 speech; returns its length in seconds."""
        samples = resample(pcm.astype(np.float32), sample_rate, RATE)
        self._queue = np.concatenate([self._queue, samples])
        return len(samples) / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._queue = self._queue[:FRAME], self._queue[FRAME:]
        if len(chunk) and not len(self._queue):
            self.speech_ends.append(time.monotonic())
        chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        frame = av.AudioFrame.from_ndarray(
            (chunk * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


@dataclass
class Received:
    """What the client got back, with ``time.monotonic()`` arrival times.

    ``audio_arrived`` and ``video_arrived`` (with ``stamp_arrivals``) hold, entry for
    entry of ``audio_rms`` and ``video``, when the frame's first packet came off the
    network (:mod:`runtime.rtp_receiver`), before aiortc's jitter buffers delayed it.
    """

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio_rms: list[tuple[float, float]] = field(default_factory=list)
    video: list[tuple[float, np.ndarray]] = field(default_factory=list)
    keep_video: bool = True
    audio_arrived: list[float] = field(default_factory=list)
    video_arrived: list[float] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    def first(self, kind: str, **match: Any) -> float | None:
        for t, e in self.events:
            if e.get("type") == kind and all(e.get(k) == v for k, v in match.items()):
                return t
        return None


VideoHook = Callable[[float, av.VideoFrame], None]


def _or_now(arrived: float | None, now: float) -> float:
    """A frame's network arrival; its delivery time when the packet was not seen."""
    return now if arrived is None else arrived


class CompanionClient:
    """One session with a companion server. Use ``async with CompanionClient(url) as c``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8080``.
        avatar, profile, deployment: sent with the offer when given.
        keep_video: keep every received frame as RGB in ``got.video`` (short tests
            only: a minute of 512² frames is 1.2 GB); otherwise only arrival times.
        configuration: the peer connection's ICE set-up (STUN / TURN servers, relay
            policy). None keeps aiortc's default, which contacts a public STUN host:
            pass ``RTCConfiguration(iceServers=[])`` on a closed network.
        on_video: called with ``(arrival time, frame)`` for every received video
            frame, in the event loop (keep it cheap), e.g. to measure the picture.
        stamp_arrivals: also record when each frame's first packet arrived
            (``got.audio_arrived``, ``got.video_arrived``): what A/V sync is judged on.
        low_delay_audio: receive the voice as a browser does under loss, every frame
            that arrived played (``runtime.rtp_receiver.LowDelayAudio``); False keeps
            aiortc's own buffer, which drops good frames after a loss.
    """

    def __init__(
        self,
        base_url: str,
        avatar: str | None = None,
        keep_video: bool = True,
        profile: str | None = None,
        deployment: str | None = None,
        configuration: RTCConfiguration | None = None,
        on_video: VideoHook | None = None,
        stamp_arrivals: bool = False,
        low_delay_audio: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.avatar = avatar
        self.profile = profile
        self.deployment = deployment
        self.mic = SpeechTrack()
        self.pc = RTCPeerConnection(configuration)
        self.got = Received(keep_video=keep_video)
        self._on_video = on_video
        self._stamp_arrivals = stamp_arrivals
        self._low_delay_audio = low_delay_audio
        self.arrivals: dict[str, ArrivalStamps] = {}  # by kind, with stamp_arrivals
        self.session_id: str | None = None
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> CompanionClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, http_timeout_s: float = 30.0) -> None:
        """POST the offer, apply the answer, start recording.

        Raises:
            httpx.HTTPStatusError: the server refused (400/404/503 ...).
        """
        self.pc.addTrack(self.mic)
        self.pc.addTransceiver("video", direction="recvonly")
        channel = self.channel = self.pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str) -> None:
            with contextlib.suppress(ValueError):
                event = json.loads(message)
                self.got.events.append((time.monotonic(), event))
                if isinstance(event, dict) and event.get("type") == "heartbeat":
                    channel.send(message)  # still here, as the pages answer (heartbeat.js)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receiver = next(r for r in self.pc.getReceivers() if r.track is track)
            if self._low_delay_audio and track.kind == "audio":
                low_delay_audio(receiver)
            if self._stamp_arrivals:  # before media flows: the hook sees every packet
                self.arrivals[track.kind] = ArrivalStamps(receiver)
            reader = self._read_audio if track.kind == "audio" else self._read_video
            self._tasks.append(asyncio.create_task(reader(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.avatar:
            body["avatar"] = self.avatar
        if self.profile:
            body["profile"] = self.profile
        if self.deployment:
            body["deployment"] = self.deployment
        async with httpx.AsyncClient(timeout=http_timeout_s) as http:
            response = await http.post(f"{self.base_url}/api/rtc/offer", json=body)
            response.raise_for_status()
            answer = response.json()
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                rms = float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0
                now = time.monotonic()
                self.got.audio_rms.append((now, rms))
                if (stamps := self.arrivals.get("audio")) is not None:
                    self.got.audio_arrived.append(_or_now(stamps.arrival(frame.pts), now))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                image = frame.to_ndarray(format="rgb24") if self.got.keep_video else np.zeros(0)
                self.got.video.append((now, image))
                if (stamps := self.arrivals.get("video")) is not None:
                    self.got.video_arrived.append(_or_now(stamps.arrival(frame.pts), now))
                if self._on_video is not None:
                    self._on_video(now, frame)

    async def wait_for(
        self, kind: str, within_s: float, since: float | None = None, **match: Any
    ) -> dict[str, Any]:
        """Wait up to ``within_s`` for an event of ``kind`` (matching ``match``); returns it.

        Events already received count too, unless they arrived before ``since``
        (a ``time.monotonic()`` value).

        Raises:
            TimeoutError: none came in time.
        """
        deadline = time.monotonic() + within_s
        seen = 0
        while time.monotonic() < deadline:
            for t, event in self.got.events[seen:]:
                if since is not None and t < since:
                    continue
                if event.get("type") == kind and all(event.get(k) == v for k, v in match.items()):
                    return event
            seen = len(self.got.events)
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {kind} event {match or ''} within {within_s} s")

    async def close(self) -> None:
        """Say goodbye on the data channel, then hang up."""
        with contextlib.suppress(Exception):
            if self.channel.readyState == "open":
                self.channel.send(json.dumps({"type": "end"}))
                await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
