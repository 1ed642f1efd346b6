"""Turn a photo into a :class:`~avatar.types.PreparedAvatar`: the one step between an
uploaded photo and a generator.

The result is cached by id by the caller; the id depends only on the pixels, the crop
size, the margin and the backend, so the same photo prepared twice gets the same id.
A photo's avatar is never ``synthetic``: only faces the project draws itself are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from avatar.face.align import DEFAULT_MARGIN, align_face, map_mesh
from avatar.face.analyzer import FaceAnalyzer
from avatar.face.images import as_rgb, read_image
from avatar.types import PreparedAvatar


def avatar_id(image: np.ndarray, size: int, backend: str, margin: float = DEFAULT_MARGIN) -> str:
    """The content id of a prepared photo: the SHA-256 (64 hex digits) a consent grant binds.

    Args:
        image: the uint8 RGB photo (its shape and pixels are hashed).
        size: the crop size.
        backend: the landmark backend's name.
        margin: the alignment margin (only hashed when not the default, so ids made
            with the default stay ``sha256(pixels + size + backend)``).
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(f"|{image.shape}|{size}|{backend}".encode())
    if margin != DEFAULT_MARGIN:
        digest.update(f"|{margin}".encode())
    return digest.hexdigest()


def prepare_photo(
    image: np.ndarray | str | Path,
    analyzer: FaceAnalyzer,
    size: int = 512,
    margin: float = DEFAULT_MARGIN,
) -> PreparedAvatar:
    """Analyse a photo and cut the aligned face a generator animates.

    Args:
        image: uint8 RGB array, or the path of a photo file.
        analyzer: a loaded :class:`FaceAnalyzer`.
        size: side of the aligned crop in pixels.
        margin: see :func:`avatar.face.align.alignment_matrix`.

    Returns:
        The prepared avatar: crop, crop landmarks (and, from a mesh backend, the crop's
        468-point mesh), pose in the photo, the crop's square in photo pixels, warnings
        to show. Check consent for it before animating it.

    Raises:
        ImageInputError: the file or array is not a usable image.
        FaceNotFoundError: no usable face (the message says why).
    """
    rgb = read_image(image) if isinstance(image, str | Path) else as_rgb(image)
    face = analyzer.analyze(rgb)
    aligned = align_face(rgb, face.landmarks, size=size, margin=margin)
    box = aligned.source_box()
    warnings = list(face.warnings)
    height, width = rgb.shape[:2]
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        warnings.append(
            "the face is close to the photo's edge: the crop was completed by mirroring; "
            "a photo with more room around the head looks better"
        )
    return PreparedAvatar(
        id=avatar_id(rgb, size, analyzer.backend_name, margin),
        image=aligned.crop,
        landmarks=aligned.landmarks,
        synthetic=False,
        pose=face.pose,
        source_box=box,
        warnings=tuple(warnings),
        mesh=None if face.mesh is None else map_mesh(face.mesh.points, aligned.matrix),
    )
