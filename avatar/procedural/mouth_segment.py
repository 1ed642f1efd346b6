"""One speech segment: its audio and timings as they arrive, and its frames' mouths.

A segment starts on a frame boundary of the generator's clock and covers
``frame_count(duration, fps)`` frames; frame ``k`` of the segment shows the audio
at ``k / fps`` seconds into it. Audio of any chunk size and rate can be added;
chunks at another rate than the first are resampled to it.

The bookkeeping side (:meth:`SpeechSegment.add`, :meth:`SpeechSegment.ready`,
:meth:`SpeechSegment.take_inbox`) runs on the event loop; the analysis side
(:meth:`SpeechSegment.mouth`) runs in the render worker, one frame at a time, and
gets the audio that arrived since the last frame through ``take_inbox``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avatar.procedural.audio_mouth import AudioMouth
from avatar.procedural.visemes import VisemeTrack
from avatar.streaming import frame_count
from avatar.types import TimingLike


def frame_times(duration: float, fps: float) -> np.ndarray:
    """The times (s) of the frames showing ``duration`` seconds: ``k / fps``."""
    return np.arange(frame_count(duration, fps)) / fps


def _resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear resampling; good enough for mouth motion (the audio is not played)."""
    if from_rate == to_rate or len(pcm) == 0:
        return pcm
    n = max(1, round(len(pcm) * to_rate / from_rate))
    t = np.arange(n) * (from_rate / to_rate)
    return np.interp(t, np.arange(len(pcm)), pcm).astype(np.float32)


class SpeechSegment:
    """Audio, timings and frame accounting of one speech segment.

    Args:
        segment_id: the id frames of this segment carry.
        start_index: the generator's frame index of the segment's first frame.
        fps: frames per second.
        lookahead: seconds of audio past a frame's time needed before it is drawn.
    """

    def __init__(self, segment_id: int, start_index: int, fps: float, lookahead: float) -> None:
        self.id = segment_id
        self.start_index = start_index
        self.fps = fps
        self.lookahead = lookahead
        self.sample_rate: int | None = None
        self.samples = 0
        self.flushed = False
        self.done = 0  # frames yielded so far
        self._inbox: list[tuple[np.ndarray, list[TimingLike], float]] = []
        self._audio: AudioMouth | None = None
        self._visemes = VisemeTrack()

    @property
    def duration(self) -> float:
        """Seconds of audio added so far."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def total(self) -> int | None:
        """Number of frames once flushed (None before)."""
        return frame_count(self.duration, self.fps) if self.flushed else None

    def add(self, pcm: np.ndarray, sample_rate: int, timings: Sequence[TimingLike] | None) -> None:
        """Queue a chunk; its ``timings`` are relative to the chunk's start."""
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if self.sample_rate is None:
            self.sample_rate = int(sample_rate)
        pcm = _resample(pcm, int(sample_rate), self.sample_rate)
        self._inbox.append((pcm, list(timings or ()), self.duration))
        self.samples += len(pcm)

    def ready(self, k: int) -> bool:
        """Whether frame ``k`` of this segment can be drawn now."""
        if self.flushed:
            total = self.total
            return total is not None and k < total
        return self.duration >= k / self.fps + self.lookahead - 1e-9

    def flush(self) -> None:
        """End of the segment's audio: its frame count is now known."""
        self.flushed = True

    def finished(self) -> bool:
        """Flushed and every frame yielded."""
        return self.flushed and self.done >= (self.total or 0)

    def silence_needed(self) -> float:
        """Seconds of silence that let the next frame be drawn (at least one frame's)."""
        needed = self.done / self.fps + self.lookahead - self.duration
        return max(needed, 1.0 / self.fps)

    def pad_silence(self, seconds: float) -> None:
        """Treat missing audio as silence (an underrun), so the segment can go on."""
        rate = self.sample_rate or 16_000
        self.add(np.zeros(max(1, round(seconds * rate)), np.float32), rate, None)

    def take_inbox(self) -> list[tuple[np.ndarray, list[TimingLike], float]]:
        """Hand the chunks added since the last call to the render worker."""
        inbox, self._inbox = self._inbox, []
        return inbox

    def mouth(self, k: int, inbox: list[tuple[np.ndarray, list[TimingLike], float]]):
        """Render-worker side: the mouth of frame ``k``.

        Returns:
            (shape, energy): shape is float32 (open, wide, round, press, teeth), energy
            the loudness 0..1 at that frame.
        """
        if self._audio is None:
            self._audio = AudioMouth(self.sample_rate or 16_000)
        for pcm, timings, offset in inbox:
            self._audio.push(pcm)
            if timings:
                self._visemes.add(timings, offset)
        t = k / self.fps
        open_, wide, round_, activity = self._audio.frame(t)
        if len(self._visemes) and t <= self._visemes.end + 0.2:
            shape = self._visemes.values_at(t)
            # The timings give the shape; the loudness scales how far the jaw drops.
            shape[0] *= 0.35 + 0.65 * max(float(open_), 0.0) ** 0.7
            return shape, float(activity)
        return np.array([open_, wide, round_, 0.0, 0.0], np.float32), float(activity)
