"""Reading training videos with PyAV: frames resampled to 25 fps, audio at 16 kHz mono.

Both streams share one time origin: the first decoded video frame is t = 0. Output
frame ``i`` is the source frame nearest to ``i / fps`` (ties take the earlier one), so
a 30 fps or variable-rate video is resampled by time, never by frame count. The audio
is decoded, mixed down to mono, shifted onto the same origin (zeros before it starts,
samples before the first frame dropped) and resampled to 16 kHz with soxr.

Everything here is blocking CPU work: run it in a worker thread from async code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soxr

from avatar.errors import AvatarError
from avatar.neural_audio import SAMPLE_RATE


class VideoReadError(AvatarError, ValueError):
    """The file cannot be used as a training video (unreadable, no video, no audio)."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a first look at a video file says.

    Attributes:
        width: frame width in pixels.
        height: frame height in pixels.
        fps: the stream's average frame rate (0 when unknown).
        duration: seconds of video (0 when the container does not say).
        has_audio: True when there is an audio stream.
        start: time of the first decoded video frame, seconds (the common origin).
    """

    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool
    start: float


def _open(path: Path):
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoReadError(f"{path}: cannot open as a video ({err})") from None


def probe_video(path: str | Path) -> VideoInfo:
    """Size, rate, duration, audio presence and first-frame time of ``path``.

    Raises:
        VideoReadError: unreadable file, or no video stream / no decodable frame.
    """
    file = Path(path)
    with _open(file) as container:
        if not container.streams.video:
            raise VideoReadError(f"{file}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        start = None
        try:
            for frame in container.decode(stream):
                start = frame.time if frame.time is not None else 0.0
                break
        except av.error.FFmpegError as err:
            raise VideoReadError(f"{file}: cannot decode the video ({err})") from None
        if start is None:
            raise VideoReadError(f"{file}: the video stream has no frames")
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            duration=duration,
            has_audio=bool(container.streams.audio),
            start=float(start),
        )


def iter_frames(path: str | Path, fps: float = 25.0) -> Iterator[np.ndarray]:
    """Decode ``path`` as uint8 RGB frames at ``fps`` (see the module doc for the rule).

    The number of frames is the count of times ``i / fps`` before the end of the last
    source frame. Frames are converted to RGB only when they are yielded.

    Raises:
        VideoReadError: unreadable file or a decoding error.
    """
    file = Path(path)
    step = 1.0 / fps
    with _open(file) as container:
        if not container.streams.video:
            raise VideoReadError(f"{file}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_step = 1.0 / float(stream.average_rate) if stream.average_rate else step
        origin: float | None = None
        prev = None  # (time, av.VideoFrame, cached RGB or None)
        index = 0
        count = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else count * source_step
                count += 1
                if origin is None:
                    origin = t
                t -= origin
                if prev is not None:
                    midpoint = (prev[0] + t) / 2.0
                    while index * step <= midpoint + 1e-9:
                        if prev[2] is None:
                            prev = (prev[0], prev[1], prev[1].to_ndarray(format="rgb24"))
                        yield prev[2]
                        index += 1
                prev = (t, frame, None)
        except av.error.FFmpegError as err:
            raise VideoReadError(f"{file}: cannot decode frame {count} ({err})") from None
        if prev is None:
            return
        end = prev[0] + source_step
        while index * step < end - 1e-6:
            if prev[2] is None:
                prev = (prev[0], prev[1], prev[1].to_ndarray(format="rgb24"))
            yield prev[2]
            index += 1


def read_audio(path: str | Path, start: float = 0.0) -> np.ndarray:
    """The audio of ``path`` as 16 kHz mono float32, with ``start`` (seconds) as t = 0.

    Args:
        path: the video file.
        start: the time of the first video frame (:attr:`VideoInfo.start`).

    Returns:
        float32 samples; sample ``k`` sounds at ``start + k / 16000`` in the file.

    Raises:
        VideoReadError: no audio stream, an empty one, or a decoding error.
    """
    file = Path(path)
    with _open(file) as container:
        if not container.streams.audio:
            raise VideoReadError(f"{file}: no audio stream (a talking-head clip needs speech)")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces: list[np.ndarray] = []
        first: float | None = None
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:
            raise VideoReadError(f"{file}: cannot decode the audio ({err})") from None
    if not pieces or first is None:
        raise VideoReadError(f"{file}: the audio stream is empty")
    pcm = np.concatenate(pieces).astype(np.float32)
    shift = int(round((first - start) * rate))
    pcm = np.concatenate([np.zeros(shift, np.float32), pcm]) if shift > 0 else pcm[-shift:]
    if rate != SAMPLE_RATE and len(pcm):
        pcm = soxr.resample(pcm, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return np.clip(pcm, -1.0, 1.0)
