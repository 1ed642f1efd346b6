"""One frame of the procedural face: rig, mesh warp, mouth interior, head motion.

:class:`FrameRenderer` holds everything precomputed for one avatar at the output
size and turns (time, mouth shape, speaking) into a finished frame and its 68
landmarks. It carries the motion state (blinks, sway), so frames must be
rendered in time order, one at a time; the streaming generator and the offline
``render_clip`` both drive it the same way.

A photo prepared with a face mesh (``PreparedAvatar.mesh``, the "mediapipe" backend)
also gets its :class:`~avatar.procedural.dense.DenseRig`: the warp follows the photo's
own lip and lid lines and the cheeks, the mouth interior is painted inside the mesh's
inner-lip line and a shut eye along its lid lines. Without a mesh (dlib, the synthetic
face) everything is drawn from the 68 landmarks alone.

Per frame the work is: landmark displacements from the rig; if anything in the
face moves, one remap of the part of the face region that moves
(``FaceMesh.warp``), the mouth interior in a small box and, during a blink, the
shut eyelids; then, if the head moves, one ``cv2.warpAffine`` of the whole
frame. With the head still, pixels outside the face region are copied as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar.face.crop import fit_avatar
from avatar.procedural.dense import DenseRig
from avatar.procedural.eyes import LidPainter
from avatar.procedural.motion import MotionModel
from avatar.procedural.mouth import MouthPainter
from avatar.procedural.rig import JAW_DROP, FaceRig
from avatar.procedural.warp import FaceMesh
from avatar.types import PreparedAvatar


@dataclass(frozen=True, slots=True)
class RenderedFrame:
    """What :meth:`FrameRenderer.render` returns.

    Attributes:
        image: uint8 RGB (size, size, 3), a new array.
        landmarks: the frame's 68 landmarks, float32 (68, 2).
        mouth_open: the jaw opening shown, 0..1.
    """

    image: np.ndarray
    landmarks: np.ndarray
    mouth_open: float


class FrameRenderer:
    """Renders frames of one avatar; build with :meth:`create`.

    Attributes:
        size: output side in pixels.
        rest_image: the avatar at the output size (never modified).
        rest_landmarks: its 68 landmarks.
        dense: the dense mesh's rig, None for a face without a mesh.
    """

    def __init__(
        self,
        rest_image: np.ndarray,
        rest_landmarks: np.ndarray,
        mesh: FaceMesh,
        rig: FaceRig,
        painter: MouthPainter,
        lids: LidPainter,
        motion: MotionModel,
        articulation: float = 1.0,
        dense: DenseRig | None = None,
    ) -> None:
        self.rest_image = rest_image
        self.rest_landmarks = rest_landmarks
        self.size = rest_image.shape[0]
        self.mesh = mesh
        self.rig = rig
        self.painter = painter
        self.lids = lids
        self.motion = motion
        self.articulation = articulation
        self.dense = dense
        self._zero = np.zeros(5, np.float32)

    @classmethod
    def create(
        cls,
        avatar: PreparedAvatar,
        size: int,
        fps: float,
        seed: int = 0,
        sway: float = 1.0,
        blink: bool = True,
        breathing: float = 1.0,
        articulation: float = 1.0,
    ) -> FrameRenderer:
        """Precompute the mesh, rig, mouth colours and motion for ``avatar`` at ``size``."""
        image, landmarks = fit_avatar(avatar, size)
        image.setflags(write=False)
        rig = FaceRig.from_landmarks(landmarks)
        dense = None
        if avatar.mesh is not None:
            h, w = avatar.image.shape[:2]
            points = np.asarray(avatar.mesh, np.float32)[:, :2] * [size / w, size / h]
            dense = DenseRig.from_mesh(points, landmarks, size)
            extra = (dense.rest, dense.topology(landmarks))
            mesh = FaceMesh.build(landmarks, (size, size), *extra)
        else:
            mesh = FaceMesh.build(landmarks, (size, size))
        painter = MouthPainter.for_face(image, landmarks, rig.iod)
        lids = LidPainter.for_face(image, landmarks, rig.iod)
        pivot = (float(landmarks[8, 0]), float(landmarks[8, 1] + 0.6 * rig.iod))
        motion = MotionModel(seed, fps, size, pivot, sway, blink, breathing)
        return cls(image, landmarks, mesh, rig, painter, lids, motion, articulation, dense)

    def lines(self, landmarks: np.ndarray, extra: np.ndarray | None) -> tuple:
        """The inner lip line (upper, lower) and each eye's lid lines (upper, lower) that
        the painters draw along, from the dense mesh's vertices moved by ``extra``; (None,
        None) without a dense mesh (the painters then use the 68 ``landmarks``)."""
        if self.dense is None or extra is None:
            return None, None
        now, ring = self.dense.rest + extra, self.dense.ring
        lips = (ring("inner_upper", landmarks, now), ring("inner_lower", landmarks, now))
        lids = tuple(
            (ring(f"lid_upper_{eye}", landmarks, now), ring(f"lid_lower_{eye}", landmarks, now))
            for eye in (0, 1)
        )
        return lips, lids

    def render(
        self, t: float, mouth: np.ndarray | None, speaking: bool, energy: float = 0.0
    ) -> RenderedFrame:
        """The frame at time ``t`` (seconds, increasing from call to call).

        Args:
            t: the frame's time on the generator's clock.
            mouth: (open, wide, round, press, teeth), 0..1 each; None for a closed mouth.
            speaking: whether this frame shows speech (livelier head motion).
            energy: loudness 0..1 of the speech at this frame (drives small nods).
        """
        shape = self._zero.copy() if mouth is None else np.clip(mouth[:5], 0.0, 1.0)
        shape[:3] *= self.articulation  # closures (p, b, m, f, v) stay complete
        pose = self.motion.step(t, speaking, energy)
        delta = self.rig.displace(shape, pose.blink, pose.brow)
        landmarks = self.rest_landmarks + delta
        moving = bool(np.any(np.abs(delta) > 0.05))
        image = self.rest_image.copy()
        if moving:
            extra = None if self.dense is None else self.dense.displace(delta, pose.blink)
            self.mesh.warp(self.rest_image, image, delta, extra)
            lips, lids = self.lines(landmarks, extra)
            self.painter.paint(image, landmarks, float(shape[4]), lips)
            self.lids.paint(image, landmarks, pose.blink, lids)
        if not pose.still:
            image = cv2.warpAffine(
                image,
                pose.matrix,
                (self.size, self.size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )
            landmarks = landmarks @ pose.matrix[:, :2].T + pose.matrix[:, 2]
        opening = self.rig.mouth_gap(self.rest_landmarks + delta) / (JAW_DROP + 0.03)
        return RenderedFrame(image, landmarks.astype(np.float32), float(min(opening, 1.0)))
