"""The procedural mouth on real photos, on each face backend (dlib's 68 points; the
"mediapipe" mesh, whose lip lines the renderer then follows): the drawn mouth opens
with the speech (correlation with the audio envelope), and a photo with parted lips (a
smile showing teeth) keeps its own mouth at rest."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.face.prepare import prepare_photo
from avatar.procedural.generator import ProceduralOptions, render_clip

BACKENDS = ["dlib", "mediapipe"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def smiling(astronaut, analyzers, backend):
    return prepare_photo(astronaut, analyzers[backend], size=512)


def mouth_box(landmarks: np.ndarray, pad: int = 6) -> tuple[slice, slice]:
    x0, y0 = np.floor(landmarks[48:68].min(0)).astype(int) - pad
    x1, y1 = np.ceil(landmarks[48:68].max(0)).astype(int) + pad
    return slice(y0, y1), slice(x0, x1)


def rms_envelope(pcm: np.ndarray, rate: int, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """RMS of the audio in each frame's interval [i/fps, (i+1)/fps)."""
    out = np.zeros(n_frames)
    for i in range(n_frames):
        seg = pcm[int(i / fps * rate) : int((i + 1) / fps * rate)]
        out[i] = np.sqrt(np.mean(seg * seg)) if len(seg) else 0.0
    return out


def drawn_opening(image: np.ndarray, landmarks: np.ndarray) -> float:
    """The mouth as drawn: share of dark pixels (luma < 60) in the box of the rest lips,
    reaching 0.3 eye distances lower for the dropped jaw."""
    iod = float(np.linalg.norm(landmarks[42:48].mean(0) - landmarks[36:42].mean(0)))
    x0, y0 = np.floor(landmarks[48:68].min(0)).astype(int)
    x1, y1 = np.ceil(landmarks[48:68].max(0) + [0.0, 0.3 * iod]).astype(int)
    luma = image[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.mean(luma < 60))


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_the_drawn_mouth_follows_the_speech(request, analyzers, backend, speech, name):
    """Pearson r of the drawn opening (pixels) and of the generator's own opening against
    the audio envelope, head motion and blinks on: both at least 0.5."""
    avatar = prepare_photo(request.getfixturevalue(name), analyzers[backend], size=512)
    pcm, rate = speech
    frames = render_clip(avatar, pcm, rate, None, ProceduralOptions(seed=3))
    envelope = rms_envelope(pcm, rate, len(frames))
    drawn = np.array([drawn_opening(f.image, avatar.landmarks) for f in frames])
    own = np.array([f.mouth_open for f in frames])
    r_drawn = float(np.corrcoef(drawn, envelope)[0, 1])
    r_own = float(np.corrcoef(own, envelope)[0, 1])
    print(f"{backend}, {name}: r drawn = {r_drawn:.3f}, r mouth_open = {r_own:.3f}")
    assert r_drawn >= 0.5 and r_own >= 0.5
    assert drawn.max() > 0.1  # it does open


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
