"""A photo with parted lips (a smile showing teeth) keeps its own mouth at rest."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.procedural.generator import ProceduralOptions, render_clip


@pytest.fixture(scope="module")
def smiling():
    from skimage import data

    from avatar.face import FaceAnalyzer
    from avatar.face.prepare import prepare_photo

    return prepare_photo(data.astronaut(), FaceAnalyzer.load(), size=512)


def mouth_box(landmarks: np.ndarray, pad: int = 6) -> tuple[slice, slice]:
    x0, y0 = np.floor(landmarks[48:68].min(0)).astype(int) - pad
    x1, y1 = np.ceil(landmarks[48:68].max(0)).astype(int) + pad
    return slice(y0, y1), slice(x0, x1)


def test_silence_leaves_the_photo_mouth_untouched(smiling):
    gap = smiling.landmarks[[67, 66, 65], 1] - smiling.landmarks[[61, 62, 63], 1]
    assert gap.mean() > 1.0, "the astronaut smiles with parted lips"
    still = ProceduralOptions(sway=0.0, breathing=0.0, blink=False)
    frames = render_clip(smiling, np.zeros(16_000, np.float32), 16_000, None, still)
    rows, cols = mouth_box(smiling.landmarks)
    for frame in frames:
        diff = np.abs(frame.image[rows, cols].astype(int) - smiling.image[rows, cols].astype(int))
        assert diff.mean() < 1.0, "the painted interior must not cover the photo's teeth at rest"


def test_speech_still_opens_the_mouth(smiling):
    t = np.arange(16_000) / 16_000
    voiced = (0.4 * np.sin(2 * np.pi * 160 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    still = ProceduralOptions(sway=0.0, breathing=0.0, blink=False)
    frames = render_clip(smiling, voiced, 16_000, None, still)
    rows, cols = mouth_box(smiling.landmarks)
    changes = [
        np.abs(f.image[rows, cols].astype(int) - smiling.image[rows, cols].astype(int)).mean()
        for f in frames
    ]
    assert max(f.mouth_open for f in frames) > 0.3
    assert max(changes) > 10.0, "an open mouth must show (painted interior fades in)"
