"""Square face crops around the landmarks, and the feathered mask that pastes a crop back.

Training (``avatar.train.data``) and inference (``avatar.pipelines.framing``) frame the
face the same way, from this module:

The crop box of a face (:func:`raw_boxes`) is a square around its landmarks: the
centre of the landmarks' bounding box, moved up by ``shift`` times the side (to keep
the hair and forehead), and a side of ``scale`` times the longer side of that box.
:func:`crop_frame` cuts the box at sub-pixel precision (an affine warp, :func:`crop_matrix`;
black outside the frame), and :func:`to_crop` moves points into the crop exactly as the
pixels move.

Pasting a crop back into its frame (:func:`avatar.face.paste_back`, and the neural
generator's per-avatar framing) weights the crop with :func:`paste_alpha`: the crop's
:func:`feather_mask` (1 inside, a smoothstep to 0 over ``feather_px`` at each edge)
warped into the frame. Outside the crop's footprint the weight is exactly 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from avatar.types import PreparedAvatar


def raw_boxes(landmarks: np.ndarray, scale: float = 1.8, shift: float = -0.08) -> np.ndarray:
    """Per-frame square crop boxes ``[N, 3]`` (centre x, centre y, side); NaN rows where
    the landmarks are NaN. See the module doc for ``scale`` and ``shift``."""
    lm = np.asarray(landmarks, np.float64)
    lo, hi = lm.min(axis=1), lm.max(axis=1)  # NaN propagates
    centre = (lo + hi) / 2.0
    side = scale * np.max(hi - lo, axis=1)
    centre[:, 1] += shift * side
    return np.concatenate([centre, side[:, None]], axis=1)


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """The frame-to-crop affine (2x3 float64) of the ``size`` px crop of ``box``.

    Pixel centres sit at integer coordinates (as landmarks do) and the box's edges map
    onto the crop's edges: the box's left edge (``x0 - 0.5`` in edge terms) lands on the
    crop's left edge, so a pixel centre ``x`` lands on ``s * (x - x0) - 0.5``.
    """
    cx, cy, side = (float(v) for v in box)
    s = size / side
    x0, y0 = cx - side / 2, cy - side / 2
    return np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5]])


def crop_frame(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square ``box`` = (centre x, centre y, side) from ``image`` at sub-pixel
    precision (black outside the frame) and resize it to ``size``. Returns uint8 RGB.

    The warp is :func:`crop_matrix`, so :func:`to_crop` maps points exactly as the pixels
    move. A box more than twice the output is first shrunk with area averaging (no
    aliasing), then warped.
    """
    cx, cy, side = (float(v) for v in box)
    image = image[..., :3]
    if side > 2 * size:  # pre-shrink an integer region around the box
        margin = 2
        left = int(np.floor(cx - side / 2)) - margin
        top = int(np.floor(cy - side / 2)) - margin
        extent = int(np.ceil(side)) + 2 * margin + 1
        region = cut_square(image, left, top, extent)
        small = max(int(round(extent * 2 * size / side)), 1)
        image = cv2.resize(region, (small, small), interpolation=cv2.INTER_AREA)
        f = small / extent
        # An edge coordinate e in the region becomes e * f in the shrunk image.
        cx, cy, side = (cx + 0.5 - left) * f - 0.5, (cy + 0.5 - top) * f - 0.5, side * f
    matrix = crop_matrix((cx, cy, side), size)
    method = cv2.INTER_LINEAR if size / side <= 1.0 else cv2.INTER_CUBIC
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=method,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def cut_square(image: np.ndarray, left: int, top: int, extent: int) -> np.ndarray:
    """The ``extent``-pixel square of ``image`` at ``(left, top)``, black where it
    reaches past the image's edges."""
    height, width = image.shape[:2]
    region = np.zeros((extent, extent, 3), np.uint8)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + extent, width), min(top + extent, height)
    if x1 > x0 and y1 > y0:
        region[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return region


def to_crop(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Source-pixel points ``[..., 2]`` moved into the pixels of the crop of ``box``."""
    cx, cy, side = (float(v) for v in box)
    s = size / side
    origin = np.array([cx - side / 2, cy - side / 2])
    return (s * (np.asarray(points, np.float64) - origin) - 0.5).astype(np.float32)


def feather_width(size: int, feather_px: float | None = None) -> float:
    """The soft edge's width in crop pixels: ``feather_px``, or ``size / 16`` when None."""
    return size / 16 if feather_px is None else float(feather_px)


def feather_mask(size: int, feather_px: float) -> np.ndarray:
    """The crop's paste weight, float32 ``(size, size)``: 1 inside, a smoothstep down to 0
    over ``feather_px`` pixels at each edge (no visible seam at either end of the ramp)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    edge = np.minimum(centres, size - centres)
    ramp = np.clip(edge / max(feather_px, 1e-6), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def paste_alpha(
    matrix: np.ndarray, size: int, frame_size: tuple[int, int], feather_px: float
) -> np.ndarray:
    """The crop's weight in every frame pixel: :func:`feather_mask` warped into the frame.

    Args:
        matrix: the frame-to-crop affine (2x3), as :func:`crop_matrix` or
            :class:`avatar.face.AlignedFace` give it.
        size: the crop's side in pixels.
        frame_size: (width, height) of the frame.
        feather_px: width of the soft edge in crop pixels (:func:`feather_width`).

    Returns:
        float32 ``(height, width)``, 0 outside the crop's footprint; blend the crop warped
        with the same ``matrix`` (``WARP_INVERSE_MAP``) as ``crop * alpha + frame * (1 - alpha)``.
    """
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mask = feather_mask(size, feather_px)
    return cv2.warpAffine(mask, matrix, frame_size, flags=flags, borderValue=0.0)


def fit_avatar(avatar: PreparedAvatar, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The avatar's image resized to ``size`` square and its landmarks scaled alike."""
    image = np.ascontiguousarray(avatar.image[..., :3], dtype=np.uint8)
    h, w = image.shape[:2]
    landmarks = np.asarray(avatar.landmarks, np.float32).copy()
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_CUBIC
        image = cv2.resize(image, (size, size), interpolation=interp)
        landmarks *= np.array([size / w, size / h], np.float32)
    return image, landmarks
