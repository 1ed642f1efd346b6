"""Where the dlib face models are, and a clear error when they are not installed.

The model files ship inside the ``face-recognition-models`` registry package and the
engine inside ``dlib-bin``; nothing is downloaded at run time. The package directory is
found without importing ``face_recognition_models`` (its ``__init__`` imports the
deprecated ``pkg_resources``).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from avatar.errors import ModelNotFoundError

DETECTOR_HOG = "dlib HOG frontal face detector (built into dlib)"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"

_INSTALL = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0 'setuptools<81'"


def import_dlib() -> ModuleType:
    """Import dlib.

    Returns:
        The ``dlib`` module.

    Raises:
        ModelNotFoundError: dlib is not installed; the message says how to install it.
    """
    try:
        return importlib.import_module("dlib")
    except ImportError as err:
        raise ModelNotFoundError(f"dlib is not installed: {_INSTALL}") from err


def model_path(filename: str) -> Path:
    """Path of a model file inside the ``face_recognition_models`` package.

    Args:
        filename: one of :data:`LANDMARKS_68`, :data:`LANDMARKS_5`, :data:`RECOGNITION`.

    Returns:
        The existing file's path; pass it to the dlib loader.

    Raises:
        ModelNotFoundError: the package or the file is missing; the message names the file
            and how to install it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Face model {filename} not found: the face_recognition_models package is not "
            f"installed ({_INSTALL})"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / filename
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"Face model {filename} not found in the face_recognition_models package; "
        f"reinstall it: {_INSTALL} --force-reinstall"
    )
