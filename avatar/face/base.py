"""The contract of a face detection + 68-landmark backend.

A backend is loaded once (``load()`` does the I/O) and then answers two questions on a
uint8 RGB image: where are the faces (:meth:`LandmarkBackend.detect`), and where are the
68 landmarks of the face in a given box (:meth:`LandmarkBackend.landmarks`; dlib's five
points for alignment and embeddings, :meth:`LandmarkBackend.landmarks5`). Policies —
which face to take, how small is too small, downscaling huge photos — live in
:class:`~avatar.face.analyzer.FaceAnalyzer`, not in backends.

A backend that also gives a dense 3-D mesh (:class:`MeshBackend`, the "mediapipe" one)
gets its head pose from the mesh (:func:`avatar.face.mesh_pose.mesh_head_pose`) instead
of the 68 points; :meth:`~avatar.face.analyzer.FaceAnalyzer.locate` makes that choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from avatar.face.mesh import FaceMesh
from avatar.types import Box


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by a backend.

    Attributes:
        box: the face's box in the pixels of the image given to ``detect``.
        score: the backend's confidence; higher is surer (scale is backend specific).
    """

    box: Box
    score: float


@runtime_checkable
class LandmarkBackend(Protocol):
    """Face detection and 68-point landmarks (iBUG 300-W layout, see ``avatar.types``).

    Attributes:
        name: registry name ("dlib", ...).
    """

    name: str

    def detect(self, image: np.ndarray, upsample: int = 1) -> list[Detection]:
        """Find faces in a uint8 RGB image.

        Args:
            image: uint8 RGB (H, W, 3), contiguous.
            upsample: times to double the image before scanning (finds smaller faces).

        Returns:
            Every detection, in no particular order; empty when there is none. The caller
            filters by score and size and picks one.
        """
        ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Place the 68 landmarks of the face inside ``box``.

        Args:
            image: uint8 RGB (H, W, 3), contiguous; may be larger than the one ``detect``
                saw, as long as ``box`` is in its pixels.
            box: the face's box in ``image``'s pixels.

        Returns:
            float32 (68, 2) of (x, y) pixels in ``image``.
        """
        ...

    def landmarks5(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Place dlib's five points of the face inside ``box``, for alignment and the
        identity embedding (:class:`~avatar.face.embedding.FaceEmbedder`).

        Args:
            image: as for :meth:`landmarks`.
            box: as for :meth:`landmarks`.

        Returns:
            float32 (5, 2) of (x, y) pixels in ``image``, in dlib's order: the
            image-right eye's outer and inner corner, the image-left eye's outer and
            inner corner, the base of the nose.
        """
        ...


@runtime_checkable
class MeshBackend(LandmarkBackend, Protocol):
    """A :class:`LandmarkBackend` that also places the 468-point 3-D face mesh."""

    def mesh(self, image: np.ndarray, box: Box) -> FaceMesh:
        """The mesh of the face in ``box`` (``image`` and ``box`` as for ``landmarks``).

        Returns:
            The mesh; its ``presence`` below 0.5 means the box held no face.
        """
        ...
