"""Head pose from the 468-point mesh: its rigid points fitted to a canonical frontal face.

The mesh's points that expressions barely move (:data:`RIGID`: the eye corners, the nose
bridge, the forehead and the cheekbones; not the lips, the brows or the jaw) are fitted
to the same points of a canonical frontal face (:data:`CANONICAL`), and the rotation of
that fit is decomposed by :func:`avatar.face.pose.pose_from_rotation`, so the angles
mean what :class:`avatar.types.HeadPose` says, as on the 68-point path: an in-plane
rotation of the image changes only roll, and a face looking into the lens has yaw ~ 0.

The fit is a weak-perspective one: the mesh's x, y against the canonical face turned,
scaled and shifted (Gauss-Newton from a 3-D Kabsch fit of the mesh's own x, y, z). The
mesh's depth only starts it, because the model's depth follows a turn by about two
thirds: on the rendered turns below, the 3-D Kabsch fit alone reads 45 degrees as 28-33.
The mesh's outer contour (the points near the ears) is left out: on a turned head the
far side's contour is hidden and the model guesses it (with it, 45 degrees read 35).

The canonical face (:func:`canonical_from`) is the mean of the two test photos' meshes
(scikit-image's astronaut, matplotlib's Grace Hopper), made mirror-symmetric, scaled to
90 mm between the outer eye corners and pitched to best fit the 68-point template of
:mod:`avatar.face.pose` (so both backends call the same head "level": the frontal test
photos read pitch 6-7 degrees on both). Nothing is downloaded.

Measured on renders of the test photos and of synthetic heads (the turn as read minus
the unturned face's reading, signs folded; mean +- sd; ``tests/avatar/test_face.py``
and ``tests/avatar/test_face_mediapipe.py`` check the bounds):

- the synthetic 3-D head of :mod:`consent.ceremony.sim.head` (5 persons, 512 px; turned
  with its hair, ears and occlusion): yaw 15 / 30 / 45 degrees read 11.3 +- 1.5 /
  28.0 +- 1.6 / 41.6 +- 1.5 (at 320 px: 11.6 / 28.2 / 41.9; 55 reads 49.5-52.2). The
  same meshes read 7.4 / 18.0 / 30.1 by the 3-D Kabsch fit alone and 9.1 / 24.0 / 37.9
  through their 68 points and :func:`~avatar.face.pose.head_pose`; dlib read
  10.3 +- 3.9 / 19.7 +- 7.9 and lost 7 of the 10 faces at 45. Frontal faces read yaw
  -0.1 to 3.7;
- the three test photos' (astronaut at 1x and 2x, Grace Hopper) own meshes turned in
  3-D and re-rendered: 14.1 +- 1.1 / 26.8 +- 1.8 / 37.5 +- 3.0;
- the 2.5-D warp of ``tests/avatar/test_face.py`` (no foreshortening, so not a true
  turn beyond 20 degrees): 13.3 / 22.4 / 27.5 (dlib finds no face at 45);
- in-plane rotations of +-20 degrees read as roll within 0.9 degrees, yaw moves by at
  most 2.2; a mirrored photo reads the opposite yaw within 1.2 degrees.

Pitch is looser than yaw: a 15 degree nod reads 10.7 +- 1.9 on the re-rendered photos
and 5.8 +- 1.1 on the synthetic heads (through 68 points: 19.4 and 12.5); frontal
photos read 5.7 to 6.7, the synthetic heads 7.8 to 11.7. Nothing in likeness decides
on pitch. A fit costs about 0.1-0.3 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from avatar.face.mesh import MESH_POINTS
from avatar.face.pose import TEMPLATE_68, pose_from_rotation
from avatar.types import HeadPose

# Mesh vertices on the face's midline, top to bottom: forehead (10, 151, 9), nose
# bridge between the eyes (168) down to the nose tip (4).
MIDLINE = (10, 151, 9, 168, 6, 197, 195, 5, 4)
# Mirror pairs, (subject's right: image left, subject's left): outer and inner eye
# corners, two forehead points, the cheekbone (two) and the upper cheek.
PAIRS = ((33, 263), (133, 362), (109, 338), (67, 297), (116, 345), (123, 352), (50, 280))
RIGID = np.array(
    [*MIDLINE, *(right for right, _ in PAIRS), *(left for _, left in PAIRS)], dtype=np.intp
)
"""The mesh vertices the pose is fitted on, in :data:`CANONICAL`'s order."""

# The canonical face, in mm: x to the image's right, y down, z away from the camera,
# origin between the outer eye corners; the midline, then the subject's right side (the
# left side is its mirror). Made by canonical_from() from the two test photos.
# fmt: off
_MIDLINE_MM = (
    (0.0, -41.3, -25.3), (0.0, -28.0, -26.2), (0.0, -15.5, -26.0), (0.0, -0.7, -21.9),
    (0.0, 7.4, -24.9), (0.0, 14.9, -28.7), (0.0, 22.1, -32.9), (0.0, 29.9, -37.3),
    (0.0, 38.7, -38.2),
)
_RIGHT_MM = (
    (-45.0, 0.0, 0.0), (-17.2, 2.4, -4.9), (-18.9, -41.0, -23.8), (-34.7, -39.7, -17.2),
    (-60.9, 13.3, 14.8), (-60.5, 24.6, 15.4), (-48.0, 28.8, -0.7),
)
# fmt: on
CANONICAL = np.array(
    [*_MIDLINE_MM, *_RIGHT_MM, *((-x, y, z) for x, y, z in _RIGHT_MM)], dtype=np.float64
)
"""(len(RIGID), 3) mm: the canonical frontal face's rigid points."""

_MIRROR = np.array(
    [*range(len(MIDLINE))]
    + [len(MIDLINE) + len(PAIRS) + i for i in range(len(PAIRS))]
    + [len(MIDLINE) + i for i in range(len(PAIRS))],
    dtype=np.intp,
)  # row i of RIGID is the mirror image of row _MIRROR[i]
_FLIP = np.array([-1.0, 1.0, 1.0])
_EYE_MM = 90.0  # outer eye corner to outer eye corner
_OUTER_EYES = (len(MIDLINE), len(MIDLINE) + len(PAIRS))  # rows of 33 and 263
# 68-point template index -> mesh vertex, for the points both know.
_TEMPLATE_MATCH = {27: 168, 30: 4, 36: 33, 39: 133, 42: 362, 45: 263}


def mesh_head_pose(points: np.ndarray) -> HeadPose:
    """Estimate yaw, pitch and roll of a face from its 468-point mesh.

    Args:
        points: (468, 3) mesh points: x, y in the image's pixels, z in pixels at the
            scale of x, smaller nearer the camera (:attr:`avatar.face.mesh.FaceMesh.points`).

    Returns:
        Angles in degrees (see :class:`avatar.types.HeadPose` for the signs). Compare
        ``abs(pose.yaw)`` with a limit to reject profile views.

    Raises:
        ValueError: ``points`` is not (468, 3), or the fit failed (degenerate points).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (MESH_POINTS, 3):
        raise ValueError(f"mesh_head_pose needs (468, 3) mesh points, got {pts.shape}")
    rigid = pts[RIGID]
    if not np.isfinite(rigid).all():
        raise ValueError("mesh_head_pose: the mesh has points that are not finite")
    rotation, scale, shift = procrustes(CANONICAL, rigid)
    if scale <= 0:
        raise ValueError("mesh_head_pose: degenerate mesh (all rigid points in one place)")
    rotation = _weak_perspective(rigid[:, :2], rotation, scale, shift[:2])
    return pose_from_rotation(rotation)


def procrustes(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The similarity ``target ~ scale * rotation @ source + shift`` (Kabsch-Umeyama).

    Args:
        source: (N, 3) points.
        target: (N, 3) points, row for row.

    Returns:
        ``(rotation, scale, shift)``: a proper 3x3 rotation (no mirror), a float and (3,).
    """
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    u, sing, vt = np.linalg.svd(dst.T @ src)
    sign = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = (u * sign) @ vt
    scale = float((sing * sign).sum() / max(float((src**2).sum()), 1e-12))
    return rotation, scale, dst_mean - scale * rotation @ src_mean


def _weak_perspective(
    xy: np.ndarray, rotation: np.ndarray, scale: float, shift: np.ndarray, steps: int = 10
) -> np.ndarray:
    """Refine ``rotation`` so that ``scale * (rotation @ CANONICAL)[:, :2] + shift``
    meets ``xy`` (Gauss-Newton on the rotation, the scale and the shift; each step
    shrinks the change about 15-fold: stops below 1e-5 rad, about 5 steps)."""
    n = len(xy)
    jac = np.zeros((n, 2, 6))
    jac[:, 0, 4] = jac[:, 1, 5] = 1.0
    for _ in range(steps):
        turned = CANONICAL @ rotation.T
        residual = (scale * turned[:, :2] + shift - xy).reshape(-1)
        # d(turned) / d(small rotation w) = w x turned: its x and y rows.
        x, y, z = turned[:, 0], turned[:, 1], turned[:, 2]
        jac[:, 0, 1], jac[:, 0, 2] = scale * z, -scale * y
        jac[:, 1, 0], jac[:, 1, 2] = -scale * z, scale * x
        jac[:, :, 3] = turned[:, :2]
        flat = jac.reshape(2 * n, 6)
        try:
            step = np.linalg.solve(flat.T @ flat, -flat.T @ residual)
        except np.linalg.LinAlgError:
            raise ValueError("mesh_head_pose: degenerate mesh (no unique pose)") from None
        small, _ = cv2.Rodrigues(step[:3])
        rotation = small @ rotation
        scale += float(step[3])
        shift = shift + step[4:]
        if float(np.abs(step[:3]).max()) < 1e-5:
            break
    return rotation


def canonical_from(meshes: Sequence[np.ndarray]) -> np.ndarray:
    """The canonical face made from frontal meshes (how :data:`CANONICAL` was made).

    Each mesh's rigid points are made mirror-symmetric, all are averaged after a
    similarity fit, scaled to 90 mm between the outer eye corners, turned to best fit
    the 68-point template's eye corners and nose, and centred between the outer eye
    corners.

    Args:
        meshes: (468, 3) meshes of faces looking roughly into the lens.

    Returns:
        (len(RIGID), 3) mm, in :data:`RIGID`'s order.
    """
    shapes = [_symmetric(np.asarray(m, np.float64)[RIGID]) for m in meshes]
    first = shapes[0]
    fitted = []
    for shape in shapes:
        rotation, scale, shift = procrustes(shape, first)
        fitted.append(scale * shape @ rotation.T + shift)
    mean = _symmetric(np.mean(fitted, axis=0))
    rows = [list(RIGID).index(v) for v in _TEMPLATE_MATCH.values()]
    template = np.array([TEMPLATE_68[k] for k in _TEMPLATE_MATCH], np.float64)
    rotation, _, _ = procrustes(mean[rows], template)
    level = _symmetric(mean @ rotation.T)
    return level - (level[_OUTER_EYES[0]] + level[_OUTER_EYES[1]]) / 2


def _symmetric(points: np.ndarray) -> np.ndarray:
    """``points`` (rigid rows) as a mirror-symmetric face about x = 0, 90 mm between
    the outer eye corners: averaged with its mirror image after undoing the head's
    turn, a few times over."""
    shape = points - points.mean(axis=0)
    for _ in range(5):
        shape = (shape + shape[_MIRROR] * _FLIP) / 2
        rotation, scale, shift = procrustes(shape, points)
        shape = (points - shift) @ rotation / scale
        shape -= shape.mean(axis=0)
    shape = (shape + shape[_MIRROR] * _FLIP) / 2
    eyes = float(np.linalg.norm(shape[_OUTER_EYES[0]] - shape[_OUTER_EYES[1]]))
    return shape * (_EYE_MM / eyes)
