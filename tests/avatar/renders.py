"""Copies of the test photos with a known change: re-encoded, mirrored, rotated in the
image plane, and heads turned, for the face tests of both backends."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy.spatial import Delaunay


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def rotate_about(image: np.ndarray, centre: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the image in its plane by ``degrees`` clockwise about ``centre``."""
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -degrees, 1.0)
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REFLECT)


def turn_head(image: np.ndarray, landmarks: np.ndarray, degrees: float) -> np.ndarray:
    """Render the head turned about the vertical axis; positive: to the image's left.

    The head is a 2.5-D surface (a paraboloid over the face plus a bump for the nose);
    each point moves sideways by depth x sin(angle), as in an orthographic render of a
    turned head: the side it turns towards is compressed and the nose moves furthest.
    There is no foreshortening (x is not scaled by cos(angle)), so beyond about 20
    degrees this is a weaker turn than ``degrees``: :func:`turn_mesh` is a true one.
    """
    height, width = image.shape[:2]
    lm = landmarks.astype(np.float64)
    eyes = float(np.linalg.norm(lm[45] - lm[36]))
    cx, cy = (lm[0, 0] + lm[16, 0]) / 2, (lm[19, 1] + lm[8, 1]) / 2
    half_w, half_h = (lm[16, 0] - lm[0, 0]) * 0.6, (lm[8, 1] - lm[19, 1]) * 0.75
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)

    def depth(x: np.ndarray) -> np.ndarray:
        rho2 = ((x - cx) / half_w) ** 2 + ((ys - cy) / half_h) ** 2
        nose = np.exp(-((x - lm[30, 0]) ** 2 + (ys - lm[30, 1]) ** 2) / (2 * (0.3 * eyes) ** 2))
        return 0.6 * half_w * np.clip(1 - rho2, 0, None) + 0.4 * eyes * nose

    shift = -np.sin(np.radians(degrees))
    src = xs.copy()
    for _ in range(8):  # invert x' = x + shift * depth(x) by fixed-point iteration
        src = xs - shift * depth(src)
    return cv2.remap(
        image,
        src.astype(np.float32),
        ys.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def turn_mesh(image: np.ndarray, points: np.ndarray, yaw: float = 0.0, pitch: float = 0.0):
    """Render the face turned in 3-D: its 468-point mesh (x, y, z pixels, as
    :attr:`avatar.face.mesh.FaceMesh.points`) rotated by ``yaw`` then ``pitch`` degrees
    about its centre (signs of :class:`avatar.types.HeadPose`), projected orthographically,
    each mesh triangle painted far to near from its place in ``image``. A ring of fixed
    points around the face stretches the hair and background to meet it. The face's
    shape is the mesh's own, so this turn is exact for it; the hair does not turn.
    """
    height, width = image.shape[:2]
    p = np.asarray(points, np.float64)
    centre = p.mean(axis=0)
    a, b = np.radians(yaw), np.radians(pitch)
    turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    nod = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
    moved = (p - centre) @ (nod @ turn).T + centre
    span = np.ptp(p[:, :2], axis=0)
    around = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    ring = centre[:2] + np.stack([np.cos(around), np.sin(around)], axis=1) * span
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]])
    fixed = np.concatenate([ring, corners])
    src = np.concatenate([p[:, :2], fixed])
    dst = np.concatenate([moved[:, :2], fixed])
    depth = np.concatenate([moved[:, 2], np.full(len(fixed), np.inf)])
    triangles = Delaunay(src).simplices
    order = np.argsort(-depth[triangles].mean(axis=1), kind="stable")  # far first
    out = image.copy()
    for tri in triangles[order]:
        s3, d3 = src[tri].astype(np.float32), dst[tri].astype(np.float32)
        x0, y0 = np.maximum(np.floor(d3.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(d3.max(axis=0)).astype(int) + 1, (width, height))
        if x1 <= x0 or y1 <= y0:
            continue
        local = d3 - np.float32([x0, y0])
        matrix = cv2.getAffineTransform(s3, local)
        patch = cv2.warpAffine(
            image, matrix, (int(x1 - x0), int(y1 - y0)), borderMode=cv2.BORDER_REFLECT
        )
        mask = np.zeros(patch.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, np.round(local * 16).astype(np.int32), 1, cv2.LINE_8, 4)
        region = out[y0:y1, x0:x1]
        region[mask > 0] = patch[mask > 0]
    return out
