"""Immutable data shared by face analysis and the generators.

Images are ``uint8`` RGB arrays of shape (H, W, 3). Landmarks follow the 68-point
iBUG 300-W layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips
48-59, inner lips 60-67) as float32 (68, 2) arrays of (x, y) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Index ranges of the 68-point layout.
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)  # the subject's right eye, on the image's left
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)


class TimingLike(Protocol):
    """What a generator needs of a phoneme or word timing (``voice.types.Timing`` fits)."""

    symbol: str
    kind: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class HeadPose:
    """Head rotation in degrees. Positive yaw: the face turns to the image's left
    (the subject's right); positive pitch: chin up; positive roll: clockwise in the image."""

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixels (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True, eq=False)
class VideoFrame:
    """One generated frame.

    Attributes:
        image: uint8 RGB (size, size, 3).
        pts: seconds on the audio clock of the speech this frame shows (idle frames
            continue the clock); the runtime pairs it with the audio of the same pts.
        index: frame number since the generator started.
        landmarks: the generator's own 68 landmarks in this frame, (68, 2) float32.
        mouth_open: the generator's mouth opening, 0 (closed) to 1 (wide).
        speaking: False for idle (listening) frames.
        segment: id of the speech segment this frame belongs to; -1 when idle.
    """

    image: np.ndarray
    pts: float
    index: int
    landmarks: np.ndarray | None = None
    mouth_open: float = 0.0
    speaking: bool = False
    segment: int = -1


@dataclass(frozen=True, slots=True)
class EndOfSegment:
    """All frames of a speech segment were yielded (or it was cut by ``clear_buffer``).

    Attributes:
        segment: the segment's id.
        pts: the audio time where it ended.
        interrupted: True when ``clear_buffer`` cut it short (barge-in).
    """

    segment: int
    pts: float
    interrupted: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class PreparedAvatar:
    """A face ready to animate: made once per photo, cached by id.

    Attributes:
        id: content hash of the source image and options (stable across runs).
        image: the aligned square crop, uint8 RGB.
        landmarks: 68 landmarks in the crop's pixels.
        synthetic: True only for faces the project itself draws (never for a photo).
        pose: head pose in the source photo.
        source_box: the crop's square in the source photo's pixels.
        warnings: what the caller should know (several faces, downscaled...).
        mesh: the 468-point face mesh in the crop's pixels, float32 (468, 3) (x, y and
            depth at the scale of x, smaller nearer the camera; see
            :mod:`avatar.face.mesh`), when the face backend gives one ("mediapipe");
            None otherwise (dlib, synthetic faces). ``landmarks`` are its 68 points then.
    """

    id: str
    image: np.ndarray
    landmarks: np.ndarray
    synthetic: bool = False
    pose: HeadPose | None = None
    source_box: Box | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    mesh: np.ndarray | None = None
