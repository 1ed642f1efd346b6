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
scores close to 1 (only resampling and sensor noise differ); a real turn lower. The
landmark-mesh warp's NCC (``mesh``, the forger's own tool) is reported beside it for
diagnosis; it does not decide, since landmark noise on a warped photo lowers it into
the range of real turns. Thresholds and the measured separation are in
``docs/consent-security.md``.
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
        max_explained: a turn whose flow NCC reaches this is a warp. Measured on 320 px
            frames, a 36 degree turn: warps of a photo 0.991-1.000 (2-D and 2.5-D, 35
            turns), simulated real heads 0.44-0.97 (16 turns).
        blur_sigma: grey levels are blurred by this many pixels first (sensor noise).
    """

    max_explained: float = 0.985
    blur_sigma: float = 1.0


@dataclass(frozen=True, slots=True)
class TurnDepth:
    """How well one turn is explained by warping the frontal frame.

    Attributes:
        mesh: NCC after the landmark-mesh warp.
        flow: NCC after the optical-flow warp.
    """

    mesh: float
    flow: float

    @property
    def explained(self) -> float:
        """The figure the check compares with ``max_explained`` (the flow's)."""
        return self.flow


def explain_turn(
    frontal: np.ndarray,
    frontal_lm: np.ndarray,
    turned: np.ndarray,
    turned_lm: np.ndarray,
    options: DepthOptions | None = None,
) -> TurnDepth:
    """Score how well ``turned`` (grey float32) is ``frontal`` warped (see module doc).

    Args:
        frontal: the frame before the turn prompt, grey float32 (H, W).
        frontal_lm: its 68 landmarks in pixels.
        turned: the frame at the turn's peak, grey float32, same size.
        turned_lm: its 68 landmarks.
    """
    opts = options or DepthOptions()
    if frontal.shape != turned.shape:
        raise ValueError(f"explain_turn: frames differ in size {frontal.shape} vs {turned.shape}")
    a = cv2.GaussianBlur(frontal, (0, 0), opts.blur_sigma)
    b = cv2.GaussianBlur(turned, (0, 0), opts.blur_sigma)
    mask = _hull_mask(turned_lm, b.shape)
    if mask.sum() < 50:
        return TurnDepth(0.0, 0.0)
    meshed, covered = mesh_warp(a, frontal_lm, turned_lm)
    inside = mask & covered
    mesh = _ncc(meshed, b, inside) if inside.sum() >= 50 else 0.0
    flow = _flow_explained(a, b, mask)
    return TurnDepth(mesh, flow)


def mesh_warp(
    image: np.ndarray, src_lm: np.ndarray, dst_lm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` piecewise-affinely so ``src_lm`` land on ``dst_lm``.

    Returns the warped image and the mask of pixels some triangle covered.
    """
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    covered = np.zeros((h, w), bool)
    for tri in _triangles(dst_lm, (h, w)):
        src = src_lm[list(tri)].astype(np.float32)
        dst = dst_lm[list(tri)].astype(np.float32)
        x0, y0 = np.floor(dst.min(0)).astype(int)
        x1, y1 = np.ceil(dst.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        m = cv2.getAffineTransform(src, (dst - (x0, y0)).astype(np.float32))
        patch = cv2.warpAffine(
            image, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        tmask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(tmask, np.round(dst - (x0, y0)).astype(np.int32), 1)
        sel = tmask.astype(bool)
        out[y0:y1, x0:x1][sel] = patch[sel]
        covered[y0:y1, x0:x1] |= sel
    return out, covered


def _triangles(lm: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    h, w = shape
    subdiv = cv2.Subdiv2D((-w, -h, 3 * w, 3 * h))
    index = {}
    for i, (x, y) in enumerate(lm):
        key = (round(float(x), 3), round(float(y), 3))
        if key in index:
            continue
        index[key] = i
        subdiv.insert((float(x), float(y)))
    out = []
    for x1, y1, x2, y2, x3, y3 in subdiv.getTriangleList():
        ids = [
            index.get((round(float(x), 3), round(float(y), 3)))
            for x, y in ((x1, y1), (x2, y2), (x3, y3))
        ]
        if None not in ids:
            out.append(tuple(ids))
    return out  # type: ignore[return-value]


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


__all__ = ["DepthOptions", "TurnDepth", "explain_turn", "mesh_warp"]
