"""Build a face detection + landmark backend by name.

Names: "dlib" (the default: HOG detector + 68-point shape predictor; not for commercial
use, see :data:`avatar.face.licences.LICENCES`). No MediaPipe backend: its current wheels
ship no face model (see :mod:`avatar.face.licences`).
"""

from __future__ import annotations

import importlib.util

from avatar.errors import AvatarError, ModelNotFoundError
from avatar.face.base import LandmarkBackend

BACKENDS = ("dlib",)


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
    raise UnknownBackendError(f"Unknown face backend {name!r}: choose one of {', '.join(BACKENDS)}")


def available_backends() -> dict[str, str]:
    """Say, for each backend, whether it can run here, without loading models.

    Returns:
        name -> a line starting with "ready" or "unavailable:", for a doctor command.
    """
    from avatar.face.models import LANDMARKS_68, model_path

    if importlib.util.find_spec("dlib") is None:
        return {"dlib": "unavailable: pip install dlib-bin==20.0.1.post1"}
    try:
        model = model_path(LANDMARKS_68)
    except ModelNotFoundError as err:
        return {"dlib": f"unavailable: {err}"}
    return {"dlib": f"ready ({model.name}; not for commercial use)"}
