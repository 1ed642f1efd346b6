"""Landmark-driven piecewise-affine warp of the face region.

The mesh is a Delaunay triangulation over the 68 landmarks, helper points (the
centre of each eye and of the mouth, which keep the eye and lip outlines as
triangle edges, and spline midpoints along the lids and inner lips, so the mesh
follows their curves) and a ring of anchor points on the border of the face region.
Anchors never move, so nothing outside the region changes and its border is
seamless.

With a prepared avatar's dense face mesh (:mod:`avatar.procedural.dense`) its lip,
lid and cheek vertices join the mesh (``extra``) and take the place of the spline
midpoints: the outlines are then the photo's own lip and lid lines.

Computed once per avatar: the triangulation (taken in a "topology pose" with the
mouth and eyes opened a little, so that a closed mouth, whose upper and lower
inner lip share points, still gets separate upper and lower lip triangles), the
vertex-to-triangle incidence and the pixel grid of the region.

Per frame: vertex displacements; the triangles that touch a moving vertex; those
triangles rasterised *in their displaced position* into a triangle-index image
(a few dozen ``cv2.fillConvexPoly`` calls); for every covered pixel its
barycentric coordinates in the displaced triangle applied to the rest triangle,
which gives the exact inverse map (also where the warp squeezes tissue flat, as a
closing eyelid does over the eye); one ``cv2.remap`` of the box they cover. Pixels
of triangles that do not move keep their rest value exactly. Triangles that have
no area at rest (inside a closed mouth) still map: the gap that opens there is
painted over by the mouth interior.

(A rest-space barycentric table with a fixed-point inverse was tried first: it is
cheaper per pixel but cannot invert a warp that squeezes a region to a line, and
a blink showed the iris through the closed lid.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from avatar.procedural.geometry import to_fixed
from avatar.types import INNER_LIPS, LEFT_EYE, RIGHT_EYE

# Outlines that must stay triangle edges: each eyelid and each inner lip, in order.
OUTLINES = (
    (36, 37, 38, 39),
    (39, 40, 41, 36),
    (42, 43, 44, 45),
    (45, 46, 47, 42),
    (60, 61, 62, 63, 64),
    (64, 65, 66, 67, 60),
)


def _helper_matrix() -> np.ndarray:
    """Helper vertices as fixed linear combinations of the 68 landmarks.

    First the centres of the right eye, the left eye and the mouth (they fan the
    eye and mouth openings so their outlines stay edges); then, on every outline,
    the midpoint of each segment on the Catmull-Rom spline through it, so the mesh
    follows curved lids and lips (a blink then closes the drawn, curved lid).
    """
    rows = []
    for part in (RIGHT_EYE, LEFT_EYE, INNER_LIPS):
        row = np.zeros(68)
        row[part] = 1.0 / (part.stop - part.start)
        rows.append(row)
    for outline in OUTLINES:
        n = len(outline)
        for k in range(n - 1):
            row = np.zeros(68)
            # Spline midpoint: (-p0 + 9 p1 + 9 p2 - p3) / 16, ends extrapolated.
            for idx, weight in ((k - 1, -1), (k, 9), (k + 1, 9), (k + 2, -1)):
                if idx < 0:  # phantom 2 p[0] - p[1]
                    row[outline[0]] += 2 * weight / 16
                    row[outline[1]] -= weight / 16
                elif idx >= n:  # phantom 2 p[-1] - p[-2]
                    row[outline[-1]] += 2 * weight / 16
                    row[outline[-2]] -= weight / 16
                else:
                    row[outline[idx]] += weight / 16
            rows.append(row)
    return np.array(rows, np.float32)


# Upper-lid creases: (lid point, brow point) pairs. A crease helper sits between
# the two but moves almost only with the brow, so a closing lid stretches the skin
# between lid and crease and leaves the brow as it is.
CREASES = ((36, 18), (37, 19), (38, 20), (39, 21), (42, 22), (43, 23), (44, 24), (45, 25))


def _crease_matrices() -> tuple[np.ndarray, np.ndarray]:
    place, move = np.zeros((len(CREASES), 68)), np.zeros((len(CREASES), 68))
    for row, (lid, brow) in enumerate(CREASES):
        place[row, lid], place[row, brow] = 0.55, 0.45
        move[row, lid], move[row, brow] = 0.1, 0.9
    return place.astype(np.float32), move.astype(np.float32)


_CREASE_PLACE, _CREASE_MOVE = _crease_matrices()
HELPERS = np.concatenate([_helper_matrix(), _CREASE_PLACE])  # rest positions
HELPER_MOTION = np.concatenate([_helper_matrix(), _CREASE_MOVE])  # displacements
N_LANDMARK_VERTICES = 68 + len(HELPERS)
# With a dense mesh: the eye and mouth centres and the creases (its rings replace the
# spline midpoints).
DENSE_HELPERS = np.concatenate([_helper_matrix()[:3], _CREASE_PLACE])
DENSE_HELPER_MOTION = np.concatenate([_helper_matrix()[:3], _CREASE_MOVE])


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres: the face's unit of length."""
    return float(np.linalg.norm(landmarks[LEFT_EYE].mean(0) - landmarks[RIGHT_EYE].mean(0)))


def face_region(landmarks: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) that the warp may change: the face with a margin.

    It reaches above the brows, past the cheeks and well below the chin so that
    the jaw can drop without touching the border. Clipped to the image.
    """
    iod = eye_distance(landmarks)
    lo = landmarks.min(0)
    hi = landmarks.max(0)
    x0 = lo[0] - 0.45 * iod
    x1 = hi[0] + 0.45 * iod
    y0 = landmarks[17:27, 1].min() - 0.25 * iod
    y1 = hi[1] + 0.9 * iod
    h, w = size
    return (
        int(max(0, np.floor(x0))),
        int(max(0, np.floor(y0))),
        int(min(w, np.ceil(x1))),
        int(min(h, np.ceil(y1))),
    )


def with_helpers(landmarks: np.ndarray, motion: bool = False) -> np.ndarray:
    """The 68 landmarks followed by the helper vertices.

    With ``motion=True``, ``landmarks`` are displacements and the result is the
    helpers' displacements (creases follow the brow more than their position does).
    """
    out = np.empty((N_LANDMARK_VERTICES, 2), np.float32)
    out[:68] = landmarks
    out[68:] = (HELPER_MOTION if motion else HELPERS) @ np.asarray(landmarks, np.float32)
    return out


def anchor_ring(box: tuple[int, int, int, int], per_side: int = 6) -> np.ndarray:
    x0, y0, x1, y1 = box
    xs = np.linspace(x0, x1 - 1, per_side + 1)
    ys = np.linspace(y0, y1 - 1, per_side + 1)
    top = np.stack([xs, np.full_like(xs, y0)], 1)
    bottom = np.stack([xs, np.full_like(xs, y1 - 1)], 1)
    left = np.stack([np.full_like(ys, x0), ys], 1)[1:-1]
    right = np.stack([np.full_like(ys, x1 - 1), ys], 1)[1:-1]
    return np.concatenate([top, bottom, left, right]).astype(np.float32)


def topology_pose(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks with the mouth and eyes opened a little (for triangulating)."""
    pose = landmarks.astype(np.float64).copy()
    iod = eye_distance(landmarks)
    pose[[65, 66, 67]] += [0.0, 0.12 * iod]
    pose[[55, 56, 57, 58, 59]] += [0.0, 0.12 * iod]
    pose[4:13] += [0.0, 0.08 * iod]
    pose[[61, 62, 63]] -= [0.0, 0.02 * iod]
    for upper in ((37, 38), (43, 44)):
        pose[list(upper)] -= [0.0, 0.04 * iod]
    return pose


@dataclass(frozen=True, slots=True)
class FaceMesh:
    """The precomputed warp of one avatar image.

    Build it with :meth:`build`; then call :meth:`warp` per frame.

    Attributes:
        box: the region (x0, y0, x1, y1) that warping may change.
        vertices: rest positions of all vertices: the 68 landmarks, the helpers, the
            extra (dense mesh) vertices, the anchors.
        triangles: (T, 3) vertex indices.
        grid: (h, w, 2) float32 pixel coordinates of the region (the identity map).
        helper_motion: the helpers' displacements as combinations of the landmarks'.
        n_extra: how many extra vertices follow the helpers.
    """

    box: tuple[int, int, int, int]
    vertices: np.ndarray
    triangles: np.ndarray
    grid: np.ndarray
    helper_motion: np.ndarray
    n_extra: int

    @classmethod
    def build(
        cls,
        landmarks: np.ndarray,
        size: tuple[int, int],
        extra: np.ndarray | None = None,
        extra_topology: np.ndarray | None = None,
    ) -> FaceMesh:
        """Triangulate the face of an image of ``size`` (h, w).

        Args:
            landmarks: the 68 landmarks at rest.
            size: (h, w) of the image.
            extra: (K, 2) more vertices at rest (a dense mesh's rings and cheeks); they
                replace the spline midpoints. Give their moves to :meth:`warp`.
            extra_topology: where they are in the topology pose (mouth and eyes opened
                a little, as :func:`topology_pose` does to the landmarks).
        """
        box = face_region(landmarks, size)
        anchors = anchor_ring(box)
        if extra is None:
            rest = np.concatenate([with_helpers(landmarks), anchors]).astype(np.float32)
            topo = np.concatenate([with_helpers(topology_pose(landmarks)), anchors])
            motion, n_extra = HELPER_MOTION, 0
        else:
            pose = topology_pose(landmarks)
            rest = np.concatenate([landmarks, DENSE_HELPERS @ landmarks, extra, anchors])
            topo = np.concatenate([pose, DENSE_HELPERS @ pose, extra_topology, anchors])
            motion, n_extra = DENSE_HELPER_MOTION, len(extra)
        triangles = Delaunay(topo).simplices.astype(np.int32)
        x0, y0, x1, y1 = box
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        grid = np.stack([xx, yy], -1)
        return cls(box, rest.astype(np.float32), triangles, grid, motion, n_extra)

    def vertex_displacements(
        self, landmark_delta: np.ndarray, extra_delta: np.ndarray | None = None
    ) -> np.ndarray:
        """All vertices' displacements from the 68 landmarks' and the extra vertices'
        (anchors stay put)."""
        out = np.zeros((len(self.vertices), 2), np.float32)
        out[:68] = landmark_delta
        helpers = 68 + len(self.helper_motion)
        out[68:helpers] = self.helper_motion @ np.asarray(landmark_delta, np.float32)
        if extra_delta is not None:
            out[helpers : helpers + self.n_extra] = extra_delta
        return out

    def source_map(
        self, landmark_delta: np.ndarray, extra_delta: np.ndarray | None = None
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Where each output pixel reads the rest image, over the box that changes.

        Returns:
            The box (x0, y0, x1, y1), empty when nothing moves, and its (h, w, 2)
            float32 map of source coordinates.
        """
        disp = self.vertex_displacements(landmark_delta, extra_delta)
        moving = np.any(np.abs(disp) > 1e-3, axis=1)
        tris = self.triangles[moving[self.triangles].any(axis=1)]
        if len(tris) == 0:
            return (0, 0, 0, 0), np.zeros((0, 0, 2), np.float32)
        rest = self.vertices[tris].astype(np.float64)  # (k, 3, 2)
        moved = rest + disp[tris]
        rx0, ry0, rx1, ry1 = self.box
        lo = np.floor(np.minimum(rest.min((0, 1)), moved.min((0, 1)))).astype(int)
        hi = np.ceil(np.maximum(rest.max((0, 1)), moved.max((0, 1)))).astype(int) + 1
        x0, y0 = max(lo[0], rx0), max(lo[1], ry0)
        x1, y1 = min(hi[0], rx1), min(hi[1], ry1)
        # Affine maps from the displaced triangles back to the rest ones.
        d_edges = np.stack([moved[:, 1] - moved[:, 0], moved[:, 2] - moved[:, 0]], axis=2)
        r_edges = np.stack([rest[:, 1] - rest[:, 0], rest[:, 2] - rest[:, 0]], axis=2)
        det = d_edges[:, 0, 0] * d_edges[:, 1, 1] - d_edges[:, 0, 1] * d_edges[:, 1, 0]
        ok = np.abs(det) > 1e-6
        inv = np.zeros_like(d_edges)
        inv[ok, 0, 0] = d_edges[ok, 1, 1] / det[ok]
        inv[ok, 1, 1] = d_edges[ok, 0, 0] / det[ok]
        inv[ok, 0, 1] = -d_edges[ok, 0, 1] / det[ok]
        inv[ok, 1, 0] = -d_edges[ok, 1, 0] / det[ok]
        linear = r_edges @ inv
        offset = rest[:, 0] - np.einsum("kij,kj->ki", linear, moved[:, 0])
        affine = np.concatenate([linear, offset[:, :, None]], axis=2).reshape(-1, 6)
        index = np.full((y1 - y0, x1 - x0), -1, np.int32)
        origin = np.array([x0, y0], np.float64)
        corners = to_fixed(moved - origin)
        order = np.argsort(np.abs(det))  # big triangles last, so they win shared pixels
        for k in order[ok[order]].tolist():
            cv2.fillConvexPoly(index, corners[k], k, cv2.LINE_8, 4)
        grid = self.grid[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
        source = grid.copy()
        rows, cols = np.nonzero(index >= 0)
        if len(rows):
            m = affine[index[rows, cols]].astype(np.float32)
            px, py = grid[rows, cols, 0], grid[rows, cols, 1]
            source[rows, cols, 0] = m[:, 0] * px + m[:, 1] * py + m[:, 2]
            source[rows, cols, 1] = m[:, 3] * px + m[:, 4] * py + m[:, 5]
        return (x0, y0, x1, y1), source

    def warp(
        self,
        rest_image: np.ndarray,
        out: np.ndarray,
        landmark_delta: np.ndarray,
        extra_delta: np.ndarray | None = None,
    ) -> None:
        """Write the warped face of ``rest_image`` into ``out`` (same shape, a copy of it)."""
        (x0, y0, x1, y1), source = self.source_map(landmark_delta, extra_delta)
        if x1 <= x0 or y1 <= y0:
            return
        out[y0:y1, x0:x1] = cv2.remap(
            rest_image, source, None, cv2.INTER_LINEAR, None, cv2.BORDER_REPLICATE
        )
