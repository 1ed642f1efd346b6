"""Options of face analysis: one frozen dataclass, read once, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MultiplePolicy = Literal["largest", "refuse"]


@dataclass(frozen=True, slots=True)
class FaceOptions:
    """How :class:`~avatar.face.analyzer.FaceAnalyzer` finds and accepts a face.

    Attributes:
        max_side: photos whose longer side exceeds this many pixels are downscaled for
            detection (a warning says so); landmarks are still given in full-resolution
            pixels.
        min_face_px: the smallest face width accepted, in the photo's own pixels; a
            smaller face raises ``FaceNotFoundError("face too small ...")``.
        multiple: what to do when several faces are found: "largest" takes the largest
            and adds a warning naming how many were found; "refuse" raises
            ``FaceNotFoundError``.
        max_abs_yaw_deg: faces turned further than this (left or right) raise
            ``FaceNotFoundError("profile view, look at the camera")``.
        upsample: how many times the detector doubles the image before scanning; each
            doubling finds faces half as small and costs about 4x the time. The dlib HOG
            detector's window is 80 px, so 1 finds faces down to about 40 px. With
            "mediapipe" each step also searches tiles half as large (1: about 20 ms).
        min_score: detections scoring below this are ignored (dlib HOG: a real frontal
            face scores about 1; spurious hits on textures score about 0.1; "mediapipe"
            returns probabilities from 0.5, a clear face about 0.9).
        backend: name of the detection + landmark backend (see ``avatar.face.registry``):
            "mediapipe" (default; Apache-2.0; needs the models ``make setup`` fetches) or
            "dlib" (optional; its 68-point model is not for commercial use).
    """

    max_side: int = 1600
    min_face_px: int = 80
    multiple: MultiplePolicy = "largest"
    max_abs_yaw_deg: float = 40.0
    upsample: int = 1
    min_score: float = 0.3
    backend: str = "mediapipe"

    def __post_init__(self) -> None:
        if self.max_side < 64:
            raise ValueError(f"FaceOptions.max_side must be at least 64, got {self.max_side}")
        if self.min_face_px < 1:
            raise ValueError(f"FaceOptions.min_face_px must be positive, got {self.min_face_px}")
        if self.multiple not in ("largest", "refuse"):
            raise ValueError(
                f"FaceOptions.multiple must be 'largest' or 'refuse', got {self.multiple!r}"
            )
        if not 0.0 < self.max_abs_yaw_deg <= 90.0:
            raise ValueError(
                f"FaceOptions.max_abs_yaw_deg must be in (0, 90], got {self.max_abs_yaw_deg}"
            )
        if not 0 <= self.upsample <= 3:
            raise ValueError(f"FaceOptions.upsample must be 0..3, got {self.upsample}")
