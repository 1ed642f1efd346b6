"""A benchmark of the procedural generator on whatever cores the caller allows.

It does not pin itself to a core: run it under ``taskset -c 0`` (the CLI does) and
call ``cv2.setNumThreads(1)`` to measure one core. The audio is made here, not
read from a file: a harmonic "voice" at 120 Hz with formant-like harmonics, a
syllable rhythm of about 4 per second, breath pauses and short noise bursts for
consonants, so the mouth moves as it does for speech.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from avatar.procedural.generator import ProceduralGenerator, ProceduralOptions
from avatar.types import EndOfSegment, PreparedAvatar, VideoFrame

SAMPLE_RATE = 16_000


def speech_like_audio(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: voiced syllables with pauses, float32 mono in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 120.0 * (1.0 + 0.06 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    # Formant-like weights: strong around 500-900 Hz, falling off above.
    voice = sum(
        np.sin(k * phase) * np.exp(-(((k * 120.0 - 700.0) / 900.0) ** 2)) / np.sqrt(k)
        for k in range(1, 30)
    )
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t + 0.8 * np.sin(2 * np.pi * 0.5 * t))
    level = 0.55 + 0.45 * rng.uniform(size=int(seconds * 4) + 2)[(t * 4).astype(int)]
    pauses = ((t % 2.5) < 2.0).astype(np.float64)  # 0.5 s of silence every 2.5 s
    envelope = np.convolve(syllables * level * pauses, np.ones(160) / 160, mode="same")
    hiss = rng.normal(0.0, 1.0, n) * ((t * 4.0) % 1.0 < 0.12) * pauses
    pcm = 0.18 * voice * envelope + 0.03 * hiss
    return np.clip(pcm, -1.0, 1.0).astype(np.float32)


def bench_procedural(
    avatar: PreparedAvatar,
    seconds: float = 10.0,
    fps: float = 25.0,
    options: ProceduralOptions | None = None,
) -> dict:
    """Measure the streaming generator on ``seconds`` of speech-like audio.

    Blocking (it runs its own event loop): call it from synchronous code.

    Args:
        avatar: the face to animate.
        seconds: length of the audio (``ceil(seconds * fps)`` frames).
        fps: frame rate, when ``options`` is not given.
        options: the generator's options (their ``fps`` wins over ``fps``).

    Returns:
        fps (frames drawn per wall second), frame_ms_p50 / frame_ms_p95 (time per
        speaking frame out of the iterator), first_frame_ms (pushing the first 40 ms
        chunk to the first speaking frame out), cpu_use (process CPU time / wall
        time; 1.0 = one core busy), frames, seconds, size, target_fps (the
        generator's frame rate; ``fps`` above it means faster than real time).
    """
    options = options or ProceduralOptions(fps=fps)
    generator = ProceduralGenerator.load(avatar, options)
    audio = speech_like_audio(seconds)
    return asyncio.run(_run(generator, audio, seconds))


async def _run(generator: ProceduralGenerator, audio: np.ndarray, seconds: float) -> dict:
    chunk = int(0.04 * SAMPLE_RATE)
    frames = aiter(generator)
    idle = await anext(frames)  # warm the worker thread and the caches
    assert isinstance(idle, VideoFrame)
    start = time.perf_counter()
    await generator.push_audio(audio[:chunk], SAMPLE_RATE)
    first = await anext(frames)
    first_ms = (time.perf_counter() - start) * 1000.0
    assert isinstance(first, VideoFrame) and first.speaking
    await generator.push_audio(audio[chunk:], SAMPLE_RATE)
    await generator.flush()
    times = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        t0 = time.perf_counter()
        item = await anext(frames)
        if isinstance(item, EndOfSegment):
            break
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    await generator.aclose()
    ms = np.array(times) * 1000.0
    return {
        "fps": len(times) / wall if wall > 0 else 0.0,
        "frame_ms_p50": float(np.percentile(ms, 50)),
        "frame_ms_p95": float(np.percentile(ms, 95)),
        "first_frame_ms": first_ms,
        "cpu_use": cpu / wall if wall > 0 else 0.0,
        "frames": len(times) + 1,
        "seconds": seconds,
        "size": generator.size,
        "target_fps": generator.fps,
    }
