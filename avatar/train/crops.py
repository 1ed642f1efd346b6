"""Stable face crops over time: track the face, smooth the crop box, cut and resize.

Tracking (:func:`track_faces`): the face is detected every ``stride`` frames with
:class:`~avatar.face.FaceAnalyzer` (dlib HOG by default); every frame gets 68
landmarks from the latest detection's box. When a detection fails, the frames up to
the next successful one get no landmarks (NaN) and count as "no face".

The crop box of a frame (:func:`raw_boxes`) is a square around its landmarks: the
centre of the landmarks' bounding box, moved up by ``shift`` times the side (to keep
the hair and forehead), and a side of ``scale`` times the longer side of that box.
Per-frame boxes shake with the landmark noise, so :func:`smooth_boxes` interpolates the
frames without a face and smooths the path with a centred Gaussian (offline: the whole
video is known), the side more strongly than the centre. :func:`crop_frame` then cuts
the box at sub-pixel precision (an affine warp; black outside the frame), so the crop
moves as smoothly as the path.

Jitter (:func:`jitter_px`): the root mean square of the box centre's second
difference from frame to frame (its acceleration), in pixels of the output crop. A
steady pan scores 0; a box that shakes by ±d pixels from frame to frame scores 4d.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.errors import FaceNotFoundError
from avatar.face.analyzer import FaceAnalyzer
from avatar.types import Box


@dataclass(frozen=True, slots=True, eq=False)
class FaceTrack:
    """Landmarks of every frame of one video.

    Attributes:
        landmarks: float32 ``[N, 68, 2]`` in source pixels; NaN where no face was found.
        detected: bool ``[N]``, True on frames where a detection ran and found a face.
        attempted: bool ``[N]``, True on frames where a detection ran.
        frame_size: (width, height) of the source frames.
    """

    landmarks: np.ndarray
    detected: np.ndarray
    attempted: np.ndarray
    frame_size: tuple[int, int]

    @property
    def face_fraction(self) -> float:
        """Share of the detection attempts that found a face (0 with no frames)."""
        tries = int(self.attempted.sum())
        return float(self.detected.sum()) / tries if tries else 0.0


def track_faces(
    frames: Iterable[np.ndarray],
    analyzer: FaceAnalyzer,
    stride: int = 5,
    on_frame: Callable[[int], None] | None = None,
) -> FaceTrack:
    """Landmarks for every frame, detecting the face every ``stride`` frames.

    Args:
        frames: uint8 RGB frames in order (for example :func:`avatar.train.video.iter_frames`).
        analyzer: a loaded analyzer; its options decide what counts as a usable face.
        stride: detect on frames 0, stride, 2 stride, ...; landmarks run on every frame.
        on_frame: called with the running frame count (progress bars).

    Returns:
        The track; check :attr:`FaceTrack.face_fraction` before using it.
    """
    if stride < 1:
        raise ValueError(f"track_faces: stride={stride} must be at least 1")
    marks: list[np.ndarray] = []
    detected: list[bool] = []
    attempted: list[bool] = []
    box: Box | None = None
    lost = True
    size = (0, 0)
    empty = np.full((68, 2), np.nan, np.float32)
    for i, image in enumerate(frames):
        size = (int(image.shape[1]), int(image.shape[0]))
        if i % stride == 0:
            attempted.append(True)
            try:
                face = analyzer.analyze(image)
            except FaceNotFoundError:
                lost = True
                detected.append(False)
                marks.append(empty)
            else:
                box, lost = face.box, False
                detected.append(True)
                marks.append(np.asarray(face.landmarks, np.float32))
        else:
            attempted.append(False)
            detected.append(False)
            if lost or box is None:
                marks.append(empty)
            else:
                marks.append(np.asarray(analyzer.backend.landmarks(image, box), np.float32))
        if on_frame is not None:
            on_frame(i + 1)
    return FaceTrack(
        landmarks=np.stack(marks) if marks else np.zeros((0, 68, 2), np.float32),
        detected=np.array(detected, bool),
        attempted=np.array(attempted, bool),
        frame_size=size,
    )


def raw_boxes(landmarks: np.ndarray, scale: float = 1.8, shift: float = -0.08) -> np.ndarray:
    """Per-frame square crop boxes ``[N, 3]`` (centre x, centre y, side); NaN rows where
    the landmarks are NaN. See the module doc for ``scale`` and ``shift``."""
    lm = np.asarray(landmarks, np.float64)
    lo, hi = lm.min(axis=1), lm.max(axis=1)  # NaN propagates
    centre = (lo + hi) / 2.0
    side = scale * np.max(hi - lo, axis=1)
    centre[:, 1] += shift * side
    return np.concatenate([centre, side[:, None]], axis=1)


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, (radius, radius), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def smooth_boxes(
    boxes: np.ndarray, centre_sigma: float = 5.0, side_sigma: float = 15.0
) -> np.ndarray:
    """Fill frames without a face and smooth the path (sigmas in frames).

    Args:
        boxes: ``[N, 3]`` from :func:`raw_boxes`, NaN rows allowed (not all of them).
        centre_sigma: Gaussian sigma of the centre's smoothing, frames.
        side_sigma: Gaussian sigma of the side's smoothing, frames.

    Returns:
        float64 ``[N, 3]`` without NaN.

    Raises:
        ValueError: every row is NaN (no face anywhere).
    """
    boxes = np.asarray(boxes, np.float64)
    good = np.all(np.isfinite(boxes), axis=1)
    if not good.any():
        raise ValueError("smooth_boxes: no frame has a face")
    index = np.arange(len(boxes))
    filled = np.stack([np.interp(index, index[good], boxes[good, k]) for k in range(3)], axis=1)
    sigmas = (centre_sigma, centre_sigma, side_sigma)
    return np.stack([_gaussian(filled[:, k], sigmas[k]) for k in range(3)], axis=1)


def jitter_px(boxes: np.ndarray, size: int) -> float:
    """RMS second difference of the box centre, in output pixels (see the module doc).

    Args:
        boxes: ``[N, 3]`` rows of (centre x, centre y, side) in source pixels; pass
            several boxes as rows.
        size: side of the output crop in pixels.
    """
    b = np.asarray(boxes, np.float64)
    if len(b) < 3:
        return 0.0
    accel = b[2:, :2] - 2 * b[1:-1, :2] + b[:-2, :2]
    per_px = size / b[1:-1, 2]
    return float(np.sqrt(np.mean(np.sum(accel**2, axis=1) * per_px**2)))


def crop_frame(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square ``box`` = (centre x, centre y, side) from ``image`` at sub-pixel
    precision (black outside the frame) and resize it to ``size``. Returns uint8 RGB.

    Pixel centres sit at integer coordinates (as landmarks do); the box's edges map onto
    the crop's edges, so :func:`to_crop` maps points exactly as the pixels move. A box more
    than twice the output is first shrunk with area averaging (no aliasing), then warped.
    """
    cx, cy, side = (float(v) for v in box)
    image = image[..., :3]
    if side > 2 * size:  # pre-shrink an integer region around the box
        margin = 2
        left = int(np.floor(cx - side / 2)) - margin
        top = int(np.floor(cy - side / 2)) - margin
        extent = int(np.ceil(side)) + 2 * margin + 1
        region = _cut(image, left, top, extent)
        small = max(int(round(extent * 2 * size / side)), 1)
        image = cv2.resize(region, (small, small), interpolation=cv2.INTER_AREA)
        f = small / extent
        # An edge coordinate e in the region becomes e * f in the shrunk image.
        cx, cy, side = (cx + 0.5 - left) * f - 0.5, (cy + 0.5 - top) * f - 0.5, side * f
    s = size / side
    x0, y0 = cx - side / 2, cy - side / 2
    # Edges: the box's left edge (x0 - 0.5 in edge terms) maps to the crop's left edge, so
    # a pixel centre x lands on the crop's pixel centre s * (x - x0) - 0.5.
    matrix = np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5]])
    method = cv2.INTER_LINEAR if s <= 1.0 else cv2.INTER_CUBIC
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=method,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _cut(image: np.ndarray, left: int, top: int, extent: int) -> np.ndarray:
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
