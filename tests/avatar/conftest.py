"""Photos the face tests share (public-domain images that registry packages ship)."""

from __future__ import annotations

import cv2
import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
import soundfile as sf

from avatar.face import FaceAnalyzer, FaceOptions
from avatar.face.images import read_image
from tests.conftest import espeak_wav


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def astronaut2x(astronaut) -> np.ndarray:
    """The astronaut at 1024x1024 (face about 187 px), room for turned copies."""
    return cv2.resize(astronaut, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def analyzers() -> dict[str, FaceAnalyzer]:
    """A face analyzer per backend, by name (no embedder: prepare and analyze only)."""
    from avatar.face.dlib_backend import DlibBackend
    from avatar.face.mediapipe_backend import MediaPipeBackend

    return {
        "dlib": FaceAnalyzer(DlibBackend.load(), None, FaceOptions(backend="dlib")),
        "mediapipe": FaceAnalyzer(
            MediaPipeBackend.load(num_threads=1), None, FaceOptions(backend="mediapipe")
        ),
    }


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """About 3 s of espeak-ng speech (test_photo_mouth, test_procedural_mesh)."""
    path = espeak_wav(
        "I would like to hear a story about the sea, please.",
        tmp_path_factory.mktemp("speech") / "story.wav",
    )
    pcm, rate = sf.read(path, dtype="float32")
    return pcm, rate
