"""Measures of the procedural warp on a face, for comparing the 68-point and mesh paths.

Lines of the face (a lip line, a lid line) are given as points in the rest frame and
carried as the warp carries the pixels under them; what is measured is where they go
relative to each other and to what the painters draw. Every renderer here is built
with the head still (no sway, breathing or blinks of its own).
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.procedural.geometry import curve
from avatar.procedural.renderer import FrameRenderer
from avatar.types import PreparedAvatar

SIZE = 512


def still(avatar: PreparedAvatar) -> FrameRenderer:
    return FrameRenderer.create(avatar, SIZE, 25.0, sway=0.0, breathing=0.0, blink=False)


def moves(r: FrameRenderer, shape, blink=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray | None]:
    """The landmarks' and the dense mesh's moves for a mouth ``shape`` and a blink."""
    delta = r.rig.displace(np.asarray(shape, np.float32), blink)
    return delta, None if r.dense is None else r.dense.displace(delta, blink)


def line(points: np.ndarray) -> np.ndarray:
    """A face line through ``points`` (a Catmull-Rom spline, 4 points a segment)."""
    return curve(np.asarray(points, np.float64), samples=4)


def carry(r: FrameRenderer, points: np.ndarray, delta, extra, side: float) -> np.ndarray:
    """``points`` (N, 2) of the rest frame moved as the warp moves the pixels under them.

    Each point goes with the rest triangle it lies in; ``side`` nudges it that many
    pixels down first (and back after), so a point on a closed lip line goes with the
    upper (negative) or lower (positive) lip.
    """
    mesh = r.mesh
    disp = mesh.vertex_displacements(delta, extra)
    rest = mesh.vertices[mesh.triangles].astype(np.float64)
    moved = rest + disp[mesh.triangles]
    p = np.asarray(points, np.float64) + [0.0, side]
    a, e1, e2 = rest[:, 0], rest[:, 1] - rest[:, 0], rest[:, 2] - rest[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) > 1e-9, det, np.nan)
    rel = p[:, None, :] - a[None]
    v = (rel[..., 0] * e2[:, 1] - rel[..., 1] * e2[:, 0]) / det
    w = (e1[:, 0] * rel[..., 1] - e1[:, 1] * rel[..., 0]) / det
    u = 1.0 - v - w
    inside = np.nan_to_num(np.minimum(np.minimum(u, v), w), nan=-np.inf)
    k = np.argmax(inside, axis=1)
    rows = np.arange(len(p))
    bary = np.stack([u[rows, k], v[rows, k], w[rows, k]], 1)
    return np.einsum("nj,njd->nd", bary, moved[k]) - [0.0, side]


def lid_gaps(r: FrameRenderer, lids) -> np.ndarray:
    """At closure 1: the vertical gap between each eye's upper and lower lid line
    (``lids``: per eye, (upper, lower) points) as the warp carries them, in eye
    distances, along both eyes."""
    delta, extra = moves(r, np.zeros(5), (1.0, 1.0))
    gaps = []
    for upper, lower in lids:
        top = carry(r, upper, delta, extra, -0.5)
        bottom = carry(r, lower, delta, extra, 0.5)
        gaps.append(np.abs(bottom[:, 1] - top[:, 1]))
    return np.concatenate(gaps) / r.rig.iod


def painted(r: FrameRenderer, shape) -> tuple[np.ndarray, tuple]:
    """The mouth interior the painter draws for a mouth ``shape`` (a bool mask of the
    frame), and the moves."""
    delta, extra = moves(r, shape)
    warped = r.rest_image.copy()
    r.mesh.warp(r.rest_image, warped, delta, extra)
    landmarks = r.rest_landmarks + delta
    out = warped.copy()
    r.painter.paint(out, landmarks, float(shape[4]), r.lines(landmarks, extra)[0])
    return np.abs(out.astype(int) - warped).max(axis=2) > 0, (delta, extra)


def lip_offsets(r: FrameRenderer, upper: np.ndarray, lower: np.ndarray, shape) -> np.ndarray:
    """Signed distance (px) of the inner lip line (``upper``, ``lower`` points, corner to
    corner), carried by the warp, from the painted interior's edge: positive inside the
    interior (lip painted over), negative outside it (stretched photo between the lip
    and the interior). The corners are left out."""
    mask, (delta, extra) = painted(r, shape)
    pts = np.concatenate(
        [carry(r, upper[1:-1], delta, extra, -0.5), carry(r, lower[1:-1], delta, extra, 0.5)]
    )
    m8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    signed = inside - cv2.distanceTransform(1 - m8, cv2.DIST_L2, 5)
    ij = np.round(pts).astype(int)
    s = signed[ij[:, 1], ij[:, 0]]
    return s - 0.5 * np.sign(s)  # from pixel centres to the edge between pixels


def torn_pixels(r: FrameRenderer, shape) -> int:
    """Pixels outside the painted interior (grown by a pixel) whose triangle the warp
    stretched to more than 4 times its area."""
    mask, (delta, extra) = painted(r, shape)
    mesh = r.mesh
    disp = mesh.vertex_displacements(delta, extra)
    rest = mesh.vertices[mesh.triangles].astype(np.float64)
    moved = rest + disp[mesh.triangles]

    def area(t):
        e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        return np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2

    stretched = np.zeros(mask.shape, np.uint8)
    for tri in moved[area(moved) > 4 * area(rest) + 1.0]:
        cv2.fillConvexPoly(stretched, np.round(tri * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return int((stretched.astype(bool) & ~grown.astype(bool)).sum())


def crease(r: FrameRenderer, shape) -> float:
    """99.5th percentile of the jump of the warp's area stretch between neighbouring
    pixels in the cheeks (under the eyes to the jaw, the mouth left out): how sharply
    the stretch changes across triangle edges."""
    delta, extra = moves(r, shape)
    (x0, y0, x1, y1), source = r.mesh.source_map(delta, extra)
    gx, gy = np.gradient(source, axis=1), np.gradient(source, axis=0)
    stretch = np.ones((SIZE, SIZE))
    stretch[y0:y1, x0:x1] = gx[..., 0] * gy[..., 1] - gx[..., 1] * gy[..., 0]
    lm, iod = r.rest_landmarks, r.rig.iod
    moved = lm + delta
    mx0, my0 = np.floor(moved[48:60].min(0) - 0.08 * iod).astype(int)
    mx1, my1 = np.ceil(moved[48:60].max(0) + 0.08 * iod).astype(int)
    stretch[my0:my1, mx0:mx1] = np.nan
    top, bottom = int(lm[36:48, 1].max() + 0.15 * iod), int(lm[8, 1])
    part = stretch[top:bottom, int(lm[2, 0]) : int(lm[14, 0])]
    jumps = np.maximum(np.abs(np.diff(part, axis=0))[:, :-1], np.abs(np.diff(part, axis=1))[:-1])
    return float(np.percentile(jumps[np.isfinite(jumps)], 99.5))
