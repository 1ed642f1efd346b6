"""Aligned square face crops, and pasting an edited crop back into its photo.

:func:`align_face` turns the face upright and centres it with a margin that keeps the
hair and the chin, roughly the framing of the FFHQ data set: the crop's side is
``margin`` times the larger of the eye distance and 0.9 x the eye-to-mouth distance,
and its centre sits a tenth of the way from the eyes' midpoint to the mouth's. The
transform is a similarity (rotation, uniform scale, shift), so nothing is stretched.

A generator edits the crop; :func:`paste_back` puts the result back with a soft edge.
Pixels outside the crop's footprint come back exactly as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.face.crop import feather_width, paste_alpha
from avatar.types import LEFT_EYE, RIGHT_EYE, Box

DEFAULT_MARGIN = 4.0


@dataclass(frozen=True, slots=True, eq=False)
class AlignedFace:
    """A face crop and how it maps to its photo.

    Attributes:
        crop: uint8 RGB (size, size, 3).
        landmarks: float32 (68, 2) landmarks in the crop's pixels.
        matrix: float64 2x3 affine (a similarity) taking photo pixels to crop pixels;
            give it to :func:`paste_back` with the edited crop.
    """

    crop: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    def source_box(self) -> Box:
        """Axis-aligned bounds, in photo pixels, of the crop's (possibly rotated) square."""
        side = float(self.size)
        corners = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float64)
        photo = map_points(corners, invert_affine(self.matrix))
        (x0, y0), (x1, y1) = photo.min(axis=0), photo.max(axis=0)
        return Box(float(x0), float(y0), float(x1), float(y1))


def alignment_matrix(
    landmarks: np.ndarray, size: int, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
    """The photo-to-crop similarity for the 68 ``landmarks`` (see the module docstring).

    Args:
        landmarks: (68, 2) in photo pixels.
        size: side of the square crop, in pixels.
        margin: crop side in units of the face's scale (eye distance); 4.0 keeps hair
            and chin, 3.0 is tighter, 5.0 shows the shoulders.

    Returns:
        float64 (2, 3) matrix ``M`` with ``crop_xy = M @ (x, y, 1)``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"align_face needs (68, 2) landmarks, got {points.shape}")
    eye_a = points[RIGHT_EYE].mean(axis=0)  # image left
    eye_b = points[LEFT_EYE].mean(axis=0)  # image right
    eyes = (eye_a + eye_b) / 2
    mouth = (points[48] + points[54]) / 2
    across = eye_b - eye_a
    down = mouth - eyes
    # The face's "right" axis from both cues: the eye line and the normal to eyes->mouth.
    right = across + np.array([down[1], -down[0]])
    angle = math.atan2(right[1], right[0])
    scale_px = max(float(np.hypot(*across)), 0.9 * float(np.hypot(*down)), 1e-6)
    side = margin * scale_px
    centre = eyes + 0.1 * down
    zoom = size / side
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    # Rotate by -angle (so the face's right axis lies along +x), scale, centre.
    linear = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([size / 2, size / 2]) - linear @ centre
    return np.hstack([linear, shift[:, None]])


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int = 512, margin: float = DEFAULT_MARGIN
) -> AlignedFace:
    """Cut an upright, centred square crop of the face.

    Args:
        image: uint8 RGB photo.
        landmarks: the face's (68, 2) landmarks in ``image``'s pixels.
        size: the crop's side in pixels.
        margin: see :func:`alignment_matrix`.

    Returns:
        The crop, its landmarks and the photo-to-crop matrix. Where the crop reaches past
        the photo's edge it is filled by mirroring; check ``source_box()`` against the
        photo to tell the user.
    """
    matrix = alignment_matrix(landmarks, size, margin)
    zoom = math.hypot(matrix[0, 0], matrix[0, 1])
    source, warp = image, matrix
    if zoom < 0.5:
        # Shrinking a lot: pre-filter with an area resize so the crop does not alias.
        factor = zoom * 1.5
        height, width = image.shape[:2]
        dims = (max(1, round(width * factor)), max(1, round(height * factor)))
        source = cv2.resize(image, dims, interpolation=cv2.INTER_AREA)
        pre = np.diag([dims[0] / width, dims[1] / height])
        warp = np.hstack([matrix[:, :2] @ np.linalg.inv(pre), matrix[:, 2:]])
    crop = cv2.warpAffine(
        source, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return AlignedFace(
        crop=crop,
        landmarks=map_points(landmarks, matrix).astype(np.float32),
        matrix=matrix,
    )


def paste_back(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, feather_px: float | None = None
) -> np.ndarray:
    """Warp an (edited) crop back into its photo with a soft-edged mask.

    Args:
        photo: the uint8 RGB photo the crop was cut from (not modified).
        crop: uint8 RGB (size, size, 3), e.g. a generated frame of the aligned face.
        matrix: the photo-to-crop matrix of :class:`AlignedFace`.
        feather_px: width of the soft edge in crop pixels; None uses size / 16
            (:func:`avatar.face.crop.feather_mask`).

    Returns:
        A new photo: the crop inside its footprint, blended over ``feather_px`` at the
        edge; every pixel outside the footprint is exactly the original.
    """
    size = crop.shape[0]
    if crop.shape[:2] != (size, size):
        raise ValueError(f"paste_back needs a square crop, got {crop.shape}")
    height, width = photo.shape[:2]
    alpha = paste_alpha(matrix, size, (width, height), feather_width(size, feather_px))
    inside = alpha > 0
    out = photo.copy()
    if not inside.any():
        return out
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(
        crop, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE
    )
    a = alpha[inside][:, None]
    blend = warped[inside].astype(np.float32) * a + photo[inside].astype(np.float32) * (1 - a)
    out[inside] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (crop-to-photo from photo-to-crop)."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def map_mesh(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Move a face mesh's (N, 3) points (x, y, depth) with a similarity ``matrix`` (2x3),
    as :func:`align_face` moves the photo: x, y mapped, depth scaled by the zoom.

    Returns:
        float32 (N, 3), e.g. the mesh in the crop's pixels from the photo's.
    """
    pts = np.asarray(points, dtype=np.float64)
    out = np.empty_like(pts)
    out[:, :2] = map_points(pts[:, :2], matrix)
    out[:, 2] = pts[:, 2] * math.hypot(matrix[0, 0], matrix[0, 1])
    return out.astype(np.float32)


def map_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points; returns float64 (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
