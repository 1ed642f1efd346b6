"""From a mouth shape and eyelid closures to displacements of the 68 landmarks.

All lengths scale with the distance between the eye centres (``iod``), so the rig
fits any face size. The jaw and the lower lip drop with ``open`` (the chin with
them, fading along the jaw line); ``wide`` pulls the corners out and thins the
lips; ``round`` brings the corners in and pushes the lips out; ``press`` thins and
closes them; ``teeth`` lifts the lower lip under the upper teeth. A blink moves
each upper lid down onto its lower lid, which rises a little to meet it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar.procedural.warp import eye_distance

# How far the jaw lowers at open=1, in eye distances (inner-lip gap ~ 0.33 iod).
JAW_DROP = 0.30
UPPER_LIFT = 0.03
# The chin follows the lower lip, fading along the jaw line towards the ears.
_JAW_FOLLOW = {8: 0.9, 7: 0.88, 9: 0.88, 6: 0.78, 10: 0.78, 5: 0.58, 11: 0.58, 4: 0.32, 12: 0.32}
_JAW_FOLLOW.update({3: 0.12, 13: 0.12})

UPPER_OUTER = [49, 50, 51, 52, 53]
LOWER_OUTER = [55, 56, 57, 58, 59]
UPPER_INNER = [61, 62, 63]
LOWER_INNER = [65, 66, 67]


@dataclass(frozen=True, slots=True)
class FaceRig:
    """The rest landmarks of one face and the directions its parts move in.

    Build it with :meth:`from_landmarks`; then call :meth:`displace` per frame.
    """

    rest: np.ndarray
    iod: float
    mouth_center: np.ndarray
    side: np.ndarray  # per landmark: -1 left of the mouth centre, +1 right, 0 centre
    half_width: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> FaceRig:
        rest = np.asarray(landmarks, np.float32)
        center = rest[60:68].mean(0)
        side = np.sign(np.round(rest[:, 0] - center[0], 1)).astype(np.float32)
        half = float(np.linalg.norm(rest[54] - rest[48]) / 2)
        return cls(rest, eye_distance(rest), center, side, half)

    def displace(
        self, mouth: np.ndarray, blink: tuple[float, float] = (0.0, 0.0), brow: float = 0.0
    ) -> np.ndarray:
        """Landmark displacements (68, 2) in pixels.

        Args:
            mouth: (open, wide, round, press, teeth), each 0..1.
            blink: closure of the subject's right and left eye, 0 (open) to 1 (shut).
            brow: brow raise, 0..1 (a small lift for emphasis).
        """
        o, wide, rnd, press, teeth = (float(v) for v in mouth[:5])
        d = np.zeros((68, 2), np.float32)
        iod, hw, side = self.iod, self.half_width, self.side
        drop = JAW_DROP * iod * o
        # Jaw opening.
        d[[65, 66, 67], 1] += drop * np.array([0.9, 1.0, 0.9], np.float32)
        d[[55, 56, 57, 58, 59], 1] += drop * np.array([0.8, 0.95, 0.97, 0.95, 0.8], np.float32)
        d[[48, 54, 60, 64], 1] += drop * 0.5
        d[UPPER_INNER, 1] -= UPPER_LIFT * iod * o
        d[UPPER_OUTER, 1] -= UPPER_LIFT * 0.5 * iod * o
        for i, f in _JAW_FOLLOW.items():
            d[i, 1] += drop * f
        d[[48, 60], 0] += 0.06 * hw * o
        d[[54, 64], 0] -= 0.06 * hw * o
        # Spread: corners out and slightly up, lips thinner.
        d[[48, 60], 0] -= 0.16 * hw * wide
        d[[54, 64], 0] += 0.16 * hw * wide
        d[[48, 54, 60, 64], 1] -= 0.02 * iod * wide
        d[[49, 59, 61, 67], 0] -= 0.08 * hw * wide
        d[[53, 55, 63, 65], 0] += 0.08 * hw * wide
        d[[50, 51, 52], 1] += 0.012 * iod * wide
        d[[56, 57, 58], 1] -= 0.012 * iod * wide
        # Rounding: corners in, lips pushed out (more red shows), inner opening rounder.
        d[[48, 54], 0] -= side[[48, 54]] * 0.24 * hw * rnd
        d[[60, 64], 0] -= side[[60, 64]] * 0.36 * hw * rnd
        ring = [49, 53, 55, 59, 61, 63, 65, 67]
        d[ring, 0] -= side[ring] * 0.16 * hw * rnd
        d[[50, 51, 52], 1] -= 0.025 * iod * rnd
        d[[56, 57, 58], 1] += 0.025 * iod * rnd
        d[[61, 62, 63], 1] -= 0.02 * iod * rnd * o
        # Pressed lips: thinner and rolled in.
        d[[50, 51, 52], 1] += 0.018 * iod * press
        d[[56, 57, 58], 1] -= 0.022 * iod * press
        # Lower lip to the upper teeth; the upper lip lifts to show them.
        d[LOWER_INNER, 1] -= 0.03 * iod * teeth
        d[LOWER_OUTER, 1] -= 0.035 * iod * teeth
        d[UPPER_INNER, 1] -= 0.045 * iod * teeth
        d[[50, 51, 52], 1] -= 0.02 * iod * teeth
        # Blinks.
        for closure, upper, lower in (
            (blink[0], (37, 38), (41, 40)),
            (blink[1], (43, 44), (47, 46)),
        ):
            if closure <= 0:
                continue
            up, lo = list(upper), list(lower)
            rise = 0.12 * (self.rest[lo, 1] - self.rest[up, 1]).mean()
            d[lo, 1] -= rise * closure
            target = self.rest[lo] + d[lo]
            d[up] += (target - self.rest[up]) * closure
            d[[17, 18, 19, 20, 21] if upper[0] == 37 else [22, 23, 24, 25, 26], 1] += (
                0.012 * iod * closure
            )
        if brow:
            d[17:27, 1] -= 0.05 * iod * brow
        return d

    def mouth_gap(self, landmarks: np.ndarray) -> float:
        """The inner-lip gap of ``landmarks`` in eye distances (0 when closed)."""
        gap = landmarks[LOWER_INNER[::-1], 1] - landmarks[UPPER_INNER, 1]
        return float(max(gap.mean(), 0.0) / self.iod)
