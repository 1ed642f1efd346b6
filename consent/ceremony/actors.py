"""Bona fide actors for simulated ceremonies: a synthetic person who really is there.

:class:`LivePerson` is a textured 3-D head (:class:`consent.ceremony.sim.Head`) in a
room. It reads each digit group aloud with Piper after a human reaction time, its mouth
opening with the loudness of its own voice; it turns its head in 3-D when asked (so the
far cheek is hidden and the shading changes), and its skin reflects the screen's
flashes more than the wall behind it does. :func:`persona` draws varied people: faces
and skin tones, room light, distance to the screen, reaction times, voices.
:class:`Recording` holds what a camera saw of one (for replay and splice attacks).

For tests and benchmarks only; never for a real consent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from avatar.synthetic import FaceStyle
from consent.ceremony.plan import CeremonyPlan, Prompt
from consent.ceremony.sim import MOUTH_LEVELS, Head, Scene
from consent.ceremony.simulate import RATE, envelope, piper_says, spoken_digits

TURN_OUT_S = 0.45
TURN_HOLD_S = 0.35
TURN_BACK_S = 0.5


@dataclass(frozen=True, slots=True)
class Persona:
    """One simulated person and their room.

    Attributes:
        seed: the face (``FaceStyle.from_seed``).
        scene: light, distance, camera noise.
        reaction_s: (fastest, slowest) reaction to a prompt.
        turn_peak_deg: how far the head turns.
        voice_scale: Piper's length scale (speaking rate).
        rng_seed: seeds the reaction times.
    """

    seed: int
    scene: Scene = field(default_factory=Scene)
    reaction_s: tuple[float, float] = (0.45, 1.1)
    turn_peak_deg: float = 34.0
    voice_scale: float = 1.0
    rng_seed: int = 0


def persona(i: int) -> Persona:
    """The ``i``-th bona fide persona of the benchmark (varied, deterministic)."""
    r = random.Random(1000 + i)
    warm = r.uniform(-0.08, 0.08)
    level = r.uniform(0.55, 0.9)
    scene = Scene(
        face_scale=r.uniform(0.8, 1.2),
        ambient=(level * (1 + warm), level, level * (1 - warm)),
        key_light=_unit((r.uniform(-0.6, 0.6), r.uniform(-0.5, 0.1), 0.8)),
        key_intensity=r.uniform(0.2, 0.45),
        screen_gain=r.uniform(0.22, 0.45),
        background_screen_gain=r.uniform(0.01, 0.04),
        noise=r.uniform(1.0, 3.0),
        seed=i,
    )
    fast = r.uniform(0.35, 0.7)
    return Persona(
        seed=i,
        scene=scene,
        reaction_s=(fast, fast + r.uniform(0.3, 0.8)),
        turn_peak_deg=r.uniform(35.0, 45.0),
        voice_scale=r.choice((0.9, 1.0, 1.1, 1.25)),
        rng_seed=i,
    )


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    n = math.sqrt(sum(x * x for x in v))
    return (v[0] / n, v[1] / n, v[2] / n)


def turn_profile(u: float, peak: float) -> float:
    """Yaw ``u`` seconds into a turn: out (smooth), hold, back; 0 outside."""
    if u <= 0:
        return 0.0
    if u < TURN_OUT_S:
        x = u / TURN_OUT_S
        return peak * x * x * (3 - 2 * x)
    u -= TURN_OUT_S
    if u < TURN_HOLD_S:
        return peak
    u -= TURN_HOLD_S
    if u < TURN_BACK_S:
        x = u / TURN_BACK_S
        return peak * (1 - x * x * (3 - 2 * x))
    return 0.0


class Performer:
    """What a body does in answer to prompts: speech, turns, the flash on the screen.

    The shared part of :class:`LivePerson` and the attackers' tools that answer prompts.
    """

    def __init__(
        self,
        reaction_s: tuple[float, float],
        turn_peak_deg: float,
        voice: Callable[[str], np.ndarray],
        rng: random.Random,
    ) -> None:
        self.reaction_s = reaction_s
        self.turn_peak_deg = turn_peak_deg
        self.voice = voice
        self.rng = rng
        self.speech: list[tuple[float, np.ndarray, tuple[np.ndarray, np.ndarray]]] = []
        self.turns: list[tuple[float, float]] = []  # (start, signed peak yaw)
        self.flash: tuple[Prompt, float] | None = None

    def on_prompt(self, prompt: Prompt, shown_at: float, not_before: float = -math.inf) -> None:
        """Answer ``prompt`` a reaction time after ``shown_at``, and not before
        ``not_before`` (what a real-time camera or microphone has already sent cannot
        change: a person who saw the prompt late answers late)."""
        start = max(shown_at + self.rng.uniform(*self.reaction_s), not_before)
        if prompt.kind == "digits":
            pcm = self.voice(spoken_digits(prompt.digits))
            self.speech.append((start, pcm, envelope(pcm)))
        elif prompt.kind == "turn":
            sign = -1.0 if prompt.direction == "left" else 1.0  # left: negative yaw
            self.turns.append((start, sign * self.turn_peak_deg))
        else:
            self.flash = (prompt, shown_at)

    def yaw(self, t: float) -> float:
        sway = 1.2 * math.sin(0.9 * t) + 0.5 * math.sin(2.3 * t + 1.0)
        return sway + sum(turn_profile(t - s, p) for s, p in self.turns)

    def mouth(self, t: float) -> float:
        for start, _pcm, (et, ev) in self.speech:
            u = t - start
            if 0 <= u <= et[-1]:
                return float(np.interp(u, et, ev))
        return 0.0

    def screen(self, t: float) -> tuple[float, float, float]:
        if self.flash is None:
            return (0.0, 0.0, 0.0)
        prompt, shown = self.flash
        return prompt.screen_at(t - shown)

    def audio(self, t: float, n: int, noise: np.random.Generator) -> np.ndarray:
        out = noise.normal(0.0, 0.002, n).astype(np.float32)
        a = int(round(t * RATE))
        for start, pcm, _env in self.speech:
            s = int(round(start * RATE))
            lo, hi = max(a, s), min(a + n, s + len(pcm))
            if lo < hi:
                out[lo - a : hi - a] += pcm[lo - s : hi - s]
        return out


class LivePerson:
    """A bona fide synthetic person (see the module doc).

    Args:
        who: the persona.
        speaks: False keeps the mouth shut (the "TTS voice over a live face" attack
            uses a live face that does not speak).
        voice: text -> 16 kHz speech; None is Piper at the persona's rate, reading the
            whole group (a virtual clock waits for it); a person answering in real time
            takes :class:`consent.ceremony.simulate.DigitVoice`, which is instant.
    """

    def __init__(
        self, who: Persona, speaks: bool = True, voice: Callable[[str], np.ndarray] | None = None
    ) -> None:
        self.who = who
        self.head = Head(FaceStyle.from_seed(who.seed), who.scene)
        self.speaks = speaks
        scale = who.voice_scale
        self.body = Performer(
            who.reaction_s,
            who.turn_peak_deg,
            voice or (lambda text: piper_says(text, scale)),
            random.Random(who.rng_seed),
        )
        self._noise = np.random.default_rng([who.rng_seed, 5])
        self._fps = 15.0

    def photo(self) -> np.ndarray:
        """The person's enrolment photo (frontal, evenly lit)."""
        return self.head.photo()

    def warm_up(self) -> None:
        """Paint every mouth opening once and load the voice (about a second each the
        first time), so that a camera driven in real time keeps pace."""
        for level in range(MOUTH_LEVELS):
            self.head.render(0.0, level / (MOUTH_LEVELS - 1))
        self.body.voice("0, 1.")

    def on_prompt(self, prompt: Prompt, shown_at: float, not_before: float = -math.inf) -> None:
        self.body.on_prompt(prompt, shown_at, not_before)

    def frame(self, t: float) -> np.ndarray:
        mouth = self.body.mouth(t) if self.speaks else 0.0
        return self.head.render(
            self.body.yaw(t), mouth, self.body.screen(t), frame_index=int(round(t * self._fps))
        )

    def audio(self, t: float, n: int) -> np.ndarray:
        return self.body.audio(t, n, self._noise)


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """What a camera and microphone captured: frames at ``fps`` and 16 kHz audio.

    Attributes:
        frames: RGB uint8 frames from t = 0.
        audio: the microphone, 16 kHz mono float32, from t = 0.
        fps: frame rate.
        events: (time, prompt) of each prompt the recorded person answered.
    """

    frames: tuple[np.ndarray, ...]
    audio: np.ndarray
    fps: float
    events: tuple[tuple[float, Prompt], ...]

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    def frame_at(self, t: float) -> np.ndarray:
        i = min(max(int(t * self.fps), 0), len(self.frames) - 1)
        return self.frames[i]

    def audio_at(self, t: float, n: int) -> np.ndarray:
        a = int(round(t * RATE))
        out = np.zeros(n, np.float32)
        lo, hi = max(a, 0), min(a + n, len(self.audio))
        if lo < hi:
            out[lo - a : hi - a] = self.audio[lo:hi]
        return out


def record(
    actor: LivePerson, plan: CeremonyPlan, fps: float = 15.0, step_s: float = 2.6
) -> Recording:
    """Film ``actor`` answering every prompt of ``plan``, one every ``step_s`` seconds
    (a genuine ceremony, kept by whoever filmed it)."""
    events = []
    t = 1.0
    for prompt in plan.prompts:
        actor.on_prompt(prompt, t)
        events.append((t, prompt))
        t += step_s + prompt.flash_s
    n = int((t + 1.0) * fps)
    frames = tuple(actor.frame(i / fps) for i in range(n))
    audio = actor.audio(0.0, int(n / fps * RATE))
    return Recording(frames, audio, fps, tuple(events))


__all__ = [
    "LivePerson",
    "Performer",
    "Persona",
    "Recording",
    "persona",
    "record",
    "turn_profile",
]
