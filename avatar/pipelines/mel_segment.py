"""One speech segment of the neural generator: its audio as log-mel rows, chunk by chunk.

Audio of any rate arrives in pieces; it is resampled to 16 kHz as a stream
(``soxr.ResampleStream``) and turned into log-mel rows by
:class:`avatar.neural_audio.StreamingMel`, so the rows equal ``log_mel`` of the whole
resampled signal. Chunk ``i`` of the segment (frames ``[iK, (i+1)K)``) can run once its
audio window (:class:`~avatar.pipelines.runner.RunnerSpec`, ``((i+1)K + L)·m`` rows)
has arrived, or once the segment is flushed; rows outside the audio read as silence,
exactly as :func:`avatar.samplers.generate_motion` sees them.

The segment covers ``ceil(duration · fps)`` frames (``duration`` in the pushed audio's
own samples), like the procedural generator's segments.
"""

from __future__ import annotations

import math

import numpy as np

from avatar.models.audio_encoder import SILENCE_LOG_MEL
from avatar.neural_audio import SAMPLE_RATE, StreamingMel, visemes_per_frame
from avatar.pipelines.runner import RunnerSpec
from avatar.streaming import frame_count
from avatar.types import TimingLike


class _Timing:
    __slots__ = ("end", "kind", "start", "symbol")

    def __init__(self, t: TimingLike, offset: float) -> None:
        self.symbol, self.kind = t.symbol, t.kind
        self.start, self.end = t.start + offset, t.end + offset


class NeuralSegment:
    """Audio, mel rows and frame accounting of one speech segment.

    Args:
        segment_id: the id its frames carry.
        seed: its noise seed (chunk ``i`` draws ``chunk_noise(seed, i, ...)``).
        spec: the runner's sizes.
        with_visemes: also keep viseme ids per frame from the pushed timings.
    """

    def __init__(self, segment_id: int, seed: int, spec: RunnerSpec, with_visemes: bool) -> None:
        self.id = segment_id
        self.seed = seed
        self.spec = spec
        self.with_visemes = with_visemes
        self.start_index = -1  # the generator's index of its first frame, once started
        self.context: np.ndarray | None = None  # [1, C, D] codes before the next chunk
        self.next_chunk = 0
        self.done = 0  # frames yielded
        self.flushed = False
        self.sample_rate: int | None = None
        self.samples = 0  # at sample_rate
        self._resampler = None
        self._mel = StreamingMel(SAMPLE_RATE)
        self._rows = np.zeros((0, spec.n_mels), np.float32)
        self._row_offset = 0  # absolute row of self._rows[0]
        self._timings: list[_Timing] = []

    @property
    def duration(self) -> float:
        """Seconds of audio added so far."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def total(self) -> int | None:
        """Frames of the segment once flushed (None before)."""
        return frame_count(self.duration, self.spec.fps) if self.flushed else None

    @property
    def rows(self) -> int:
        """Mel rows computed so far."""
        return self._row_offset + len(self._rows)

    def add(self, pcm: np.ndarray, sample_rate: int, timings=None) -> None:
        """Queue mono float32 audio; ``timings`` are relative to this piece's start."""
        import soxr

        if self.sample_rate is None:
            self.sample_rate = int(sample_rate)
            if self.sample_rate != SAMPLE_RATE:
                self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1)
        data = np.asarray(pcm, np.float32).reshape(-1)
        if int(sample_rate) != self.sample_rate:  # a piece at another rate: to the first's
            data = soxr.resample(data, int(sample_rate), self.sample_rate).astype(np.float32)
        offset = self.duration
        self.samples += len(data)
        if timings:
            self._timings += [_Timing(t, offset) for t in timings]
        if self._resampler is not None:
            data = self._resampler.resample_chunk(data)
        self._append(self._mel.push(data.astype(np.float32, copy=False)))

    def flush(self) -> None:
        """End of the segment's audio: the last rows see the end's padding."""
        if self.flushed:
            return
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._append(self._mel.push(tail.astype(np.float32, copy=False)))
        self._append(self._mel.flush())
        self.flushed = True

    def pad_silence(self, seconds: float) -> None:
        """Treat missing audio as silence (an underrun) so the segment can go on."""
        rate = self.sample_rate or SAMPLE_RATE
        self.add(np.zeros(max(1, round(seconds * rate)), np.float32), rate)

    def silence_needed(self) -> float:
        """Seconds of audio still missing before the next chunk can run (0 if none)."""
        rows = (self.next_chunk + 1) * self.spec.chunk_frames + self.spec.lookahead_frames
        missing = rows * self.spec.mel_per_frame - self.rows
        return max(missing, 0) * 0.01 + 0.02  # 10 ms per row, plus the STFT's reach

    def n_chunks(self) -> int | None:
        """Chunks of the segment once flushed."""
        total = self.total
        return None if total is None else math.ceil(total / self.spec.chunk_frames)

    def chunk_ready(self) -> bool:
        """Whether the next chunk can run now."""
        if self.flushed:
            return self.next_chunk < (self.n_chunks() or 0)
        s = self.spec
        end = (self.next_chunk + 1) * s.chunk_frames + s.lookahead_frames
        return self.rows >= end * s.mel_per_frame

    def chunk_frames(self, index: int) -> int:
        """How many frames of chunk ``index`` are shown (the last one is cut)."""
        k = self.spec.chunk_frames
        total = self.total
        return k if total is None else max(0, min(k, total - index * k))

    def finished(self) -> bool:
        """Flushed and every frame yielded."""
        return self.flushed and self.done >= (self.total or 0)

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Chunk ``index``'s mel window [1, W·m, n_mels] and visemes [1, W] (or None)."""
        s = self.spec
        m = s.mel_per_frame
        start = index * s.chunk_frames - s.context_frames - s.audio_context_frames
        out = np.full((s.mel_rows, s.n_mels), SILENCE_LOG_MEL, np.float32)
        first_row = start * m
        lo, hi = max(first_row, self._row_offset), min(first_row + s.mel_rows, self.rows)
        if hi > lo:
            held = self._rows[lo - self._row_offset : hi - self._row_offset]
            out[lo - first_row : hi - first_row] = held
        visemes = None
        if self.with_visemes:
            end = start + s.window_frames
            ids = visemes_per_frame(self._timings, max(end, 0), s.fps)
            visemes = np.zeros(s.window_frames, np.int64)
            first = max(start, 0)
            if end > first:
                visemes[first - start :] = ids[first:end]
            visemes = visemes[None]
        return out[None], visemes

    def advance(self, codes: np.ndarray) -> None:
        """Book chunk ``next_chunk``'s codes [1, K, D]: the next context; drop old rows."""
        c = self.spec.context_frames
        assert self.context is not None
        self.context = np.concatenate([self.context, codes], axis=1)[:, -c:]
        self.next_chunk += 1
        s = self.spec
        keep = max(self.next_chunk * s.chunk_frames - s.context_frames - s.audio_context_frames, 0)
        drop = min(keep * s.mel_per_frame - self._row_offset, len(self._rows))
        if drop > 0:
            self._rows = self._rows[drop:]
            self._row_offset += drop

    def _append(self, rows: np.ndarray) -> None:
        if len(rows):
            self._rows = np.concatenate([self._rows, rows.astype(np.float32, copy=False)])
