"""What the streaming generators share: input checks and the speech-segment queue.

Both :class:`~avatar.procedural.generator.ProceduralGenerator` and
:class:`~avatar.pipelines.neural.NeuralGenerator` keep one clock, a queue of speech
segments, ``flush`` / ``clear_buffer`` / underrun handling exactly as
:mod:`avatar.base` describes. :class:`SegmentedGenerator` holds that bookkeeping; a
generator subclasses it (one level), says how a segment is made
(:meth:`~SegmentedGenerator._new_segment`) and does its own drawing in ``__anext__``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from avatar.errors import GeneratorError, ImageInputError
from avatar.types import EndOfSegment, PreparedAvatar, TimingLike


def check_ranges(options: object, checks: Iterable[tuple[str, bool, str]]) -> None:
    """Fail fast on the first ``(field, ok, allowed)`` check of ``options`` that is not ok.

    Raises:
        ValueError: ``"<Options>.<field>=<value> is outside <allowed>"``.
    """
    for name, ok, allowed in checks:
        if not ok:
            value = getattr(options, name)
            raise ValueError(f"{type(options).__name__}.{name}={value!r} is outside {allowed}")


def frame_count(duration: float, fps: float) -> int:
    """Frames needed to show ``duration`` seconds at ``fps``: ceil(duration * fps)."""
    return max(0, math.ceil(duration * fps - 1e-6))


def check_avatar(avatar: PreparedAvatar) -> None:
    """Check that a prepared avatar can be animated: square uint8 RGB, 68 finite landmarks.

    Raises:
        ImageInputError: the message says what is wrong with the avatar.
    """
    image, lm = np.asarray(avatar.image), np.asarray(avatar.landmarks)
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ImageInputError(f"avatar {avatar.id}: image must be uint8 RGB, got {image.shape}")
    if image.shape[0] != image.shape[1]:
        raise ImageInputError(f"avatar {avatar.id}: image must be square, got {image.shape[:2]}")
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ImageInputError(f"avatar {avatar.id}: needs 68 finite landmarks, got {lm.shape}")


def mono_float(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Audio as float32 mono samples (integer PCM is scaled to [-1, 1]).

    Raises:
        ValueError: a rate that is not positive, or audio that is not mono.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate} must be positive")
    data = np.asarray(pcm)
    if data.dtype.kind in "iu":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    if data.ndim != 1:
        raise ValueError(f"audio must be mono (n,), got shape {data.shape}")
    return data.astype(np.float32, copy=False)


class Segment(Protocol):
    """What the queue needs of one speech segment (each generator has its own kind)."""

    id: int
    start_index: int  # the generator's index of its first frame; -1 until it starts
    done: int  # frames yielded
    flushed: bool

    @property
    def duration(self) -> float: ...

    def add(
        self, pcm: np.ndarray, sample_rate: int, timings: Sequence[TimingLike] | None
    ) -> None: ...

    def flush(self) -> None: ...

    def finished(self) -> bool: ...

    def silence_needed(self) -> float: ...

    def pad_silence(self, seconds: float) -> None: ...


S = TypeVar("S", bound=Segment)


class SegmentedGenerator(Generic[S]):
    """The clock and the speech-segment queue of a streaming generator.

    A subclass sets ``name``, implements :meth:`_new_segment` and ``__anext__`` (which
    uses :meth:`_pop_finished` and :meth:`_wait_for_audio`), and may extend
    :meth:`_drop_queued` (frames it made ahead) and :meth:`_speech_takes_over`.

    Args:
        options: the generator's options; ``fps``, ``size`` and ``underrun_timeout``
            are read here.
    """

    name: str

    def __init__(self, options: Any) -> None:
        self.options = options
        self.fps = float(options.fps)
        self.size: int = options.size
        self._segments: deque[S] = deque()
        self._ends: deque[EndOfSegment] = deque()  # segment ends to yield first
        self._open: S | None = None  # the segment push_audio adds to
        self._index = 0  # the next frame slot
        self._next_id = 0
        self._epoch = 0  # bumped by clear_buffer: work started before it is dropped
        self._closed = False
        self._starved = False
        self._wake = asyncio.Event()

    def _new_segment(self, segment_id: int) -> S:
        """A new, empty speech segment with that id."""
        raise NotImplementedError

    def _speech_takes_over(self) -> None:
        """Called when speech is queued while none was: drop idle work made ahead."""

    def _drop_queued(self) -> None:
        """Forget queued speech (a subclass also drops the frames it made ahead)."""
        self._segments.clear()
        self._open = None

    @property
    def _starved_wait(self) -> float:
        """Seconds to wait for audio again once a segment has run dry (one frame)."""
        return 1.0 / self.fps

    # ----------------------------------------------------------------- input

    async def push_audio(
        self, pcm: np.ndarray, sample_rate: int, timings: Sequence[TimingLike] | None = None
    ) -> None:
        """Queue speech (mono float32) of the current segment; timings relative to this chunk."""
        if self._closed:
            raise GeneratorError("push_audio on a closed generator")
        data = mono_float(pcm, sample_rate)
        if len(data) == 0:
            return
        if self._open is None:
            self._open = self._new_segment(self._next_id)
            self._next_id += 1
            self._segments.append(self._open)
            if len(self._segments) == 1:
                self._speech_takes_over()
        self._open.add(data, sample_rate, timings)
        self._wake.set()

    async def flush(self) -> None:
        """End the current segment: its last frames, then an EndOfSegment, follow."""
        if self._open is not None:
            self._open.flush()
            self._open = None
            self._wake.set()

    async def clear_buffer(self) -> None:
        """Barge-in: drop queued audio and frames; EndOfSegment(interrupted=True) follows."""
        self._epoch += 1
        for seg in self._segments:
            cut = (self._start_of(seg) + seg.done) / self.fps
            self._ends.append(EndOfSegment(seg.id, cut, True))
        self._drop_queued()
        self._wake.set()

    def _shut(self) -> None:
        """The first part of ``aclose``: iteration ends, everything queued is dropped."""
        self._closed = True
        self._drop_queued()
        self._ends.clear()
        self._wake.set()

    # ---------------------------------------------------------------- output

    def _start_of(self, seg: S) -> int:
        """The index of ``seg``'s first frame (the next slot if it has not started)."""
        return seg.start_index if seg.start_index >= 0 else self._index

    def _pop_finished(self, seg: S) -> EndOfSegment:
        """Take the finished head segment ``seg`` off the queue; its EndOfSegment."""
        self._segments.popleft()
        return EndOfSegment(seg.id, self._start_of(seg) / self.fps + seg.duration, False)

    async def _wait_for_audio(self, seg: S) -> None:
        """Wait for more audio of ``seg``; past ``underrun_timeout`` (then ``_starved_wait``)
        count the missing audio as silence, so the segment goes on."""
        self._wake.clear()
        timeout = self._starved_wait if self._starved else self.options.underrun_timeout
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
            self._starved = False
        except TimeoutError:
            if self._segments and self._segments[0] is seg and not seg.flushed:
                self._starved = True
                seg.pad_silence(seg.silence_needed())
