"""The default backend: dlib's HOG face detector and its 68-point shape predictor.

Licence warning: the 68-point model (``shape_predictor_68_face_landmarks.dat``) was
trained on the iBUG 300-W data set, whose licence excludes commercial use; its creators
asked that the trained model not be used in a commercial product. dlib itself (Boost
Software License) and the HOG detector (trained on faces from Labeled Faces in the Wild)
carry no such note, nor does the 5-point model (:meth:`DlibBackend.landmarks5`, trained
on data its author labelled and released). A commercial deployment must swap the
68-point model for one it may use. ``avatar.face.licences.LICENCES`` says the same for
every component.

Speed on a 512x512 photo on one CPU core: detection about 90 ms with ``upsample=1``
(about 20 ms with 0), 68 landmarks under 1 ms.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from avatar.face.base import Detection
from avatar.face.models import LANDMARKS_5, LANDMARKS_68, import_dlib, model_path
from avatar.types import Box


class DlibBackend:
    """dlib HOG detection and 68 (or 5) landmarks. Build it with :meth:`load`.

    Safe to share between worker threads (detection is serialised by a lock).

    Args:
        detector: a ``dlib.fhog_object_detector``.
        predictor68: a ``dlib.shape_predictor`` with 68 parts.
        predictor5: a ``dlib.shape_predictor`` with 5 parts, or None.
    """

    name = "dlib"

    def __init__(self, detector: Any, predictor68: Any, predictor5: Any | None = None) -> None:
        self._dlib = import_dlib()
        self._detector = detector
        self._predictor68 = predictor68
        self._predictor5 = predictor5
        # dlib's object_detector keeps scratch state: concurrent calls must be serialised.
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> DlibBackend:
        """Load the detector and both shape predictors (about 0.5 s; blocking).

        Returns:
            A backend ready for ``detect`` and ``landmarks``.

        Raises:
            ModelNotFoundError: dlib or face_recognition_models is missing; the message
                says how to install them.
        """
        dlib = import_dlib()
        return cls(
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(model_path(LANDMARKS_68))),
            dlib.shape_predictor(str(model_path(LANDMARKS_5))),
        )

    def detect(self, image: np.ndarray, upsample: int = 1) -> list[Detection]:
        """Find faces (see :meth:`avatar.face.base.LandmarkBackend.detect`).

        Scores are the HOG detector's margins: about 1 for a clear frontal face, near 0
        for doubtful hits; detections down to 0 are returned.
        """
        with self._lock:
            rects, scores, _ = self._detector.run(np.ascontiguousarray(image), upsample, 0.0)
        height, width = image.shape[:2]
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = Box(
                float(max(rect.left(), 0)),
                float(max(rect.top(), 0)),
                float(min(rect.right() + 1, width)),
                float(min(rect.bottom() + 1, height)),
            )
            found.append(Detection(box=box, score=float(score)))
        return found

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The 68 landmarks in ``box`` (see :meth:`avatar.face.base.LandmarkBackend.landmarks`)."""
        return self._shape(self._predictor68, image, box)

    def landmarks5(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Five landmarks from the model without the 68-point model's licence restriction.

        Order (dlib's): the image-right eye's outer and inner corner, the image-left eye's
        outer and inner corner, the base of the nose. Enough for alignment and for
        :class:`~avatar.face.embedding.FaceEmbedder`, not for pose or mouth shapes.

        Returns:
            float32 (5, 2) of (x, y) pixels.

        Raises:
            ModelNotFoundError: the backend was built without the 5-point model.
        """
        if self._predictor5 is None:
            from avatar.errors import ModelNotFoundError

            raise ModelNotFoundError(f"This backend was built without {LANDMARKS_5}")
        return self._shape(self._predictor5, image, box)

    def _shape(self, predictor: Any, image: np.ndarray, box: Box) -> np.ndarray:
        rect = self._dlib.rectangle(
            round(box.x0), round(box.y0), round(box.x1) - 1, round(box.y1) - 1
        )
        shape = predictor(np.ascontiguousarray(image), rect)
        points = [(p.x, p.y) for p in shape.parts()]
        return np.asarray(points, dtype=np.float32)
