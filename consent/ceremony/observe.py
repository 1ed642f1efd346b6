"""Per-frame facts about the face during a ceremony: where it is, how it is turned,
how open the mouth is, and what colour the skin and the wall behind it are.

:class:`FaceTracker` runs the detector every ``detect_every`` frames (and whenever the
face was lost) and follows the face by its landmarks in between, so a turned head the
frontal detector misses is still followed. Each frame gives one :class:`FrameObs`
(numbers only). A few frames are worth keeping as pixels for the 3-D check
(:mod:`consent.ceremony.depth`): :func:`keyframe` keeps them as grey float32; they
live only inside the ceremony.

Blocking CPU work (about 3 ms per followed frame, 15-30 ms per detection at 320 px):
call it from the ceremony's worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.face import FaceAnalyzer
from avatar.types import Box

# Skin patches from the 68-point layout: both cheeks and the forehead strip above the
# brows (no eyes, brows, nostrils or lips).
_CHEEK_L = (1, 2, 3, 31, 39, 40, 41, 36)
_CHEEK_R = (15, 14, 13, 35, 42, 47, 46, 45)


@dataclass(frozen=True, slots=True)
class FrameObs:
    """What one analysed frame showed (no pixels).

    Attributes:
        t: server-clock seconds of the frame (capture time mapped to the server).
        present: a face was followed in this frame.
        detected: the detector found it (not only followed).
        extra_faces: other faces at least half as large.
        landmarks: float32 (68, 2) in frame pixels, or None.
        yaw: degrees (HeadPose sign: positive is the subject's right), nan when unknown.
        mouth: inner-lip gap over nose length, nan when no face.
        face_rgb: mean RGB (0..255) of the cheeks, nan when no face.
        background_rgb: mean RGB of the frame's upper corners beside the head.
        face_width: the face's width in pixels (0 when no face).
    """

    t: float
    present: bool
    detected: bool
    extra_faces: int
    landmarks: np.ndarray | None
    yaw: float
    mouth: float
    face_rgb: tuple[float, float, float]
    background_rgb: tuple[float, float, float]
    face_width: float


_NAN3 = (math.nan, math.nan, math.nan)


class FaceTracker:
    """Follows the main face through a stream of frames (one stream per tracker).

    Args:
        analyzer: a loaded face analyzer (its backend's detector and landmarks are used).
        detect_max_side: frames are shrunk to this size for detection only.
        detect_every: run the detector at least every this many frames.
        max_gap_s: a face the detector misses is followed by its landmarks for at most
            this long.
    """

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        detect_max_side: int = 320,
        detect_every: int = 1,
        max_gap_s: float = 1.0,
    ) -> None:
        self.analyzer = analyzer
        self.detect_max_side = detect_max_side
        self.detect_every = max(1, detect_every)
        self.max_gap_s = max_gap_s
        self._last_box: Box | None = None
        self._last_seen = -math.inf
        self._since_detect = 0
        self._extra = 0
        self._last_centre: np.ndarray | None = None

    def push(self, t: float, frame: np.ndarray) -> FrameObs:
        """Analyse one RGB uint8 frame taken at ``t``."""
        backend = self.analyzer.backend
        fresh = self._last_box is None or t - self._last_seen > self.max_gap_s
        box = None
        detected = False
        if fresh or self._since_detect + 1 >= self.detect_every:
            self._since_detect = 0
            scale = min(1.0, self.detect_max_side / max(frame.shape[:2]))
            small = frame if scale == 1.0 else shrink(frame, scale)
            found = [scale_box(d.box, 1 / scale) for d in backend.detect(equalise(small), 0)]
            # Near the face followed so far; the largest face when there is none yet.
            box = closest(found, self._last_box, near=not fresh)
            self._extra = 0
            if found:
                size = (box or self._last_box or found[0]).width
                self._extra = sum(1 for b in found if b is not box and b.width >= 0.5 * size)
            if box is not None:
                detected = True
                self._last_seen = t
        else:  # not looked for this frame: following it is as good as seeing it
            self._since_detect += 1
            self._last_seen = t
        if box is None and not fresh:
            box = self._last_box  # a turned head the detector misses: keep its last box
        if box is None:
            self._last_box = None
            self._last_centre = None
            return FrameObs(
                t, False, False, self._extra, None, math.nan, math.nan, _NAN3,
                background_rgb(frame, None), 0.0,
            )  # fmt: skip
        lm = backend.landmarks(frame, box)
        centre = lm.mean(0)
        if detected:
            self._last_box = box
        elif self._last_centre is not None:  # move the kept box with the face, same size
            dx, dy = (centre - self._last_centre).tolist()
            self._last_box = Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy)
        self._last_centre = centre
        yaw = turn_yaw(lm)
        width = float(np.ptp(lm[:, 0]))
        return FrameObs(
            t, True, detected, self._extra, lm.astype(np.float32), yaw, mouth_opening(lm),
            skin_rgb(frame, lm), background_rgb(frame, lm), width,
        )  # fmt: skip


def turn_yaw(lm: np.ndarray) -> float:
    """How far the head is turned, in degrees, from where the nose tip sits between the
    two ends of the face outline (landmarks 0, 16 and 30): ``asin(offset / 0.9)``.

    Same sign as :class:`avatar.types.HeadPose` (positive: the subject's right in an
    unmirrored picture). Used for the ceremony's turns instead of the 6-point PnP of
    ``avatar.face.head_pose``, whose generic 3-D model reads a frontal face 4-7 degrees
    off and a turn to one side up to 10 degrees shorter than the same turn to the other
    on the simulated heads; the ratio is symmetric by construction and reads a 30 degree
    turn as 20-25 degrees on both sides (``tests/consent/test_ceremony_engine.py``).
    """
    half = (float(lm[16, 0]) - float(lm[0, 0])) / 2
    if half <= 1e-6:
        return math.nan
    offset = (float(lm[30, 0]) - (float(lm[0, 0]) + float(lm[16, 0])) / 2) / half
    return -math.degrees(math.asin(max(-1.0, min(1.0, offset / 0.9))))


def equalise(frame: np.ndarray) -> np.ndarray:
    """Local contrast equalised (CLAHE on lightness) for the detector only: dlib's HOG
    detector misses dark-skinned faces turned 30 degrees on the raw frame and finds
    them on this one."""
    lab = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2LAB)
    lab[..., 0] = _CLAHE.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))


def shrink(frame: np.ndarray, scale: float) -> np.ndarray:
    h, w = frame.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def scale_box(box: Box, factor: float) -> Box:
    if factor == 1.0:
        return box
    return Box(box.x0 * factor, box.y0 * factor, box.x1 * factor, box.y1 * factor)


def box_of(lm: np.ndarray) -> Box:
    """A box around landmarks with 10 % margin (to follow a face between detections)."""
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    pad = 0.1 * (x1 - x0)
    return Box(float(x0 - pad), float(y0 - pad), float(x1 + pad), float(y1 + pad))


def closest(boxes: Sequence[Box], previous: Box | None, near: bool = True) -> Box | None:
    """The largest box when ``previous`` is None, else the one nearest to it (with
    ``near``, only when its centre is within half a face width), else None."""
    if not boxes:
        return None
    if previous is None:
        return max(boxes, key=lambda b: b.width * b.height)
    px, py = (previous.x0 + previous.x1) / 2, (previous.y0 + previous.y1) / 2

    def offset(b: Box) -> float:
        return math.hypot((b.x0 + b.x1) / 2 - px, (b.y0 + b.y1) / 2 - py)

    best = min(boxes, key=offset)
    return best if not near or offset(best) <= 0.5 * previous.width else None


def mouth_opening(lm: np.ndarray) -> float:
    """Inner-lip gap over the nose length (27 to 33): unaffected by turning left/right."""
    gap = np.linalg.norm(lm[[67, 66, 65]] - lm[[61, 62, 63]], axis=1).mean()
    nose = float(np.linalg.norm(lm[33] - lm[27]))
    return float(gap / max(nose, 1e-6))


def skin_rgb(frame: np.ndarray, lm: np.ndarray) -> tuple[float, float, float]:
    """Mean RGB of both cheeks (polygons between the jaw, nose and lower eyelid)."""
    h, w = frame.shape[:2]
    x0, y0 = np.floor(lm.min(0)).astype(int)
    x1, y1 = np.ceil(lm.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return _NAN3
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for idx in (_CHEEK_L, _CHEEK_R):
        pts = np.round(lm[list(idx)] - (x0, y0)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    if mask.sum() < 8:
        return _NAN3
    mean = cv2.mean(frame[y0:y1, x0:x1], mask=mask)
    return (float(mean[0]), float(mean[1]), float(mean[2]))


def background_rgb(frame: np.ndarray, lm: np.ndarray | None) -> tuple[float, float, float]:
    """Mean RGB of the frame's two upper corners (each 22 % of the width, 35 % of the
    height), minus any part within 1.6 face widths of the face's centre."""
    h, w = frame.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cw, ch = int(0.22 * w), int(0.35 * h)
    mask[:ch, :cw] = 1
    mask[:ch, w - cw :] = 1
    if lm is not None:
        cx, cy = lm.mean(0)
        radius = 1.6 * float(np.ptp(lm[:, 0]))
        cv2.circle(mask, (int(cx), int(cy)), max(1, int(radius)), 0, -1)
    if mask.sum() < 16:
        return _NAN3
    mean = cv2.mean(frame, mask=mask)
    return (float(mean[0]), float(mean[1]), float(mean[2]))


def keyframe(frame: np.ndarray) -> np.ndarray:
    """The frame as grey float32 (kept for the 3-D check; see :mod:`.depth`)."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)


__all__ = [
    "FaceTracker",
    "FrameObs",
    "background_rgb",
    "box_of",
    "closest",
    "keyframe",
    "mouth_opening",
    "skin_rgb",
]
