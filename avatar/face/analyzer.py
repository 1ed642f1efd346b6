"""Find the one usable face in a photo: box, 68 landmarks, head pose and warnings.

Life of an analyzer::

    analyzer = FaceAnalyzer.load(FaceOptions())   # loads the models (about 0.7 s)
    face = analyzer.analyze(read_image("photo.jpg"))
    vector = analyzer.embed(image, face.landmarks)

``analyze`` either returns a face the rest of likeness can animate, or raises
:class:`~avatar.errors.FaceNotFoundError` with a message for the person who sent the
photo (no face, several faces, face too small, profile view). It is blocking CPU work
(about 0.1 s for a 512x512 photo, 1 s for a 6000x6000 one): call it from a worker
thread in async code.

A photo larger than ``FaceOptions.max_side`` is searched at reduced size; the face's box
is then scaled back and the landmarks are placed on the full-resolution photo, so they
are as precise as the photo allows.

Head pose: from the 3-D mesh when the backend gives one (:class:`MeshBackend`, the
"mediapipe" backend: :func:`avatar.face.mesh_pose.mesh_head_pose`), else from the 68
points (:func:`avatar.face.pose.head_pose`). :meth:`FaceAnalyzer.locate` is that step alone,
for video frames whose face box is already known.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from avatar.errors import FaceNotFoundError
from avatar.face.base import Detection, LandmarkBackend, MeshBackend
from avatar.face.embedding import FaceEmbedder
from avatar.face.images import as_rgb, downscale
from avatar.face.mesh import FaceMesh
from avatar.face.mesh_pose import mesh_head_pose
from avatar.face.options import FaceOptions
from avatar.face.pose import head_pose
from avatar.face.registry import load_backend
from avatar.types import Box, HeadPose

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class FaceAnalysis:
    """The face chosen in a photo.

    Attributes:
        box: the detector's box, in the photo's own (full-resolution) pixels.
        landmarks: float32 (68, 2) in the photo's own pixels.
        pose: head pose (see :class:`avatar.types.HeadPose`).
        warnings: what the caller should pass on (several faces, downscaled photo).
        scale: detection ran on the photo resized by this factor (1.0: full size).
        faces_found: how many faces the detector found (1 unless a warning says more).
        timings: seconds spent per step ("detect", "landmarks", "pose"), for metrics.
        mesh: the 468-point mesh the landmarks and pose came from, or None when the
            backend gives no mesh (dlib).
    """

    box: Box
    landmarks: np.ndarray
    pose: HeadPose
    warnings: tuple[str, ...] = ()
    scale: float = 1.0
    faces_found: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    mesh: FaceMesh | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Located:
    """A face's landmarks and head pose in one image (see :meth:`FaceAnalyzer.locate`).

    Attributes:
        landmarks: float32 (68, 2) in the image's pixels.
        pose: head pose (see :class:`avatar.types.HeadPose`), or None when the fit
            failed on degenerate landmarks (a frame to skip).
        mesh: the 468-point mesh they came from, or None (a backend without a mesh).
        seconds: time spent placing the landmarks (the mesh) and fitting the pose.
    """

    landmarks: np.ndarray
    pose: HeadPose | None
    mesh: FaceMesh | None = None
    seconds: tuple[float, float] = (0.0, 0.0)


class FaceAnalyzer:
    """Detection, landmarks, pose and identity embeddings under one set of options.

    Build it with :meth:`load`; ``__init__`` only stores already loaded parts (a test
    or a caller with its own backend may pass them directly).

    Args:
        backend: a loaded detection + landmark backend.
        embedder: a loaded :class:`FaceEmbedder`, or None to load it on the first
            :meth:`embed`.
        options: the acceptance rules; ``options.backend`` is only informative here.
    """

    def __init__(
        self,
        backend: LandmarkBackend,
        embedder: FaceEmbedder | None = None,
        options: FaceOptions | None = None,
    ) -> None:
        self.backend = backend
        self.options = options or FaceOptions(backend=backend.name)
        self._embedder = embedder

    @classmethod
    def load(cls, options: FaceOptions | None = None) -> FaceAnalyzer:
        """Load the backend named in ``options`` and the embedding network (blocking).

        Args:
            options: acceptance rules and backend name; None uses the defaults.

        Returns:
            An analyzer ready for :meth:`analyze` and :meth:`embed`.

        Raises:
            ModelNotFoundError: dlib or face_recognition_models is missing; the message
                says how to install them.
            avatar.face.registry.UnknownBackendError: ``options.backend`` is unknown.
        """
        options = options or FaceOptions()
        return cls(load_backend(options.backend), FaceEmbedder.load(), options)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def analyze(self, image: np.ndarray) -> FaceAnalysis:
        """Choose the face in ``image`` and describe it.

        Args:
            image: uint8 RGB (H, W, 3) (grayscale and RGBA are converted); see
                :func:`avatar.face.images.read_image` for files.

        Returns:
            The face, in ``image``'s own pixels. Show ``warnings`` to the user; align it
            with :func:`avatar.face.align.align_face`.

        Raises:
            ImageInputError: ``image`` is not a usable image array.
            FaceNotFoundError: no face, several faces under ``multiple="refuse"``, face
                smaller than ``min_face_px``, or turned beyond ``max_abs_yaw_deg``. The
                message says what to change in the photo.
            ValueError: the head pose fit failed on degenerate landmarks.
        """
        opts = self.options
        rgb = as_rgb(image)
        warnings: list[str] = []
        timings: dict[str, float] = {}
        small, scale = downscale(rgb, opts.max_side)
        if scale != 1.0:
            height, width = rgb.shape[:2]
            warnings.append(
                f"photo is {width}x{height}: faces were searched at {small.shape[1]}x"
                f"{small.shape[0]} (landmarks are in full-resolution pixels)"
            )
        start = time.perf_counter()
        found = [d for d in self.backend.detect(small, opts.upsample) if d.score >= opts.min_score]
        timings["detect"] = time.perf_counter() - start
        if not found:
            raise FaceNotFoundError(
                "no face found in the image: use a photo where one face looks at the camera"
            )
        found.sort(key=lambda d: d.box.width * d.box.height, reverse=True)
        if len(found) > 1:
            if opts.multiple == "refuse":
                raise FaceNotFoundError(
                    f"{len(found)} faces found in the image: use a photo of one person alone"
                )
            warnings.append(f"{len(found)} faces found in the image: using the largest")
        box = _unscale(found[0], scale, rgb.shape)
        if box.width < opts.min_face_px:
            raise FaceNotFoundError(
                f"face too small: {box.width:.0f} px wide, at least {opts.min_face_px} px "
                "needed; use a closer or larger photo"
            )
        located = self.locate(rgb, box)
        timings["landmarks"], timings["pose"] = located.seconds
        pose = located.pose
        if pose is None:
            raise ValueError("head pose: the fit failed on degenerate landmarks")
        if abs(pose.yaw) > opts.max_abs_yaw_deg:
            raise FaceNotFoundError(
                f"profile view (head turned {abs(pose.yaw):.0f} degrees, at most "
                f"{opts.max_abs_yaw_deg:.0f} allowed): look at the camera"
            )
        for line in warnings:
            _LOGGER.info("%s", line)
        return FaceAnalysis(
            box=box,
            landmarks=located.landmarks,
            pose=pose,
            warnings=tuple(warnings),
            scale=scale,
            faces_found=len(found),
            timings=timings,
            mesh=located.mesh,
        )

    def locate(self, image: np.ndarray, box: Box) -> Located:
        """The landmarks and head pose of the face in ``box``, without detection.

        The pose comes from the 3-D mesh when the backend gives one, else from the 68
        landmarks (see the module doc).

        Args:
            image: uint8 RGB (H, W, 3).
            box: the face's box in ``image``'s pixels (a detector's, or one that follows
                the face from frame to frame).

        Returns:
            The landmarks, the pose (None when its fit failed on degenerate landmarks:
            skip the frame's pose) and, from a mesh backend, the mesh.
        """
        start = time.perf_counter()
        mesh = self.backend.mesh(image, box) if isinstance(self.backend, MeshBackend) else None
        landmarks = self.backend.landmarks(image, box) if mesh is None else mesh.landmarks68()
        placed = time.perf_counter()
        try:
            if mesh is None:
                pose: HeadPose | None = head_pose(landmarks, image.shape)
            else:
                pose = mesh_head_pose(mesh.points)
        except ValueError:
            pose = None
        seconds = (placed - start, time.perf_counter() - placed)
        return Located(landmarks, pose, mesh, seconds)

    def embed(self, image: np.ndarray, landmarks: np.ndarray | FaceAnalysis) -> np.ndarray:
        """The 128-d identity embedding of a face found by :meth:`analyze`.

        Args:
            image: the same image given to :meth:`analyze`.
            landmarks: its ``FaceAnalysis`` or (68, 2) / dlib (5, 2) landmarks.

        Returns:
            float32 (128,); compare with :func:`avatar.face.embedding.embedding_distance`.
        """
        if isinstance(landmarks, FaceAnalysis):
            landmarks = landmarks.landmarks
        if self._embedder is None:
            self._embedder = FaceEmbedder.load()
        return self._embedder.embed(as_rgb(image), landmarks)


def _unscale(found: Detection, scale: float, shape: tuple[int, ...]) -> Box:
    box = found.box
    if scale == 1.0:
        return box
    height, width = shape[:2]
    return Box(
        max(0.0, box.x0 / scale),
        max(0.0, box.y0 / scale),
        min(float(width), box.x1 / scale),
        min(float(height), box.y1 / scale),
    )
