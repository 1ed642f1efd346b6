"""The 3-D check: is a head turn more than a warp of one frontal picture?

A real head that turns hides part of its far cheek behind the nose and the cheekbone,
shows more of the near ear, and changes its shading as the skin faces the room's light
at a new angle. A 2-D or 2.5-D warp of one photo (the attack that passed the old
upload check) moves every pixel of the photo to a new place but hides nothing and
shades nothing: the turned frame *is* the frontal frame, warped.

So the check asks how well the turned frame (the peak of each turn) is explained by
the frontal frame just before the prompt, pulled onto it by a dense optical flow (DIS):
a flow can move pixels anywhere, smoothly or not, whatever mesh the forger used, but it
cannot create the texture a real turn uncovers nor change the shading. The measure is
the normalised cross-correlation (NCC) of the explained and the real turned frame inside
the turned face's landmark hull, on lightly blurred grey levels. A warp of one picture
scores close to 1 (only resampling and sensor noise differ); a real turn lower.
Thresholds and the measured separation are in ``docs/consent-security.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_HULL_SHRINK = 0.9  # compare inside the face hull shrunk by 10 % (not the silhouette)


@dataclass(frozen=True, slots=True)
class DepthOptions:
    """Thresholds of the 3-D check.

    Attributes:
        max_explained: a turn explained this well is a warp. Measured in two runs of
            the attack bench (320 px, 40 simulated people, 160 turns): real turns
            0.25-0.993; 2-D and 2.5-D warps of a photo 0.991-0.998 (38 turns). The two
            meet at the top, so this check refuses only the most exact warps (31 of 38);
            the screen-light check refuses every warp.
        blur_sigma: grey levels are blurred by this many pixels first (sensor noise).
    """

    max_explained: float = 0.995
    blur_sigma: float = 1.0


def explain_turn(
    frontal: np.ndarray,
    turned: np.ndarray,
    turned_lm: np.ndarray,
    options: DepthOptions | None = None,
) -> float:
    """How well ``turned`` is ``frontal`` pulled onto it by an optical flow (see the
    module doc): the NCC inside the turned face, about 1 for a warp of one picture.

    Args:
        frontal: the frame before the turn prompt, grey float32 (H, W).
        turned: the frame at the turn's peak, grey float32, same size.
        turned_lm: the turned frame's 68 landmarks in pixels.
        options: the blur; None uses the defaults.

    Raises:
        ValueError: the frames differ in size.
    """
    opts = options or DepthOptions()
    if frontal.shape != turned.shape:
        raise ValueError(f"explain_turn: frames differ in size {frontal.shape} vs {turned.shape}")
    a = cv2.GaussianBlur(frontal, (0, 0), opts.blur_sigma)
    b = cv2.GaussianBlur(turned, (0, 0), opts.blur_sigma)
    mask = _hull_mask(turned_lm, b.shape)
    if mask.sum() < 50:
        return 1.0  # too small a face to tell: count it as a warp (fail closed)
    return _flow_explained(a, b, mask)


def _hull_mask(lm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    center = lm.mean(0)
    pts = center + (lm - center) * _HULL_SHRINK
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def _flow_explained(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """NCC inside ``mask`` of ``b`` and ``a`` pulled onto it by a dense optical flow
    (DIS, OpenCV's "medium" preset) computed from ``b`` back to ``a``."""
    ua = np.clip(a, 0, 255).astype(np.uint8)
    ub = np.clip(b, 0, 255).astype(np.uint8)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(ub, ua, None)
    h, w = a.shape
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    back = cv2.remap(
        a, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return _ncc(back, b, mask)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 1e-9 else 0.0


__all__ = ["DepthOptions", "explain_turn"]
