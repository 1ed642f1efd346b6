"""The screen-light check: does the face reflect the colours the page flashed?

Physics. During the ceremony the page fills the screen with a sequence of saturated
colours (:func:`consent.ceremony.plan.flash_sequence`, 8 flashes of 340-500 ms). The
screen is a light source at the camera, about 0.4-0.6 m from the face and 1.5-3 m from
the wall behind it. Light from it falls off with the square of the distance, so the
skin's colour follows the flashes (a red flash raises the red channel of the cheeks by
a few per cent of their brightness) while the wall hardly changes: at 0.5 m against 2 m
the face gets about 16x the wall's share. A photo warped on the attacker's computer
reflects nothing; a clip replayed on a screen in front of the camera is itself a light
source and reflects the flashes weakly and uniformly, and a recording made for another
ceremony follows another sequence. A forger who tints the whole frame in time with the
flashes tints the wall as much as the face.

The measure (:func:`check_light`), on the frames from just before the first flash to
just after the last:

- for each lag in ``0..max_lag_s`` (camera exposure, encoding and the page's own
  display delay), the Pearson correlation of each colour channel of the cheeks with the
  same channel of the flashed colour, averaged over the channels; the best lag wins;
- at that lag, the response ("gain"): the slope of the cheeks' channel on the flash
  channel, averaged over the channels, in grey levels and as a share of the cheeks'
  mean brightness; the same for the wall (the frame's upper corners);
- it passes when the correlation reaches ``min_correlation``, the face's gain reaches
  ``min_gain`` and the wall's response is at most ``max_background_ratio`` of the face's
  counted both ways: as shares of brightness (a tint that multiplies the frame matches
  them) and in grey levels (a tint added to the frame matches those, and would slip
  through the first way wherever the wall is brighter than the face).

A face whose gain is too small to read says "turn your screen brightness up" and asks
for a retry rather than calling the person a fake. Thresholds and their measured
separation: ``docs/consent-security.md`` and :mod:`consent.ceremony.bench`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from consent.ceremony.observe import FrameObs
from consent.ceremony.plan import Prompt


@dataclass(frozen=True, slots=True)
class LightOptions:
    """Thresholds of the screen-light check.

    Attributes:
        min_correlation: lowest mean per-channel correlation of the cheeks with the
            flashes (bench: simulated people 0.993-1.000; replays and splices of other
            ceremonies 0.03-0.62; warps of a photo at most 0.18).
        min_gain: lowest response of the cheeks, as a share of their brightness per full
            flash (below it the screen is too dim to judge: the person is asked to retry;
            bench: simulated people 0.12-0.36, warps of a photo at most 0.003).
        max_background_ratio: highest response of the wall over the face's (see
            :attr:`LightResult.wall_ratio`; bench: simulated people 0.00-0.30, a photo
            tinted with the flashes 0.99-1.00).
        max_lag_s: the longest delay searched between the page's flash and the frame.
        min_frames: fewest frames with a face inside the flash window.
        lead_s: frames this long before the first flash are used (the unlit baseline).
        tail_s: and this long after the last flash.
    """

    min_correlation: float = 0.75
    min_gain: float = 0.02
    max_background_ratio: float = 0.4
    max_lag_s: float = 0.6
    min_frames: int = 12
    lead_s: float = 0.4
    tail_s: float = 0.8


@dataclass(frozen=True, slots=True)
class LightResult:
    """What the screen-light check measured.

    Attributes:
        passed: the face followed the flashes, more than the wall did.
        retry: the light was too weak to judge (a dim screen or a bright room): ask the
            person to turn the screen brightness up and try again.
        correlation: best mean per-channel correlation of the cheeks with the flashes.
        lag_s: the delay at which it was best.
        face_gain: the cheeks' response per full flash, as a share of their brightness.
        background_gain: the wall's response at the same delay, as a share of its brightness.
        wall_ratio: the wall's response over the face's, the larger of the two ways of
            counting it (shares of brightness, grey levels).
        frames: frames with a face in the window.
        reason: plain words for the person.
    """

    passed: bool
    retry: bool
    correlation: float
    lag_s: float
    face_gain: float
    background_gain: float
    wall_ratio: float
    frames: int
    reason: str


def check_light(
    frames: Sequence[FrameObs],
    prompt: Prompt,
    shown_at: float,
    options: LightOptions | None = None,
) -> LightResult:
    """Judge the flash sequence ``prompt`` shown at ``shown_at`` (server seconds)."""
    opts = options or LightOptions()
    start = shown_at - opts.lead_s
    end = shown_at + prompt.flash_s + opts.tail_s
    window = [
        f for f in frames if start <= f.t <= end and f.present and not math.isnan(f.face_rgb[0])
    ]
    n = len(window)
    if n < opts.min_frames:
        return LightResult(
            False, False, 0.0, 0.0, 0.0, 0.0, 0.0, n,
            f"We saw your face in only {n} frames while the screen flashed (at least "
            f"{opts.min_frames} are needed): look at the screen while it flashes.",
        )  # fmt: skip
    t = np.array([f.t for f in window])
    face = np.array([f.face_rgb for f in window], np.float64)
    wall = np.array([f.background_rgb for f in window], np.float64)
    best = (-2.0, 0.0)
    for lag in np.arange(0.0, opts.max_lag_s + 1e-9, 1.0 / 60.0):
        r = _mean_correlation(face, _screen(prompt, t - shown_at - lag))
        if r > best[0]:
            best = (r, float(lag))
    corr, lag = best
    lit = _screen(prompt, t - shown_at - lag)
    face_level, face_gain = _gain(face, lit)
    wall_level, wall_gain = _gain(wall, lit) if np.all(np.isfinite(wall)) else (0.0, 0.0)
    # The wall against the face, both per unit of brightness (a tint that multiplies
    # the frame) and in grey levels (a tint added to it): a screen lights the face more
    # on both counts; a tint over the frame matches them on one.
    ratio = max(wall_gain / face_gain, wall_level / face_level) if face_gain > 0 else math.inf
    figures = (corr, lag, face_gain, wall_gain, ratio, n)
    if face_gain < opts.min_gain:
        return LightResult(
            False, True, *figures,
            f"We could not see your screen's light on your face (response {face_gain:.3f}, "
            f"at least {opts.min_gain:.3f} needed): turn your screen brightness up, sit "
            "closer to the screen, or dim the room's lights, then try again.",
        )  # fmt: skip
    if corr < opts.min_correlation:
        return LightResult(
            False, False, *figures,
            f"The light on your face did not follow the colours the screen showed (match "
            f"{corr:.2f}, at least {opts.min_correlation:.2f} needed): the camera must see "
            "you live, facing the screen.",
        )  # fmt: skip
    if ratio > opts.max_background_ratio:
        return LightResult(
            False, False, *figures,
            f"The room behind you changed colour as much as your face did (ratio "
            f"{ratio:.2f}, at most {opts.max_background_ratio:.2f}): the camera must see you "
            "live, lit by your screen.",
        )  # fmt: skip
    return LightResult(
        True, False, *figures,
        f"Your face reflected the screen's colours (match {corr:.2f}, wall/face {ratio:.2f}).",
    )  # fmt: skip


def _screen(prompt: Prompt, dt: np.ndarray) -> np.ndarray:
    return np.array([prompt.screen_at(float(x)) for x in dt], np.float64)


def _mean_correlation(values: np.ndarray, lit: np.ndarray) -> float:
    rs = []
    for c in range(3):
        a, b = values[:, c], lit[:, c]
        if a.std() < 1e-9 or b.std() < 1e-9:
            rs.append(0.0)
            continue
        rs.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(rs))


def _gain(values: np.ndarray, lit: np.ndarray) -> tuple[float, float]:
    """The response to a full flash: (grey levels, share of the mean brightness), each
    the mean over channels of the least-squares slope of ``values`` on ``lit``."""
    slopes = []
    for c in range(3):
        x = lit[:, c] - lit[:, c].mean()
        denom = float((x * x).sum())
        if denom < 1e-9:
            continue
        slopes.append(float((x * (values[:, c] - values[:, c].mean())).sum()) / denom)
    level = float(np.mean(slopes)) if slopes else 0.0
    bright = float(values.mean())
    return level, (level / bright if bright > 1e-6 else 0.0)


__all__ = ["LightOptions", "LightResult", "check_light"]
