"""One live conversation: browser audio in; the companion's voice and face out.

Stages (each an asyncio task owned by the session)::

    inbound audio ─▶ TurnDetector.run ─▶ on SpeechStarted while speaking: barge-in
                                      ─▶ on TurnEnded: ASR ─▶ distress check ─▶ reply task
    reply task:  speak_reply (LLM sentences → TTS chunks) ─▶ generator.push_audio
                 (the audio is held until the generator's first frame of the segment)
    video task:  generator frames ─▶ media time ─▶ VideoOut.put; schedules the held audio
                 on AudioOut at the same media time, so lips and sound share one clock
    consent task (a real person's face): re-asks the admission when the revocation
                 epoch moves or the grant expires; a refusal, or a database that does
                 not answer (fail closed), withdraws the face
    liveness:    a heartbeat to the client; the session ends when the client is silent
                 or an outbound track fails (:mod:`runtime.liveness`)

Where a reply's audio and frames land in media time is decided by the pure
:class:`runtime.segment_clock.SegmentClock`; the session applies its answers to the
tracks. Latency stamps are kept by :class:`runtime.latency.TurnLatencies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from avatar.base import AvatarGenerator
from avatar.errors import AvatarError
from avatar.types import EndOfSegment, PreparedAvatar, VideoFrame
from consent.watermark import payload_of
from runtime import components
from runtime.admission import Admission, AdmissionCheck, hold_admission
from runtime.config import Settings
from runtime.dialogue.base import DialogueBackend
from runtime.dialogue.speak import speak_reply
from runtime.errors import LikenessError
from runtime.frames import TurnLatency
from runtime.inbound import drain, inbound_audio
from runtime.label import frame_stamp
from runtime.latency import TimedBackend, TurnLatencies
from runtime.liveness import PEER_TIMEOUT_S, SessionLiveness
from runtime.logs import get_logger
from runtime.media import AudioOut, MediaClock, VideoOut
from runtime.safety import DistressDetector
from runtime.segment_clock import Segment, SegmentClock
from voice.asr import WhisperASR
from voice.errors import VoiceError
from voice.tts.base import TTSBackend
from voice.types import SpeechChunk
from voice.vad import SpeechStarted, TurnDetector, TurnEnded

if TYPE_CHECKING:
    from avatar.pipelines.scheduler import ChunkEngine

__all__ = ["Session", "SharedModels"]

log = get_logger("likeness.session")
# The video task sleeps when frames are mapped further ahead than this: idle frames stay
# close to now (speech can take over at once); speaking frames may run further ahead.
IDLE_AHEAD_S = 0.12
SPEAKING_AHEAD_S = 1.0
REPLY_AHEAD_S = 8.0  # a reply waits while this much is unplayed: its queues stay bounded
APOLOGY = "I'm sorry, I had trouble answering that. Could you say it again?"


@dataclass
class SharedModels:
    """What every session of a process shares (loaded once, heavy)."""

    asr: WhisperASR
    tts: TTSBackend
    dialogue: DialogueBackend
    detector: DistressDetector | None
    avatar_engine: ChunkEngine | None = None  # the shared neural model, if any


class Session:
    """A live conversation. Build it, ``start()`` it with the inbound audio track,
    send ``audio_out``/``video_out`` to the peer, and ``close()`` it at the end.

    Args:
        settings: the effective config.
        models: shared models.
        avatar: the admitted (or synthetic) face to animate.
        generator: that face's generator (the session owns it from now on: it closes it).
        send_event: callable that sends one JSON-able event to the client.
        on_latency: called with each finished turn's TurnLatency (metrics).
        on_close: called with the session id once it closed (by itself or not).
        consent: for a real person's face, its admission (asked and allowed), re-asked
            whenever the revocation epoch moves; None for the synthetic face.
        clock: the media clock of both tracks (a fresh :class:`MediaClock` by default).
        turn_detector: makes the session's end-of-turn detector (blocking: it loads
            Silero; called in a worker thread). Default: ``components.turns``.
        peer_timeout_s: the client counts as gone after this long without a message
            or inbound media (once it was heard).
    """

    def __init__(
        self,
        settings: Settings,
        models: SharedModels,
        avatar: PreparedAvatar,
        generator: AvatarGenerator,
        send_event: Callable[[dict[str, Any]], None],
        *,
        on_latency: Callable[[TurnLatency], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        consent: AdmissionCheck | None = None,
        clock: MediaClock | None = None,
        turn_detector: Callable[[], TurnDetector] | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.settings = settings
        self.models = models
        self.avatar = avatar
        self.person = f"session-{self.id}"
        self._send = send_event
        self._on_close = on_close
        self.consent = consent
        self._turn_detector = turn_detector or partial(components.turns, settings, models.asr)
        self._withdrawn = False
        self.generator = generator
        self.fps = generator.fps
        self.clock = clock or MediaClock()
        self.audio_out = AudioOut(self.clock)
        # Every frame sent says what it is, visibly, and invisibly: the grant id (or
        # "synthetic") in a watermark.
        self.stamp = frame_stamp(settings, self._grant_id(), generator.size)
        self.video_out = VideoOut(
            self.clock, fps=self.fps, initial=self.stamp.apply(self._rest_image())
        )
        self.latencies = TurnLatencies(self.id, self._event, self._stats, on_latency)
        self.audio_out.on_first_speech = self.latencies.audio_started
        self.video_out.on_frame_sent = self.latencies.frame_sent
        self.conversation = components.conversation(
            settings, TimedBackend(models.dialogue, self.latencies.first_piece)
        )
        self.segments = SegmentClock(self.fps)
        self.state = "listening"
        self.closed = asyncio.Event()
        self.liveness = SessionLiveness(  # companion: liveness.client_alive() per message
            self.id, self._event, self._end_soon, settings.server.media_timeout_s, peer_timeout_s
        )
        self.liveness.guard(self.audio_out, self.video_out)
        self._tasks: set[asyncio.Task] = set()
        self._reply: asyncio.Task | None = None
        self._turn = 0
        self._generator_alive = True
        self._timers: list[asyncio.TimerHandle] = []  # reply captions due when spoken

    def drain(self, track: Any) -> None:
        """Read an inbound track the session does not use (a camera), dropping its frames."""
        self._spawn(drain(track), f"drain-{track.kind}")

    def _grant_id(self) -> str | None:
        """The grant the face is shown under (None: the synthetic avatar)."""
        face = self.consent.face if self.consent is not None else None
        if face is None:
            if not self.avatar.synthetic:
                raise ValueError("a real person's face needs its admission (consent=...)")
            return None
        if face.grant_id is None:
            raise ValueError("ask the admission (and get an allowed answer) first")
        return face.grant_id

    def _rest_image(self) -> np.ndarray:
        """The face at rest, at the output size: shown until the first frame."""
        size, image = self.generator.size, self.avatar.image
        if image.shape[0] == size:
            return image
        import cv2

        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)

    # ------------------------------------------------------------------ lifecycle

    def start(self, inbound_track: Any) -> None:
        """Start listening to ``inbound_track`` and producing video."""
        self.liveness.start(self._spawn)  # the heartbeat and the watchdog
        self._spawn(self._listen(inbound_track), "listen")
        self._spawn(self._video(), "video")
        if self.consent is not None and self.consent.face is not None:
            self._spawn(self._watch_consent(self.consent), "consent")
        self._event({"type": "state", "state": "listening"})

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        err = None if task.cancelled() else task.exception()
        if err is not None:
            log.error("session task failed", session=self.id, task=task.get_name(), error=repr(err))

    async def close(self, reason: str = "closed") -> None:
        """Stop every task and release the generator; safe to call twice."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.liveness.closed = True
        self._event({"type": "state", "state": "ended", "reason": reason})
        for timer in self._timers:
            timer.cancel()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.generator.aclose()
        if not self.settings.server.keep_session_memory:
            with contextlib.suppress(OSError):
                self.conversation.memory.forget(self.person)
        self.audio_out.stop()
        self.video_out.stop()
        log.info("session closed", session=self.id, reason=reason)
        if self._on_close is not None:
            self._on_close(self.id)

    async def _watch_consent(self, consent: AdmissionCheck) -> None:
        """The face's use, audited; re-asked when the epoch moves or the grant expires.
        A re-check the database does not answer within ``consent.blind_after_s`` ends it."""
        s = self.settings.consent
        await hold_admission(
            consent,
            self.id,
            s.recheck_ms / 1000,
            self._follow_grant,
            self.withdraw,
            blind_after_s=s.blind_after_s,
        )

    def _follow_grant(self, admission: Admission) -> None:
        """Still allowed, maybe under another grant: from now on the frames carry the
        grant in use (called in a worker thread; the swap is one assignment)."""
        mark = self.stamp.watermark
        if mark is not None and payload_of(admission.grant_id) != mark.payload:
            self.stamp.watermark = frame_stamp(
                self.settings, admission.grant_id, self.generator.size
            ).watermark

    async def withdraw(self, reason: str) -> None:
        """Permission is gone: not one more frame of the face, no more voice; end."""
        self._withdrawn = True
        self.video_out.clear_after(-1.0)
        self.video_out.put(np.zeros_like(self._rest_image()), at=self.clock.now())
        self.audio_out.clear()
        log.warning("permission withdrawn", session=self.id, reason=reason)
        self._end_soon("permission withdrawn")

    def _end_soon(self, reason: str) -> None:
        """Close the session from a callback or a task of its own (not awaited here)."""
        self._spawn(self.close(reason), "close")

    # ------------------------------------------------------------------ events

    def _event(self, message: dict[str, Any]) -> None:
        try:
            self._send(message)
        except Exception as err:  # noqa: BLE001 - a dead channel must not kill the session
            log.debug("event not sent", session=self.id, error=str(err))

    def _stats(self) -> dict[str, Any]:
        return {"video": asdict(self.video_out.stats), "audio": asdict(self.audio_out.stats)}

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._event({"type": "state", "state": state})

    # ------------------------------------------------------------------ listening

    async def _listen(self, track: Any) -> None:
        detector = await asyncio.to_thread(self._turn_detector)  # loads Silero: off the loop

        async def audio():
            async for chunk in inbound_audio(track, stats=self.liveness.inbound):
                self.liveness.media_arrived()
                yield chunk

        async for event in detector.run(audio()):
            if isinstance(event, SpeechStarted) and self._speaking():
                await self.barge_in()
            elif isinstance(event, TurnEnded):
                # Transcribing takes a few hundred ms: keep listening meanwhile, so a
                # barge-in is never delayed by it.
                self._spawn(self._on_turn(event), "turn")
        await self.close("client audio ended")

    def _speaking(self) -> bool:
        busy = self._reply is not None and not self._reply.done()
        return busy or self.audio_out.queued_until > self.clock.now()

    async def _on_turn(self, turn: TurnEnded) -> None:
        if self._reply is not None and not self._reply.done():
            await self.barge_in()
        self._turn += 1
        number = self._turn
        self._set_state("thinking")
        heard = turn.transcript or await self.models.asr.transcribe(turn.audio)  # voice.turns
        self.latencies.begin(number, turn.detected_at, time.monotonic())
        if not heard.text.strip():
            self._set_state("listening")
            return
        self._event({"type": "transcript", "text": heard.text, "final": True})
        detector = self.models.detector
        alert = detector.check(heard.text, session_id=self.id) if detector else None
        if alert is not None:
            self._event({"type": "alert", "category": alert.category, "severity": alert.severity})
            self._spawn(self._deliver_alert(alert), "alert")
        self._reply = self._spawn(self._answer(number, heard.text), f"reply-{number}")

    async def _deliver_alert(self, alert: Any) -> None:
        for sink in components.alert_sinks(self.settings):
            try:
                await sink.send(alert)
            except Exception as err:  # noqa: BLE001 - every sink gets its chance
                log.error("alert sink failed", session=self.id, error=str(err))

    # ------------------------------------------------------------------ speaking

    async def _answer(self, turn: int, text: str) -> None:
        segment = self.segments.open(turn)
        # aclosing: a cancel that lands in _push (not inside speak_reply) still stops
        # the LLM and stores the reply before barge_in trims it to what was heard.
        reply = speak_reply(self.conversation, self.models.tts, self.person, text)
        try:
            async with contextlib.aclosing(reply) as spoken:
                async for _n, sentence, chunk in spoken:
                    await self._push(segment, sentence, chunk)
        except (LikenessError, VoiceError) as err:
            log.error("reply failed", session=self.id, error=str(err))
            self._event({"type": "error", "message": "the reply failed; apologising"})
            async with contextlib.aclosing(self.models.tts.synthesize(APOLOGY)) as chunks:
                async for chunk in chunks:
                    await self._push(segment, APOLOGY, chunk)
        segment.done = True
        await self.generator.flush()
        if segment.anchor is not None:
            self._finish_audio(segment)
        elif not self._generator_alive:
            self._anchor(segment, 0.0)

    def _finish_audio(self, segment: Segment) -> None:
        """The reply's audio is complete: flush the track's resampler (no underrun)."""
        rate = segment.chunks[-1][1].sample_rate if segment.chunks else 48_000
        self.audio_out.schedule(np.zeros(0, np.float32), rate, at=None, last=True)

    async def _push(self, segment: Segment, sentence: str, chunk: SpeechChunk) -> None:
        wait = segment.unplayed(self.clock.now()) - REPLY_AHEAD_S
        while wait > 0:  # back-pressure: the LLM and TTS pause while this much waits
            await asyncio.sleep(min(max(wait, 0.02), 0.5))
            wait = segment.unplayed(self.clock.now()) - REPLY_AHEAD_S
        self.latencies.mark("first_audio", turn=segment.turn)
        pushed = self.segments.push(segment, sentence, chunk)
        if pushed.play_now:  # continues the segment's run seamlessly
            self.audio_out.schedule(chunk.pcm, chunk.sample_rate, at=None)
            if pushed.caption is not None:
                self._caption(*pushed.caption)
        if self._generator_alive:
            await self.generator.push_audio(chunk.pcm, chunk.sample_rate, chunk.timings)
        elif segment.anchor is None:
            self._anchor(segment, 0.0)

    def _anchor(self, segment: Segment, first_pts: float) -> None:
        """Fix the segment's media time and schedule the audio held so far."""
        plan = self.segments.anchor(
            segment, first_pts, self.clock.now(), self.audio_out.queued_until
        )
        self.video_out.clear_after(plan.at - 1e-3)  # idle frames queued past it go
        for i, chunk in enumerate(plan.held):
            self.audio_out.schedule(chunk.pcm, chunk.sample_rate, at=plan.at if i == 0 else None)
        if plan.finished:
            self._finish_audio(segment)
        for media_time, text in plan.captions:
            self._caption(media_time, text)

    def _caption(self, media_time: float, text: str) -> None:
        """Send a reply sentence (and the speaking state) when its audio starts playing."""

        def send() -> None:
            self._set_state("speaking")
            self._event({"type": "reply", "text": text})

        delay = max(0.0, media_time - self.clock.now())
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > 0]
        self._timers.append(asyncio.get_running_loop().call_later(delay, send))

    # ------------------------------------------------------------------ video

    async def _video(self) -> None:
        next_free = 0.0
        try:
            async for item in self.generator:
                now = self.clock.now()
                if isinstance(item, EndOfSegment):
                    continue
                frame: VideoFrame = item
                at = max(now, next_free)
                tag: int | None = None  # the turn of a speaking frame
                if frame.speaking:
                    segment = self.segments.segment_for(frame.segment)
                    if segment is not None:
                        if segment.anchor is None:
                            self._anchor(segment, frame.pts)
                        tag = segment.turn
                        at = segment.frame_time(frame.pts)
                if self._withdrawn:
                    return
                self.video_out.put(self.stamp.apply(frame.image), at, tag)
                next_free = at + 1.0 / self.fps
                ahead = at - self.clock.now()
                limit = SPEAKING_AHEAD_S if frame.speaking else IDLE_AHEAD_S
                if ahead > limit:
                    await asyncio.sleep(ahead - limit)
                done = not frame.speaking and self.audio_out.queued_until <= self.clock.now()
                if done and self.state == "speaking":
                    self._set_state("listening")
        except AvatarError as err:
            # The face freezes on its last frame; the conversation goes on with audio.
            self._generator_alive = False
            log.error("avatar generator failed; audio only", session=self.id, error=str(err))
            self._event({"type": "error", "message": "the face stopped; audio continues"})
            for segment in self.segments.pending:
                self._anchor(segment, 0.0)

    # ------------------------------------------------------------------ barge-in

    async def barge_in(self) -> None:
        """The person spoke over the companion: stop within one chunk and keep in the
        history only what was heard."""
        reply, self._reply = self._reply, None
        self.audio_out.clear()  # silent now: the reply's clean-up below may take a while
        self.video_out.clear_after(self.clock.now())
        if reply is not None and not reply.done():
            reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        heard_until = self.audio_out.clear()  # and what was anchored meanwhile
        self.video_out.clear_after(self.clock.now())
        await self.generator.clear_buffer()
        heard = self.segments.interrupt(heard_until)
        self.conversation.record_played(self.person, heard)
        self._event({"type": "interrupted", "heard": heard})
        self._set_state("listening")
