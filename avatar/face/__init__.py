"""Face analysis: read a photo, find the one face, its 68 landmarks, head pose,
identity embedding, an aligned crop, and paste an edited crop back.

Typical use::

    from avatar.face import FaceAnalyzer, FaceOptions, prepare_photo, read_image

    analyzer = FaceAnalyzer.load(FaceOptions())
    prepared = prepare_photo(read_image("photo.jpg"), analyzer)

Licences differ per model: print :data:`LICENCES` (the default 68-point landmark model
is not for commercial use). Everything here is blocking CPU work: run it in a worker
thread from async code.
"""

from avatar.face.align import AlignedFace, align_face, paste_back
from avatar.face.analyzer import FaceAnalysis, FaceAnalyzer, Located
from avatar.face.base import Detection, LandmarkBackend, MeshBackend
from avatar.face.embedding import (
    SAME_PERSON_THRESHOLD,
    FaceEmbedder,
    embed,
    embedding_distance,
)
from avatar.face.images import as_rgb, read_image
from avatar.face.licences import LICENCES
from avatar.face.mesh_pose import mesh_head_pose
from avatar.face.options import FaceOptions
from avatar.face.pose import head_pose
from avatar.face.prepare import prepare_photo
from avatar.face.registry import BACKENDS, UnknownBackendError, available_backends, load_backend

__all__ = [
    "BACKENDS",
    "LICENCES",
    "SAME_PERSON_THRESHOLD",
    "AlignedFace",
    "Detection",
    "FaceAnalysis",
    "FaceAnalyzer",
    "FaceEmbedder",
    "FaceOptions",
    "LandmarkBackend",
    "Located",
    "MeshBackend",
    "UnknownBackendError",
    "align_face",
    "as_rgb",
    "available_backends",
    "embed",
    "embedding_distance",
    "head_pose",
    "load_backend",
    "mesh_head_pose",
    "paste_back",
    "prepare_photo",
    "read_image",
]
