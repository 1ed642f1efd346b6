"""Closed eyelids: the last touch of a blink.

The warp pulls each upper lid down onto its lower lid, but a thin rim of the eye
(white of the eye drawn just below the lid line, a bit of iris on a photo) can
stay visible where the lid outline is curved between landmarks. Near full
closure this paints the remaining opening, grown by about a pixel, with the lid's
own skin colour (sampled once above each eye), fading in as the lid shuts.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.procedural.geometry import curve, to_fixed

_EYES = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))


class LidPainter:
    """Paints shut eyelids of one face; build with :meth:`for_face`."""

    def __init__(self, colours: np.ndarray, grow: float) -> None:
        self.colours = colours  # (2, 3) float32 RGB 0..255, right eye then left
        self.grow = grow

    @classmethod
    def for_face(cls, image: np.ndarray, landmarks: np.ndarray, iod: float) -> LidPainter:
        """Sample each upper lid's skin: the band between the lid and the brow."""
        colours = []
        for eye, brow in ((_EYES[0], slice(17, 22)), (_EYES[1], slice(22, 27))):
            pts = landmarks[list(eye)]
            x0, x1 = pts[:, 0].min(), pts[:, 0].max()
            lid_y = pts[[1, 2], 1].mean()
            brow_y = landmarks[brow, 1].max()
            y0 = int(round(lid_y - 0.6 * (lid_y - brow_y)))
            y1 = int(round(lid_y - 0.3 * (lid_y - brow_y)))
            xa, xb = int(round(x0 + 0.25 * (x1 - x0))), int(round(x1 - 0.25 * (x1 - x0)))
            patch = image[max(y0, 0) : max(y1, y0 + 1), max(xa, 0) : max(xb, xa + 1)]
            colours.append(np.median(patch.reshape(-1, 3), axis=0) if patch.size else (128,) * 3)
        return cls(np.asarray(colours, np.float32), max(1.0, 0.012 * iod))

    def paint(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        closure: tuple[float, float],
        lids: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None,
    ) -> None:
        """Cover what is left of each eye opening, in place, as ``closure`` nears 1.

        Args:
            image: the frame, changed in place.
            landmarks: the frame's (warped) 68 landmarks.
            closure: the subject's right and left eye, 0 (open) to 1 (shut).
            lids: per eye, its upper and lower lid line from corner to corner (a dense
                mesh's rings); None draws them through the 68 landmarks.
        """
        for k, eye in enumerate(_EYES):
            alpha = float(np.clip((closure[k] - 0.7) / 0.25, 0.0, 1.0))
            if alpha <= 0.0:
                continue
            if lids is None:
                pts = landmarks[list(eye)].astype(np.float64)
                upper = curve(pts[[0, 1, 2, 3]], samples=6)
                lower = curve(pts[[3, 4, 5, 0]], samples=6) + [0.0, self.grow]
            else:
                upper = curve(lids[k][0], samples=3)
                lower = curve(lids[k][1][::-1], samples=3) + [0.0, self.grow]
            outline = np.concatenate([upper, lower[1:-1]])
            h, w = image.shape[:2]
            x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int) - 3, 0)
            x1, y1 = np.minimum(np.ceil(outline.max(0)).astype(int) + 4, [w, h])
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(mask, [to_fixed(outline - [x0, y0])], 255, cv2.LINE_AA, 4)
            m = cv2.GaussianBlur(mask, (0, 0), 0.7).astype(np.float32)[..., None] * (alpha / 255)
            roi = image[y0:y1, x0:x1].astype(np.float32)
            image[y0:y1, x0:x1] = (roi * (1.0 - m) + self.colours[k] * m + 0.5).astype(np.uint8)
