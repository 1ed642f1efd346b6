"""Run a ceremony against a simulated camera and microphone, on a virtual clock.

For the attack suite, the benchmark and tests, never for a real consent. An
:class:`Actor` stands in front of the camera: the page shows it prompts (as a person or
an attacker's tool would see them) and it answers with frames and audio. The
ceremony is the very :class:`consent.ceremony.engine.Ceremony` the WebRTC route drives;
only the clock is virtual, so a run takes as long as the CPU needs, not as long as the
ceremony. Network delays are modelled: prompts reach the page ``downlink_s`` after
they are sent, frames and audio reach the server ``uplink_s`` after capture.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import soxr

from consent.ceremony.engine import Ceremony, CeremonyOptions
from consent.ceremony.plan import CeremonyPlan, Prompt
from consent.liveness.result import LivenessResult

RATE = 16_000


class Actor(Protocol):
    """Whoever (or whatever) faces the camera during a simulated ceremony."""

    def on_prompt(self, prompt: Prompt, shown_at: float) -> None:
        """The page showed ``prompt`` at ``shown_at`` (virtual seconds)."""
        ...

    def frame(self, t: float) -> np.ndarray:
        """The camera's RGB uint8 frame captured at ``t``."""
        ...

    def audio(self, t: float, n: int) -> np.ndarray:
        """``n`` samples of 16 kHz mono float32 microphone audio from ``t`` on."""
        ...


@dataclass(frozen=True, slots=True)
class Network:
    """Delays of the simulated connection (seconds)."""

    downlink_s: float = 0.04
    uplink_s: float = 0.08
    page_s: float = 0.016  # the page shows a prompt on its next animation frame


@dataclass(frozen=True, slots=True)
class Run:
    """One simulated ceremony: its result and the ceremony object (for measurements)."""

    result: LivenessResult
    ceremony: Ceremony


def simulate(
    actor: Actor,
    plan: CeremonyPlan,
    reference: np.ndarray,
    analyzer,
    transcribe: Callable[[np.ndarray], str],
    vad,
    *,
    options: CeremonyOptions | None = None,
    seed: int = 0,
    fps: float = 15.0,
    network: Network = Network(),
    max_s: float = 60.0,
) -> Run:
    """Drive one ceremony against ``actor`` until it is judged (see the module doc)."""
    ceremony = Ceremony(
        plan, reference, analyzer, transcribe, vad, options, rng=random.Random(seed), started_at=0.0
    )
    dt = 1.0 / fps
    chunk = int(round(RATE * dt))
    acks: list[tuple[float, int, float]] = []
    capture = 0.0
    i = 0
    while not ceremony.finished and capture < max_s:
        now = capture + network.uplink_s
        for at, pid, since in [a for a in acks if a[0] <= now]:
            ceremony.shown(pid, at, since)
            acks.remove((at, pid, since))
        for prompt in ceremony.poll(now):
            shown = now + network.downlink_s + network.page_s
            actor.on_prompt(prompt, shown)
            acks.append((shown + 0.005 + network.uplink_s, prompt.id, 0.005))
        ceremony.push_frame(now, actor.frame(capture))
        ceremony.push_audio(now, actor.audio(capture, chunk))
        i += 1
        capture = i * dt
    if not ceremony.finished:
        ceremony.stop("The ceremony took too long.", capture + network.uplink_s)
    assert ceremony.result is not None
    return Run(ceremony.result, ceremony)


# ---- voices -----------------------------------------------------------------------------


def to_16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    pcm = np.asarray(pcm, np.float32)
    return pcm if rate == RATE else soxr.resample(pcm, rate, RATE).astype(np.float32)


@functools.cache
def _piper(length_scale: float):
    from voice.tts.piper import PiperOptions, PiperTTS

    return PiperTTS.load(PiperOptions(length_scale=length_scale, noise_scale=0.0, noise_w=0.0))


@functools.cache
def _espeak(words_per_minute: int, pitch: int):
    from voice.tts.espeak import EspeakOptions, EspeakTTS

    return EspeakTTS.load(EspeakOptions(words_per_minute=words_per_minute, pitch=pitch))


@functools.lru_cache(maxsize=256)
def piper_says(text: str, length_scale: float = 1.0) -> np.ndarray:
    """Piper (the project's own voice) speaking ``text``, 16 kHz (cached)."""
    from consent.liveness.testclips import speak

    pcm, rate = speak(text, _piper(length_scale))
    out = to_16k(pcm, rate)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=256)
def espeak_says(text: str, words_per_minute: int = 150, pitch: int = 50) -> np.ndarray:
    """eSpeak NG (a robot voice) speaking ``text``, 16 kHz (cached)."""
    from consent.liveness.testclips import speak

    pcm, rate = speak(text, _espeak(words_per_minute, pitch))
    out = to_16k(pcm, rate)
    out.flags.writeable = False
    return out


class DigitVoice:
    """Piper reading a code digit by digit, from ten clips made once: instant.

    For actors that answer in real time (a browser's fake microphone): synthesising a
    group when its prompt appears takes 0.2-1 s on a loaded CPU, longer than a person's
    reaction, and the start of the answer would be lost. Whisper tiny.en read 120 of 120
    codes of these clips right (personas 0-2, 40 codes each).

    Args:
        length_scale: Piper's speaking rate (the persona's ``voice_scale``).
    """

    def __init__(self, length_scale: float = 1.0) -> None:
        self._clips = {d: piper_says(d + ",", length_scale) for d in "0123456789"}

    def __call__(self, text: str) -> np.ndarray:
        """The digits of ``text`` ("4, 0, 7."), one clip each; other characters ignored."""
        clips = [self._clips[ch] for ch in text if ch in self._clips]
        return np.concatenate(clips) if clips else np.zeros(0, np.float32)


def spoken_digits(digits: str) -> str:
    """How a person reads a group aloud: "4, 7, 2"."""
    return ", ".join(digits) + "."


def envelope(pcm: np.ndarray, window_s: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """(times, loudness 0..1) of ``pcm`` in ``window_s`` steps (for mouth openings)."""
    size = int(RATE * window_s)
    n = max(1, len(pcm) // size)
    rms = np.sqrt((pcm[: n * size].astype(np.float64).reshape(n, -1) ** 2).mean(1))
    top = float(np.percentile(rms, 95)) or 1.0
    return (np.arange(n) + 0.5) * window_s, np.clip(rms / top, 0.0, 1.0)


__all__ = [
    "Actor",
    "DigitVoice",
    "Network",
    "Run",
    "envelope",
    "espeak_says",
    "piper_says",
    "simulate",
    "spoken_digits",
    "to_16k",
]
