"""One live conversation: browser audio in; the companion's voice and face out.

Stages (each an asyncio task owned by the session)::

    inbound audio ─▶ TurnDetector.run ─▶ on SpeechStarted while speaking: barge-in
                                      ─▶ on TurnEnded: ASR ─▶ distress check ─▶ reply task
    reply task:  speak_reply (LLM sentences → TTS chunks) ─▶ generator.push_audio
                 (the audio is held until the generator's first frame of the segment)
    video task:  generator frames ─▶ media time ─▶ VideoOut.put; schedules the held audio
                 on AudioOut at the same media time, so lips and sound share one clock

Mapping the generator's clock to media time: when the first frame of a speech
segment (generator pts ``P``) arrives, the segment is anchored at media time
``T = max(now + LEAD, end of what is queued)``; its audio at offset ``o`` plays at
``T + o`` and its frame with pts ``p`` shows at ``T + (p - P)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from avatar.errors import AvatarError
from avatar.types import EndOfSegment, PreparedAvatar, VideoFrame
from consent.watermark import Watermark, payload_of
from consent.watermark_key import WatermarkKey, key_dir
from runtime import components
from runtime.avatar_components import avatar_generator, generator_options
from runtime.config import Settings
from runtime.dialogue.base import DialogueBackend
from runtime.dialogue.speak import speak_reply
from runtime.errors import LikenessError
from runtime.frames import TurnLatency
from runtime.inbound import inbound_audio
from runtime.label import AiLabel, FrameStamp
from runtime.logs import get_logger
from runtime.media import AudioOut, MediaClock, VideoOut
from runtime.safety import DistressDetector
from voice.asr import WhisperASR
from voice.errors import VoiceError
from voice.tts.base import TTSBackend
from voice.types import SpeechChunk
from voice.vad import SpeechStarted, TurnEnded

if TYPE_CHECKING:
    from consent.gate import ConsentGate

log = get_logger("likeness.session")
LEAD_S = 0.06  # jitter margin between scheduling and playing
# The video task sleeps when frames are mapped further ahead than this: idle frames stay
# close to now (speech can take over at once); speaking frames may run further ahead.
IDLE_AHEAD_S = 0.12
SPEAKING_AHEAD_S = 1.0
APOLOGY = "I'm sorry, I had trouble answering that. Could you say it again?"


@dataclass
class SharedModels:
    """What every session of a process shares (loaded once, heavy)."""

    asr: WhisperASR
    tts: TTSBackend
    dialogue: DialogueBackend
    detector: DistressDetector | None
    avatar_engine: Any = None  # neural backend: the shared model (runtime.animation)


@dataclass
class ConsentUse:
    """What a session showing a real person's face may do, and how to re-check it.

    Call :meth:`check` before building the :class:`Session`: an allowed decision sets
    :attr:`grant_id`, the grant whose id the session's frames carry in their watermark.
    """

    gate: ConsentGate
    avatar_id: str
    deployment: str
    purpose: str
    grant_id: str | None = field(default=None, compare=False)  # set by an allowed check()
    expires_at: float = field(default=float("inf"), compare=False)  # that grant's expiry

    def check(self) -> Any:
        """The gate's decision now (blocking: database reads); remembers the grant used
        and when it expires (an expiry moves no revocation epoch, so the session watches
        the time too)."""
        decision = self.gate.check(
            avatar_id=self.avatar_id, deployment=self.deployment, purpose=self.purpose
        )
        if decision.allowed:
            self.grant_id = decision.grant_id
            if decision.grant_id is not None:
                grant = self.gate.store.grant(decision.grant_id).grant
                self.expires_at = grant.expires_at.timestamp()
        return decision


@dataclass
class _Segment:
    """A reply's speech as one generator segment."""

    turn: int
    chunks: list[tuple[float, SpeechChunk]] = field(default_factory=list)  # (offset, chunk)
    length: float = 0.0  # seconds pushed so far
    anchor: float | None = None  # media time of offset 0
    first_pts: float = 0.0
    sentences: list[tuple[float, str]] = field(default_factory=list)  # (offset, text)
    generator_id: int | None = None  # the generator's segment number, once seen
    done: bool = False  # the reply has no more audio to come


class Session:
    """A live conversation. Build it, ``start()`` it with the inbound audio track,
    send ``audio_out``/``video_out`` to the peer, and ``close()`` it at the end.

    Args:
        settings: the effective config.
        models: shared models.
        avatar: the consent-approved (or synthetic) face to animate.
        send_event: callable that sends one JSON-able event to the client.
        on_latency: called with each finished turn's TurnLatency (metrics).
        on_close: called with the session id once it closed (by itself or not).
        consent: for a real person's face, the grant to re-check whenever the
            revocation epoch moves; None for the synthetic face.
    """

    def __init__(
        self,
        settings: Settings,
        models: SharedModels,
        avatar: PreparedAvatar,
        send_event: Callable[[dict[str, Any]], None],
        on_latency: Callable[[TurnLatency], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        consent: ConsentUse | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.settings = settings
        self.models = models
        self.avatar = avatar
        self.person = f"session-{self.id}"
        self._send = send_event
        self._on_latency = on_latency
        self._on_close = on_close
        self.consent = consent
        self._withdrawn = False
        options = generator_options(settings)
        self.fps = options.fps
        self.clock = MediaClock()
        self.audio_out = AudioOut(self.clock)
        self.generator = avatar_generator(settings, avatar, models.avatar_engine)
        self.label = AiLabel(options.size)  # every frame sent says what it is
        # ... visibly, and invisibly: the grant id (or "synthetic") in a watermark.
        self.stamp = FrameStamp(self.label, self._watermark(self._grant_id()))
        self.video_out = VideoOut(
            self.clock, fps=self.fps, initial=self.stamp.apply(self._rest_image())
        )
        self.audio_out.on_first_speech = self._audio_started
        self.video_out.on_frame_sent = self._frame_sent
        self.conversation = components.conversation(
            settings, _TimedBackend(models.dialogue, self._first_piece)
        )
        self.state = "listening"
        self.closed = asyncio.Event()
        self.last_media = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._reply: asyncio.Task | None = None
        self._segments: deque[_Segment] = deque()  # pushed, not yet anchored
        self._current: _Segment | None = None  # anchored, playing
        self._turn = 0
        self._latency: dict[int, TurnLatency] = {}
        self._generator_alive = True
        self._timers: list[asyncio.TimerHandle] = []  # reply captions due when spoken

    def _grant_id(self) -> str | None:
        """The grant the face is shown under (None: the synthetic avatar)."""
        if self.consent is None:
            if not self.avatar.synthetic:
                raise ValueError("a real person's face needs a ConsentUse (consent=...)")
            return None
        if self.consent.grant_id is None:
            raise ValueError("call ConsentUse.check() (and get an allowed decision) first")
        return self.consent.grant_id

    def _watermark(self, grant_id: str | None) -> Watermark | None:
        """The invisible mark for ``grant_id`` (blocking: reads the key; ~5 ms)."""
        if not self.settings.consent.watermark:
            return None
        key = WatermarkKey.load(key_dir(self.settings.data_dir))
        return Watermark.make(key, grant_id, self.generator.size)

    def _rest_image(self) -> np.ndarray:
        """The face at rest, at the output size: shown until the first frame."""
        size = self.generator.size
        image = self.avatar.image
        if image.shape[0] != size:
            import cv2

            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return image

    # ------------------------------------------------------------------ lifecycle

    def start(self, inbound_track: Any) -> None:
        """Start listening to ``inbound_track`` and producing video."""
        self._spawn(self._listen(inbound_track), "listen")
        self._spawn(self._video(), "video")
        self._spawn(self._watchdog(), "watchdog")
        if self.consent is not None:
            self._spawn(self._watch_consent(self.consent), "consent")
        self._event({"type": "state", "state": "listening"})

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "session task failed",
                session=self.id,
                task=task.get_name(),
                error=repr(task.exception()),
            )

    async def close(self, reason: str = "closed") -> None:
        """Stop every task and release the generator; safe to call twice."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._event({"type": "state", "state": "ended", "reason": reason})
        for timer in self._timers:
            timer.cancel()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
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

    async def _watch_consent(self, consent: ConsentUse) -> None:
        """Poll the revocation epoch; when it moves or the grant expires, re-check and
        withdraw if refused."""
        every = self.settings.consent.recheck_ms / 1000
        seen = await asyncio.to_thread(consent.gate.epoch)
        await asyncio.to_thread(
            consent.gate.record_use,
            "use_start",
            avatar_id=consent.avatar_id,
            deployment=consent.deployment,
            session=self.id,
        )
        try:
            while not self.closed.is_set():
                await asyncio.sleep(every)
                epoch = await asyncio.to_thread(consent.gate.epoch)
                if epoch == seen and time.time() < consent.expires_at:
                    continue
                seen = epoch
                decision = await asyncio.to_thread(consent.check)
                if not decision.allowed:
                    await self.withdraw(decision.reason)
                    return
                mark = self.stamp.watermark
                if mark is not None and payload_of(decision.grant_id) != mark.payload:
                    # Still allowed, under another grant: the frames now carry that one.
                    self.stamp.watermark = await asyncio.to_thread(
                        self._watermark, decision.grant_id
                    )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    consent.gate.record_use,
                    "use_end",
                    avatar_id=consent.avatar_id,
                    deployment=consent.deployment,
                    session=self.id,
                )

    async def withdraw(self, reason: str) -> None:
        """Permission is gone: not one more frame of the face, no more voice; end."""
        self._withdrawn = True
        self.video_out.clear_after(-1.0)
        self.video_out.put(np.zeros_like(self._rest_image()), at=self.clock.now())
        self.audio_out.clear()
        log.warning("permission withdrawn", session=self.id, reason=reason)
        self._spawn(self.close("permission withdrawn"), "close")

    async def _watchdog(self) -> None:
        timeout = self.settings.server.media_timeout_s
        while not self.closed.is_set():
            await asyncio.sleep(1.0)
            if time.monotonic() - self.last_media > timeout:
                log.warning("no media from client", session=self.id, timeout_s=timeout)
                self._spawn(self.close("no media"), "close")
                return

    # ------------------------------------------------------------------ events

    def _event(self, message: dict[str, Any]) -> None:
        try:
            self._send(message)
        except Exception as err:  # noqa: BLE001 - a dead channel must not kill the session
            log.debug("event not sent", session=self.id, error=str(err))

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._event({"type": "state", "state": state})

    # ------------------------------------------------------------------ listening

    async def _listen(self, track: Any) -> None:
        detector = components.load_turn_detector(self.settings)

        async def audio():
            async for chunk in inbound_audio(track):
                self.last_media = time.monotonic()
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
        latency = TurnLatency(turn=number, voice_end=turn.detected_at)
        self._set_state("thinking")
        heard = await self.models.asr.transcribe(turn.audio)
        latency = _stamp(latency, "transcript")
        self._latency[number] = latency
        for old in [t for t in self._latency if t < number - 4]:
            del self._latency[old]  # a long session keeps only recent turns
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
        segment = _Segment(turn=turn)
        self._segments.append(segment)

        try:
            async for _n, sentence, chunk in speak_reply(
                self.conversation, self.models.tts, self.person, text
            ):
                await self._push(segment, sentence, chunk)
        except (LikenessError, VoiceError) as err:
            log.error("reply failed", session=self.id, error=str(err))
            self._event({"type": "error", "message": "the reply failed; apologising"})
            async for chunk in self.models.tts.synthesize(APOLOGY):
                await self._push(segment, APOLOGY, chunk)
        segment.done = True
        await self.generator.flush()
        if segment.anchor is not None:
            self._finish_audio(segment)
        elif not self._generator_alive:
            self._anchor(segment, 0.0)

    def _finish_audio(self, segment: _Segment) -> None:
        """The reply's audio is complete: flush the track's resampler (no underrun)."""
        rate = segment.chunks[-1][1].sample_rate if segment.chunks else 48_000
        self.audio_out.schedule(np.zeros(0, np.float32), rate, at=None, last=True)

    async def _push(self, segment: _Segment, sentence: str, chunk: SpeechChunk) -> None:
        latency = self._latency.get(segment.turn)
        if latency is not None and latency.first_audio is None:
            self._latency[segment.turn] = _stamp(latency, "first_audio")
        new_sentence = not segment.sentences or segment.sentences[-1][1] != sentence
        if new_sentence:
            segment.sentences.append((segment.length, sentence))
        segment.chunks.append((segment.length, chunk))
        offset = segment.length
        segment.length += chunk.duration
        if segment.anchor is not None:  # continues the segment's run seamlessly
            self.audio_out.schedule(chunk.pcm, chunk.sample_rate, at=None)
            if new_sentence:
                self._reply_at(segment.anchor + offset, sentence)
        if self._generator_alive:
            await self.generator.push_audio(chunk.pcm, chunk.sample_rate, chunk.timings)
        elif segment.anchor is None:
            self._anchor(segment, 0.0)

    def _anchor(self, segment: _Segment, first_pts: float) -> None:
        """Fix the segment's media time and schedule the audio held so far."""
        start = max(self.clock.now() + LEAD_S, self.audio_out.queued_until)
        segment.anchor = self.video_out.next_slot(start)
        segment.first_pts = first_pts
        self.video_out.clear_after(segment.anchor - 1e-3)  # idle frames queued past it go
        with contextlib.suppress(ValueError):
            self._segments.remove(segment)
        self._current = segment
        for i, (_offset, chunk) in enumerate(segment.chunks):
            at = segment.anchor if i == 0 else None
            self.audio_out.schedule(chunk.pcm, chunk.sample_rate, at=at)
        if segment.done:
            self._finish_audio(segment)
        for offset, text in segment.sentences:
            self._reply_at(segment.anchor + offset, text)

    def _reply_at(self, media_time: float, text: str) -> None:
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
                    segment = self._segment_for(frame)
                    if segment is not None:
                        if segment.anchor is None:
                            self._anchor(segment, frame.pts)
                        tag = segment.turn
                        at = segment.anchor + (frame.pts - segment.first_pts)
                if self._withdrawn:
                    return
                self.video_out.put(self.stamp.apply(frame.image), at, tag)
                next_free = at + 1.0 / self.fps
                ahead = at - self.clock.now()
                limit = SPEAKING_AHEAD_S if frame.speaking else IDLE_AHEAD_S
                if ahead > limit:
                    await asyncio.sleep(ahead - limit)
                if (
                    not frame.speaking
                    and self.state == "speaking"
                    and (self.audio_out.queued_until <= self.clock.now())
                ):
                    self._set_state("listening")
        except AvatarError as err:
            # The face freezes on its last frame; the conversation goes on with audio.
            self._generator_alive = False
            log.error("avatar generator failed; audio only", session=self.id, error=str(err))
            self._event({"type": "error", "message": "the face stopped; audio continues"})
            for segment in list(self._segments):
                self._anchor(segment, 0.0)

    def _segment_for(self, frame: VideoFrame) -> _Segment | None:
        """The reply a speaking frame belongs to (replies become segments in order)."""
        current = self._current
        if current is not None and frame.segment == current.generator_id:
            return current
        if self._segments:
            segment = self._segments[0]
            segment.generator_id = frame.segment
            return segment
        return current

    # ------------------------------------------------------------------ barge-in

    async def barge_in(self) -> None:
        """The person spoke over the companion: stop within one chunk and keep in the
        history only what was heard."""
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        heard_until = self.audio_out.clear()
        self.video_out.clear_after(self.clock.now())
        await self.generator.clear_buffer()
        segment = self._current or (self._segments[0] if self._segments else None)
        self._segments.clear()
        self._current = None
        heard = _heard_text(segment, heard_until) if segment is not None else ""
        self.conversation.record_played(self.person, heard)
        self._event({"type": "interrupted", "heard": heard})
        self._set_state("listening")

    # ------------------------------------------------------------------ latency

    def _first_piece(self) -> None:
        latency = self._latency.get(self._turn)
        if latency is not None and latency.first_token is None:
            self._latency[self._turn] = _stamp(latency, "first_token")

    def _audio_started(self, media_time: float, wall: float) -> None:
        self._mark_first("first_audio_sent", wall)

    def _frame_sent(self, tag: Any, media_time: float, wall: float) -> None:
        if tag is not None:
            self._mark_first("first_video_sent", wall, turn=tag)

    def _mark_first(self, stage: str, wall: float, turn: int | None = None) -> None:
        number = turn if turn is not None else self._turn
        latency = self._latency.get(number)
        if latency is None or getattr(latency, stage) is not None:
            return
        latency = _replace(latency, stage, wall)
        self._latency[number] = latency
        if latency.first_audio_sent is not None and latency.first_video_sent is not None:
            stages = latency.stages_ms()
            self._event(
                {
                    "type": "metrics",
                    "turn": number,
                    "stages_ms": stages,
                    "video": asdict(self.video_out.stats),
                    "audio": asdict(self.audio_out.stats),
                }
            )
            log.info(
                "turn latency",
                session=self.id,
                turn=number,
                **{k: round(v, 1) for k, v in stages.items()},
            )
            if self._on_latency is not None:
                self._on_latency(latency)


class _TimedBackend:
    """A session's view of the shared LLM backend that reports each reply's first piece."""

    def __init__(self, backend: DialogueBackend, on_first: Callable[[], None]) -> None:
        self._backend = backend
        self._on_first = on_first
        self.name = backend.name

    async def stream(self, messages: Any, options: Any) -> Any:
        first = True
        async with contextlib.aclosing(self._backend.stream(messages, options)) as pieces:
            async for piece in pieces:
                if first:
                    first = False
                    self._on_first()
                yield piece

    async def aclose(self) -> None:
        """The shared backend outlives the session: nothing to close here."""


def _stamp(latency: TurnLatency, stage: str) -> TurnLatency:
    return _replace(latency, stage, time.monotonic())


def _replace(latency: TurnLatency, stage: str, value: float) -> TurnLatency:
    from dataclasses import replace

    return replace(latency, **{stage: value})


def _heard_text(segment: _Segment, heard_until: float) -> str:
    """The reply's words that were played before ``heard_until`` (media time)."""
    if segment.anchor is None:
        return ""
    played = heard_until - segment.anchor
    words: list[str] = []
    sentences = segment.sentences
    for i, (start, text) in enumerate(sentences):
        if played <= start:
            break
        end = sentences[i + 1][0] if i + 1 < len(sentences) else segment.length
        share = min(1.0, (played - start) / max(end - start, 1e-6))
        parts = text.split()
        words += parts[: int(round(len(parts) * share))]
    return " ".join(words)


def event_json(message: dict[str, Any]) -> str:
    """Serialise an event for the data channel."""
    return json.dumps(message, separators=(",", ":"))
