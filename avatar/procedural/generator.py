"""The procedural generator: any approved face, animated on one CPU core.

It implements :class:`avatar.base.AvatarGenerator`. Speech audio is pushed chunk
by chunk; each frame is drawn as soon as the audio it shows (plus ``lookahead``)
has arrived, in a worker thread, so frames follow the audio chunk by chunk and
the event loop never waits on drawing.

The clock: frame ``index`` has ``pts = index / fps``. A segment starts at the
next free frame slot when its first audio arrives (the first pushed sample is at
pts 0 when nothing was drawn before), and its frame ``k`` shows the audio at
``k / fps`` into the segment. Segments follow each other on the same clock, each
starting on a frame boundary; between them idle frames continue it.

Underrun: if a segment that is not flushed runs out of audio, the generator waits
for more (up to ``underrun_timeout``, then one frame at a time), and past that
counts the missing audio as silence, like an audio track that plays silence on
underrun. Audio pushed later follows that silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avatar.errors import GeneratorError
from avatar.procedural.mouth_segment import SpeechSegment
from avatar.procedural.renderer import FrameRenderer
from avatar.streaming import SegmentedGenerator, check_avatar, check_ranges, mono_float
from avatar.types import EndOfSegment, PreparedAvatar, TimingLike, VideoFrame


@dataclass(frozen=True, slots=True)
class ProceduralOptions:
    """How the procedural generator animates.

    Attributes:
        fps: frames per second of audio time.
        size: side of the square output frames in pixels (the avatar is resized to it).
        sway: head motion amplitude; 1 is natural, 0 keeps the head still.
        breathing: breathing (a tiny vertical stretch) amplitude; 0 turns it off.
        blink: blink at random 2-6 s intervals.
        seed: makes blinks and head motion reproducible.
        lookahead: seconds of audio past a frame's time needed before it is drawn
            (the mouth anticipates the sound slightly); also the added latency.
        articulation: scale of the mouth motion (1 natural, below 1 subtler).
        underrun_timeout: seconds to wait for more audio of an unflushed segment
            before counting the missing audio as silence.
    """

    fps: float = 25.0
    size: int = 512
    sway: float = 1.0
    breathing: float = 1.0
    blink: bool = True
    seed: int = 0
    lookahead: float = 0.04
    articulation: float = 1.0
    underrun_timeout: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            ("fps", 1.0 <= self.fps <= 120.0, "1..120"),
            ("size", 64 <= self.size <= 2048, "64..2048"),
            ("sway", 0.0 <= self.sway <= 5.0, "0..5"),
            ("breathing", 0.0 <= self.breathing <= 5.0, "0..5"),
            ("lookahead", 0.0 <= self.lookahead <= 1.0, "0..1 s"),
            ("articulation", 0.0 <= self.articulation <= 2.0, "0..2"),
            ("underrun_timeout", 0.0 < self.underrun_timeout <= 30.0, "0..30 s"),
        )
        check_ranges(self, checks)


def _renderer(avatar: PreparedAvatar, options: ProceduralOptions) -> FrameRenderer:
    check_avatar(avatar)
    return FrameRenderer.create(
        avatar,
        options.size,
        options.fps,
        seed=options.seed,
        sway=options.sway,
        blink=options.blink,
        breathing=options.breathing,
        articulation=options.articulation,
    )


def _speech_frame(renderer: FrameRenderer, seg: SpeechSegment, k: int, index: int, inbox):
    """Frame ``k`` of ``seg`` drawn as generator frame ``index`` (shared with render_clip)."""
    shape, energy = seg.mouth(k, inbox)
    pts = index / seg.fps
    out = renderer.render(pts, shape, True, energy)
    frame = VideoFrame(out.image, pts, index, out.landmarks, out.mouth_open, True, seg.id)
    return frame, shape


def render_clip(
    avatar: PreparedAvatar,
    pcm: np.ndarray,
    sample_rate: int,
    timings: Sequence[TimingLike] | None = None,
    options: ProceduralOptions | None = None,
) -> list[VideoFrame]:
    """Render a whole utterance offline: ``ceil(duration * fps)`` speaking frames.

    Frame ``i`` has ``pts = i / fps`` and shows the audio at that time. Same drawing
    as the streaming generator (blinks and sway included). Blocking: call it from
    a worker thread in async code.
    """
    options = options or ProceduralOptions()
    renderer = _renderer(avatar, options)
    seg = SpeechSegment(0, 0, options.fps, options.lookahead)
    seg.add(mono_float(pcm, sample_rate), sample_rate, timings)
    seg.flushed = True
    inbox = seg.take_inbox()
    frames = []
    for k in range(seg.total or 0):
        frame, _ = _speech_frame(renderer, seg, k, k, inbox if k == 0 else [])
        frames.append(frame)
    return frames


class ProceduralGenerator(SegmentedGenerator[SpeechSegment]):
    """Streams frames of one avatar for one session (see :mod:`avatar.base`).

    Build it with :meth:`load`; push audio, flush, iterate; ``aclose()`` at the end.
    ``push_audio``, ``flush`` and ``clear_buffer`` come from
    :class:`~avatar.streaming.SegmentedGenerator`.

    Attributes:
        name: "procedural".
        fps: frames per second.
        size: output side in pixels.
    """

    name = "procedural"
    options: ProceduralOptions

    def __init__(self, renderer: FrameRenderer, options: ProceduralOptions) -> None:
        """Keep a ready renderer; most callers want :meth:`load`."""
        super().__init__(options)
        self._renderer = renderer
        self._last_shape = np.zeros(5, np.float32)
        self._job: _Job | None = None

    @classmethod
    def load(
        cls, avatar: PreparedAvatar, options: ProceduralOptions | None = None
    ) -> ProceduralGenerator:
        """Prepare ``avatar`` (resized to ``options.size``): mesh, rig, colours, motion.

        Raises:
            ImageInputError: the avatar's image or landmarks cannot be used.
        """
        options = options or ProceduralOptions()
        return cls(_renderer(avatar, options), options)

    def _new_segment(self, segment_id: int) -> SpeechSegment:
        return SpeechSegment(segment_id, -1, self.fps, self.options.lookahead)

    async def aclose(self) -> None:
        """Stop: iteration ends, queued audio is dropped; waits for a frame being drawn."""
        self._shut()
        if self._job is not None:
            await asyncio.wait([self._job.task])

    # ---------------------------------------------------------------- output

    def __aiter__(self) -> ProceduralGenerator:
        return self

    async def __anext__(self) -> VideoFrame | EndOfSegment:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._job is None:
                if self._ends:
                    return self._ends.popleft()
                if self._segments:
                    seg = self._segments[0]
                    if seg.finished():
                        return self._pop_finished(seg)
                    if not seg.ready(seg.done):
                        await self._wait_for_audio(seg)
                        continue
                self._job = self._start_job()
            job = self._job
            # Shielded: if the caller is cancelled, the frame is kept for its next call.
            try:
                result = await asyncio.shield(job.task)
            except Exception as err:
                self._job = None
                raise GeneratorError(f"procedural: frame {job.index} failed: {err}") from err
            self._job = None
            if self._closed:
                raise StopAsyncIteration
            item = self._finish(job, result)
            if item is not None:
                return item

    def _start_job(self) -> _Job:
        """Take the next frame slot and start drawing it in the worker thread."""
        index = self._index
        self._index += 1
        if self._segments:
            seg = self._segments[0]
            if seg.start_index < 0:
                seg.start_index = index
            work = asyncio.to_thread(
                _speech_frame, self._renderer, seg, seg.done, index, seg.take_inbox()
            )
            return _Job(asyncio.ensure_future(work), index, self._epoch, seg)
        self._last_shape = self._last_shape * 0.35  # the mouth eases shut after speech
        if float(self._last_shape.max()) < 0.02:
            self._last_shape[:] = 0.0
        shape = self._last_shape if self._last_shape.any() else None
        work = asyncio.to_thread(self._renderer.render, index / self.fps, shape, False, 0.0)
        return _Job(asyncio.ensure_future(work), index, self._epoch, None)

    def _finish(self, job: _Job, result) -> VideoFrame | None:
        """Book a drawn frame; None when clear_buffer cut its segment meanwhile."""
        if job.segment is None:
            pts = job.index / self.fps
            return VideoFrame(result.image, pts, job.index, result.landmarks, result.mouth_open)
        if job.epoch != self._epoch:
            self._index = job.index  # the slot goes to the idle frame after the cut
            return None
        frame, shape = result
        job.segment.done += 1
        self._last_shape = shape
        return frame


@dataclass(slots=True)
class _Job:
    """A frame being drawn in the worker thread."""

    task: asyncio.Future
    index: int
    epoch: int
    segment: SpeechSegment | None  # None for an idle frame
