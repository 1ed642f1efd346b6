"""Synthetic consent clips: the demo face reads a code aloud and turns its head.

For tests and benchmarks of :func:`consent.liveness.verify.verify_clip`, never for a
real consent. The face is :mod:`avatar.synthetic`'s, drawn by code; to turn it, each of
its 68 landmarks gets a depth from a generic face template (:func:`landmark_depth`),
the 3-D points are rotated about the vertical axis and projected orthographically, and
the face is redrawn from the rotated landmarks with :func:`avatar.synthetic.draw_face`,
plus a dark mouth interior between the inner lips (``draw_face`` paints the lips but no
opening). The speech is Piper's ("My code is, 4, 7, 2, ..."), and the mouth opening
follows its loudness envelope.

Sign convention: a yaw here means the same as :class:`avatar.types.HeadPose`
(positive: the face turns to the image's left, the subject's right). A turn "left" is
the subject's own left, i.e. negative yaw in the (unmirrored) recording, as
:mod:`consent.liveness.verify` expects.

Measured with dlib at 256 px (seed 0): drawn yaws of 30 / 35 degrees read as about
24-27 / 28-31 degrees through ``avatar.face.head_pose``; beyond about 40 degrees dlib's
frontal detector loses the drawn face, so turns peak at :data:`TURN_PEAK_DEG`.

Variants (attack cases): ``pass``, ``wrong_digits`` (the last digit is changed),
``static`` (no head turn), ``wrong_order`` (every turn mirrored), ``other_face`` (another
seed), ``two_faces`` (a second, still face beside), ``cut`` (the clip cuts to another
face before the turns), ``dubbed`` (the audio plays over a face whose mouth never moves).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from avatar.synthetic import FaceStyle, draw_face, face_landmarks

VARIANTS = (
    "pass",
    "wrong_digits",
    "static",
    "wrong_order",
    "other_face",
    "two_faces",
    "cut",
    "dubbed",
)
TURN_PEAK_DEG = 38.0  # drawn yaw at the peak of a turn (see the module doc)
TURN_SECONDS = 1.4  # one turn: out, hold, back
OTHER_SEED = 3  # dlib embedding distance to seed 0: 0.57 (most seeds are closer, 0.2-0.47)
AUDIO_RATE = 48_000


def landmark_depth(style: FaceStyle) -> np.ndarray:
    """How far each of the 68 landmarks stands out towards the camera, in image fractions.

    A generic template: the nose tip most (0.10), the lips and brows a little, the eye
    corners and jaw falling back with the square of their distance from the midline.
    """
    lm = face_landmarks(style)
    d = np.abs(lm[:, 0] - 0.5) / style.face_half_width
    f = np.zeros(68)
    f[0:17] = 0.02 - 0.13 * np.clip(d[0:17], 0, 1.2) ** 2
    f[17:27] = 0.035 - 0.07 * d[17:27] ** 2
    f[27:31] = (0.035, 0.055, 0.075, 0.10)
    f[31:36] = (0.05, 0.06, 0.065, 0.06, 0.05)
    f[36:48] = 0.01 - 0.06 * d[36:48] ** 2
    f[48:68] = 0.045 - 0.07 * d[48:68] ** 2
    return f


def posed_landmarks(style: FaceStyle, yaw_deg: float, mouth_open: float) -> np.ndarray:
    """The landmarks (image fractions) of ``style`` with the mouth open by ``mouth_open``
    (0..1) and the head turned by ``yaw_deg`` (HeadPose sign)."""
    lm = face_landmarks(style).copy()
    gap = float(np.clip(mouth_open, 0.0, 1.0)) * 0.045
    lm[[65, 66, 67], 1] += gap * np.array([0.8, 1.0, 0.8])
    lm[[55, 56, 57, 58, 59], 1] += gap * np.array([0.8, 0.95, 1.0, 0.95, 0.8])
    lm[5:12, 1] += gap * 0.6 * np.array([0.3, 0.6, 0.9, 1.0, 0.9, 0.6, 0.3])
    depth = landmark_depth(style)
    pivot = -0.10  # the axis of rotation sits behind the face
    yaw = np.radians(yaw_deg)
    lm[:, 0] = 0.5 + np.cos(yaw) * (lm[:, 0] - 0.5) - np.sin(yaw) * (depth - pivot)
    return lm


@functools.lru_cache(maxsize=512)
def render_face(seed: int, size: int, yaw_deg: float, mouth_open: float) -> np.ndarray:
    """One uint8 RGB frame of face ``seed`` (cached: call it with rounded values)."""
    style = FaceStyle.from_seed(seed)
    lm = (posed_landmarks(style, yaw_deg, mouth_open) * size).astype(np.float32)
    image = draw_face(style, lm, size)
    if mouth_open > 0.02:
        inner = np.round(lm[60:68] * 16).astype(np.int32)
        cv2.fillPoly(image, [inner], (70, 22, 26), cv2.LINE_AA, 4)
    image.flags.writeable = False
    return image


def reference_photo(seed: int = 0, size: int = 256) -> np.ndarray:
    """A frontal still of face ``seed`` with the mouth closed (the "photo to animate")."""
    return np.array(render_face(seed, size, 0.0, 0.0))


def speak(text: str, tts=None) -> tuple[np.ndarray, int]:
    """Piper speech for ``text`` as (mono float32, rate); loads the default voice if needed."""
    if tts is None:
        tts = _default_tts()

    async def run() -> np.ndarray:
        return np.concatenate([c.pcm async for c in tts.synthesize(text)])

    with ThreadPoolExecutor(1) as pool:  # works with or without a running event loop
        pcm = pool.submit(asyncio.run, run()).result()
    return pcm.astype(np.float32), int(tts.sample_rate)


@functools.cache
def _default_tts():
    from voice.tts.piper import PiperOptions, PiperTTS

    return PiperTTS.load(PiperOptions(noise_scale=0.0, noise_w=0.0))


def spoken_code(digits: str) -> str:
    """The sentence the synthetic person reads: "My code is, 4, 7, 2, 9, 1, 3."."""
    return "My code is, " + ", ".join(digits) + "."


def make_clip(
    path: str | Path,
    digits: str,
    turns: Sequence[str],
    seed: int = 0,
    variant: str = "pass",
    *,
    fps: float = 10.0,
    size: int = 256,
    duration: float | None = None,
    other_seed: int = OTHER_SEED,
    tts=None,
) -> Path:
    """Render a synthetic consent clip (video + audio) and write it with PyAV.

    Timeline: 0.6 s of silence, the code read aloud with a frontal face, 0.3 s pause,
    then one :data:`TURN_SECONDS` turn per entry of ``turns``, then 0.5 s (or up to
    ``duration``) of a still frontal face.

    Args:
        path: output file; ``.webm`` writes VP8 + Opus, anything else H.264 + AAC (mp4).
        digits: the challenge's code.
        turns: "left"/"right" in the order asked (the subject's own left/right).
        seed: the person (``avatar.synthetic`` face variant).
        variant: one of :data:`VARIANTS`.
        fps: video frame rate.
        size: side of one face's square frame (two_faces doubles the width).
        duration: pad the clip with a still face to this many seconds.
        other_seed: the impostor's face for ``other_face``, ``two_faces`` and ``cut``.
        tts: a loaded ``voice.tts.piper.PiperTTS``, or None for the default voice.

    Returns:
        ``path``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"make_clip: unknown variant {variant!r}; use one of {VARIANTS}")
    if any(t not in ("left", "right") for t in turns):
        raise ValueError(f"make_clip: turns must be 'left' or 'right', got {tuple(turns)}")
    spoken = digits
    if variant == "wrong_digits":
        spoken = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    if variant == "wrong_order":
        turns = ["right" if t == "left" else "left" for t in turns]
    if variant == "static":
        turns = []
    pcm, rate = speak(spoken_code(spoken), tts)

    lead, pause, tail = 0.6, 0.3, 0.5
    speech_s = len(pcm) / rate
    turns_start = lead + speech_s + pause
    total = turns_start + TURN_SECONDS * len(turns) + tail
    if duration is not None:
        total = max(total, duration)
    n_frames = int(np.ceil(total * fps))
    audio = np.zeros(int(round(n_frames / fps * rate)), np.float32)
    start = int(round(lead * rate))
    audio[start : start + len(pcm)] = pcm[: len(audio) - start]

    envelope = _envelope(audio, rate, fps, n_frames)
    face_seed = other_seed if variant == "other_face" else seed
    frames = []
    for i in range(n_frames):
        t = i / fps
        yaw = _yaw_at(t - turns_start, turns)
        mouth = 0.0 if variant == "dubbed" else envelope[i]
        who = other_seed if variant == "cut" and t >= turns_start - pause / 2 else face_seed
        image = render_face(who, size, round(yaw * 2) / 2, round(mouth * 20) / 20)
        if variant == "two_faces":
            image = np.hstack([image, render_face(other_seed, size, 0.0, 0.0)])
        frames.append(image)
    return write_clip(path, frames, fps, audio, rate)


def _yaw_at(t: float, turns: Sequence[str]) -> float:
    """The drawn yaw ``t`` seconds after the turns began (0 outside them)."""
    if t < 0 or t >= TURN_SECONDS * len(turns):
        return 0.0
    k = int(t // TURN_SECONDS)
    phase = (t - k * TURN_SECONDS) / TURN_SECONDS
    sign = -1.0 if turns[k] == "left" else 1.0  # the subject's left is negative yaw
    return sign * TURN_PEAK_DEG * min(1.0, 1.5 * np.sin(np.pi * phase))


def _envelope(audio: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Mouth opening per frame (0..1) from the speech loudness around each frame."""
    hop = rate / fps
    rms = np.zeros(n_frames)
    for i in range(n_frames):
        a, b = int(i * hop), int((i + 1) * hop)
        piece = audio[a:b]
        rms[i] = float(np.sqrt(np.mean(piece**2))) if len(piece) else 0.0
    top = np.percentile(rms[rms > 0], 90) if np.any(rms > 0) else 1.0
    level = np.clip(rms / max(top, 1e-6), 0.0, 1.0)
    level[level < 0.08] = 0.0
    return level**0.7


def write_clip(
    path: str | Path, frames: Sequence[np.ndarray], fps: float, pcm: np.ndarray, rate: int
) -> Path:
    """Write RGB frames and mono float32 audio (both starting at 0) to ``path`` with PyAV.

    ``.webm`` gets VP8 + Opus (what browsers record), anything else H.264 + AAC in mp4.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    webm = target.suffix.lower() == ".webm"
    frame_rate = Fraction(fps).limit_denominator(1000)
    audio_rate = AUDIO_RATE
    samples = _resample_linear(pcm, rate, audio_rate)
    with av.open(str(target), mode="w", format="webm" if webm else "mp4") as container:
        video = container.add_stream("libvpx" if webm else "libx264", rate=frame_rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.options = {"b": "800k"} if webm else {"crf": "20", "preset": "veryfast"}
        audio = container.add_stream("libopus" if webm else "aac", rate=audio_rate)
        audio.layout = "mono"
        for i, image in enumerate(frames):
            out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            out.pts = i
            out.time_base = 1 / frame_rate
            container.mux(video.encode(out))
        container.mux(video.encode())
        block = 960 if webm else 1024
        for begin in range(0, len(samples), block):
            piece = np.ascontiguousarray(samples[begin : begin + block].reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate = audio_rate
            frame.pts = begin
            frame.time_base = Fraction(1, audio_rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return target


def _resample_linear(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return pcm.astype(np.float32)
    n = int(round(len(pcm) * target / rate))
    x = np.linspace(0, len(pcm) - 1, n)
    return np.interp(x, np.arange(len(pcm)), pcm).astype(np.float32)


__all__ = [
    "OTHER_SEED",
    "TURN_PEAK_DEG",
    "VARIANTS",
    "landmark_depth",
    "make_clip",
    "posed_landmarks",
    "reference_photo",
    "render_face",
    "speak",
    "spoken_code",
    "write_clip",
]
