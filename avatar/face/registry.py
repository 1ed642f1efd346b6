"""Build a face detection + landmark backend by name.

Names: "mediapipe" (the default: BlazeFace and the 468-point face mesh on LiteRT,
Apache-2.0; its two model files are fetched by ``make setup``, see
:mod:`avatar.face.mediapipe_models`) and "dlib" (optional: HOG detector + 68-point shape
predictor; not for commercial use, see :data:`avatar.face.licences.LICENCES`).
"""

from __future__ import annotations

import importlib.util

from avatar.errors import AvatarError, ModelNotFoundError
from avatar.face.base import LandmarkBackend

BACKENDS = ("mediapipe", "dlib")


class UnknownBackendError(AvatarError, ValueError):
    """No face backend has that name; the message lists the names there are."""


def load_backend(name: str) -> LandmarkBackend:
    """Build and load the backend ``name`` (blocking: run it off the event loop).

    Args:
        name: one of :data:`BACKENDS`.

    Returns:
        A loaded backend, ready for ``detect`` and ``landmarks``.

    Raises:
        UnknownBackendError: ``name`` is not one of :data:`BACKENDS`.
        ModelNotFoundError: the backend's package or model file is missing; the message
            says how to install it.
    """
    key = name.strip().lower()
    if key == "dlib":
        from avatar.face.dlib_backend import DlibBackend

        return DlibBackend.load()
    if key == "mediapipe":
        from avatar.face.mediapipe_backend import MediaPipeBackend

        return MediaPipeBackend.load()
    raise UnknownBackendError(f"Unknown face backend {name!r}: choose one of {', '.join(BACKENDS)}")


def available_backends() -> dict[str, str]:
    """Say, for each backend, whether it can run here, without loading models.

    Returns:
        name -> a line starting with "ready" or "unavailable:", for a doctor command.
    """
    return {"mediapipe": _mediapipe_status(), "dlib": _dlib_status()}


def _dlib_status() -> str:
    from avatar.face.models import LANDMARKS_68, model_path

    if importlib.util.find_spec("dlib") is None:
        return "unavailable: pip install dlib-bin==20.0.1.post1"
    try:
        model = model_path(LANDMARKS_68)
    except ModelNotFoundError as err:
        return f"unavailable: {err}"
    return f"ready ({model.name}; not for commercial use)"


def _mediapipe_status() -> str:
    from avatar.face.mediapipe_models import DETECTOR, MESH, model_file

    if importlib.util.find_spec("ai_edge_litert") is None:
        return "unavailable: pip install ai-edge-litert==2.3.0"
    try:
        paths = [model_file(MESH), model_file(DETECTOR)]
    except ModelNotFoundError as err:
        return f"unavailable: {err}"
    return f"ready ({', '.join(str(p) for p in paths)}; Apache-2.0)"
