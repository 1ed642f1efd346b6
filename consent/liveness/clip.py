"""Read an uploaded consent clip into frames for analysis and 16 kHz mono audio.

Any container PyAV (FFmpeg) reads will do: the WebM (VP8/VP9 + Opus) that browsers'
MediaRecorder writes, MP4 (H.264 + AAC), ... Browser WebM often carries no duration in
its header, so lengths are measured from the decoded streams, and decoding stops as
soon as a clip runs past ``ClipOptions.max_seconds``.

All times are seconds from the start of the clip (the earlier of the first video and
the first audio timestamp), so video frames and audio samples share one clock.

Failures raise :class:`ClipError` whose message is meant for the person who recorded
the clip ("the clip has no sound: ...").
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from consent import ConsentError

ASR_RATE = 16_000


class ClipError(ConsentError, ValueError):
    """The uploaded clip cannot be used; the message says why, in plain words."""


@dataclass(frozen=True, slots=True)
class ClipOptions:
    """How an uploaded clip is decoded and what is accepted.

    Attributes:
        analysis_fps: video frames are sampled down to about this rate for analysis.
        max_side: frames larger than this (longer side, pixels) are shrunk to it.
        min_seconds: shorter clips are refused (too short to read a code and turn).
        max_seconds: longer clips are refused (decoding stops there).
        max_bytes: uploads larger than this are refused before decoding.
    """

    analysis_fps: float = 12.0
    max_side: int = 640
    min_seconds: float = 3.0
    max_seconds: float = 60.0
    max_bytes: int = 100_000_000

    def __post_init__(self) -> None:
        if not 1.0 <= self.analysis_fps <= 60.0:
            raise ValueError(f"ClipOptions.analysis_fps must be 1..60, got {self.analysis_fps}")
        if self.max_side < 64:
            raise ValueError(f"ClipOptions.max_side must be at least 64, got {self.max_side}")
        if not 0 < self.min_seconds < self.max_seconds:
            raise ValueError("ClipOptions: need 0 < min_seconds < max_seconds")


@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """A decoded clip. Holds raw frames: keep it only for the duration of a check.

    Attributes:
        frames: uint8 RGB images (H, W, 3), at most ``max_side`` on the longer side.
        times: seconds of each frame from the clip's start, float64 (n,).
        audio: mono float32 at 16 kHz, starting at ``audio_start``.
        audio_start: seconds from the clip's start to the first audio sample.
        duration: seconds from the clip's start to the end of its last frame or sample.
        source_size: (width, height) of the recorded video.
    """

    frames: tuple[np.ndarray, ...]
    times: np.ndarray
    audio: np.ndarray
    audio_start: float
    duration: float
    source_size: tuple[int, int]

    @property
    def sample_rate(self) -> int:
        return ASR_RATE


def read_clip(source: str | Path | bytes, options: ClipOptions | None = None) -> Clip:
    """Decode ``source`` (a path or the uploaded bytes) into a :class:`Clip`.

    Raises:
        ClipError: unreadable or empty file, no video, no sound, too short, too long or
            too large; the message is for the person who recorded it.
    """
    opts = options or ClipOptions()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ClipError("the uploaded clip is empty: record it again")
        if len(data) > opts.max_bytes:
            raise ClipError(f"the clip is too large ({len(data) // 1_000_000} MB): record less")
        handle: str | io.BytesIO = io.BytesIO(data)
    else:
        path = Path(source)
        if not path.is_file() or path.stat().st_size == 0:
            raise ClipError(f"the clip {path.name!r} is missing or empty: record it again")
        if path.stat().st_size > opts.max_bytes:
            raise ClipError(f"the clip is too large ({path.stat().st_size // 1_000_000} MB)")
        handle = str(path)
    try:
        container = av.open(handle, mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ClipError(
            "the clip could not be read as a video (send the WebM or MP4 the browser "
            f"recorded): {err}"
        ) from None
    try:
        with container:
            return _decode(container, opts)
    except av.FFmpegError as err:
        raise ClipError(f"the clip is damaged and could not be decoded: {err}") from None


def _decode(container, opts: ClipOptions) -> Clip:
    if not container.streams.video:
        raise ClipError("the clip has no video: allow the camera and record again")
    if not container.streams.audio:
        raise ClipError("the clip has no sound: allow the microphone and record again")
    vstream = container.streams.video[0]
    astream = container.streams.audio[0]
    vstream.thread_type = "AUTO"
    resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_RATE)
    step = 1.0 / opts.analysis_fps
    frames: list[np.ndarray] = []
    times: list[float] = []
    pieces: list[np.ndarray] = []
    first_audio: float | None = None
    first_video: float | None = None
    last_video = last_audio = 0.0
    next_pick = -np.inf
    source_size = (vstream.codec_context.width, vstream.codec_context.height)
    for frame in container.decode(vstream, astream):
        if frame.pts is None or frame.time_base is None:
            continue
        t = float(frame.pts * frame.time_base)
        if isinstance(frame, av.VideoFrame):
            first_video = t if first_video is None else first_video
            rate = vstream.average_rate or vstream.guessed_rate
            last_video = t + (1.0 / float(rate) if rate else step)
            if t - first_video > opts.max_seconds:
                raise _too_long(opts)
            if t >= next_pick - 1e-6:
                next_pick = max(next_pick + step, t + step / 2) if times else t + step
                frames.append(_to_rgb(frame, opts.max_side))
                times.append(t)
        else:
            first_audio = t if first_audio is None else first_audio
            last_audio = t + frame.samples / float(frame.sample_rate or 1)
            if t - first_audio > opts.max_seconds:
                raise _too_long(opts)
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        pieces.append(out.to_ndarray().reshape(-1))
    if not frames or first_video is None:
        raise ClipError("the clip has no picture (no video frames): allow the camera")
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if first_audio is None or len(audio) < ASR_RATE // 10:
        raise ClipError("the clip has no sound: allow the microphone and record again")
    origin = min(first_video, first_audio)
    duration = max(last_video, last_audio) - origin
    if duration < opts.min_seconds:
        raise ClipError(
            f"the clip is too short ({duration:.1f} s, at least {opts.min_seconds:.0f} s): "
            "read the whole code and make every head turn"
        )
    if duration > opts.max_seconds:
        raise _too_long(opts)
    return Clip(
        frames=tuple(frames),
        times=np.asarray(times, np.float64) - origin,
        audio=audio,
        audio_start=first_audio - origin,
        duration=duration,
        source_size=(int(source_size[0]), int(source_size[1])),
    )


def _too_long(opts: ClipOptions) -> ClipError:
    return ClipError(
        f"the clip is too long (over {opts.max_seconds:.0f} s): record only the code and "
        "the head turns"
    )


def _to_rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    width, height = frame.width, frame.height
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
        return frame.to_ndarray(width=width, height=height, format="rgb24")
    return frame.to_ndarray(format="rgb24")


__all__ = ["ASR_RATE", "Clip", "ClipError", "ClipOptions", "read_clip"]
