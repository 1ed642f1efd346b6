"""What the soak benchmark's scripted client says and how it reads the face it sees.

- :func:`make_questions`: varied spoken questions, made once at start-up with Piper
  (Joe at three speaking rates) or, without Piper, with eSpeak NG (two accents).
- :class:`MouthProbe`: the mouth opening of a received frame of the synthetic demo
  face (the default face of a fresh server): darkness inside the lips' box, which
  the mouth interior fills as it opens.
- :func:`generator_lead`: the same A/V measure on frames rendered offline with
  exact timing (no network). The procedural face anticipates sounds on purpose, so
  a perfectly synchronised stream still shows a small lag; the soak subtracts it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from typing import Any

import av
import numpy as np

from runtime.soak_metrics import av_lag
from voice.audio import resample

QUESTIONS = (
    "Hello! How are you feeling this morning?",
    "Could you tell me something nice about the weather today?",
    "What should I cook for dinner tonight?",
    "Do you know a good story about the sea?",
    "What is your favourite colour, and why?",
    "Can you remind me what day it is today?",
    "I would like to hear about gardens in the spring.",
    "What do you think about going for a short walk later?",
    "Tell me something interesting about the moon.",
    "Which songs do you like to listen to?",
    "How do I make a good cup of tea?",
    "My granddaughter visits on Sunday. What could we do together?",
    "Why do cats like to sleep so much?",
    "Could you suggest a book for a quiet afternoon?",
    "What is the best way to keep warm in winter?",
    "Tell me about a river you find beautiful.",
)
# A reply-like passage for the offline lead measurement (several sentences).
LEAD_TEXT = (
    "It is a lovely day today, with a soft breeze and plenty of sunshine. "
    "Would you like to go for a walk in the garden later? We could look at the roses."
)
LEVEL = 0.01  # a sample above this is speech (the clips are peak ~0.5)
FRAME_S = 0.02  # received audio frames are 20 ms


@dataclass(frozen=True, slots=True)
class Question:
    """One spoken question.

    Attributes:
        text: what is said.
        pcm: mono float32 speech.
        sample_rate: its rate.
        voice_end_s: the last sample above :data:`LEVEL`, from the clip's start.
        voice: which voice said it.
    """

    text: str
    pcm: np.ndarray
    sample_rate: int
    voice_end_s: float
    voice: str


async def _speak(tts: Any, text: str) -> tuple[np.ndarray, list[Any]]:
    """All of ``tts.synthesize(text)`` as one clip, timings shifted onto it."""
    parts, timings, offset = [], [], 0.0
    async for chunk in tts.synthesize(text):
        parts.append(chunk.pcm)
        timings += [replace(t, start=t.start + offset, end=t.end + offset) for t in chunk.timings]
        offset += chunk.duration
    return np.concatenate(parts).astype(np.float32), timings


def load_voices() -> list[tuple[str, Any]]:
    """Piper's Joe at three rates (its own first); eSpeak NG (two accents) when Piper
    cannot load. Noise off: the same seed says the same clips."""
    try:
        from voice.tts.piper import PiperOptions, PiperTTS

        return [
            (
                f"piper joe x{scale}",
                PiperTTS.load(PiperOptions(length_scale=scale, noise_scale=0.0, noise_w=0.0)),
            )
            for scale in (1.0, 0.9, 1.15)
        ]
    except Exception:  # noqa: BLE001 - any failure to load Piper falls back to eSpeak
        from voice.tts.espeak import EspeakOptions, EspeakTTS

        return [
            (f"espeak {v}", EspeakTTS.load(EspeakOptions(voice=v, words_per_minute=150)))
            for v in ("en-us", "en-gb")
        ]


def make_questions(seed: int, voices: list[tuple[str, Any]]) -> list[Question]:
    """Every question of :data:`QUESTIONS` once, in a seeded order and seeded voices.

    Args:
        seed: picks the order and each question's voice.
        voices: ``(name, tts)`` pairs from :func:`load_voices`.

    Blocking (a few seconds of synthesis): call it before the session starts.
    """
    rng = random.Random(seed)
    order = list(QUESTIONS)
    rng.shuffle(order)
    out = []
    for text in order:
        name, tts = voices[rng.randrange(len(voices))]
        pcm, _ = asyncio.run(_speak(tts, text))
        loud = np.nonzero(np.abs(pcm) > LEVEL)[0]
        end = (loud[-1] + 1) / tts.sample_rate if len(loud) else len(pcm) / tts.sample_rate
        out.append(Question(text, pcm, tts.sample_rate, float(end), name))
    return out


class MouthProbe:
    """Mouth opening of frames of the synthetic demo face (seed 0), any frame size.

    Call :meth:`of_gray` on a grey image or :meth:`of_frame` on a received frame:
    the mean darkness (255 - luma) in the box around the lips' 20 landmarks.
    """

    def __init__(self, margin_px: int = 6) -> None:
        self._margin = margin_px
        self._boxes: dict[int, tuple[int, int, int, int]] = {}

    def _box(self, size: int) -> tuple[int, int, int, int]:
        if size not in self._boxes:
            from avatar.synthetic import FaceStyle, face_landmarks

            # The landmarks alone (drawing the face takes ~2 s: not in the event loop).
            lips = face_landmarks(FaceStyle.from_seed(0))[48:68] * size
            x0, y0 = np.floor(lips.min(0)).astype(int) - self._margin
            x1, y1 = np.ceil(lips.max(0)).astype(int) + self._margin
            self._boxes[size] = (max(y0, 0), min(y1, size), max(x0, 0), min(x1, size))
        return self._boxes[size]

    def of_gray(self, gray: np.ndarray) -> float:
        """The opening of a square grey image (uint8 or float, 0..255)."""
        y0, y1, x0, x1 = self._box(gray.shape[1])
        return 255.0 - float(gray[y0:y1, x0:x1].mean())

    def of_frame(self, frame: av.VideoFrame) -> float:
        """The opening of a decoded video frame."""
        return self.of_gray(frame.to_ndarray(format="gray"))


def lead_signals(
    tts: Any, size: int = 512, fps: float = 25.0, sway: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Audio and mouth signals of the generator, exactly timed, as a client would get them.

    Renders :data:`LEAD_TEXT` spoken by ``tts`` (the first of :func:`load_voices`:
    Piper at its own rate, with its phoneme timings, as the server speaks) on the
    synthetic face with the server's default generator options, stamps each 20 ms
    audio frame at its start and each video frame at its pts (as the outbound tracks
    send them). Blocking, ~2-3 s on one core.

    Returns:
        ``(audio_t, envelope, video_t, mouth)`` for :func:`~runtime.soak_metrics.av_lag`.
    """
    from avatar.procedural.generator import ProceduralOptions, render_clip
    from avatar.synthetic import make_demo_avatar

    pcm, timings = asyncio.run(_speak(tts, LEAD_TEXT))
    options = ProceduralOptions(fps=fps, size=size, sway=sway)
    frames = render_clip(make_demo_avatar(size), pcm, tts.sample_rate, timings, options)
    probe = MouthProbe()
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    mouth = np.array([probe.of_gray(f.image.astype(np.float32) @ luma) for f in frames])
    video_t = np.array([f.pts for f in frames])
    at48 = resample(pcm, tts.sample_rate, 48_000)
    n = len(at48) // 960
    envelope = np.sqrt((at48[: n * 960].reshape(n, 960) ** 2).mean(1))
    return np.arange(n) * FRAME_S, envelope, video_t, mouth


def generator_lead(tts: Any) -> float:
    """The A/V lag :func:`~runtime.soak_metrics.av_lag` finds on the generator's exactly
    timed frames (:func:`lead_signals`), in seconds (NaN when unmeasurable)."""
    audio_t, envelope, video_t, mouth = lead_signals(tts)
    lag = av_lag(audio_t, envelope, video_t, mouth, (0.0, float(audio_t[-1])))
    return float("nan") if lag is None else lag.lag_s
