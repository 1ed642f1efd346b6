"""Identity embeddings: dlib's face recognition ResNet on an aligned 150x150 chip.

Two photos show the same person when :func:`embedding_distance` of their embeddings is
below :data:`SAME_PERSON_THRESHOLD`. Measured here (``tests/avatar/test_face.py``
prints them) with the 68 landmarks of the dlib backend:

=============================================  ========
pair                                           distance
=============================================  ========
astronaut vs a brightened copy (+40 levels)    0.08
astronaut vs a re-encoded JPEG (quality 70)    0.09
astronaut vs its mirror image                  0.20
astronaut vs Grace Hopper (another person)     0.68
=============================================  ========

With dlib's 5 landmarks instead of 68 the figures move by 0.01-0.02 (0.09, 0.11, 0.19,
0.70). dlib reports 99.38 % accuracy on LFW for this model at 0.6. Note how thin the
margin of a different person is here (0.68 against 0.6): the threshold separates
strangers on average, it does not prove identity. A consent check that must not accept
a look-alike should ask for a stricter distance (0.5) on a live, frontal, well-lit face.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from avatar.face.models import RECOGNITION, import_dlib, model_path

SAME_PERSON_THRESHOLD = 0.6
EMBEDDING_SIZE = 128
CHIP_SIZE = 150
CHIP_PADDING = 0.25


class FaceEmbedder:
    """dlib's 128-d face recognition network. Build it with :meth:`load`.

    Args:
        model: a ``dlib.face_recognition_model_v1``.
    """

    def __init__(self, model: Any) -> None:
        self._dlib = import_dlib()
        self._model = model

    @classmethod
    def load(cls) -> FaceEmbedder:
        """Load the network (about 0.1 s; blocking).

        Raises:
            ModelNotFoundError: dlib or face_recognition_models is missing; the message
                says how to install them.
        """
        dlib = import_dlib()
        return cls(dlib.face_recognition_model_v1(str(model_path(RECOGNITION))))

    def chip(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned 150x150 uint8 RGB chip the network sees.

        Args:
            image: uint8 RGB photo.
            landmarks: the face's (68, 2) or dlib (5, 2) landmarks in ``image``'s pixels.
        """
        dlib = self._dlib
        points = np.asarray(landmarks, dtype=np.float64)
        if points.shape not in ((68, 2), (5, 2)):
            raise ValueError(f"embed needs (68, 2) or (5, 2) landmarks, got {points.shape}")
        x0, y0 = np.floor(points.min(axis=0)).astype(int)
        x1, y1 = np.ceil(points.max(axis=0)).astype(int)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), parts)
        return np.asarray(
            dlib.get_face_chip(np.ascontiguousarray(image), shape, CHIP_SIZE, CHIP_PADDING)
        )

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The 128-d identity embedding of the face with these landmarks.

        Args:
            image: uint8 RGB photo.
            landmarks: (68, 2) or (5, 2) landmarks in ``image``'s pixels.

        Returns:
            float32 (128,) (not unit length: dlib's scale). Compare two with
            :func:`embedding_distance`; store it rather than the photo when only identity
            checks are needed.
        """
        chip = self.chip(image, landmarks)
        return np.asarray(self._model.compute_face_descriptor(chip), dtype=np.float32)


@functools.cache
def default_embedder() -> FaceEmbedder:
    """A process-wide embedder, loaded on first use (read-only, safe to share)."""
    return FaceEmbedder.load()


def embed(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 128-d embedding with the shared :func:`default_embedder` (see ``FaceEmbedder.embed``)."""
    return default_embedder().embed(image, landmarks)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings; below :data:`SAME_PERSON_THRESHOLD`
    means the same person.

    Raises:
        ValueError: either is not a (128,) vector.
    """
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != (EMBEDDING_SIZE,) or vb.shape != (EMBEDDING_SIZE,):
        raise ValueError(f"embeddings must be ({EMBEDDING_SIZE},), got {va.shape} and {vb.shape}")
    return float(np.linalg.norm(va - vb))
