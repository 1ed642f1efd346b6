"""Writing generated clips: an mp4 (H.264 + AAC, PyAV) and per-frame landmarks.

Files are written to a temporary name and renamed when complete, so a crash or a
full disk never leaves a half-written clip under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar.types import VideoFrame

AUDIO_RATE = 48_000


def _temp_beside(target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def _resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return pcm.astype(np.float32, copy=False)
    # Linear interpolation is enough for a preview track; the runtime uses soxr.
    n = int(round(len(pcm) * target / rate))
    x = np.linspace(0, len(pcm) - 1, n) if n else np.zeros(0)
    return np.interp(x, np.arange(len(pcm)), pcm).astype(np.float32)


def write_mp4(
    path: str | Path,
    frames: Iterable[VideoFrame],
    fps: float,
    pcm: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    crf: int = 20,
    on_frame: Callable[[int], None] | None = None,
) -> Path:
    """Encode frames (and mono float32 audio, if given) into an mp4.

    The audio is trimmed or padded with silence to the video's length, so both
    streams last the same time (within one frame).

    Args:
        path: output file (.mp4).
        frames: VideoFrames in order, all of one size.
        fps: frame rate.
        pcm: mono float32 audio in [-1, 1] that starts with the first frame.
        sample_rate: rate of ``pcm``.
        crf: H.264 quality (lower is better, 18-28 sensible).
        on_frame: called with the running frame count (progress bars).
    """
    target = Path(path)
    tmp = _temp_beside(target, ".mp4")
    rate = Fraction(fps).limit_denominator(1000)
    count = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            video = container.add_stream("libx264", rate=rate)
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(crf), "preset": "veryfast"}
            audio = None
            if pcm is not None:
                audio = container.add_stream("aac", rate=AUDIO_RATE)
                audio.layout = "mono"
            for frame in frames:
                if count == 0:
                    video.height, video.width = frame.image.shape[:2]
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.image), format="rgb24")
                out.pts = count
                out.time_base = Fraction(1) / rate
                container.mux(video.encode(out))
                count += 1
                if on_frame is not None:
                    on_frame(count)
            container.mux(video.encode())
            if audio is not None and pcm is not None:
                _write_audio(container, audio, pcm, sample_rate, count / float(rate))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


def _write_audio(container, stream, pcm: np.ndarray, rate: int, duration: float) -> None:
    samples = _resample(pcm, rate, AUDIO_RATE)
    wanted = int(round(duration * AUDIO_RATE))
    samples = np.pad(samples[:wanted], (0, max(0, wanted - len(samples))))
    block = 1024
    for start in range(0, len(samples), block):
        piece = samples[start : start + block].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(piece), format="fltp", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_landmarks(path: str | Path, frames: Sequence[VideoFrame], fps: float) -> Path:
    """Per-frame data for training and tests: ``.npz`` with ``landmarks`` (N, 68, 2),
    ``pts`` (N,), ``mouth_open`` (N,), ``speaking`` (N,) and a JSON ``meta`` string."""
    target = Path(path)
    tmp = _temp_beside(target, ".npz")
    empty = np.full((68, 2), np.nan, np.float32)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                landmarks=np.stack(
                    [f.landmarks if f.landmarks is not None else empty for f in frames]
                ),
                pts=np.array([f.pts for f in frames], np.float64),
                mouth_open=np.array([f.mouth_open for f in frames], np.float32),
                speaking=np.array([f.speaking for f in frames], bool),
                meta=np.array(json.dumps({"fps": fps, "layout": "ibug68", "frames": len(frames)})),
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


def probe(path: str | Path) -> dict[str, float]:
    """Durations (seconds) and counts of an mp4's streams, read back with PyAV."""
    info: dict[str, float] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            kind = stream.type
            if stream.duration is not None and stream.time_base is not None:
                info[f"{kind}_duration"] = float(stream.duration * stream.time_base)
            if kind == "video":
                info["video_frames"] = float(stream.frames)
                info["fps"] = float(stream.average_rate or 0)
                info["width"] = float(stream.codec_context.width)
                info["height"] = float(stream.codec_context.height)
    return info
