"""Life between and under the words: blinks, breathing, head sway and nods.

Everything here is deterministic for a seed and the sequence of frame times:

- **Blinks** come at random intervals of 2-6 s (sometimes a double blink), each
  about 150 ms: 50 ms closing, 20 ms shut, 80 ms opening. The shut moment is put
  on a frame time, so every blink is seen fully closed at least once.
- **Breathing** is a tiny vertical stretch of the whole frame about its bottom
  edge, a cycle every ~4 s.
- **Head sway** is a smooth global similarity transform (rotation about the neck
  and a small shift) from a few slow incommensurate sines. Speaking makes it a
  little livelier and adds small nods on loud onsets; listening is slower, with an
  occasional small nod. The change between the two is eased over about half a second.

``sway=0`` and ``breathing=0`` give the identity transform exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CLOSE, _HOLD, _OPEN = 0.05, 0.02, 0.08


@dataclass(frozen=True, slots=True)
class Pose:
    """Motion of one frame.

    Attributes:
        matrix: 2x3 float32 affine transform of the whole frame (identity when still).
        blink: closure of the subject's right and left eye, 0..1.
        brow: brow raise, 0..1.
        still: True when ``matrix`` is exactly the identity.
    """

    matrix: np.ndarray
    blink: tuple[float, float]
    brow: float
    still: bool


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class MotionModel:
    """Blinks, breathing and head motion for one face.

    Args:
        seed: makes the whole motion reproducible.
        fps: frame rate (blinks are placed on frame times).
        size: frame side in pixels.
        pivot: the point the head turns about (x, y), usually the neck.
        sway: head motion amplitude, 1 = natural, 0 = none.
        blink: blink at all.
        breathing: breathing amplitude, 1 = natural, 0 = none.
    """

    def __init__(
        self,
        seed: int,
        fps: float,
        size: int,
        pivot: tuple[float, float],
        sway: float = 1.0,
        blink: bool = True,
        breathing: float = 1.0,
    ) -> None:
        self.fps = fps
        self.size = size
        self.pivot = (float(pivot[0]), float(pivot[1]))
        self.sway = sway
        self.blink_on = blink
        self.breathing = breathing
        self._blink_rng = np.random.default_rng([seed, 1])
        self._nod_rng = np.random.default_rng([seed, 2])
        phase_rng = np.random.default_rng([seed, 3])
        # Frequencies (Hz) of the rotation, x-shift and y-shift sines.
        self._freqs = np.array([[0.11, 0.23], [0.07, 0.17], [0.09, 0.19]])
        self._phase = phase_rng.uniform(0, 2 * np.pi, self._freqs.shape)
        self._breath_phase = float(phase_rng.uniform(0, 2 * np.pi))
        self._blinks: list[float] = []  # start times of scheduled blinks
        self._next_blink: float | None = None
        self._next_nod: float | None = None
        self._nod_start = -10.0
        self._level = 0.0  # 0 listening .. 1 speaking, eased
        self._energy_fast = 0.0
        self._energy_slow = 0.0
        self._last_t: float | None = None

    def step(self, t: float, speaking: bool, energy: float = 0.0) -> Pose:
        """The pose at time ``t`` (seconds; call with increasing times)."""
        dt = 1.0 / self.fps if self._last_t is None else max(t - self._last_t, 0.0)
        first = self._last_t is None
        self._last_t = t
        ease = 1.0 - math.exp(-dt / 0.5)
        self._level += ((1.0 if speaking else 0.0) - self._level) * ease
        self._energy_fast += (energy - self._energy_fast) * (1.0 - math.exp(-dt / 0.08))
        self._energy_slow += (energy - self._energy_slow) * (1.0 - math.exp(-dt / 0.6))
        blink = self._blink(t, first) if self.blink_on else 0.0
        emphasis = max(self._energy_fast - self._energy_slow, 0.0) * self._level
        matrix, still = self._matrix(t, dt, emphasis)
        return Pose(matrix, (blink, blink), min(1.0, 1.5 * emphasis), still)

    # ------------------------------------------------------------------ blinks

    def _blink(self, t: float, first: bool) -> float:
        if first:
            self._next_blink = t + float(self._blink_rng.uniform(1.0, 3.5))
        assert self._next_blink is not None
        while t + _CLOSE + _HOLD >= self._next_blink:  # schedule: shut moment on a frame time
            shut = math.ceil((self._next_blink + _CLOSE + _HOLD / 2) * self.fps) / self.fps
            self._blinks.append(shut - _CLOSE - _HOLD / 2)
            if self._blink_rng.random() < 0.12:  # a double blink
                self._blinks.append(shut + 0.24 - _CLOSE - _HOLD / 2)
            self._next_blink = self._blinks[-1] + float(self._blink_rng.uniform(2.0, 6.0))
        self._blinks = [s for s in self._blinks if s + _CLOSE + _HOLD + _OPEN > t - 1.0]
        closure = 0.0
        for start in self._blinks:
            x = t - start
            if x < 0 or x > _CLOSE + _HOLD + _OPEN:
                continue
            if x < _CLOSE:
                closure = max(closure, _smoothstep(x / _CLOSE))
            elif x <= _CLOSE + _HOLD:
                closure = 1.0
            else:
                closure = max(closure, 1.0 - _smoothstep((x - _CLOSE - _HOLD) / _OPEN))
        return closure

    # ------------------------------------------------------------ head motion

    def _matrix(self, t: float, dt: float, emphasis: float) -> tuple[np.ndarray, bool]:
        level = self._level
        speed = 0.65 + 0.55 * level
        self._phase += 2 * np.pi * self._freqs * speed * dt
        waves = np.sin(self._phase) @ np.array([0.65, 0.35])
        amp = self.sway * (0.6 + 0.4 * level)
        angle = 1.4 * amp * waves[0]  # degrees
        shift_x = 0.005 * self.size * amp * waves[1]
        shift_y = 0.0035 * self.size * amp * waves[2]
        # Nods: emphasis while speaking, now and then while listening.
        shift_y += 0.012 * self.size * self.sway * emphasis
        if self._next_nod is None:
            self._next_nod = t + float(self._nod_rng.uniform(3.0, 8.0))
        if t >= self._next_nod:
            self._nod_start = t
            self._next_nod = t + float(self._nod_rng.uniform(5.0, 11.0))
        x = (t - self._nod_start) / 0.9
        if 0.0 <= x <= 1.0:
            shift_y += 0.006 * self.size * self.sway * (1.0 - level) * math.sin(math.pi * x) ** 2
        breath = 0.0035 * self.breathing * math.sin(2 * math.pi * t / 4.2 + self._breath_phase)
        if angle == 0.0 and shift_x == 0.0 and shift_y == 0.0 and breath == 0.0:
            return np.array([[1, 0, 0], [0, 1, 0]], np.float32), True
        # Breathing: stretch about the bottom edge; then rotate about the neck and shift.
        stretch = np.array([[1, 0, 0], [0, 1 + breath, -breath * self.size], [0, 0, 1]])
        a = math.radians(angle)
        c, s = math.cos(a), math.sin(a)
        px, py = self.pivot
        rotate = np.array(
            [[c, -s, px - c * px + s * py + shift_x], [s, c, py - s * px - c * py + shift_y]]
        )
        return (rotate @ stretch).astype(np.float32), False
