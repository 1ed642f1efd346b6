"""The 468-point face mesh: its data, its crop geometry and its map to the 68-point layout.

Pure geometry, no model: :mod:`avatar.face.mediapipe_backend` fills a :class:`FaceMesh`;
whoever needs the dense mesh (pose from 3-D points, eyelids and inner lips for the
procedural renderer, liveness) reads it from here without loading LiteRT.

Coordinates. Points are in the image's pixels in the project's convention (a point at
(i, j) is the centre of pixel (i, j), as dlib's landmarks are); depth ``z`` is in pixels
too, at the scale of x, smaller is nearer the camera, 0 near the centre of the head
(MediaPipe's convention). Crops are square regions of interest (:class:`Roi`), possibly
turned so that the eyes are level in the crop.

The map to 68 points (:data:`MESH_TO_68`) takes, for each point of the iBUG 300-W layout
(see :mod:`avatar.types`), the mesh vertex at the same place on the face. The mesh's
vertices are fixed on the skin, while dlib's jaw points follow the visible silhouette: on
a turned head the two jaw lines differ by design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.face.crop import cut_square
from avatar.types import Box

MESH_POINTS = 468
CROP_SIZE = 192
"""The mesh model's input side, in pixels."""
ROI_SCALE = 1.5
"""A face's crop side over its box's longer side (MediaPipe's ``scale_x``/``scale_y``)."""

RIGHT_EYE_OUTER = 33  # the subject's right eye, outer corner (on the image's left)
LEFT_EYE_OUTER = 263

# iBUG 300-W point -> mesh vertex, by anatomy: jaw 0-16 on the mesh's outer contour from
# the image-left ear to the other (8 is the chin), brows 17-26 on the brows' lower edge
# (dlib's brow points lie there: 0.05 instead of 0.09 of the eye distance on both test
# photos), nose bridge 27-30 and base 31-35, eyes 36-47 from the outer corner, clockwise
# in the image (lids at a third and two thirds of the mesh's lid contour), outer lips
# 48-59 and inner lips 60-67 from the image-left corner.
# fmt: off
MESH_TO_68 = np.array(
    [
        127, 234, 132, 58, 172, 150, 176, 148, 152, 377, 400, 379, 397, 288, 361, 454, 356,
        46, 53, 52, 65, 55,
        285, 295, 282, 283, 276,
        168, 197, 5, 4,
        75, 97, 2, 326, 305,
        33, 160, 158, 133, 153, 144,
        362, 385, 387, 263, 373, 380,
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.intp,
)
# fmt: on

MESH_TO_5 = np.array([263, 362, 33, 133, 2], dtype=np.intp)
"""dlib's 5-point layout -> mesh vertex: the image-right eye's outer and inner corner, the
image-left eye's outer and inner corner, the base of the nose (the 68 layout's point 33).
On the test photos and their mirror images these lie 0.02-0.04 of the eye distance from
dlib's own five points (the mesh's nearest vertices to them: 0.013-0.025)."""


@dataclass(frozen=True, slots=True)
class Roi:
    """A square region of the image, turned by ``angle``, that the mesh model sees.

    Attributes:
        cx: centre x, continuous image coordinates (pixel i covers [i, i + 1)).
        cy: centre y, same.
        side: side in image pixels.
        angle: radians; the crop's x axis points along (cos, sin) in the image (y down),
            so a positive angle is a head leaning clockwise in the image.
    """

    cx: float
    cy: float
    side: float
    angle: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class FaceMesh:
    """The 468-point mesh of one face in one image.

    Attributes:
        points: float32 (468, 3): x, y in the image's pixels (pixel centres at integers),
            z in pixels at the scale of x, smaller nearer the camera.
        presence: the model's face probability for the crop, 0..1; below 0.5 the crop
            held no face (MediaPipe's threshold) and the points mean nothing.
        roi: the crop the model saw.
        detected: True when a tracker ran the detector for this frame (tracking started
            or lost); False for a tracked frame, and for a mesh asked for with a box.
    """

    points: np.ndarray
    presence: float
    roi: Roi
    detected: bool = False

    def landmarks68(self) -> np.ndarray:
        """The 68 landmarks (iBUG 300-W layout), float32 (68, 2) in the image's pixels."""
        return np.ascontiguousarray(self.points[MESH_TO_68, :2], dtype=np.float32)

    def landmarks5(self) -> np.ndarray:
        """dlib's five points (:data:`MESH_TO_5`), float32 (5, 2) in the image's pixels:
        enough for :func:`avatar.face.align.align_face` and the identity embedding."""
        return np.ascontiguousarray(self.points[MESH_TO_5, :2], dtype=np.float32)

    def box(self) -> Box:
        """The axis-aligned box around the mesh's x, y (continuous coordinates)."""
        lo = self.points[:, :2].min(axis=0)
        hi = self.points[:, :2].max(axis=0) + 1.0
        return Box(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def roi_from_box(box: Box, angle: float = 0.0, scale: float = ROI_SCALE) -> Roi:
    """The crop around a detector's box: same centre, ``scale`` times its longer side."""
    side = scale * max(box.width, box.height)
    return Roi((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, side, angle)


def eye_angle(right_eye: np.ndarray, left_eye: np.ndarray) -> float:
    """The angle of the line from the subject's right eye (image left) to the left eye."""
    dx, dy = (np.asarray(left_eye, np.float64) - np.asarray(right_eye, np.float64))[:2]
    return math.atan2(float(dy), float(dx))


def roi_from_mesh(points: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """The crop for the next frame from this frame's mesh (MediaPipe's tracking step).

    Turned by the outer eye corners' line, centred on the mesh's box measured along that
    line, with ``scale`` times the box's longer side.

    Args:
        points: (468, 2 or 3) mesh points in pixel-centre coordinates.
        scale: crop side over the mesh box's longer side.
    """
    xy = np.asarray(points, np.float64)[:, :2] + 0.5  # -> continuous coordinates
    angle = eye_angle(xy[RIGHT_EYE_OUTER], xy[LEFT_EYE_OUTER])
    cos, sin = math.cos(angle), math.sin(angle)
    along = xy @ np.array([[cos, -sin], [sin, cos]])  # coordinates in the turned frame
    lo, hi = along.min(axis=0), along.max(axis=0)
    mid = (lo + hi) / 2
    centre = np.array([cos * mid[0] - sin * mid[1], sin * mid[0] + cos * mid[1]])  # back
    side = scale * float(max(hi - lo))
    return Roi(float(centre[0]), float(centre[1]), side, angle)


def crop_to_image(roi: Roi, size: int = CROP_SIZE) -> np.ndarray:
    """The 2x3 affine matrix taking continuous crop coordinates to continuous image ones."""
    k = roi.side / size
    cos, sin = math.cos(roi.angle), math.sin(roi.angle)
    a = np.array([[cos, -sin], [sin, cos]]) * k
    b = np.array([roi.cx, roi.cy]) - a @ np.array([size / 2, size / 2])
    return np.concatenate([a, b[:, None]], axis=1)


def crop(image: np.ndarray, roi: Roi, size: int = CROP_SIZE) -> np.ndarray:
    """Cut ``roi`` out of ``image`` as a ``size`` x ``size`` uint8 RGB crop (black outside).

    A crop much smaller than its region is first shrunk with an area filter, so a large
    face is not aliased.
    """
    if roi.side > 2 * size:
        image, roi = _shrunk(image, roi, size)
    matrix = crop_to_image(roi, size)
    # Continuous -> OpenCV's index coordinates: pixel index = continuous - 0.5.
    matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def crop_points_to_image(points: np.ndarray, roi: Roi, size: int = CROP_SIZE) -> np.ndarray:
    """Map (N, 3) mesh output in crop pixels to image pixels (pixel-centre convention).

    The model answers x, y as the crop's pixel indices (the centre of crop pixel 0 is 0),
    as far as a mirror test can tell: on 7 scaled copies of the two test photos, the
    mesh of a mirrored crop, mirrored back, lands a mean 0.3 crop pixels (sd 0.2) to the
    left of the mesh of the crop read this way; read as continuous coordinates, 0.7 to the
    right. x, y go through the crop's affine map; z is scaled like them.
    """
    pts = np.asarray(points, np.float64)
    matrix = crop_to_image(roi, size)
    out = np.empty_like(pts)
    out[:, :2] = (pts[:, :2] + 0.5) @ matrix[:, :2].T + matrix[:, 2] - 0.5
    out[:, 2] = pts[:, 2] * (roi.side / size)
    return out.astype(np.float32)


def _shrunk(image: np.ndarray, roi: Roi, size: int) -> tuple[np.ndarray, Roi]:
    """The part of ``image`` under ``roi``, shrunk so that the region is ``size`` across,
    and the same region in it."""
    half = roi.side / 2 * (abs(math.cos(roi.angle)) + abs(math.sin(roi.angle))) + 1
    x0, y0 = math.floor(roi.cx - half), math.floor(roi.cy - half)
    side = math.ceil(2 * half)
    part = cut_square(image, x0, y0, side)
    new = max(1, round(side * size / roi.side))
    small = cv2.resize(part, (new, new), interpolation=cv2.INTER_AREA)
    g = new / side
    return small, Roi((roi.cx - x0) * g, (roi.cy - y0) * g, roi.side * g, roi.angle)
