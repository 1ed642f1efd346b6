"""Voice activity detection (Silero VAD) and end-of-turn detection on 16 kHz streams.

:class:`SileroVAD` scores 32 ms frames; :class:`TurnDetector` turns the scores into
events — :class:`SpeechStarted` once speech lasted ``min_speech_ms`` (the runtime
uses it for barge-in), optional :class:`SpeechProgress` snapshots while the person
speaks (for partial transcripts), optional :class:`SpeechPaused` once per pause of
``pause_ms`` (:mod:`voice.turns` may end the turn there), and :class:`TurnEnded` with
the turn's audio once ``min_silence_ms`` of silence followed. Feed audio with
``push()`` or use ``run()`` as a streaming stage.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import soxr

from voice.errors import AudioInputError, ModelNotFoundError
from voice.types import AudioChunk, Transcript

SAMPLE_RATE = 16_000
FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
_HYSTERESIS = 0.15


@dataclass(frozen=True, slots=True)
class VADOptions:
    """End-of-turn settings.

    Attributes:
        threshold: speech probability at or above which a frame is speech.
        min_silence_ms: silence after speech that ends the turn.
        min_speech_ms: speech shorter than this is ignored (coughs, clicks).
        speech_pad_ms: audio kept before and after the speech in a turn's audio.
        max_turn_s: a turn longer than this is cut and ended.
        progress_ms: emit SpeechProgress this often while speaking; 0 = never.
        pause_ms: emit SpeechPaused once silence after speech lasted this long (once
            per pause; shorter than ``min_silence_ms`` to matter); 0 = never.
    """

    threshold: float = 0.5
    min_silence_ms: int = 700
    min_speech_ms: int = 250
    speech_pad_ms: int = 150
    max_turn_s: float = 30.0
    progress_ms: int = 0
    pause_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The person began to speak at ``at`` seconds (stream clock)."""

    at: float


@dataclass(frozen=True, slots=True, eq=False)
class SpeechProgress:
    """The turn so far, while the person still speaks (for partial transcripts)."""

    start: float
    audio: AudioChunk


@dataclass(frozen=True, slots=True, eq=False)
class SpeechPaused:
    """The person has been silent for ``pause_ms``; ``audio`` is the turn so far, the
    same span (and samples) a :class:`TurnEnded` gets if no speech comes before it."""

    start: float
    audio: AudioChunk


@dataclass(frozen=True, slots=True, eq=False)
class TurnEnded:
    """A finished turn.

    Attributes:
        start: first speech frame, seconds (stream clock, without padding).
        end: end of the last speech frame, seconds.
        audio: the turn's audio with ``speech_pad_ms`` either side; ``audio.pts`` is its start.
        detected_at: wall-clock ``time.monotonic()`` when the end was detected.
        transcript: the turn's words when they are known already (:mod:`voice.turns`
            transcribed them at a pause); None: transcribe ``audio``.
    """

    start: float
    end: float
    audio: AudioChunk
    detected_at: float
    transcript: Transcript | None = None


VADEvent = SpeechStarted | SpeechProgress | SpeechPaused | TurnEnded


class SileroVAD:
    """Silero VAD (ONNX, shipped inside the ``silero-vad`` package), one stream at a time.

    Build with :meth:`load`; call :meth:`reset` between unrelated streams.
    """

    def __init__(self, model: object) -> None:
        self._model = model

    @classmethod
    def load(cls) -> SileroVAD:
        """Load the packaged ONNX model on the CPU."""
        try:
            import torch

            threads = torch.get_num_threads()
            from silero_vad import load_silero_vad

            # silero_vad sets torch to one thread on import; keep the process setting.
            torch.set_num_threads(threads)
        except ImportError as err:
            raise ModelNotFoundError(
                f"Silero VAD is not installed ({err}); run `make setup` or `pip install silero-vad`"
            ) from None
        return cls(load_silero_vad(onnx=True))

    def reset(self) -> None:
        """Forget the recurrent state (start of a new stream)."""
        self._model.reset_states()

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of one 512-sample 16 kHz float32 frame."""
        import torch

        return float(self._model(torch.from_numpy(frame), SAMPLE_RATE).item())


class TurnDetector:
    """Streaming end-of-turn detection over 16 kHz mono float32 audio.

    Args:
        vad: a loaded :class:`SileroVAD` (owned by this detector from now on).
        options: thresholds and timings.
    """

    def __init__(self, vad: SileroVAD, options: VADOptions = VADOptions()) -> None:
        self.vad = vad
        self.options = options
        self._pending = np.zeros(0, dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.float32)  # audio since _buffer_start (samples)
        self._buffer_start = 0
        self._pos = 0  # samples scored so far
        self._speaking = False
        self._candidate: int | None = None  # sample index where speech may have begun
        self._speech_start = 0
        self._last_speech_end = 0
        self._silence_from: int | None = None
        self._last_progress = 0
        self._pause_told = False
        self.vad.reset()

    @property
    def speaking(self) -> bool:
        """True between SpeechStarted and TurnEnded."""
        return self._speaking

    @property
    def paused(self) -> bool:
        """True while a turn is open and the person is silent (a pause, maybe its end)."""
        return self._speaking and self._silence_from is not None

    def end_turn_now(self) -> TurnEnded | None:
        """End the open turn at once if the person is silent (None otherwise): the
        caller knows the words already form a finished turn."""
        if not self.paused:
            return None
        return self._end_turn(self._last_speech_end)

    def reset(self) -> None:
        """Drop all state and audio (e.g. after a session ends)."""
        self.__init__(self.vad, self.options)  # type: ignore[misc]

    def _ms(self, ms: float) -> int:
        return int(ms * SAMPLE_RATE / 1000)

    def push(self, pcm: np.ndarray) -> list[VADEvent]:
        """Feed 16 kHz mono float32 audio of any length; returns the events it caused."""
        if pcm.ndim != 1:
            raise AudioInputError(f"VAD wants mono audio, got shape {pcm.shape}")
        self._pending = np.concatenate([self._pending, pcm.astype(np.float32, copy=False)])
        self._buffer = np.concatenate([self._buffer, pcm.astype(np.float32, copy=False)])
        events: list[VADEvent] = []
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            events.extend(self._score(frame))
        if not self._speaking and self._candidate is None:
            self._trim_idle()
        return events

    def flush(self) -> list[VADEvent]:
        """End of stream: close a turn in progress, if any."""
        if self._speaking:
            return [self._end_turn(self._last_speech_end)]
        return []

    def _trim_idle(self) -> None:
        keep = self._ms(self.options.speech_pad_ms) + 2 * FRAME
        excess = len(self._buffer) - keep
        if excess > 0:
            self._buffer = self._buffer[excess:]
            self._buffer_start += excess

    def _score(self, frame: np.ndarray) -> list[VADEvent]:
        opts = self.options
        start, self._pos = self._pos, self._pos + FRAME
        prob = self.vad.probability(frame)
        events: list[VADEvent] = []
        if prob >= opts.threshold:
            self._silence_from = None
            self._pause_told = False
            self._last_speech_end = self._pos
            if not self._speaking:
                if self._candidate is None:
                    self._candidate = start
                if self._pos - self._candidate >= self._ms(opts.min_speech_ms):
                    self._speaking = True
                    self._speech_start = self._candidate
                    self._candidate = None
                    self._last_progress = self._pos
                    events.append(SpeechStarted(at=self._speech_start / SAMPLE_RATE))
        elif prob < opts.threshold - _HYSTERESIS:
            if not self._speaking:
                self._candidate = None
            elif self._silence_from is None:
                self._silence_from = start
        if self._speaking:
            silent = None if self._silence_from is None else self._pos - self._silence_from
            if silent is not None and silent >= self._ms(opts.min_silence_ms):
                events.append(self._end_turn(self._last_speech_end))
            elif (
                silent is not None
                and opts.pause_ms
                and not self._pause_told
                and silent >= self._ms(opts.pause_ms)
            ):
                self._pause_told = True
                events.append(
                    SpeechPaused(
                        start=self._speech_start / SAMPLE_RATE,
                        audio=self._slice(self._speech_start, self._last_speech_end),
                    )
                )
            elif self._pos - self._speech_start >= int(opts.max_turn_s * SAMPLE_RATE):
                events.append(self._end_turn(self._pos))
            elif opts.progress_ms and self._pos - self._last_progress >= self._ms(opts.progress_ms):
                self._last_progress = self._pos
                events.append(
                    SpeechProgress(
                        start=self._speech_start / SAMPLE_RATE,
                        audio=self._slice(self._speech_start, self._pos),
                    )
                )
        return events

    def _slice(self, begin: int, end: int) -> AudioChunk:
        pad = self._ms(self.options.speech_pad_ms)
        lo = max(begin - pad, self._buffer_start)
        hi = min(end + pad, self._buffer_start + len(self._buffer))
        pcm = self._buffer[lo - self._buffer_start : hi - self._buffer_start].copy()
        return AudioChunk(pcm=pcm, sample_rate=SAMPLE_RATE, pts=lo / SAMPLE_RATE)

    def _end_turn(self, end: int) -> TurnEnded:
        turn = TurnEnded(
            start=self._speech_start / SAMPLE_RATE,
            end=end / SAMPLE_RATE,
            audio=self._slice(self._speech_start, end),
            detected_at=time.monotonic(),
        )
        self._speaking = False
        self._silence_from = None
        self._candidate = None
        self._trim_idle()
        return turn

    async def run(self, src: AsyncIterator[AudioChunk]) -> AsyncIterator[VADEvent]:
        """Streaming stage: audio chunks (any rate) in, VAD events out.

        Scoring is light (≈0.1 ms per 32 ms frame) and runs inline; resampling to
        16 kHz keeps its filter state across chunks.
        """
        async for pcm in at_16k(src):
            for event in self.push(pcm):
                yield event
        for event in self.flush():
            yield event


async def at_16k(src: AsyncIterator[AudioChunk]) -> AsyncIterator[np.ndarray]:
    """The chunks' samples at 16 kHz, resampled as one stream (filter state kept)."""
    stream: soxr.ResampleStream | None = None
    rate: int | None = None
    async for chunk in src:
        pcm = chunk.pcm
        if chunk.sample_rate != SAMPLE_RATE:
            if stream is None or rate != chunk.sample_rate:
                rate = chunk.sample_rate
                stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            pcm = stream.resample_chunk(pcm)
        yield pcm
