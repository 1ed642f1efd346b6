"""The inside of the mouth, painted into the inner-lip outline as the lips part.

The warp only moves the lips; the gap between them shows whatever was stretched
there, so this paints over it: a dark cavity, lighter and redder near the lips
and darkest at the back, the upper teeth hanging from the upper lip (more of them
as the jaw opens, tapering towards the corners), a hint of the lower teeth and the
tongue once the mouth is well open. Colours are scaled to the face's brightness
so the teeth do not glow on a dim photo. Only a small box around the mouth is
touched, with anti-aliased edges.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.procedural.geometry import curve, to_fixed

_CAVITY_EDGE = np.array([0.42, 0.16, 0.17], np.float32)
_CAVITY_DEEP = np.array([0.10, 0.03, 0.04], np.float32)
_TEETH = np.array([0.98, 0.93, 0.87], np.float32)
_TONGUE = np.array([0.66, 0.30, 0.32], np.float32)


class MouthPainter:
    """Paints the mouth interior of one face.

    Args:
        iod: the face's eye distance in pixels (sets the teeth size).
        brightness: 0..1 scale for all colours (1 for a well-lit face).
        rest_gap: the inner-lip gap of the face at rest, pixels. A photo with parted
            lips (teeth showing in a smile) keeps its own mouth at rest: the painted
            interior fades in only as the mouth opens beyond that gap.
    """

    def __init__(self, iod: float, brightness: float = 1.0, rest_gap: float = 0.0) -> None:
        self.iod = float(iod)
        self.brightness = float(np.clip(brightness, 0.45, 1.0))
        self.rest_gap = float(max(rest_gap, 0.0))

    @classmethod
    def for_face(cls, image: np.ndarray, landmarks: np.ndarray, iod: float) -> MouthPainter:
        """Match the colours to the lighting of ``image`` (measured on the cheeks and nose)."""
        x0, y0 = np.floor(landmarks[[31, 29]].min(0)).astype(int)
        x1, y1 = np.ceil(landmarks[[35, 33]].max(0)).astype(int)
        patch = image[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)]
        luma = (
            float(patch.reshape(-1, 3).mean(0) @ [0.299, 0.587, 0.114]) / 255 if patch.size else 0.6
        )
        return cls(iod, luma / 0.62, _inner_gap(landmarks))

    def paint(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        teeth_show: float = 0.0,
        lips: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Paint the interior inside the inner lips of ``landmarks`` into ``image`` (uint8 RGB).

        Args:
            image: the frame, changed in place.
            landmarks: the frame's (warped) 68 landmarks.
            teeth_show: extra upper-teeth showing (lip lifted, as for f and v), 0..1.
            lips: the inner lip line, upper and lower, each (N, 2) from the corner of 60
                to the corner of 64 (a dense mesh's rings); None draws it through the
                68 landmarks' inner lips.
        """
        if lips is None:
            upper = curve(landmarks[60:65], samples=6)
            lower = curve(landmarks[[64, 65, 66, 67, 60]], samples=6)
        else:
            upper = curve(lips[0], samples=3)
            lower = curve(lips[1][::-1], samples=3)
        gaps = landmarks[[67, 66, 65], 1] - landmarks[[61, 62, 63], 1]
        gap = float(max(gaps.mean(), 0.0))
        if gaps.max() < 0.6:
            return
        opacity = 1.0
        if self.rest_gap >= 1.0:  # lips parted at rest: keep the photo's own mouth there
            opacity = float(np.clip((gap - self.rest_gap) / max(0.12 * self.iod, 1.0), 0.0, 1.0))
            if opacity <= 0.0:
                return
        outline = np.concatenate([upper, lower[1:-1]])
        h, w = image.shape[:2]
        x0, y0 = np.floor(outline.min(0)).astype(int) - 2
        x1, y1 = np.ceil(outline.max(0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        origin = np.array([x0, y0], np.float64)
        shape = (y1 - y0, x1 - x0)
        mask8 = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask8, [to_fixed(outline - origin)], 255, cv2.LINE_AA, 4)
        mask = mask8.astype(np.float32) / 255.0
        # Cavity: redder near the lips, darkest in the middle.
        depth = cv2.distanceTransform((mask8 > 127).astype(np.uint8), cv2.DIST_L2, 3)
        t = np.clip(depth / max(0.3 * gap, 1.0), 0.0, 1.0)[..., None]
        inside = _CAVITY_EDGE * (1.0 - t) + _CAVITY_DEEP * t
        width = float(np.linalg.norm(landmarks[64] - landmarks[60]))
        # Tongue: low in the mouth once it is open.
        if gap > 0.12 * self.iod:
            centre = (landmarks[66] + landmarks[62]) / 2 * [1, 0] + [
                0,
                landmarks[66, 1] + 0.1 * gap,
            ]
            axes = (0.34 * width, 0.42 * gap)
            tongue = np.zeros(shape, np.uint8)
            cv2.ellipse(
                tongue,
                tuple(int(v) for v in to_fixed(centre - origin)),
                tuple(int(v) for v in to_fixed(axes)),
                0.0, 0.0, 360.0, 255, -1, cv2.LINE_AA, 4,
            )  # fmt: skip
            tmask = (tongue.astype(np.float32) / 255.0)[..., None]
            yy = np.arange(shape[0], dtype=np.float32)[:, None, None] + y0
            shade = np.clip((yy - (centre[1] - axes[1])) / max(axes[1], 1.0), 0.35, 1.0)
            inside = inside * (1.0 - tmask) + _TONGUE * (0.55 + 0.45 * shade) * tmask
        # Teeth: a band under the upper lip, tapering towards the corners.
        tooth = min(0.4 * gap + 0.06 * self.iod * teeth_show, 0.1 * self.iod)
        self._teeth(inside, upper - origin, tooth, width, True)
        lower_tooth = min(max(gap - 0.16 * self.iod, 0.0) * 0.35, 0.05 * self.iod)
        if lower_tooth > 0.5:
            self._teeth(inside, lower[::-1] - origin, -lower_tooth, width, False)
        roi = image[y0:y1, x0:x1].astype(np.float32)
        colour = inside * (255.0 * self.brightness)
        m = mask[..., None] * opacity
        image[y0:y1, x0:x1] = np.clip(roi * (1.0 - m) + colour * m + 0.5, 0, 255).astype(np.uint8)

    def _teeth(self, inside, edge: np.ndarray, height: float, width: float, upper: bool) -> None:
        """Paint a row of teeth hanging from (or standing on) the lip curve ``edge``."""
        if abs(height) < 0.5:
            return
        u = np.linspace(0.0, 1.0, len(edge))
        taper = np.clip(np.sin(np.pi * np.clip((u - 0.08) / 0.84, 0.0, 1.0)), 0.0, 1.0) ** 0.5
        inner = edge + np.stack([np.zeros_like(u), height * taper], 1)
        top = edge - [0.0, 1.5 if upper else -1.5]  # tuck under the lip
        poly = np.concatenate([top, inner[::-1]])
        band = np.zeros(inside.shape[:2], np.uint8)
        cv2.fillPoly(band, [to_fixed(poly)], 255, cv2.LINE_AA, 4)
        bmask = (band.astype(np.float32) / 255.0)[..., None]
        # Shade: darker to the corners and away from the lip, gaps between the incisors.
        xs = np.arange(inside.shape[1], dtype=np.float32)
        centre_x = float(edge[len(edge) // 2, 0])
        across = np.clip(np.abs(xs - centre_x) / max(width / 2, 1.0), 0.0, 1.0)
        light = (1.0 - 0.4 * across**2)[None, :]
        gaps = np.ones_like(xs)
        for k in (-1, 0, 1):
            gaps -= 0.1 * np.exp(-(((xs - centre_x - k * 0.15 * width) / 0.5) ** 2))
        light = light * gaps[None, :]
        # The lip shades the teeth next to it.
        ys = np.arange(inside.shape[0], dtype=np.float32)[:, None]
        lip_y = float(edge[:, 1].mean())
        away = np.clip(np.abs(ys - lip_y) / (abs(height) + 1.0), 0.0, 1.0)
        shade = 0.78 + 0.22 * away if upper else 0.66 + 0.12 * away
        colour = _TEETH * (light * shade)[..., None]
        inside *= 1.0 - bmask
        inside += colour * bmask


def _inner_gap(landmarks: np.ndarray) -> float:
    """Mean vertical gap between the inner lips, pixels (0 when closed)."""
    return float(max((landmarks[[67, 66, 65], 1] - landmarks[[61, 62, 63], 1]).mean(), 0.0))
