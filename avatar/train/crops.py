"""Stable face crops over time: track the face, smooth the crop box, measure its jitter.

Tracking (:func:`track_faces`): the face is detected every ``stride`` frames with
:class:`~avatar.face.FaceAnalyzer` (dlib HOG by default); every frame gets 68
landmarks from the latest detection's box. When a detection fails, the frames up to
the next successful one get no landmarks (NaN) and count as "no face".

The crop geometry is the one inference uses, from :mod:`avatar.face.crop` (re-exported
here for the preprocessing): :func:`raw_boxes` gives a frame's square box around its
landmarks, :func:`crop_frame` cuts it at sub-pixel precision, :func:`to_crop` moves
landmarks into the crop. Per-frame boxes shake with the landmark noise, so
:func:`smooth_boxes` interpolates the frames without a face and smooths the path with a
centred Gaussian (offline: the whole video is known), the side more strongly than the
centre; the crop then moves as smoothly as the path.

Jitter (:func:`jitter_px`): the root mean square of the box centre's second
difference from frame to frame (its acceleration), in pixels of the output crop. A
steady pan scores 0; a box that shakes by ±d pixels from frame to frame scores 4d.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from avatar.errors import FaceNotFoundError
from avatar.face.analyzer import FaceAnalyzer
from avatar.face.crop import crop_frame, raw_boxes, to_crop
from avatar.types import Box

__all__ = [
    "FaceTrack",
    "crop_frame",
    "jitter_px",
    "raw_boxes",
    "smooth_boxes",
    "to_crop",
    "track_faces",
]


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
