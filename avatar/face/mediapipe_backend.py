"""An optional backend: MediaPipe's BlazeFace detector and its 468-point face mesh, run
with LiteRT (``ai-edge-litert``), both Apache-2.0 and allowed in a commercial product.

Choose it by name (``FaceOptions(backend="mediapipe")``, ``[avatar] landmarks =
"mediapipe"``); dlib stays the default for now. The models are fetched at set-up
(:mod:`avatar.face.mediapipe_models`), never at run time.

What it does, following MediaPipe's face mesh graph:

* :meth:`MediaPipeBackend.detect`: BlazeFace (:mod:`avatar.face.blazeface`), each face
  then confirmed by the mesh model's own face probability on the detector's crop;
* :meth:`MediaPipeBackend.mesh`: the mesh on a tight crop of 1.5 times the face's box,
  turned so the eyes are level (the model needs a tight crop: on the astronaut its face
  probability is 1.0 up to twice that crop's side, 0.004 at three times), then once more
  on the crop the first mesh gives;
* :meth:`MediaPipeBackend.landmarks`: that mesh mapped to the 68-point layout
  (:data:`avatar.face.mesh.MESH_TO_68`), for the rest of the code, and
  :meth:`~MediaPipeBackend.landmarks5` to dlib's five points (alignment, embeddings);
* :class:`MeshTracker`: video, one face; each frame's crop comes from the previous
  frame's mesh, and the detector runs only when the face is lost.

Measured on the test photos against dlib's 68 points (mean distance over the inter-ocular
distance): 0.05 on the astronaut, 0.06 on Grace Hopper (``tests/avatar/test_face_mediapipe.py``).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from avatar.face.base import Detection
from avatar.face.blazeface import BlazeFace, FaceBox, load_interpreter
from avatar.face.mediapipe_models import DETECTOR, MESH, model_file
from avatar.face.mesh import (
    CROP_SIZE,
    MESH_POINTS,
    FaceMesh,
    Roi,
    crop,
    crop_points_to_image,
    eye_angle,
    roi_from_box,
    roi_from_mesh,
)
from avatar.types import Box

MIN_PRESENCE = 0.5
"""Below this face probability the mesh's crop holds no face (MediaPipe's threshold)."""
HOLD_SHIFT = 0.02
"""A tracked crop stays put until the face's crop moves by this fraction of its side..."""
HOLD_SCALE = 0.03
"""...or its side changes by this fraction..."""
HOLD_ANGLE = math.radians(2.0)
"""...or it turns by this angle: on a still the crop, and so the mesh, stay exactly the same
(re-cropping every frame moved Grace Hopper's points by up to 1.8 px from frame to frame)."""


class MediaPipeBackend:
    """BlazeFace detection and the 468-point mesh, as a 68-point backend. Build it with
    :meth:`load`.

    Safe to share between worker threads (each interpreter runs behind a lock); a
    :class:`MeshTracker` is per video stream.

    Args:
        detector: a loaded :class:`~avatar.face.blazeface.BlazeFace`.
        mesh_interpreter: a LiteRT interpreter of ``face_landmark.tflite``, tensors
            allocated.
        refine: how many more times :meth:`mesh` runs on the crop the previous mesh gives
            (1: the box only places the first crop).
    """

    name = "mediapipe"

    def __init__(self, detector: BlazeFace, mesh_interpreter: Any, refine: int = 1) -> None:
        self.detector = detector
        self._mesh = mesh_interpreter
        self._input = mesh_interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in mesh_interpreter.get_output_details()}
        sizes = {d["name"]: int(np.prod(d["shape"])) for d in mesh_interpreter.get_output_details()}
        self._points = next(outputs[n] for n, size in sizes.items() if size == MESH_POINTS * 3)
        self._presence = next(outputs[n] for n, size in sizes.items() if size == 1)
        self._refine = refine
        self._lock = threading.Lock()

    @classmethod
    def load(cls, models_dir: Path | None = None, num_threads: int = 1) -> MediaPipeBackend:
        """Load both models (about 20 ms; blocking). Nothing is downloaded.

        Args:
            models_dir: the folder with both ``.tflite`` files; None searches
                :func:`avatar.face.mediapipe_models.search_dirs`.
            num_threads: LiteRT CPU threads per model.

        Returns:
            A backend ready for ``detect``, ``landmarks``, ``mesh`` and ``tracker``.

        Raises:
            ModelNotFoundError: a model file is missing or differs from the pinned one, or
                ``ai-edge-litert`` is not installed; the message names what to run.
        """
        detector = BlazeFace.load(model_file(DETECTOR, models_dir), num_threads)
        mesh = load_interpreter(model_file(MESH, models_dir), num_threads)
        return cls(detector, mesh)

    # ------------------------------------------------------------ LandmarkBackend

    def detect(self, image: np.ndarray, upsample: int = 1) -> list[Detection]:
        """Find faces (see :meth:`avatar.face.base.LandmarkBackend.detect`).

        Scores are BlazeFace's probabilities (0.5 to 1; a clear frontal face scores about
        0.9). A detection is kept only when the mesh model also sees a face in its crop.

        Args:
            image: uint8 RGB (H, W, 3).
            upsample: 0 searches the image as a whole (faces wider than about a ninth
                of its longer side); each step more also searches tiles half as large.
        """
        return [Detection(box=face.box, score=face.score) for face in self.faces(image, upsample)]

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The 68 landmarks of the face in ``box``
        (see :meth:`avatar.face.base.LandmarkBackend.landmarks`)."""
        return self.mesh(image, box).landmarks68()

    def landmarks5(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's five points of the face in ``box``, from the mesh (the eye corners and
        the base of the nose, :data:`avatar.face.mesh.MESH_TO_5`; see
        :meth:`avatar.face.base.LandmarkBackend.landmarks5`)."""
        return self.mesh(image, box).landmarks5()

    # ------------------------------------------------------------ the mesh

    def faces(self, image: np.ndarray, upsample: int = 1) -> list[FaceBox]:
        """BlazeFace's faces (with their six key points) that the mesh model confirms."""
        found = self.detector.detect(np.ascontiguousarray(image), upsample)
        return [f for f in found if self.mesh_at(image, detection_roi(f)).presence >= MIN_PRESENCE]

    def mesh(self, image: np.ndarray, box: Box | FaceBox) -> FaceMesh:
        """The 468-point mesh of the face in ``box``.

        Args:
            image: uint8 RGB (H, W, 3).
            box: a face's box from any detector, or a BlazeFace detection (its eyes then
                level the first crop).

        Returns:
            The mesh; check ``presence`` (below :data:`MIN_PRESENCE` the box held no face).
        """
        roi = detection_roi(box) if isinstance(box, FaceBox) else roi_from_box(box)
        face = self.mesh_at(image, roi)
        for _ in range(self._refine):
            if face.presence < MIN_PRESENCE:
                break
            face = self.mesh_at(image, roi_from_mesh(face.points))
        return face

    def mesh_at(self, image: np.ndarray, roi: Roi) -> FaceMesh:
        """Run the mesh model once on the crop ``roi`` of ``image``."""
        pixels = crop(np.ascontiguousarray(image), roi, CROP_SIZE)
        tensor = (pixels.astype(np.float32) / 255.0)[None]
        with self._lock:
            self._mesh.set_tensor(self._input, tensor)
            self._mesh.invoke()
            raw = self._mesh.get_tensor(self._points).reshape(MESH_POINTS, 3)
            logit = float(self._mesh.get_tensor(self._presence).ravel()[0])
        presence = 1.0 / (1.0 + math.exp(-max(-100.0, min(100.0, logit))))
        return FaceMesh(crop_points_to_image(raw, roi, CROP_SIZE), presence, roi)

    def tracker(self, upsample: int = 0) -> MeshTracker:
        """A tracker for one face in one video stream (see :class:`MeshTracker`)."""
        return MeshTracker(self, upsample)


def detection_roi(face: FaceBox) -> Roi:
    """The mesh's crop for a BlazeFace detection, turned so its eyes are level."""
    return roi_from_box(face.box, eye_angle(face.keypoints[0], face.keypoints[1]))


def held(old: Roi, new: Roi) -> Roi:
    """The tracked crop for the next frame: ``old`` while ``new`` is within
    :data:`HOLD_SHIFT`, :data:`HOLD_SCALE` and :data:`HOLD_ANGLE` of it, else ``new``."""
    shift = math.hypot(new.cx - old.cx, new.cy - old.cy) / old.side
    scale = abs(new.side / old.side - 1.0)
    turn = abs(math.remainder(new.angle - old.angle, math.tau))
    if shift <= HOLD_SHIFT and scale <= HOLD_SCALE and turn <= HOLD_ANGLE:
        return old
    return new


class MeshTracker:
    """Follow one face through a video: the detector runs on the first frame and again
    only when the face is lost; in between, each frame's crop comes from the previous
    frame's mesh (MediaPipe's face mesh graph for one face), held still while the face
    barely moves (:func:`held`).

    Not thread-safe: one tracker per stream, frames in order. Build it with
    :meth:`MediaPipeBackend.tracker`.

    Args:
        backend: the loaded backend.
        upsample: the detector's ``upsample`` when it runs.

    Attributes:
        detections: how many frames ran the detector so far.
        frames: how many frames were given.
    """

    def __init__(self, backend: MediaPipeBackend, upsample: int = 0) -> None:
        self.backend = backend
        self.upsample = upsample
        self.detections = 0
        self.frames = 0
        self._roi: Roi | None = None

    def reset(self) -> None:
        """Forget the face: the next frame runs the detector (call it at a cut)."""
        self._roi = None

    def update(self, frame: np.ndarray) -> FaceMesh | None:
        """The face's mesh in the next frame, or None when there is no face.

        Args:
            frame: uint8 RGB (H, W, 3), the stream's next frame.

        Returns:
            The mesh (``detected`` says whether the detector ran for it), or None when
            the face was lost and the detector found none (it runs again next frame).
        """
        self.frames += 1
        if self._roi is not None:
            face = self.backend.mesh_at(frame, self._roi)
            if face.presence >= MIN_PRESENCE:
                self._roi = held(self._roi, roi_from_mesh(face.points))
                return face
            self._roi = None
        self.detections += 1
        found = self.backend.faces(frame, self.upsample)
        if not found:
            return None
        best = max(found, key=lambda f: f.box.width * f.box.height)
        face = self.backend.mesh(frame, best)
        if face.presence < MIN_PRESENCE:
            return None
        self._roi = roi_from_mesh(face.points)
        return FaceMesh(face.points, face.presence, face.roi, detected=True)
