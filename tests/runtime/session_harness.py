"""Frames in, frames out: a live ``Session`` on a virtual clock, with no network.

The real session code runs: its tasks, the real ``AudioOut``/``VideoOut`` tracks, the
real ``TurnDetector``, ``inbound_audio``, ``speak_reply`` and ``Conversation``, the
real consent gate on a SQLite store when a face needs one. Fakes stand only at the
boundaries, each one deterministic:

- :class:`Microphone`: the inbound track; the person "speaks" a 300 Hz tone when told.
- :class:`EnergyVAD`: Silero's place in the ``TurnDetector`` (loud frame = speech).
- :class:`FakeASR`, :class:`FakeLLM`, :class:`FakeTTS`: scripted text, scripted words,
  and speech whose every 20 ms block carries its number (so a played frame says which
  block of which reply it is).
- :class:`FakeGenerator`: the avatar contract (push_audio, flush, clear_buffer, frames,
  EndOfSegment); each image carries its frame index and whether it speaks, in blocks
  a watermark and the label cannot flip.
- :class:`Sinks`: the peer: pulls ``recv()`` of both tracks, as aiortc does.

Time: one :class:`VirtualClock` is both the session's media clock and the event loop's
clock. The loop never sleeps: when nothing is ready it jumps to its next timer, and
blocking calls (``asyncio.to_thread``) run inline, so a run is exact and repeatable
and a 10 s conversation takes a fraction of a second. Use :func:`run` from a plain
(synchronous) test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import math
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from avatar.errors import GeneratorError
from avatar.types import EndOfSegment, VideoFrame
from runtime.media import RATE, MediaClock
from voice.types import SpeechChunk, Transcript

T = TypeVar("T")
BLOCK = RATE // 50  # 20 ms: one audio frame of AudioOut
LEVEL = 1 / 2000  # the amplitude step per block number


# ---------------------------------------------------------------------- time


class VirtualClock(MediaClock):
    """Media time that moves only when the loop has nothing to do before its next timer."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self, media_time: float) -> float:
        return media_time

    async def sleep_until(self, media_time: float) -> None:
        if media_time > self.t:
            await asyncio.sleep(media_time - self.t)


class Stuck(RuntimeError):
    """Nothing is scheduled and nothing is ready: the test waits for what never comes."""


class _JumpSelector(selectors.DefaultSelector):  # type: ignore[valid-type,misc]
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:
            raise Stuck("the loop would wait forever")
        self._clock.t += timeout
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_JumpSelector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.t


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """``asyncio.to_thread`` runs the call at once, on the loop's thread (no real time)."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(err)
        return future


def run(scenario: Callable[[VirtualClock], Awaitable[T]], limit_s: float = 120.0) -> T:
    """Run ``scenario(clock)`` on a fresh virtual-time loop; returns its result.

    Raises:
        TimeoutError: the scenario ran past ``limit_s`` of media time.
    """
    clock = VirtualClock()
    loop = _VirtualLoop(clock)
    executor = _InlineExecutor(max_workers=1)
    loop.set_default_executor(executor)
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario(clock), limit_s))
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        executor.shutdown()
        loop.close()


# ---------------------------------------------------------------------- inbound


class Microphone:
    """The inbound audio track: 20 ms s16 frames at their media time, silence unless
    the person speaks (:meth:`say`), until :meth:`hang_up`."""

    kind = "audio"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._speech: list[tuple[float, float]] = []
        self._sent = 0
        self._ended = False
        self._vanished = False
        self._time_base = fractions.Fraction(1, RATE)

    def say(self, seconds: float, at: float | None = None) -> tuple[float, float]:
        """The person speaks for ``seconds`` from media time ``at`` (default: now)."""
        start = self.clock.t if at is None else at
        self._speech.append((start, start + seconds))
        return start, start + seconds

    def hang_up(self) -> None:
        self._ended = True

    def vanish(self) -> None:
        """The page is gone without a word: no more frames, and the track never ends."""
        self._vanished = True

    @property
    def readyState(self) -> str:  # noqa: N802 - aiortc's (and the browser's) name
        return "ended" if self._ended else "live"

    async def recv(self) -> av.AudioFrame:
        start = self._sent / RATE
        await self.clock.sleep_until(start + BLOCK / RATE)  # a frame leaves once recorded
        if self._vanished:
            await asyncio.Event().wait()  # until the session stops reading
        if self._ended:
            raise MediaStreamError
        t = start + np.arange(BLOCK) / RATE
        loud = np.zeros(BLOCK, bool)
        for begin, end in self._speech:
            loud |= (t >= begin) & (t < end)
        pcm = np.where(loud, 0.3 * np.sin(2 * np.pi * 300 * t), 0.0)
        frame = av.AudioFrame.from_ndarray(
            (pcm * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._sent, self._time_base
        self._sent += BLOCK
        return frame


class EnergyVAD:
    """Silero's place in ``TurnDetector``: a frame is speech when it is loud."""

    def reset(self) -> None:
        pass

    def probability(self, frame: np.ndarray) -> float:
        return 1.0 if float(np.sqrt(np.mean(frame**2))) > 0.05 else 0.0


# ---------------------------------------------------------------------- models


class FakeASR:
    """Hears the scripted texts, one per turn, after ``delay`` seconds."""

    def __init__(self, texts: list[str], delay: float = 0.2) -> None:
        self.texts, self.delay = list(texts), delay

    async def transcribe(self, audio: Any) -> Transcript:
        await asyncio.sleep(self.delay)
        return Transcript(text=self.texts.pop(0) if self.texts else "", language="en")


@dataclass
class FakeLLM:
    """Writes each scripted reply word by word, ``delay`` seconds per word.

    Attributes:
        words_sent: words yielded in the current reply.
        closed: True once the current reply's stream was closed (ended or cancelled).
    """

    replies: list[str]
    delay: float = 0.05
    stall_after: int | None = None  # words; then the next word takes ``stall_s``
    stall_s: float = 30.0
    name: str = "fake"
    words_sent: int = 0
    closed: bool = False
    asked: list[Any] = field(default_factory=list)

    async def stream(self, messages: Any, options: Any) -> Any:
        self.asked.append(list(messages))
        self.words_sent, self.closed = 0, False
        reply = self.replies.pop(0) if self.replies else "Okay."
        try:
            for i, word in enumerate(reply.split()):
                stalls = self.stall_after is not None and i == self.stall_after
                await asyncio.sleep(self.stall_s if stalls else self.delay)
                self.words_sent += 1
                yield word if i == 0 else " " + word
        finally:
            self.closed = True

    async def aclose(self) -> None:
        pass


class FakeTTS:
    """Speaks ``word_s`` seconds per word at 48 kHz, one chunk per word, ``delay`` seconds
    of synthesis each. Block ``n`` (20 ms) of everything it ever said has the level
    ``(n + 1) · LEVEL``, so a played frame tells which block it is (:func:`block_of`)."""

    name = "fake"

    def __init__(self, word_s: float = 0.2, delay: float = 0.02) -> None:
        self.word_s, self.delay = word_s, delay
        self.blocks = 0
        self.said: list[str] = []

    async def synthesize(self, text: str) -> Any:
        self.said.append(text)
        words = text.split()
        per_word = round(self.word_s * RATE / BLOCK)
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay)
            levels = (self.blocks + 1 + np.arange(per_word)) * LEVEL
            self.blocks += per_word
            pcm = np.repeat(levels, BLOCK).astype(np.float32)
            yield SpeechChunk(pcm, RATE, word, is_last=i == len(words) - 1)


def block_of(s16: np.ndarray) -> int | None:
    """The TTS block number a played 20 ms frame carries (None: silence)."""
    value = float(np.median(s16))
    if abs(value) < 4:
        return None
    return round(value / 32767 / LEVEL) - 1


# ---------------------------------------------------------------------- avatar

SIZE = 128
_BITS = 13  # 12 bits of frame index, then "speaking"
_SYNC = (_BITS, _BITS + 1)  # always light, always dark: a generator frame


def _image(index: int, speaking: bool) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    bits = [(index >> b) & 1 for b in range(12)] + [int(speaking), 1, 0]
    for b, bit in enumerate(bits):
        image[16:24, 8 * b : 8 * b + 8] = 225 if bit else 30
    return image


def read_frame(image: np.ndarray) -> tuple[int, bool] | None:
    """``(frame index, speaking)`` of a generator frame; None for any other image."""
    blocks = [float(image[16:24, 8 * b : 8 * b + 8].mean()) > 128 for b in range(_BITS + 2)]
    if not blocks[_SYNC[0]] or blocks[_SYNC[1]]:
        return None
    return sum(1 << b for b in range(12) if blocks[b]), blocks[12]


@dataclass
class _Speech:
    id: int
    pushed: float = 0.0  # seconds of audio
    flushed: bool = False
    shown: int = 0  # frames yielded


class FakeGenerator:
    """The avatar contract, drawn as numbered frames.

    Frame ``k`` of a segment shows its audio from ``k / fps`` and leaves once the audio
    covers it plus ``lookahead`` (or the segment is flushed); the pts clock runs on
    through idle and speaking frames alike.

    Fault knobs:
        push_delay: ``push_audio`` takes this long (a generator applying back-pressure).
        hold_after: pushes after this many wait until ``clear_buffer`` or ``aclose``
            (back-pressure that lasts).
        fail_at: the frame index at which iteration raises ``GeneratorError``.
    """

    name = "fake"

    def __init__(
        self,
        fps: float = 25.0,
        lookahead: float = 0.04,
        push_delay: float = 0.0,
        hold_after: int | None = None,
        fail_at: int | None = None,
    ) -> None:
        self.fps, self.size, self.lookahead = fps, SIZE, lookahead
        self.push_delay, self.hold_after, self.fail_at = push_delay, hold_after, fail_at
        self.pushes = 0
        self._release = asyncio.Event()
        self.index = 0
        self.segments: list[_Speech] = []
        self._open: _Speech | None = None
        self._ends: list[EndOfSegment] = []
        self._next_id = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.cleared = 0

    async def push_audio(self, pcm: np.ndarray, sample_rate: int, timings: Any = None) -> None:
        self.pushes += 1
        if self.push_delay:
            await asyncio.sleep(self.push_delay)
        if self.hold_after is not None and self.pushes > self.hold_after:
            await self._release.wait()
            return
        if self._open is None:
            self._open = _Speech(self._next_id)
            self._next_id += 1
            self.segments.append(self._open)
        self._open.pushed += len(pcm) / sample_rate
        self._wake.set()

    async def flush(self) -> None:
        if self._open is not None:
            self._open.flushed = True
            self._open = None
            self._wake.set()

    async def clear_buffer(self) -> None:
        self.cleared += 1
        self._release.set()
        for seg in self.segments:
            self._ends.append(EndOfSegment(seg.id, self.index / self.fps, True))
        self.segments.clear()
        self._open = None
        self._wake.set()

    def __aiter__(self) -> FakeGenerator:
        return self

    async def __anext__(self) -> VideoFrame | EndOfSegment:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._ends:
                return self._ends.pop(0)
            if self.fail_at is not None and self.index >= self.fail_at:
                raise GeneratorError("the fake face broke")
            if not self.segments:
                return self._frame(speaking=False, segment=-1)
            seg = self.segments[0]
            due = (seg.shown + 1) / self.fps + self.lookahead
            frames = math.ceil(seg.pushed * self.fps - 1e-6)
            if seg.shown < frames and (seg.pushed >= due or seg.flushed):
                seg.shown += 1
                return self._frame(speaking=True, segment=seg.id)
            if seg.flushed:
                self.segments.pop(0)
                return EndOfSegment(seg.id, self.index / self.fps, False)
            self._wake.clear()
            await self._wake.wait()

    def _frame(self, speaking: bool, segment: int) -> VideoFrame:
        frame = VideoFrame(
            _image(self.index, speaking),
            self.index / self.fps,
            self.index,
            speaking=speaking,
            segment=segment,
        )
        self.index += 1
        return frame

    async def aclose(self) -> None:
        self.closed = True
        self._release.set()
        self._wake.set()


# ---------------------------------------------------------------------- outbound


@dataclass
class Sinks:
    """The peer: what each track sent, frame by frame, at its media time.

    Attributes:
        audio: ``(media time, TTS block number or None for silence)`` per 20 ms frame.
        video: ``(media time, (frame index, speaking) | "black" | "other")`` per slot.
    """

    audio: list[tuple[float, int | None]] = field(default_factory=list)
    video: list[tuple[float, Any]] = field(default_factory=list)

    async def pull_audio(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio.append((frame.pts / RATE, block_of(frame.to_ndarray()[0])))

    async def pull_video(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            image = frame.to_ndarray(format="rgb24")
            seen = read_frame(image)
            if seen is None:
                seen = "black" if image.max() < 10 else "other"
            self.video.append((float(frame.pts * frame.time_base), seen))

    def speech(self) -> list[tuple[float, int]]:
        """``(media time, block)`` of every audio frame that carried speech."""
        return [(t, b) for t, b in self.audio if b is not None]

    def speaking_frames(self) -> list[tuple[float, int]]:
        """``(media time, frame index)`` of every new speaking frame shown."""
        out: list[tuple[float, int]] = []
        for t, seen in self.video:
            if isinstance(seen, tuple) and seen[1] and (not out or out[-1][1] != seen[0]):
                out.append((t, seen[0]))
        return out


# ---------------------------------------------------------------------- the session


class Harness:
    """One real ``Session`` wired to the fakes; ``async with Harness(...) as h``.

    Args:
        clock: the run's clock (from :func:`run`).
        data_dir: the session's data dir (conversation memory, watermark key, consent).
        heard: what the person says, turn by turn (the ASR's answers).
        replies: what the companion answers, turn by turn (the LLM's words).
        generator, tts, llm: fakes with their knobs (defaults otherwise).
        avatar: the face (default: the synthetic demo face).
        consent: the face's admission (a real person's face).
        config: more ``load_config`` overrides.
    """

    def __init__(
        self,
        clock: VirtualClock,
        data_dir: Any,
        heard: list[str] | None = None,
        replies: list[str] | None = None,
        *,
        generator: FakeGenerator | None = None,
        tts: FakeTTS | None = None,
        llm: FakeLLM | None = None,
        avatar: Any = None,
        consent: Any = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        from avatar.synthetic import make_demo_avatar
        from runtime.config import load_config

        self.clock = clock
        self.settings = load_config(data_dir=data_dir, **(config or {}))
        self.generator = generator or FakeGenerator()
        self.tts = tts or FakeTTS()
        self.llm = llm or FakeLLM(list(replies or []))
        self.asr = FakeASR(list(heard or []))
        self.avatar = avatar or make_demo_avatar(SIZE)
        self.consent = consent
        self.mic = Microphone(clock)
        self.sinks = Sinks()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._pulls: list[asyncio.Task] = []

    async def __aenter__(self) -> Harness:
        from runtime import components
        from runtime.session import Session, SharedModels
        from voice.vad import TurnDetector

        models = SharedModels(self.asr, self.tts, self.llm, None)  # type: ignore[arg-type]
        options = components.vad_options(self.settings)
        self.session = Session(
            self.settings,
            models,
            self.avatar,
            self.generator,  # type: ignore[arg-type]
            self._event,
            consent=self.consent,
            clock=self.clock,
            turn_detector=lambda: TurnDetector(EnergyVAD(), options),  # type: ignore[arg-type]
        )
        self.session.start(self.mic)
        self._pulls = [
            asyncio.create_task(self.sinks.pull_audio(self.session.audio_out)),
            asyncio.create_task(self.sinks.pull_video(self.session.video_out)),
        ]
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.session.close("test over")
        _done, running = await asyncio.wait(self._pulls, timeout=1.0)  # tracks stopped?
        for task in running:  # no: the peer hangs up after a second more of media
            task.cancel()
        await asyncio.gather(*self._pulls, return_exceptions=True)

    def _event(self, message: dict[str, Any]) -> None:
        self.events.append((self.clock.t, message))
        if self.on_event is not None:
            self.on_event(message)

    def history(self) -> list[tuple[str, str]]:
        """The session's stored conversation, as (role, text)."""
        memory = self.session.conversation.memory
        return [(m.role, m.content) for m in memory.history(self.session.person)]

    def first(self, kind: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
        """The first event of ``kind`` with those fields, and its media time."""
        for t, message in self.events:
            if message.get("type") == kind and all(message.get(k) == v for k, v in match.items()):
                return t, message
        return None

    async def wait_for(self, kind: str, within: float = 20.0, **match: Any) -> tuple[float, dict]:
        """Run until the first event of ``kind`` (virtual seconds; fails past ``within``)."""
        deadline = self.clock.t + within
        while (found := self.first(kind, **match)) is None:
            if self.clock.t > deadline:
                raise AssertionError(f"no {kind} {match} within {within} s: {self.events}")
            await asyncio.sleep(0.01)
        return found

    async def until(self, media_time: float) -> None:
        """Run until ``media_time``."""
        await self.clock.sleep_until(media_time)
