"""The dense face mesh in the procedural renderer: the photo's own lip and lid lines, cheeks.

A photo prepared by a mesh backend ("mediapipe") carries its 468-point mesh
(``PreparedAvatar.mesh``), and its 68 landmarks are 68 of the mesh's vertices
(:data:`avatar.face.mesh.MESH_TO_68`). :class:`DenseRig` puts more of the mesh into the
warp (:class:`avatar.procedural.warp.FaceMesh`, in place of the spline midpoints the
68-point path adds) and says how those vertices move. The rig
(:class:`avatar.procedural.rig.FaceRig`) still moves the 68 landmarks, exactly as
without a mesh; each added vertex's move is a fixed combination of the landmarks'
moves (one small matrix product a frame), plus the lids' closure:

- **Lips.** The inner and the outer lip line, 20 vertices each (8 and 12 in the 68
  layout); the added ones sit towards the corners, where a spline through the 68
  points leaves the mesh's lip line (carried by the warp to a full opening, up to
  13 px of a 512 px frame on the test photos). They move as the two 68 points either
  side of them on the line; on the inner lines interpolated in ``s = 1 - u^2``, ``u``
  the place from corner (-1) to corner (+1), so the opening is a lens where a spline
  through five points draws a V-shaped lower lip; on the outer lines, along the line.
- **Lids.** 16 vertices an eye (6 in the 68 layout): 7 on each lid between the
  corners. The lower lid moves as its 68 points, interpolated along the line; at
  closure ``c`` each upper-lid vertex goes ``c`` of the way onto its partner on the
  lower lid (the rig does so with 37, 38, 43 and 44), so a blink shuts the eye along
  the mesh's whole lid line. (On drawn faces whose true lids are known, the gap a
  blink leaves from them is about the same as on the 68-point path: the gain is as
  good as the mesh's lid line.)
- **Cheeks.** 17 vertices a side between the eyes, nose, mouth and jaw. They move
  with a thin-plate spline (the smoothest surface through given values) of the rig's
  moves of the jaw line, the lower lip and the corners, the brows, eyes and nose and
  the border of the face region held still: the cheeks follow the jaw and a smile's
  corners, and the warp's stretch jumps across triangle edges in the cheeks no more
  than with the 68 points alone (the lip vertices without them made those jumps
  20-60 % larger). The three under each eye hold still (:data:`CHEEKBONES`), which
  keeps the warped area a frame below the 68-point path's (70,600 px against 75,300
  on the astronaut's speech; 83,800 if they moved too).

The mouth interior is painted inside the inner lip line and a shut eye's last rim
inside the lid lines (:class:`~avatar.procedural.mouth.MouthPainter`,
:class:`~avatar.procedural.eyes.LidPainter`), so paint and warp meet on the same line.
Measured in ``tests/avatar/test_procedural_mesh.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar.face.mesh import MESH_TO_68
from avatar.procedural.warp import anchor_ring, eye_distance, face_region, topology_pose

# Rings from corner to corner (mesh vertices). The lids and the inner lips come in pairs
# of the same length: vertex k of an upper line faces vertex k of its lower line.
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIDS = (  # the subject's right eye (image left), then the left eye: upper, lower lid
    ((33, 246, 161, 160, 159, 158, 157, 173, 133), (33, 7, 163, 144, 145, 153, 154, 155, 133)),
    ((263, 466, 388, 387, 386, 385, 384, 398, 362), (263, 249, 390, 373, 374, 380, 381, 382, 362)),
)
LENS = ("inner_upper", "inner_lower")
# Cheeks, the subject's right side, then the left (each vertex's mirror): under the
# eye, the cheekbone, beside the nose; mid-cheek and the fold from nose to mouth; beside
# the mouth corner; the lower cheek and jowl down to the jaw. (The chin under the lower
# lip is left to the 68 points: a spline there drops it 1.1 times as far as the lip.)
_CHEEK_RIGHT = (117, 50, 36, 187, 205, 206, 192, 216, 57, 138, 212, 202, 135, 210, 204, 169, 106)
_CHEEK_LEFT = (346, 280, 266, 411, 425, 426, 416, 436, 287, 367, 432, 422, 364, 430, 424, 394, 335)
CHEEKS = _CHEEK_RIGHT + _CHEEK_LEFT
# Of those, the ones under the eye and beside the nose hold still (the skin over the
# cheekbone does not follow the jaw): the triangles between them and the eyes and nose
# never move, and the warp skips them.
CHEEKBONES = (117, 50, 36, 346, 280, 266)
# The cheeks' spline: through the jaw line and the lower lip and corners (moving), and
# the brows, nose and eyes and the face region's border (still).
_CHEEK_MOVING = np.r_[0:17, 48, 54:60]
_CHEEK_STILL = np.r_[17:48]


@dataclass(frozen=True, slots=True, eq=False)
class DenseRig:
    """The added vertices of one face: where they are and how they move.

    Build it with :meth:`from_mesh`; per frame :meth:`displace` gives their moves, and
    :meth:`ring` the current lip and lid lines for painting.

    Attributes:
        vertices: (K,) the mesh vertex of each added vertex.
        rest: (K, 2) float32 added vertices at rest, in the frame's pixels.
        motion: (K, 68) float32: their moves as combinations of the landmarks' moves.
        rings: name -> indices of a ring's vertices, corner to corner, into the 68
            landmarks followed by the K added vertices ("inner_upper", "inner_lower",
            "outer_upper", "outer_lower", "lid_upper_0", "lid_lower_0", "lid_upper_1",
            "lid_lower_1"; 0 the subject's right eye).
        closure: per eye, the upper-lid vertices' closure terms (see :meth:`displace`).
    """

    vertices: np.ndarray
    rest: np.ndarray
    motion: np.ndarray
    rings: dict[str, np.ndarray]
    closure: tuple[_Closure, _Closure]

    @classmethod
    def from_mesh(cls, points: np.ndarray, landmarks: np.ndarray, size: int) -> DenseRig:
        """The rig of a face whose mesh is ``points``, in a frame of ``size`` pixels.

        Args:
            points: (468, 2 or 3) the mesh in the frame's pixels.
            landmarks: the 68 landmarks at rest, as the renderer uses them (the mesh's
                :data:`~avatar.face.mesh.MESH_TO_68` vertices).
            size: the frame's side (the warp's region, whose border holds still).
        """
        points = np.asarray(points, np.float64)[:, :2]
        landmarks = np.asarray(landmarks, np.float64)
        slot = {int(v): i for i, v in enumerate(MESH_TO_68)}  # mesh vertex -> landmark
        added: list[int] = []
        for vertex in _all_vertices():
            if vertex not in slot:
                slot[vertex] = 68 + len(added)
                added.append(vertex)
        rest = points[added]
        full = np.concatenate([landmarks, rest])
        motion = np.zeros((len(added), 68))
        rings = {}
        named = {
            "inner_upper": INNER_UPPER,
            "inner_lower": INNER_LOWER,
            "outer_upper": OUTER_UPPER,
            "outer_lower": OUTER_LOWER,
        }
        for eye, (upper, lower) in enumerate(LIDS):
            named[f"lid_upper_{eye}"], named[f"lid_lower_{eye}"] = upper, lower
        for name, ring in named.items():
            index = np.array([slot[v] for v in ring], np.intp)
            rings[name] = index
            for k, (a, b, wa, wb) in _ring_weights(full, index, name in LENS).items():
                motion[k - 68] = 0.0
                motion[k - 68, a], motion[k - 68, b] = wa, wb
        cheeks = np.array([slot[v] - 68 for v in CHEEKS if v not in CHEEKBONES], np.intp)
        motion[cheeks] = _cheek_motion(landmarks, rest[cheeks], size)
        closure = tuple(
            _Closure.build(full, rings[f"lid_upper_{eye}"], rings[f"lid_lower_{eye}"])
            for eye in (0, 1)
        )
        vertices = np.array(added, np.intp)
        return cls(vertices, rest.astype(np.float32), motion.astype(np.float32), rings, closure)

    def topology(self, landmarks: np.ndarray) -> np.ndarray:
        """The added vertices in the warp's topology pose (mouth and eyes a little open)."""
        delta = topology_pose(landmarks) - np.asarray(landmarks, np.float64)
        return self.rest + (self.motion @ delta).astype(np.float32)

    def displace(
        self, landmark_delta: np.ndarray, blink: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        """The added vertices' moves (K, 2), pixels, for the landmarks' moves.

        Args:
            landmark_delta: the rig's (68, 2) moves of this frame.
            blink: the closure of the subject's right and left eye, as the rig got it.
        """
        delta = np.asarray(landmark_delta, np.float32)
        out = self.motion @ delta
        for eye, closure in enumerate(blink):
            if closure > 0.0:
                self.closure[eye].apply(out, delta, float(closure))
        return out

    def ring(self, name: str, landmarks: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """The ring ``name``'s vertices (N, 2) given the 68 landmarks and the added
        vertices where they are now."""
        return np.concatenate([landmarks, moved])[self.rings[name]]


@dataclass(frozen=True, slots=True, eq=False)
class _Closure:
    """A blink's exact term for the added vertices of one upper lid.

    Interpolation moves an added vertex as the lid's 68 points around it (``a``, ``b``,
    weights ``wa``, ``wb``); at closure ``c`` the rig moves those ``c`` of the way onto
    their partners on the lower lid (``pa``, ``pb``). This replaces that interpolated
    closure by the vertex's own: ``c`` of the way onto its partner ``q``.
    """

    k: np.ndarray  # added vertices (indices into the K added ones)
    q: np.ndarray  # their partners, into the 68 + K
    a: np.ndarray
    b: np.ndarray
    wa: np.ndarray
    wb: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    full: np.ndarray  # (68 + K, 2) rest positions

    @classmethod
    def build(cls, full: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> _Closure:
        weights = _ring_weights(full, upper)
        partner = dict(zip(upper.tolist(), lower.tolist(), strict=True))
        ks = sorted(weights)
        a, b, wa, wb = (np.array([weights[k][i] for k in ks]) for i in range(4))
        return cls(
            np.array(ks, np.intp) - 68,
            np.array([partner[k] for k in ks], np.intp),
            a.astype(np.intp),
            b.astype(np.intp),
            wa[:, None].astype(np.float32),
            wb[:, None].astype(np.float32),
            np.array([partner[int(v)] for v in a], np.intp),
            np.array([partner[int(v)] for v in b], np.intp),
            full.astype(np.float32),
        )

    def apply(self, out: np.ndarray, delta: np.ndarray, c: float) -> None:
        moves = np.concatenate([delta, out])
        now = self.full + moves
        exact = now[self.q] - self.full[68 + self.k]
        interpolated = self.wa * (now[self.pa] - self.full[self.a])
        interpolated += self.wb * (now[self.pb] - self.full[self.b])
        out[self.k] += c * (exact - interpolated)


def _all_vertices() -> list[int]:
    """Every mesh vertex the rig uses, each once, in a fixed order."""
    seen: list[int] = []
    rings = [INNER_UPPER, INNER_LOWER, OUTER_UPPER, OUTER_LOWER] + [r for p in LIDS for r in p]
    for vertex in [v for ring in rings for v in ring] + list(CHEEKS):
        if vertex not in seen:
            seen.append(vertex)
    return seen


def _ring_weights(
    full: np.ndarray, ring: np.ndarray, lens: bool = False
) -> dict[int, tuple[int, int, float, float]]:
    """For each added vertex of ``ring`` (indices >= 68 into ``full``): the ring's 68
    points before and after it and their weights (see the module doc)."""
    pts = full[ring]
    axis = pts[-1] - pts[0]
    half = float(np.linalg.norm(axis)) / 2
    mid = (pts[0] + pts[-1]) / 2
    u = np.clip((pts - mid) @ (axis / max(2 * half, 1e-9)) / max(half, 1e-9), -1.0, 1.0)
    if lens:
        s = 1.0 - u * u
    else:  # along the ring
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        u = s - s[-1] / 2
    nodes = [i for i, v in enumerate(ring) if v < 68]
    out = {}
    for i, v in enumerate(ring):
        if v < 68:
            continue
        ia = max(n for n in nodes if n < i)
        ib = min(n for n in nodes if n > i)
        if u[ia] * u[ib] < 0 or abs(s[ib] - s[ia]) < 1e-6:  # across the middle: in u
            t = (u[i] - u[ia]) / (u[ib] - u[ia]) if abs(u[ib] - u[ia]) > 1e-9 else 0.5
        else:
            t = (s[i] - s[ia]) / (s[ib] - s[ia])
        t = float(np.clip(t, 0.0, 1.0))
        out[int(v)] = (int(ring[ia]), int(ring[ib]), 1.0 - t, t)
    return out


def _cheek_motion(landmarks: np.ndarray, cheeks: np.ndarray, size: int) -> np.ndarray:
    """(C, 68): the cheeks' moves as combinations of the landmarks', a thin-plate spline
    (see the module doc) evaluated at ``cheeks`` (C, 2)."""
    anchors = anchor_ring(face_region(landmarks, (size, size)))
    scale = eye_distance(landmarks)
    data = np.concatenate([landmarks[_CHEEK_MOVING], landmarks[_CHEEK_STILL], anchors]) / scale
    n = len(data)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _kernel(data, data)
    system[:n, n] = 1.0
    system[:n, n + 1 :] = data
    system[n, :n] = 1.0
    system[n + 1 :, :n] = data.T
    query = np.asarray(cheeks, np.float64) / scale
    basis = np.concatenate([_kernel(query, data), np.ones((len(query), 1)), query], axis=1)
    weights = basis @ np.linalg.pinv(system)[:, :n]  # values at the data -> at the cheeks
    out = np.zeros((len(query), 68))
    out[:, _CHEEK_MOVING] = weights[:, : len(_CHEEK_MOVING)]  # still points have value 0
    return out


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The thin-plate kernel r^2 log r between the rows of ``a`` and ``b``."""
    r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return 0.5 * r2 * np.log(np.maximum(r2, 1e-300))
