"""The visible "AI-generated" mark on every frame a session sends (and the invisible one).

The patch is drawn once per frame size; per frame it is one small alpha blend on a
copy of the frame (the generator's own image is never changed). :class:`FrameStamp`
puts both marks on a frame in one place: the label, then the invisible watermark
(``consent.watermark``) that carries the grant id, or "synthetic".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    from runtime.config import Settings

TEXT = "AI-generated"


class AiLabel:
    """Stamps :data:`TEXT` into the bottom-left corner of (size, size, 3) uint8 RGB frames."""

    def __init__(self, size: int, text: str = TEXT) -> None:
        scale = max(size / 900, 0.35)
        thickness = max(1, round(size / 400))
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        pad = max(4, size // 96)
        self.height, self.width = h + base + 2 * pad, w + 2 * pad
        margin = max(4, size // 64)
        self.y0 = size - margin - self.height
        self.x0 = margin
        colour = np.zeros((self.height, self.width, 3), np.uint8)
        alpha = np.full((self.height, self.width), 0.55, np.float32)  # dark backing
        ink = np.zeros((self.height, self.width), np.uint8)
        cv2.putText(
            ink, text, (pad, pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA
        )
        glyph = ink.astype(np.float32) / 255
        colour[:] = (glyph[..., None] * 255).astype(np.uint8)
        self._alpha = np.maximum(alpha, glyph)[..., None]
        self._colour = colour.astype(np.float32)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A labelled copy of ``image``."""
        out = image.copy()
        roi = out[self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width]
        blended = roi.astype(np.float32) * (1 - self._alpha) + self._colour * self._alpha
        roi[:] = blended.astype(np.uint8)
        return out

    def box(self) -> tuple[slice, slice]:
        """Rows and columns of the label (for tests and detectors)."""
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


class InvisibleMark(Protocol):
    """What :class:`FrameStamp` needs of a watermark (``consent.watermark.Watermark``)."""

    payload: str

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Mark ``image`` in place and return it."""
        ...


class FrameStamp:
    """Both marks on every frame sent: the visible label, then the invisible watermark.

    Args:
        label: the visible "AI-generated" label.
        watermark: the invisible grant-id mark; None when ``consent.watermark`` is off.

    Call :meth:`apply` on each frame before it is queued; swap :attr:`watermark` when the
    session goes on under another grant.
    """

    def __init__(self, label: AiLabel, watermark: InvisibleMark | None = None) -> None:
        self.label = label
        self.watermark = watermark

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A labelled, watermarked copy of ``image`` (one copy, one blend, one add)."""
        out = self.label.apply(image)
        if self.watermark is not None:
            self.watermark.apply(out)
        return out


def frame_stamp(settings: Settings, grant_id: str | None, size: int) -> FrameStamp:
    """Both marks a session puts on every frame, for ``size``-square frames: the visible
    "AI-generated" label, then (with ``consent.watermark``) the invisible watermark of
    ``grant_id`` (None: "synthetic"). Blocking: reads or creates the data dir's
    watermark key (~5 ms)."""
    from consent.watermark import Watermark
    from consent.watermark_key import WatermarkKey, key_dir

    watermark = None
    if settings.consent.watermark:
        key = WatermarkKey.load(key_dir(settings.data_dir))
        watermark = Watermark.make(key, grant_id, size)
    return FrameStamp(AiLabel(size), watermark)
