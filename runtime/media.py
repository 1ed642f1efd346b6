"""The clocked outbound media tracks of a live session (inbound: ``runtime.inbound``).

One :class:`MediaClock` drives both outbound tracks, so lips match sound. The tracks
own the clock: aiortc pulls ``recv()``, which sleeps until the frame's media time (as
aiortc's ``mediastreams.py`` paces from pts). On underrun the audio track sends
silence and the video track repeats its last frame; neither ever stalls, and an
exception inside ``recv()`` sends the same instead (:mod:`runtime.track_guard`).

How a session drives them (generator pts → media time through the speech's start)::

    start = audio.schedule(pcm, rate, at=video.next_slot(clock.now() + lead))
    audio.schedule(more_pcm, rate)                 # contiguous; last=True on the final piece
    video.put(f.image, at=start + f.pts - pts0)    # pts0: generator pts of the first sample
    heard = audio.clear(); video.clear_after(clock.now())   # barge-in
"""

from __future__ import annotations

import asyncio
import bisect
import fractions
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError

from runtime.track_guard import GuardedTrack

log = logging.getLogger(__name__)

RATE = 48_000
VIDEO_CLOCK = 90_000


class MediaClock:
    """Media time of one session in seconds: 0 at the first use, then monotonic.

    Share one instance between a session's outbound tracks. Start using it once the
    peer connection is up: audio scheduled before the tracks run plays late.
    """

    def __init__(self) -> None:
        self._t0: float | None = None

    def now(self) -> float:
        """Media time now (starts the clock on the first call)."""
        t = time.monotonic()
        if self._t0 is None:
            self._t0 = t
        return t - self._t0

    def wall(self, media_time: float) -> float:
        """The ``time.monotonic()`` at which ``media_time`` happens (starts the clock)."""
        self.now()
        assert self._t0 is not None
        return self._t0 + media_time

    async def sleep_until(self, media_time: float) -> None:
        """Sleep until ``media_time`` (returns at once when it has passed)."""
        delay = media_time - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(slots=True)
class AudioStats:
    """Counters of an :class:`AudioOut` (read them; the track updates them).

    Attributes:
        frames_sent: 20 ms frames returned by ``recv``.
        speech_frames_sent: of those, frames holding scheduled speech.
        underruns: times a run ran dry before its ``last`` piece (silence was sent).
        late_starts: pieces that could not play at their time and played at once.
    """

    frames_sent: int = 0
    speech_frames_sent: int = 0
    underruns: int = 0
    late_starts: int = 0


@dataclass(slots=True)
class _Piece:
    start: int  # first sample, in 48 kHz samples of media time
    pcm: np.ndarray  # float32 at 48 kHz

    @property
    def end(self) -> int:
        return self.start + len(self.pcm)


@dataclass(slots=True)
class _Run:
    """Contiguous speech: one resampler, input sample ``i`` plays at ``origin + i·48k/rate``."""

    rate: int
    origin: int
    out_end: int  # where the next resampled sample goes
    consumed: int = 0
    resampler: soxr.ResampleStream | None = None
    dry: bool = False

    def position(self) -> int:
        return self.origin + round(self.consumed * RATE / self.rate)


class AudioOut(GuardedTrack):
    """The companion's voice: 20 ms s16 mono 48 kHz frames paced by a :class:`MediaClock`.

    Args:
        clock: the session's clock, shared with its :class:`VideoOut`.
        frame_ms: frame length (20 ms is what Opus over WebRTC expects).
        lead: seconds ahead of now where speech starts when nothing is queued; it
            must cover the generator's delay to its first frame.
        max_ahead: ``schedule`` refuses speech ending further ahead of now (the
            producer waits on ``queued_until``), so the queue stays bounded.
        on_first_speech: called ``(media_time, wall_time)`` when the first sample of a
            run (a schedule with ``at`` given, or after idle) is sent; ``wall_time`` is
            the ``time.monotonic()`` at which it plays (it leaves up to a frame earlier).
    """

    kind = "audio"
    max_failures = 50  # 1 s of frames failing in a row ends the track

    def __init__(
        self,
        clock: MediaClock,
        frame_ms: int = 20,
        lead: float = 0.1,
        max_ahead: float = 60.0,
        on_first_speech: Callable[[float, float], None] | None = None,
    ) -> None:
        super().__init__()
        self.clock, self.lead, self.max_ahead = clock, lead, max_ahead
        self.on_first_speech = on_first_speech
        self.frame_samples = RATE * frame_ms // 1000
        self.stats = AudioStats()
        self._pieces: list[_Piece] = []  # sorted by start
        self._run: _Run | None = None
        self._next: int | None = None  # first sample of the next frame to send
        self._notify: list[int] = []  # run starts still to report to on_first_speech
        self._heard = 0  # end of the last speech sample sent
        self._time_base = fractions.Fraction(1, RATE)

    @property
    def queued_until(self) -> float:
        """Media time where the queued speech ends (the last sent speech end when idle)."""
        end = max([self._heard, *(p.end for p in self._pieces)])
        if self._run is not None:
            end = max(end, self._run.position())
        return end / RATE

    def schedule(
        self, pcm: np.ndarray, sample_rate: int, at: float | None = None, last: bool = False
    ) -> float:
        """Queue mono float32 speech to play from media time ``at``.

        Pieces with ``at=None`` continue the current run seamlessly (one streaming
        resampler per run), or start ``lead`` after now when idle. Overlapping runs mix.

        Args:
            pcm: mono float32 samples in [-1, 1], any rate.
            sample_rate: rate of ``pcm``.
            at: media time of the first sample; None continues the run.
            last: True on the run's final piece (the end of a reply); without it the
                run's end counts as an underrun.

        Raises:
            ValueError: the speech would end more than ``max_ahead`` after now.

        Returns:
            The media time the first sample plays. Map the generator's pts of this
            audio to media time from it. A time in the past plays at once and counts in
            ``stats.late_starts``.
        """
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        now = self.clock.now()
        begin = max(self.queued_until, now + self.lead) if at is None else at
        if begin + len(pcm) / sample_rate - now > self.max_ahead:
            raise ValueError(f"speech would end over {self.max_ahead} s ahead: pace the producer")
        earliest = self._earliest()
        run = self._run
        if at is None and run is not None:  # continue the run
            pos = run.position()
            if run.rate != sample_rate:
                self._end_run()
                run = self._run = _Run(rate=sample_rate, origin=pos, out_end=pos)
            if pos < earliest:  # it ran dry: continue as soon as possible
                self.stats.late_starts += 1
                run.origin += earliest - pos
                run.out_end, run.resampler, pos = earliest, None, earliest
        else:
            if at is not None:
                pos = round(at * RATE)
            else:
                queued = max([0, *(p.end for p in self._pieces)])
                pos = queued if queued > earliest else round((now + self.lead) * RATE)
            if pos < earliest:
                self.stats.late_starts += 1
                pos = earliest
            self._end_run()
            run = self._run = _Run(rate=sample_rate, origin=pos, out_end=pos)
            bisect.insort(self._notify, pos)
        run.dry = False
        if sample_rate != RATE and run.resampler is None:
            run.resampler = soxr.ResampleStream(sample_rate, RATE, 1, dtype="float32")
        out = pcm.copy() if run.resampler is None else run.resampler.resample_chunk(pcm, last)
        if last:
            run.resampler = None
        run.consumed += len(pcm)
        self._place(run, out)
        if last:
            self._run = None
        return pos / RATE

    def clear(self) -> float:
        """Barge-in: drop every sample not yet sent.

        Returns:
            The media time up to which speech was sent (what the person heard); subtract
            the reply's start to know how much of it was heard (clamp at 0).
        """
        self._pieces.clear()
        self._notify.clear()
        self._run = None
        return self._heard / RATE

    async def _produce(self) -> av.AudioFrame:
        """The next 20 ms frame, returned at its media time; silence when nothing is due."""
        start = await self._next_slot()
        end = start + self.frame_samples
        self._check_run(end)
        buf = np.zeros(self.frame_samples, np.float32)
        speech = False
        keep: list[_Piece] = []
        for i, p in enumerate(self._pieces):
            if p.start >= end:
                keep += self._pieces[i:]
                break
            if p.end <= start:  # placed too late to play: dropped
                continue
            lo, hi = max(p.start, start), min(p.end, end)
            buf[lo - start : hi - start] += p.pcm[lo - p.start : hi - p.start]
            speech = True
            self._heard = max(self._heard, hi)
            if p.end > end:
                keep.append(p)
        self._pieces = keep
        self._report_starts(start, end)
        self.stats.frames_sent += 1
        self.stats.speech_frames_sent += speech
        return self._frame(buf, start)

    async def _fallback(self) -> av.AudioFrame:
        """Silence at the next frame time (after a failed ``_produce``)."""
        start = await self._next_slot()
        self.stats.frames_sent += 1
        return self._frame(np.zeros(self.frame_samples, np.float32), start)

    async def _next_slot(self) -> int:
        """Wait for the next frame's media time; its first sample (the slot is taken)."""
        n = self.frame_samples
        start = int(self.clock.now() * RATE) // n * n if self._next is None else self._next
        await self.clock.sleep_until(start / RATE)
        if self.readyState != "live":
            raise MediaStreamError
        self._next = start + n
        return start

    def _frame(self, buf: np.ndarray, start: int) -> av.AudioFrame:
        s16 = (np.clip(buf, -1.0, 1.0) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(s16[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, self._time_base
        return frame

    def _earliest(self) -> int:
        """First sample that can still be sent."""
        n = self.frame_samples
        now = int(self.clock.now() * RATE) // n * n
        return now if self._next is None else max(self._next, now)

    def _place(self, run: _Run, out: np.ndarray) -> None:
        if len(out):
            bisect.insort(self._pieces, _Piece(run.out_end, out), key=lambda p: p.start)
            run.out_end += len(out)

    def _flush(self, run: _Run) -> None:
        """Place what the run's resampler still holds (its tail plays)."""
        if run.resampler is not None:
            self._place(run, run.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            run.resampler = None

    def _end_run(self) -> None:
        if self._run is not None:
            self._flush(self._run)
        self._run = None

    def _check_run(self, end: int) -> None:
        """Before a frame ending at ``end``: flush a draining run's tail, count a dry run."""
        run = self._run
        if run is None or run.dry or run.origin >= end or run.out_end >= end:
            return
        if run.resampler is not None:
            self._flush(run)
            run.out_end = max(run.out_end, run.position())
        if run.out_end < end:
            run.dry = True
            self.stats.underruns += 1
            log.warning("audio underrun at %.3f s: speech arrived too late", end / RATE)

    def _report_starts(self, start: int, end: int) -> None:
        while self._notify and self._notify[0] < end:
            first = max(self._notify.pop(0), start)
            if self.on_first_speech is not None:
                self.on_first_speech(first / RATE, self.clock.wall(first / RATE))


@dataclass(slots=True)
class VideoStats:
    """Counters of a :class:`VideoOut`.

    Attributes:
        frames_sent: frames returned by ``recv`` (new and repeated).
        repeats: sends of the last frame again because no new one was due.
        dropped_stale: frames never shown because a newer one was due (generation behind).
        dropped_full: oldest frames dropped because the queue was full (producer too far ahead).
        max_queue: the most frames queued at once.
    """

    frames_sent: int = 0
    repeats: int = 0
    dropped_stale: int = 0
    dropped_full: int = 0
    max_queue: int = 0


class VideoOut(GuardedTrack):
    """The avatar's face: frames shown at their media time, paced at ``fps`` by the clock.

    Args:
        clock: the session's clock, shared with its :class:`AudioOut`.
        fps: frames per second sent (use the generator's fps).
        initial: uint8 RGB (H, W, 3) shown until the first frame is due (black 256² if None).
        max_ahead: seconds of frames the queue holds (``fps · max_ahead`` frames).
        on_frame_sent: called ``(tag, media_time, wall_time)`` when a put frame is first sent.
    """

    kind = "video"

    def __init__(
        self,
        clock: MediaClock,
        fps: float = 25,
        initial: np.ndarray | None = None,
        max_ahead: float = 2.0,
        on_frame_sent: Callable[[object, float, float], None] | None = None,
    ) -> None:
        super().__init__()
        self.clock, self.fps, self.on_frame_sent = clock, fps, on_frame_sent
        self.stats = VideoStats()
        self._last = initial if initial is not None else np.zeros((256, 256, 3), np.uint8)
        self._times: list[float] = []  # sorted media times of the queued frames
        self._frames: list[tuple[np.ndarray, object]] = []
        self._max = max(1, round(fps * max_ahead))
        self._slot: int | None = None
        self._warned = -math.inf
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)

    def next_slot(self, t: float) -> float:
        """The first frame time at or after media time ``t``; start speech there."""
        return math.ceil(t * self.fps - 1e-6) / self.fps

    @property
    def queued_until(self) -> float:
        """Media time of the last queued frame (-inf when empty). Put frames while it is
        less than about a second ahead of ``clock.now()``; a full queue drops its oldest."""
        return self._times[-1] if self._times else -math.inf

    def put(self, image: np.ndarray, at: float, tag: object = None) -> None:
        """Show ``image`` (uint8 RGB (H, W, 3)) from media time ``at`` until a newer frame.

        ``tag`` comes back through ``on_frame_sent`` (e.g. the generator's frame index).
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)  # kept by reference: do not modify it later
        if len(self._times) >= self._max:
            del self._times[0], self._frames[0]
            self.stats.dropped_full += 1
        i = bisect.bisect_right(self._times, at)
        self._times.insert(i, at)
        self._frames.insert(i, (image, tag))
        self.stats.max_queue = max(self.stats.max_queue, len(self._times))

    def clear_after(self, t: float) -> None:
        """Barge-in: drop the frames queued for after media time ``t``; put idle ones next."""
        i = bisect.bisect_right(self._times, t)
        del self._times[i:], self._frames[i:]

    async def _produce(self) -> av.VideoFrame:
        """The next frame at its slot time: the newest frame due by the middle of the slot,
        else the last one again. Falls a slot behind → skips to now (never bursts)."""
        slot = await self._next_slot()
        t = slot / self.fps
        due = bisect.bisect_left(self._times, t + 0.5 / self.fps)
        if due:
            stale = due - 1
            if stale:
                self.stats.dropped_stale += stale
                if time.monotonic() - self._warned > 5:
                    self._warned = time.monotonic()
                    log.warning("avatar frames late: %d dropped at %.2f s", stale, t)
            self._last, tag = self._frames[due - 1]
            del self._times[:due], self._frames[:due]
            if self.on_frame_sent is not None:
                self.on_frame_sent(tag, t, self.clock.wall(t))
        else:
            self.stats.repeats += 1
        return self._frame(slot)

    async def _fallback(self) -> av.VideoFrame:
        """The last frame again at the next slot (after a failed ``_produce``)."""
        slot = await self._next_slot()
        self.stats.repeats += 1
        return self._frame(slot)

    async def _next_slot(self) -> int:
        """Wait for the next slot's time (a slot behind: skip to now); its number."""
        now = self.clock.now()
        slot = math.floor(now * self.fps) if self._slot is None else self._slot + 1
        if (slot + 1) / self.fps < now:
            slot = math.floor(now * self.fps)
        self._slot = slot
        await self.clock.sleep_until(slot / self.fps)
        if self.readyState != "live":
            raise MediaStreamError
        return slot

    def _frame(self, slot: int) -> av.VideoFrame:
        self.stats.frames_sent += 1
        frame = av.VideoFrame.from_ndarray(self._last, format="rgb24")
        frame.pts, frame.time_base = round(slot * VIDEO_CLOCK / self.fps), self._time_base
        return frame
