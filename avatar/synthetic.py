"""A synthetic demo face, drawn by code from its own 68 landmarks.

It is not a photo of anyone: every feature is painted from the landmarks it is
built on, so the landmarks are exact by construction. It gives the demo, the
tests and the benchmarks a face to animate without any photo, consent record or
model download, and it is labelled ``synthetic=True`` everywhere it goes.

Use :func:`make_demo_avatar` for a ready :class:`~avatar.types.PreparedAvatar`;
``seed`` picks a variant (skin and hair colour, hair style, face proportions), so
tests can animate several different faces. ``seed=0`` is the canonical demo face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar.procedural.geometry import curve, to_fixed
from avatar.types import PreparedAvatar

VERSION = "synthetic-demo-v1"

# Skin, hair and iris palettes (RGB, 0..1), from light to deep skin tones.
_SKINS = (
    (0.96, 0.80, 0.69),
    (0.91, 0.72, 0.58),
    (0.83, 0.62, 0.47),
    (0.69, 0.48, 0.34),
    (0.52, 0.35, 0.24),
    (0.38, 0.25, 0.17),
)
_HAIRS = (
    (0.20, 0.13, 0.09),
    (0.10, 0.08, 0.07),
    (0.42, 0.27, 0.15),
    (0.62, 0.32, 0.16),
    (0.78, 0.64, 0.40),
    (0.62, 0.60, 0.58),
)
_IRISES = ((0.36, 0.22, 0.12), (0.30, 0.45, 0.58), (0.33, 0.45, 0.30), (0.45, 0.36, 0.20))
_BACKGROUNDS = ((0.78, 0.83, 0.87), (0.85, 0.82, 0.76), (0.74, 0.80, 0.76), (0.82, 0.78, 0.84))
_SHIRTS = ((0.22, 0.33, 0.50), (0.55, 0.25, 0.28), (0.25, 0.42, 0.38), (0.30, 0.30, 0.34))
_HAIR_STYLES = ("bob", "short", "long")


@dataclass(frozen=True, slots=True)
class FaceStyle:
    """How one synthetic face looks. Lengths are fractions of the image size.

    Attributes:
        skin: skin colour, RGB in 0..1.
        hair: hair (and brow) colour, RGB in 0..1.
        iris: iris colour, RGB in 0..1.
        background: backdrop colour, RGB in 0..1.
        shirt: clothing colour, RGB in 0..1.
        hair_style: "bob", "short" or "long".
        face_half_width: half the face's width at the cheekbones.
        jaw_roundness: superellipse exponent of the jaw (2 is an oval, higher is squarer).
        chin_y: height of the chin.
        eye_y: height of the eye line.
        eye_half_spacing: half the distance between the eye centres.
        eye_width: width of one eye.
        nose_tip_y: height of the nose tip.
        mouth_y: height of the line between the lips.
        mouth_half_width: half the mouth's width.
        lip_fullness: scale of both lips' thickness.
        brow_arch: height of the brows' arch.
    """

    skin: tuple[float, float, float] = _SKINS[1]
    hair: tuple[float, float, float] = _HAIRS[0]
    iris: tuple[float, float, float] = _IRISES[0]
    background: tuple[float, float, float] = _BACKGROUNDS[0]
    shirt: tuple[float, float, float] = _SHIRTS[0]
    hair_style: str = "bob"
    face_half_width: float = 0.212
    jaw_roundness: float = 2.3
    chin_y: float = 0.765
    eye_y: float = 0.425
    eye_half_spacing: float = 0.094
    eye_width: float = 0.097
    nose_tip_y: float = 0.545
    mouth_y: float = 0.635
    mouth_half_width: float = 0.078
    lip_fullness: float = 1.0
    brow_arch: float = 0.016

    @classmethod
    def from_seed(cls, seed: int) -> FaceStyle:
        """The style of variant ``seed``; 0 is the canonical demo face."""
        if seed == 0:
            return cls()
        rng = np.random.default_rng([seed, 7])

        def pick(options):
            return options[int(rng.integers(len(options)))]

        def jitter(value: float, spread: float) -> float:
            return float(value + rng.uniform(-spread, spread))

        return cls(
            skin=pick(_SKINS),
            hair=pick(_HAIRS),
            iris=pick(_IRISES),
            background=pick(_BACKGROUNDS),
            shirt=pick(_SHIRTS),
            hair_style=pick(_HAIR_STYLES),
            face_half_width=jitter(0.212, 0.015),
            jaw_roundness=jitter(2.3, 0.3),
            chin_y=jitter(0.765, 0.012),
            eye_y=jitter(0.425, 0.008),
            eye_half_spacing=jitter(0.094, 0.006),
            eye_width=jitter(0.097, 0.007),
            nose_tip_y=jitter(0.545, 0.01),
            mouth_y=jitter(0.635, 0.01),
            mouth_half_width=jitter(0.078, 0.008),
            lip_fullness=jitter(1.0, 0.2),
            brow_arch=jitter(0.016, 0.006),
        )


def make_demo_avatar(size: int = 512, seed: int = 0) -> PreparedAvatar:
    """Draw the synthetic demo face (variant ``seed``) as a ready-to-animate avatar.

    Args:
        size: side of the square image in pixels (at least 64).
        seed: 0 for the canonical face; any other value draws a variant.

    Returns:
        A PreparedAvatar with ``synthetic=True`` and the exact landmarks it was drawn from.
    """
    if size < 64:
        raise ValueError(f"make_demo_avatar: size={size} is below 64 pixels")
    style = FaceStyle.from_seed(seed)
    landmarks = face_landmarks(style) * size
    image = draw_face(style, landmarks.astype(np.float32), size)
    return PreparedAvatar(
        id=f"{VERSION}-seed{seed}-{size}",
        image=image,
        landmarks=landmarks.astype(np.float32),
        synthetic=True,
    )


def face_landmarks(style: FaceStyle) -> np.ndarray:
    """The 68 landmarks (iBUG layout) of ``style``, in fractions of the image size."""
    s = style
    cx = 0.5
    pts = np.zeros((68, 2), np.float64)
    # Jaw 0-16: a superellipse from the temple on the image's left, round the chin.
    top = s.eye_y + 0.005
    depth = s.chin_y - top
    theta = np.linspace(0.0, np.pi, 17)
    exponent = 2.0 / s.jaw_roundness
    cos, sin = np.cos(theta), np.sin(theta)
    pts[:17, 0] = cx - s.face_half_width * np.sign(cos) * np.abs(cos) ** exponent
    pts[:17, 1] = top + depth * np.abs(sin) ** (exponent * 0.95)
    # Brows 17-21 (image left, outer to inner) and 22-26 (inner to outer).
    brow_y = s.eye_y - 0.052
    u = np.linspace(0.0, 1.0, 5)
    arch = s.brow_arch * np.sin(np.pi * (0.25 + 0.75 * u)) + 0.006 * (1 - u)
    inner, outer = 0.032, s.eye_half_spacing + 0.075
    xs = cx - (outer + (inner - outer) * u)
    pts[17:22] = np.stack([xs, brow_y - arch + 0.004], 1)
    pts[22:27] = np.stack([2 * cx - xs[::-1], (brow_y - arch + 0.004)[::-1]], 1)
    # Nose 27-30 (bridge to tip) and 31-35 (base, image left to right).
    bridge_top = s.eye_y - 0.012
    pts[27:31, 0] = cx
    pts[27:31, 1] = np.linspace(bridge_top, s.nose_tip_y, 4)
    base_y = s.nose_tip_y + 0.02
    pts[31:36, 0] = cx + np.array([-0.036, -0.018, 0.0, 0.018, 0.036])
    pts[31:36, 1] = base_y + np.array([-0.004, 0.003, 0.005, 0.003, -0.004])
    # Eyes: 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower lid.
    half, lid_up, lid_down = s.eye_width / 2, s.eye_width * 0.24, s.eye_width * 0.17
    for side, start in ((-1, 36), (1, 42)):
        ex = cx + side * s.eye_half_spacing
        outer_x, inner_x = ex + side * half, ex - side * half
        tilt = -0.004  # outer corners slightly higher
        corner_outer = (outer_x, s.eye_y + tilt)
        corner_inner = (inner_x, s.eye_y + 0.002)
        up1 = (ex + side * half * 0.3, s.eye_y - lid_up)
        up2 = (ex - side * half * 0.35, s.eye_y - lid_up * 0.95)
        lo1 = (ex - side * half * 0.35, s.eye_y + lid_down)
        lo2 = (ex + side * half * 0.3, s.eye_y + lid_down * 0.95)
        if side < 0:  # subject's right eye: 36 outer, 39 inner
            order = (corner_outer, up1, up2, corner_inner, lo1, lo2)
        else:  # subject's left eye: 42 inner, 45 outer
            order = (corner_inner, up2, up1, corner_outer, lo2, lo1)
        pts[start : start + 6] = order
    # Lips: 48-59 outer (48 left corner, 51 top, 54 right corner, 57 bottom), 60-67 inner.
    my, mw = s.mouth_y, s.mouth_half_width
    upper, lower = 0.026 * s.lip_fullness, 0.032 * s.lip_fullness
    corner_y = my - 0.003
    pts[48] = (cx - mw, corner_y)
    pts[49] = (cx - mw * 0.62, my - upper * 0.72)
    pts[50] = (cx - mw * 0.24, my - upper)
    pts[51] = (cx, my - upper * 0.86)
    pts[52] = (cx + mw * 0.24, my - upper)
    pts[53] = (cx + mw * 0.62, my - upper * 0.72)
    pts[54] = (cx + mw, corner_y)
    pts[55] = (cx + mw * 0.62, my + lower * 0.78)
    pts[56] = (cx + mw * 0.25, my + lower * 0.98)
    pts[57] = (cx, my + lower)
    pts[58] = (cx - mw * 0.25, my + lower * 0.98)
    pts[59] = (cx - mw * 0.62, my + lower * 0.78)
    pts[60] = (cx - mw * 0.9, corner_y + 0.001)
    pts[64] = (cx + mw * 0.9, corner_y + 0.001)
    for i, f in ((61, -0.45), (62, 0.0), (63, 0.45)):
        pts[i] = (cx + mw * f, my + 0.0015 * (1 - abs(f)))
    pts[65], pts[66], pts[67] = pts[63], pts[62], pts[61]  # a closed mouth
    return pts


# --------------------------------------------------------------------- drawing


def poly_mask(shape: tuple[int, int], polygons, blur: float = 0.0) -> np.ndarray:
    """An anti-aliased float mask (0..1) of filled polygons, optionally softened."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [to_fixed(p) for p in polygons], 255, cv2.LINE_AA, 4)
    out = mask.astype(np.float32) / 255.0
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    return out


def _line_mask(shape, points, thickness: float, blur: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.polylines(mask, [to_fixed(points)], False, 255, max(1, round(thickness)), cv2.LINE_AA, 4)
    out = mask.astype(np.float32) / 255.0
    return cv2.GaussianBlur(out, (0, 0), blur) if blur > 0 else out


def _blob(shape, center, radii, angle: float = 0.0) -> np.ndarray:
    """A soft elliptical gaussian blob, 1 at the centre."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    dx, dy = xx - center[0], yy - center[1]
    u, v = (dx * c + dy * s) / radii[0], (-dx * s + dy * c) / radii[1]
    return np.exp(-(u * u + v * v)).astype(np.float32)


def _paint(canvas: np.ndarray, mask: np.ndarray, color) -> None:
    m = mask[..., None]
    canvas *= 1.0 - m
    canvas += m * np.asarray(color, np.float32)


def _shade(canvas: np.ndarray, mask: np.ndarray, factor) -> None:
    """Multiply the colours under ``mask`` by ``factor`` (a scalar or RGB)."""
    canvas *= 1.0 + mask[..., None] * (np.asarray(factor, np.float32) - 1.0)


def draw_face(style: FaceStyle, lm: np.ndarray, size: int) -> np.ndarray:
    """Paint ``style`` from its landmarks ``lm`` (pixels) into a uint8 RGB image."""
    s = style
    shape = (size, size)
    px = size / 512.0  # one pixel of the 512 design
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    canvas = np.empty((size, size, 3), np.float32)
    # Backdrop: a soft vertical gradient with a gentle vignette.
    bg = np.asarray(s.background, np.float32)
    canvas[:] = bg * (1.05 - 0.12 * yy)[..., None]
    canvas *= (1.0 - 0.18 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2))[..., None]

    skin = np.asarray(s.skin, np.float32)
    hair = np.asarray(s.hair, np.float32)
    cx = lm[27, 0]
    chin = lm[8]
    jaw_w = lm[16, 0] - lm[0, 0]
    head_top = lm[19, 1] - 0.62 * (chin[1] - lm[19, 1])
    cranium_c = np.array([cx, lm[0, 1]])
    cranium_r = np.array([jaw_w / 2 * 1.03, lm[0, 1] - head_top])
    arc = np.linspace(0.0, np.pi, 40)
    cranium = np.stack(
        [cranium_c[0] + cranium_r[0] * np.cos(arc), cranium_c[1] - cranium_r[1] * np.sin(arc)], 1
    )
    head_poly = np.concatenate([curve(lm[:17], samples=6), cranium[1:-1]])
    head = poly_mask(shape, [head_poly], 1.0 * px)

    # Hair behind the head: a wider dome down to the jaw (bob) or the shoulders (long).
    if s.hair_style in ("bob", "long"):
        back_r = cranium_r * np.array([1.16, 1.1])
        bottom = chin[1] + (0.02 if s.hair_style == "bob" else 0.2) * size
        dome = np.stack(
            [cranium_c[0] - back_r[0] * np.cos(arc), cranium_c[1] - back_r[1] * np.sin(arc)], 1
        )
        sides = ([cx - back_r[0] * 1.02, bottom], [cx + back_r[0] * 1.02, bottom])
        back = np.concatenate([[sides[0]], dome, [sides[1]]])
        back_mask = poly_mask(shape, [curve(back, samples=4)], 2.0 * px)
        _paint(canvas, back_mask, hair * (0.72 + 0.15 * (1 - yy))[..., None])

    # Neck and shoulders.
    neck_top = lm[4, 1]
    neck_w = 0.3 * jaw_w
    neck = np.array(
        [
            [cx - neck_w, neck_top],
            [cx + neck_w, neck_top],
            [cx + neck_w * 1.08, size * 0.97],
            [cx - neck_w * 1.08, size * 0.97],
        ]
    )
    neck_mask = poly_mask(shape, [neck], 1.5 * px)
    neck_shade = np.clip(0.62 + 0.35 * (yy * size - chin[1]) / (0.12 * size), 0.62, 0.9)
    _paint(canvas, neck_mask, skin * neck_shade[..., None])
    shoulders = np.zeros(shape, np.uint8)
    cv2.ellipse(
        shoulders,
        (round(cx * 16), round(size * 1.1 * 16)),
        (round(size * 0.5 * 16), round(size * 0.26 * 16)),
        0,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        4,
    )
    shirt_mask = cv2.GaussianBlur(shoulders.astype(np.float32) / 255, (0, 0), 1.5 * px)
    neckline = np.zeros(shape, np.uint8)
    axes = (round(neck_w * 1.2 * 16), round(size * 0.05 * 16))
    cv2.ellipse(
        neckline,
        (round(cx * 16), round(size * 0.84 * 16)),
        axes,
        0,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        4,
    )
    collar = cv2.GaussianBlur(neckline.astype(np.float32) / 255, (0, 0), 1.0 * px)
    shirt_mask *= 1.0 - collar
    rim = np.clip(cv2.GaussianBlur(collar, (0, 0), 3 * px) - collar, 0, 1) * shirt_mask
    shirt = np.asarray(s.shirt, np.float32)
    _paint(canvas, shirt_mask, shirt * (1.0 - 0.25 * (xx - 0.5) ** 2 * 4)[..., None])
    _shade(canvas, np.clip(rim * 3, 0, 1), 0.7)

    # Ears, then the head with an ellipsoid shading lit from the upper left.
    for side, idx in ((-1, 2), (1, 14)):
        ear_c = (lm[idx, 0] + side * 0.012 * size, (lm[0, 1] + lm[idx, 1]) / 2 + 0.01 * size)
        ear = _blob(shape, ear_c, (0.022 * size, 0.045 * size))
        _paint(canvas, np.clip(ear * 2.2 - 0.9, 0, 1), skin * np.array([0.88, 0.76, 0.72]))
    face_c = np.array([cx, (head_top + chin[1]) / 2 + 0.04 * size])
    radii = np.array([jaw_w * 0.58, (chin[1] - head_top) * 0.56])
    u = (xx * size - face_c[0]) / radii[0]
    v = (yy * size - face_c[1]) / radii[1]
    nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    light = np.array([-0.35, -0.45, 0.82])
    light /= np.linalg.norm(light)
    diffuse = np.clip(u * light[0] + v * light[1] + nz * light[2], 0.0, 1.0)
    shade = 0.6 + 0.45 * diffuse
    warm = np.stack([shade, shade**1.15, shade**1.25], -1)
    _paint(canvas, head, skin * warm)

    def soft(center, r, angle=0.0):
        return _blob(shape, center, (r[0] * size, r[1] * size), angle) * head

    # Cheeks, eye sockets, nose and chin modelling.
    blush = np.array([1.02, 0.9, 0.88])
    for side, (eye0, eye1) in ((-1, (36, 41)), (1, (42, 47))):
        ec = lm[eye0 : eye1 + 1].mean(0)
        _shade(
            canvas,
            soft((ec[0] + side * 0.01 * size, lm[30, 1] + 0.005 * size), (0.05, 0.035)) * 0.5,
            blush,
        )
        _shade(canvas, soft((ec[0], ec[1] - 0.012 * size), (0.05, 0.03)) * 0.25, 0.82)
    nose_side = np.array(
        [[lm[27, 0] + 0.012 * size, lm[28, 1]], [lm[35, 0] + 0.004 * size, lm[35, 1] - 0.01 * size]]
    )
    side_mask = _line_mask(shape, nose_side, 6 * px, 6 * px) * head
    _shade(canvas, side_mask * 0.35, 0.78)
    ridge = _line_mask(shape, lm[27:31] + [-0.004 * size, 0], 3 * px, 3 * px)
    _shade(canvas, ridge * 0.5, 1.12)
    _shade(canvas, soft(lm[33] + [0.0, 0.012 * size], (0.03, 0.01)) * 0.35, 0.8)
    _shade(canvas, soft(lm[30] + [-0.004 * size, -0.004 * size], (0.012, 0.009)) * 0.6, 1.12)
    _shade(canvas, soft(lm[57] + [0.0, 0.022 * size], (0.04, 0.012)) * 0.3, 0.82)
    _shade(canvas, soft(chin - [0.0, 0.03 * size], (0.035, 0.02)) * 0.25, 1.1)
    _shade(canvas, soft(lm[30], (0.028, 0.018)) * 0.25, blush)
    for side, inner, outer in ((-1, 32, 31), (1, 34, 35)):
        nostril_c = (lm[inner] + lm[outer]) / 2 + [side * 0.002 * size, -0.003 * size]
        nostril = _blob(shape, nostril_c, (0.008 * size, 0.004 * size), side * 15)
        _shade(canvas, np.clip(nostril * 1.5 - 0.4, 0, 1), 0.55)
        wing = np.array(
            [
                lm[outer] + [0.0, -0.004 * size],
                lm[outer] + [side * 0.007 * size, -0.016 * size],
                lm[30] + [side * 0.02 * size, -0.01 * size],
            ]
        )
        _shade(canvas, _line_mask(shape, curve(wing, samples=6), 2 * px, 1.5 * px) * 0.4, 0.75)

    _draw_hair(canvas, s, lm, shape, head_top, cranium_c, cranium_r, size, yy)
    _draw_brows(canvas, hair, lm, shape, px)
    _draw_eyes(canvas, s, lm, shape, px, size)
    _draw_lips(canvas, skin, lm, shape, px)

    # Soft finish and a faint, fixed grain so the skin is not flat plastic.
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6 * px)
    grain = np.random.default_rng(11).normal(0.0, 0.006, (size, size, 1)).astype(np.float32)
    canvas += grain * head[..., None]
    return np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _draw_hair(canvas, s, lm, shape, head_top, cranium_c, cranium_r, size, yy) -> None:
    hair = np.asarray(s.hair, np.float32)
    cx = lm[27, 0]
    short = s.hair_style == "short"
    part_x = cx - 0.055 * size
    if short:  # a rounded hairline high on the forehead
        line_y = lm[19, 1] - 0.1 * size
        temple_l = lm[0] + [0.006 * size, -0.05 * size]
        temple_r = lm[16] + [-0.006 * size, -0.05 * size]
        hairline = np.array(
            [
                temple_l,
                [lm[17, 0] + 0.005 * size, line_y + 0.025 * size],
                [part_x, line_y],
                [lm[25, 0], line_y + 0.012 * size],
                temple_r,
            ]
        )
        over = cranium_r * np.array([1.06, 1.07])
    else:  # a fringe swept from a side parting
        line_y = lm[19, 1] - 0.06 * size
        temple_l = lm[0] + [0.003 * size, -0.01 * size]
        temple_r = lm[16] + [-0.003 * size, -0.01 * size]
        hairline = np.array(
            [
                temple_l,
                [lm[17, 0] - 0.004 * size, line_y + 0.035 * size],
                [lm[19, 0], line_y + 0.006 * size],
                [part_x + 0.03 * size, line_y - 0.012 * size],
                [lm[24, 0], line_y - 0.002 * size],
                [lm[26, 0] + 0.006 * size, line_y + 0.03 * size],
                temple_r,
            ]
        )
        over = cranium_r * np.array([1.12, 1.1])
    arc = np.linspace(0.1 * np.pi, 0.9 * np.pi, 40) if short else np.linspace(0.0, np.pi, 40)
    cap_top = np.stack(
        [cranium_c[0] + over[0] * np.cos(arc), cranium_c[1] - over[1] * np.sin(arc)], 1
    )
    parts = [curve(hairline, samples=8)]
    if not short:
        drop = lm[4, 1] if s.hair_style == "bob" else lm[6, 1]
        parts.append([[lm[14, 0] + 0.045 * size, drop], [cap_top[0, 0], drop]])
        parts.append(cap_top[1:-1])
        parts.append([[cap_top[-1, 0], drop], [lm[2, 0] - 0.045 * size, drop]])
    else:
        parts.append(cap_top[1:-1])
    mask = poly_mask(shape, [np.concatenate(parts)], 1.2 * size / 512)
    tone = 0.78 + 0.3 * np.clip((lm[19, 1] - yy * size) / (0.25 * size), 0, 1)
    sheen = _blob(
        shape, (cx - 0.06 * size, head_top + 0.07 * size), (0.13 * size, 0.04 * size), -20
    )
    _paint(canvas, mask, hair * (tone + 0.35 * sheen)[..., None])
    # Strands: thin curves from the parting, a little lighter and darker than the hair.
    rng = np.random.default_rng(3)
    strands = np.zeros((*shape, 3), np.float32)
    weight = np.zeros(shape, np.float32)
    for _ in range(90):
        side = rng.choice([-1.0, 1.0])
        start = np.array([part_x + rng.uniform(-0.01, 0.01) * size, head_top + 0.01 * size])
        end_y = rng.uniform(line_y, lm[2, 1] if not short else lm[0, 1] - 0.04 * size)
        end_x = cx + side * rng.uniform(0.1, 0.27) * size
        mid = (start + [end_x, end_y]) / 2 + [side * 0.07 * size, -0.06 * size]
        path = curve(np.array([start, mid, [end_x, end_y]]), samples=12)
        m = _line_mask(shape, path, 1, 0.0) * mask
        strands += m[..., None] * hair * rng.uniform(0.6, 1.5)
        weight += m
    _paint(canvas, np.clip(weight, 0, 1) * 0.3, strands / np.maximum(weight, 1e-3)[..., None])


def _draw_brows(canvas, hair, lm, shape, px) -> None:
    for a in (17, 22):
        pts = lm[a : a + 5].astype(np.float64)
        if a == 22:
            pts = pts[::-1]  # outer to inner, like the other brow
        path = curve(pts, samples=6)
        n = len(path)
        thick = (2.0 + 5.0 * np.linspace(0, 1, n) ** 0.7) * px
        d = np.gradient(path, axis=0)
        normal = np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(
            np.linalg.norm(d, axis=1, keepdims=True), 1e-6
        )
        upper = path + normal * thick[:, None] * 0.5
        lower = path - normal * thick[:, None] * 0.5
        mask = poly_mask(shape, [np.concatenate([upper, lower[::-1]])], 1.1 * px)
        _paint(canvas, mask * 0.92, hair * 0.8)


def _draw_eyes(canvas, s, lm, shape, px, size) -> None:
    iris_color = np.asarray(s.iris, np.float32)
    for start in (36, 42):
        e = lm[start : start + 6].astype(np.float64)
        upper = curve(e[[0, 1, 2, 3]], samples=8)
        lower = curve(e[[3, 4, 5, 0]], samples=8)
        outline = np.concatenate([upper, lower[1:-1]])
        width = np.linalg.norm(e[3] - e[0])
        center = e.mean(0)
        sclera = poly_mask(shape, [outline], 0.6 * px)
        yy = np.arange(shape[0], dtype=np.float32)[:, None]
        lid_shadow = np.clip((yy - e[1:3, 1].mean()) / (0.35 * width), 0, 1) * np.ones(
            (1, shape[1]), np.float32
        )
        white = np.array([0.93, 0.91, 0.88], np.float32)
        _paint(canvas, sclera, white * (0.78 + 0.2 * lid_shadow)[..., None])
        r = 0.23 * width
        ic = center + [0.0, -0.05 * width]
        iris = np.zeros(shape, np.float32)
        cv2.circle(
            iris, (round(ic[0] * 16), round(ic[1] * 16)), round(r * 16), 1.0, -1, cv2.LINE_AA, 4
        )
        iris = cv2.GaussianBlur(iris, (0, 0), 0.5 * px) * sclera
        ring = np.clip(_blob(shape, ic, (r, r)) * 1.6, 0, 1)
        _paint(canvas, iris, iris_color * (0.55 + 0.6 * ring)[..., None])
        pupil = np.clip(_blob(shape, ic, (r * 0.42, r * 0.42)) * 3 - 1.2, 0, 1) * sclera
        _paint(canvas, pupil, (0.05, 0.04, 0.04))
        glint = np.clip(
            _blob(shape, ic + [-0.35 * r, -0.4 * r], (r * 0.18, r * 0.18)) * 2.5 - 0.8, 0, 1
        )
        _paint(canvas, glint * sclera, (1.0, 1.0, 1.0))
        # Upper lid: skin shadow (crease) above, lashes along the lid, a faint lower lid.
        crease = upper + [0.0, -0.3 * width * 0.45]
        _shade(canvas, _line_mask(shape, crease, 2.5 * px, 2.0 * px) * 0.45, 0.72)
        lash_w = (1.5 + 3.0 * np.sin(np.linspace(0.15, 2.8, len(upper)))) * px
        outer_first = start == 36
        if not outer_first:
            lash_w = lash_w[::-1]
        for i in range(len(upper) - 1):
            seg = _line_mask(shape, upper[i : i + 2], lash_w[i], 0.0)
            _paint(canvas, seg * 0.9, (0.09, 0.06, 0.06))
        _shade(canvas, _line_mask(shape, lower, 1.5 * px, 0.8 * px) * 0.4, 0.75)


def _draw_lips(canvas, skin, lm, shape, px) -> None:
    rose = np.array([0.75, 0.42, 0.46], np.float32) * float(skin.mean() / 0.74)
    lip = 0.5 * skin * np.array([0.92, 0.7, 0.72], np.float32) + 0.5 * rose
    upper_outer = curve(lm[48:55].astype(np.float64), samples=8)
    lower_outer = curve(lm[[54, 55, 56, 57, 58, 59, 48]].astype(np.float64), samples=8)
    upper_inner = curve(lm[60:65].astype(np.float64), samples=8)
    lower_inner = curve(lm[[64, 65, 66, 67, 60]].astype(np.float64), samples=8)
    upper = np.concatenate([upper_outer, lm[64:65], upper_inner[::-1], lm[60:61]])
    lower = np.concatenate([lower_outer, lm[60:61], lower_inner[::-1], lm[64:65]])
    up_mask = poly_mask(shape, [upper], 0.8 * px)
    lo_mask = poly_mask(shape, [lower], 0.8 * px)
    _paint(canvas, up_mask, lip * 0.86)
    lower_top = lm[[65, 66, 67]][:, 1].mean()
    lower_bottom = lm[57, 1]
    yy = np.arange(shape[0], dtype=np.float32)[:, None] * np.ones((1, shape[1]), np.float32)
    t = np.clip((yy - lower_top) / max(lower_bottom - lower_top, 1.0), 0, 1)
    _paint(
        canvas,
        lo_mask,
        lip[None, None, :] * (0.95 + 0.18 * np.sin(np.pi * t) - 0.12 * t)[..., None],
    )
    mid = curve(lm[[60, 61, 62, 63, 64]].astype(np.float64), samples=8)
    _paint(canvas, _line_mask(shape, mid, 1.3 * px, 0.7 * px) * 0.6, lip * 0.4)
    corners = _line_mask(shape, mid[:3], 2.5 * px, 1.0 * px) + _line_mask(
        shape, mid[-3:], 2.5 * px, 1.0 * px
    )
    _shade(canvas, np.clip(corners, 0, 1) * 0.5, 0.7)
