"""The live ceremony over WebRTC: the page's camera, microphone and data channel in,
prompts out, one :class:`~consent.ceremony.engine.Ceremony` judging as media arrives.

The portal's ``POST /api/consent/enrol/ceremony`` opens a ceremony
(``Enrolment.open_ceremony``) and hands it here with the page's offer. Life::

    answer = await start(opened, offer_sdp, ice_servers)   # check_offer() first: 400s
    # the page sets the answer; from now on everything runs in a background task

Wire protocol on the data channel labelled ``"ceremony"`` (JSON text messages):

- server → page ``{"type": "prompt", "id", "kind", "text", ...}``
  (:meth:`consent.ceremony.plan.Prompt.to_json`), one at a time, at moments the
  ceremony picks;
- page → server ``{"type": "shown", "id": N, "since_shown_ms": x}`` once prompt N is on
  the screen (x: how long ago it was painted, for a flash its first colour);
- server → page ``{"type": "result", "passed", "liveness_id", "avatar_id", "points":
  [{"name", "passed", "reason"}], "retry"}`` at the end, then the server hangs up
  (``retry``: only the screen light failed, too weak to judge: try again brighter).

Clocks: every time handed to the ceremony is this server's monotonic clock. A video
frame's capture time is its RTP timestamp plus an offset (arrival minus timestamp),
and the audio's is its sample count plus one (48 kHz → 16 kHz mono with soxr, one
continuous stream, lost packets filled with silence). Each offset is fixed when the
first prompt goes out, so network jitter does not move capture times while anything is
being judged; until then it follows the fastest packet seen (a first frame held up by
a warming camera or a keyframe request would otherwise shift every later time), and
audio waits for it. An acknowledgement's time is its arrival here.

Threads: the event loop only receives and sends. Every call into the ceremony (face
analysis, Whisper) runs in one worker thread per ceremony, holding the service's model
lock; while it is busy only the newest video frame waits (older ones are dropped and
counted), audio and acknowledgements queue in full. Pixels never leave that worker and
nothing is written to disk.

Ends: every prompt answered or one failed (the ceremony decides), ``deadline_s`` passed,
no media or channel within ``connect_s``, the peer hung up, or a track failed; each
early end is judged with its reason (``Ceremony.stop``) and recorded as a failed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr
import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from consent.ceremony.plan import Prompt
from consent.liveness.result import LivenessResult

if TYPE_CHECKING:
    from consent.enrolment import OpenCeremony
    from consent.store import LivenessInfo

log = structlog.get_logger("likeness.ceremony")
CHANNEL = "ceremony"
RATE = 16_000
_RUNNING: set[asyncio.Task] = set()


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How the live driver paces and bounds one ceremony.

    Attributes:
        deadline_s: the whole ceremony, from the answer on, at most this long.
        connect_s: the data channel open and the first video frame within this long.
        poll_s: the ceremony is asked for due prompts at least this often (and on every
            frame and acknowledgement).
        max_side: frames larger than this (longest side) are shrunk before judging.
        max_gap_s: lost audio up to this long is filled with silence (longer: not).
        hang_up_s: after the result, wait this long for the page to close first.
    """

    deadline_s: float = 90.0
    connect_s: float = 20.0
    poll_s: float = 0.04
    max_side: int = 640
    max_gap_s: float = 1.0
    hang_up_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.poll_s <= 0.2:
            raise ValueError("LiveOptions.poll_s must be in (0, 0.2] seconds")
        if not 0 < self.connect_s <= self.deadline_s:
            raise ValueError("LiveOptions: need 0 < connect_s <= deadline_s")


def check_offer(sdp: Any) -> None:
    """Refuse an offer the ceremony cannot use, in plain words.

    Raises:
        ValueError: not an SDP offer, or it lacks a camera, a microphone or the data
            channel (the message is for the person).
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise ValueError("The offer is not a WebRTC session description: reload the page.")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises whatever the text trips
        raise ValueError(
            "The offer could not be read (malformed session description): reload the page."
        ) from None
    sending = {m.kind for m in parsed.media if m.direction in (None, "sendrecv", "sendonly")}
    kinds = {m.kind for m in parsed.media}
    missing = []
    if "video" not in sending:
        missing.append("a camera")
    if "audio" not in sending:
        missing.append("a microphone")
    if "application" not in kinds:
        missing.append("the data channel")
    if missing:
        raise ValueError(
            f"The offer lacks {' and '.join(missing)}: allow the camera and microphone, "
            "then start the live check again."
        )


async def start(
    opened: OpenCeremony, sdp: str, ice_servers: Sequence[RTCIceServer | str] | None = None
) -> tuple[RTCSessionDescription, LiveCeremony]:
    """Answer the page's offer and run the ceremony in the background.

    Args:
        opened: from ``Enrolment.open_ceremony``; closed here whatever happens.
        sdp: the page's offer (call :func:`check_offer` first for a plain 400).
        ice_servers: the server peer's STUN/TURN servers (``RTCIceServer``, TURN
            credentials included: ``runtime.turn.IceProvider.aiortc_servers``; a plain
            URL string still works); always a list, so aiortc contacts no public STUN
            server of its own.

    Returns:
        The answer to send back to the page, and the running ceremony (its figures:
        ``frames``, ``dropped``, ``result_at``...).

    Raises:
        ValueError: the offer could not be negotiated (``opened`` is closed).
    """
    servers = [
        s if isinstance(s, RTCIceServer) else RTCIceServer(urls=s) for s in ice_servers or []
    ]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    live = LiveCeremony(pc, opened)
    try:
        answer = await live.answer(sdp)
    except Exception as err:
        await pc.close()
        opened.close()
        raise ValueError(f"The offer could not be used: {err}") from None
    task = asyncio.create_task(live.run(), name=f"ceremony-{opened.id}")
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return answer, live


class LiveCeremony:
    """One ceremony driven over one peer connection (see the module doc).

    Args:
        pc: a new peer connection (the page's offer is applied by :meth:`answer`).
        opened: the opened ceremony: its judge, model lock, ``finish`` and ``close``.
        options: pacing and bounds; None uses the defaults.
        clock: the server clock handed to the ceremony (monotonic seconds).
        wall: unix seconds, for the stored record.

    Call :meth:`answer` with the offer, then run :meth:`run` as a task; it returns the
    result and leaves the connection closed and ``opened`` closed.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        opened: OpenCeremony,
        options: LiveOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.pc = pc
        self.opened = opened
        self.options = options or LiveOptions()
        self._clock = clock
        self._wall = wall
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"ceremony-{opened.id}")
        self._channel: Any = None
        self._frame: tuple[float, Any] | None = None  # newest (time, av.VideoFrame)
        self._audio: list[tuple[int, np.ndarray]] = []  # (16 kHz sample index, pcm)
        self._fixed = False  # the clock offsets are fixed (the first prompt went out)
        self._video_origin: float | None = None
        self._audio_origin: float | None = None
        self._acks: list[tuple[int, float, float]] = []
        self._wake = asyncio.Event()
        self._page_closed = asyncio.Event()
        self._ended: str | None = None  # why the ceremony must stop early
        self._readers: list[asyncio.Task] = []
        self._first_frame: float | None = None
        self.result: LivenessResult | None = None
        self.record: LivenessInfo | None = None
        self.frames = 0
        self.dropped = 0
        self.last_prompt_at: float | None = None
        self.result_at: float | None = None

    # ---- signaling --------------------------------------------------------------------

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Apply the offer, receive its tracks and channel, and return the answer."""
        check_offer(sdp)
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != CHANNEL or self._channel is not None:
                return
            self._channel = channel
            channel.on("message", self._on_message)
            channel.on("close", self._on_close)
            self._wake.set()

        @pc.on("track")
        def on_track(track: Any) -> None:
            reader = self._read_video if track.kind == "video" else self._read_audio
            if any(t.get_name() == track.kind for t in self._readers):
                return  # one camera and one microphone
            self._readers.append(asyncio.create_task(reader(track), name=track.kind))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._end("The connection was lost during the live check: start again.")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate
        return pc.localDescription

    def _on_message(self, message: Any) -> None:
        arrived = self._clock()
        try:
            body = json.loads(message)
            if body.get("type") != "shown":
                return
            prompt_id = int(body["id"])
            since = float(body.get("since_shown_ms", 0.0)) / 1000.0
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        self._acks.append((prompt_id, arrived, since if math.isfinite(since) else 0.0))
        self._wake.set()

    def _settle(self, origin: float | None, transit: float) -> float:
        """The clock offset: the smallest transit until fixed, then fixed."""
        if origin is None or (not self._fixed and transit < origin):
            return transit
        return origin

    def _on_close(self) -> None:
        self._page_closed.set()
        self._end("The page closed the live check.")

    def _track_ended(self, reason: str) -> None:
        # A page that hangs up ends its tracks a moment before its channel: wait for that
        # moment, so the reason names what happened.
        asyncio.get_running_loop().call_later(0.5, self._end, reason)

    def _end(self, reason: str) -> None:
        if self._ended is None and self.result is None:
            self._ended = reason
            self._wake.set()

    # ---- media ------------------------------------------------------------------------

    async def _read_video(self, track: Any) -> None:
        unwrap = _Unwrap()
        try:
            while True:
                frame = await track.recv()
                arrived = self._clock()
                if frame.pts is None or frame.time_base is None:
                    t = arrived
                else:
                    at = unwrap(frame.pts) * float(frame.time_base)
                    self._video_origin = self._settle(self._video_origin, arrived - at)
                    t = self._video_origin + at
                if self._first_frame is None:
                    self._first_frame = arrived
                if self._frame is not None:
                    self.dropped += 1
                self._frame = (t, frame)
                self._wake.set()
        except MediaStreamError:
            self._track_ended("The camera stopped sending pictures: check it, then start again.")

    async def _read_audio(self, track: Any) -> None:
        stream: Any = None
        rate = 0
        taken = 0.0  # seconds of sound received (and filled in) so far
        expected: int | None = None  # the next frame's pts, in samples
        unwrap = _Unwrap()
        sent = 0  # 16 kHz samples handed on so far
        try:
            while True:
                frame = await track.recv()
                arrived = self._clock()
                if stream is None or frame.sample_rate != rate:
                    rate = frame.sample_rate
                    stream = soxr.ResampleStream(rate, RATE, 1, dtype="float32")
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray().reshape(-1, channels).astype(np.float32).mean(axis=1)
                if frame.format.name.startswith("s16"):
                    pcm /= 32768.0
                pts = None if frame.pts is None else unwrap(frame.pts)
                if pts is not None and expected is not None:
                    gap = pts - expected
                    if 0 < gap <= self.options.max_gap_s * rate:
                        pcm = np.concatenate([np.zeros(gap, np.float32), pcm])
                if pts is not None:
                    expected = pts + frame.samples
                taken += len(pcm) / rate
                self._audio_origin = self._settle(self._audio_origin, arrived - taken)
                out = stream.resample_chunk(pcm)
                if len(out):
                    self._audio.append((sent, out))
                    sent += len(out)
        except MediaStreamError:
            self._track_ended("The microphone stopped sending sound: check it, then start again.")

    # ---- the judge --------------------------------------------------------------------

    async def run(self) -> LivenessResult:
        """Judge until the ceremony ends; record, tell the page, hang up (see module doc)."""
        loop = asyncio.get_running_loop()
        opts = self.options
        began = self._clock()
        log.info("ceremony started", ceremony=self.opened.id)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), opts.poll_s)
                self._wake.clear()
                reason = self._ended or self._overdue(began)
                if reason is not None:
                    await loop.run_in_executor(self._pool, self._stop, reason)
                    break
                frame, self._frame = self._frame, None
                audio: list[tuple[float, np.ndarray]] = []
                if self._fixed and self._audio_origin is not None:  # sound waits for it
                    origin = self._audio_origin
                    audio = [(origin + i / RATE, pcm) for i, pcm in self._audio]
                    self._audio = []
                acks, self._acks = self._acks, []
                ready = self._channel is not None and self._channel.readyState == "open"
                try:
                    prompts, finished = await loop.run_in_executor(
                        self._pool, self._step, frame, audio, acks, ready
                    )
                except Exception as err:  # a bug or a model failure: judged, recorded
                    log.error("ceremony step failed", ceremony=self.opened.id, error=repr(err))
                    reason = "The server could not judge the live check: start again."
                    await loop.run_in_executor(self._pool, self._stop, reason)
                    break
                for prompt in prompts:
                    self._fixed = True
                    self._send(prompt.to_json())
                    self.last_prompt_at = self._clock()
                if finished:
                    break
            result, record, retry = await loop.run_in_executor(self._pool, self._finish)
            self.result_at = self._clock()
            self._send(
                {
                    "type": "result",
                    "passed": result.passed,
                    "liveness_id": None if record is None else record.id,
                    "avatar_id": self.opened.avatar_id,
                    "points": [
                        {"name": p.name, "passed": p.passed, "reason": p.reason}
                        for p in result.points
                    ],
                    "retry": retry,
                }
            )
            log.info(
                "ceremony ended",
                ceremony=self.opened.id,
                passed=result.passed,
                failed=[p.name for p in result.failures],
                seconds=round(self._clock() - began, 2),
                frames=self.frames,
                dropped=self.dropped,
            )
            return result
        finally:
            await self._hang_up()
            await asyncio.to_thread(self._pool.shutdown, True)
            self.opened.close()

    def _overdue(self, began: float) -> str | None:
        opts = self.options
        elapsed = self._clock() - began
        if elapsed > opts.deadline_s:
            return "The live check took too long: start again."
        connected = self._channel is not None and self._first_frame is not None
        if not connected and elapsed > opts.connect_s:
            return (
                "We could not connect to your camera and microphone: check the connection, "
                "then start again."
            )
        return None

    def _step(
        self,
        frame: tuple[float, Any] | None,
        audio: list[tuple[float, np.ndarray]],
        acks: list[tuple[int, float, float]],
        ready: bool,
    ) -> tuple[list[Prompt], bool]:
        """One turn of the worker: acks, audio, the newest frame, then due prompts."""
        rgb = None
        if frame is not None:
            rgb = self._rgb(frame[1])
            self.frames += 1
        ceremony = self.opened.ceremony
        with self.opened.lock:
            for prompt_id, at, since in acks:
                ceremony.shown(prompt_id, at, since)
            for t, pcm in audio:
                ceremony.push_audio(t, pcm)
            if frame is not None and rgb is not None:
                ceremony.push_frame(frame[0], rgb)
            prompts = ceremony.poll(self._clock()) if ready else []
            return prompts, ceremony.finished

    def _rgb(self, frame: Any) -> np.ndarray:
        side = max(frame.width, frame.height)
        if side > self.options.max_side:
            scale = self.options.max_side / side
            w, h = round(frame.width * scale) // 2 * 2, round(frame.height * scale) // 2 * 2
            return frame.to_ndarray(format="rgb24", width=w, height=h)
        return frame.to_ndarray(format="rgb24")

    def _stop(self, reason: str) -> None:
        with self.opened.lock:
            self.opened.ceremony.stop(reason, self._clock())

    def _finish(self) -> tuple[LivenessResult, LivenessInfo | None, bool]:
        ceremony = self.opened.ceremony
        with self.opened.lock:
            result = ceremony.result
            assert result is not None
            light = ceremony.light_result()
        self.result = result
        # A dim screen is a reason to try again, not a verdict, unless something else failed.
        failed = {p.name for p in result.failures}
        retry = bool(light is not None and light.retry and failed == {"screen_light"})
        try:
            self.record = self.opened.finish(result, self._wall())
        except Exception as err:  # the person still hears why; the record is missing
            log.error("ceremony not recorded", ceremony=self.opened.id, error=str(err))
            self.record = None
        return result, self.record, retry

    # ---- the channel ------------------------------------------------------------------

    def _send(self, body: dict) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(body))

    async def _hang_up(self) -> None:
        if self._channel is not None and self.result is not None:
            # Let the result reach the page; it closes first when it has read it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._page_closed.wait(), self.options.hang_up_s)
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await reader


class _Unwrap:
    """RTP timestamps are 32-bit: count the wraps so time keeps going forward."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._base = 0

    def __call__(self, pts: int) -> int:
        if self._last is not None and pts - self._last < -(1 << 31):
            self._base += 1 << 32
        self._last = pts
        return pts + self._base


__all__ = ["CHANNEL", "LiveCeremony", "LiveOptions", "check_offer", "start"]
