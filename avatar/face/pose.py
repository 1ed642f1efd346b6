"""Head pose from 68 landmarks: a generic 3-D face fitted with ``cv2.solvePnP``.

The template below is a rough average adult face in millimetres, written for this
project from common anthropometric proportions (eye corners about 90 mm apart, nose tip
about 35 mm in front of the outer eye corners, chin about 115 mm below the eye line).
Its axes are the camera's for a face looking straight into the lens: x to the image's
right, y down, z away from the camera. Only points that expressions barely move are
used: eye corners, nose, and the chin. The mouth is left out (a smile or speech moves
its corners by a centimetre, which read as 10 degrees of pitch), and so is the jaw
contour (dlib places it on the visible silhouette, which slides when the head turns)
except the chin, kept to anchor pitch although an open jaw lowers it.

Angles follow :class:`avatar.types.HeadPose` and are measured from the line of sight
(the ray from the camera to the face), not from the optical axis: a face that looks into
the lens has yaw ~ 0 wherever it sits in the frame. The rotation is decomposed
as ``Rz(roll) @ Ry(yaw) @ Rx(-pitch)`` so that an in-plane rotation of the image changes
only ``roll``. The camera is a pinhole with focal length equal to the image width and
its centre in the middle of the image. Measured on the test photos: in-plane rotations
of 20 degrees read as 20 +- 1.5 degrees of roll and move yaw by at most 5; a rendered
20 degree turn reads as 14-21 degrees of yaw. Pitch is looser (the template's depth is a
guess): frontal photos read 6-9 degrees. That is what the consent check (head turns)
and the profile-view filter need; do not use pitch for fine gaze.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatar.types import HeadPose

# landmark index -> (x, y, z) in mm; origin between the outer eye corners.
TEMPLATE_68: dict[int, tuple[float, float, float]] = {
    8: (0.0, 114.0, -12.0),  # chin (menton)
    27: (0.0, -4.0, -18.0),  # top of the nose bridge, between the eyes
    30: (0.0, 37.0, -36.0),  # nose tip
    31: (-13.0, 45.0, -22.0),  # nostril, image left
    33: (0.0, 48.0, -26.0),  # base of the nose
    35: (13.0, 45.0, -22.0),  # nostril, image right
    36: (-45.0, 0.0, 0.0),  # outer corner of the image-left eye
    39: (-16.0, 1.0, -7.0),  # inner corner of the image-left eye
    42: (16.0, 1.0, -7.0),  # inner corner of the image-right eye
    45: (45.0, 0.0, 0.0),  # outer corner of the image-right eye
}
_INDICES = np.array(list(TEMPLATE_68), dtype=np.intp)
_MODEL = np.array(list(TEMPLATE_68.values()), dtype=np.float64)


def head_pose(landmarks: np.ndarray, image_shape: tuple[int, ...]) -> HeadPose:
    """Estimate yaw, pitch and roll of the face whose 68 landmarks are given.

    Args:
        landmarks: (68, 2) (x, y) pixels in the image described by ``image_shape``.
        image_shape: the image's ``shape`` (H, W, ...); sets the assumed camera.

    Returns:
        Angles in degrees (see :class:`avatar.types.HeadPose` for the signs). Compare
        ``abs(pose.yaw)`` with a limit to reject profile views.

    Raises:
        ValueError: ``landmarks`` is not (68, 2), or the fit failed (degenerate points).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"head_pose needs (68, 2) landmarks, got {points.shape}")
    height, width = int(image_shape[0]), int(image_shape[1])
    focal = float(width)
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(_MODEL, points[_INDICES], camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("head_pose: solvePnP found no pose for these landmarks")
    rotation, _ = cv2.Rodrigues(rvec)
    return pose_from_rotation(_towards_line_of_sight(tvec.ravel()).T @ rotation)


def _towards_line_of_sight(position: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the optical axis (0, 0, 1) onto the ray to ``position``.

    Measuring the head's rotation from that ray rather than from the optical axis makes
    "looks into the lens" read as yaw = pitch = 0 wherever the face is in the frame, and
    makes an in-plane rotation of the image change only roll.
    """
    ray = position / max(float(np.linalg.norm(position)), 1e-9)
    if ray[2] < 0:  # a mirror solution behind the camera: use the ray it sees through
        ray = -ray
    axis = np.cross([0.0, 0.0, 1.0], ray)
    sin = float(np.linalg.norm(axis))
    if sin < 1e-9:
        return np.eye(3)
    angle = math.atan2(sin, float(ray[2]))
    rotation, _ = cv2.Rodrigues(axis / sin * angle)
    return rotation


def pose_from_rotation(rotation: np.ndarray) -> HeadPose:
    """Decompose a model-to-camera rotation matrix into :class:`HeadPose` angles.

    Args:
        rotation: 3x3 rotation taking the template's axes (x right, y down, z away from
            the camera, for a face looking into the lens) to the camera's.

    Returns:
        yaw, pitch, roll in degrees, with ``rotation == Rz(roll) @ Ry(yaw) @ Rx(-pitch)``.
    """
    r = np.asarray(rotation, dtype=np.float64)
    yaw = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    pitch = -math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return HeadPose(yaw=math.degrees(yaw), pitch=math.degrees(pitch), roll=math.degrees(roll))
