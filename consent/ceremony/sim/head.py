"""A bona fide synthetic head: a textured 3-D head that really turns and reflects the screen.

The consent ceremony's attack suite needs faces that behave like a live person in front
of the enrolment page: when the head turns, the far cheek slides behind the nose and
the cheekbone, the ears and hair move on the silhouette and the shading follows the
surface; when the page flashes a colour, the face (close to the screen) takes the
colour on and the wall behind (far away) barely does. A 2.5-D warp of a photo does
none of that, so these frames are the "bona fide" side of the suite.

How it is made:

* Texture: :func:`avatar.synthetic.draw_face` paints the person (mouth opened as in
  :func:`consent.liveness.testclips.posed_landmarks`, the mouth interior added), at
  :data:`_SUPERSAMPLE` times the output scale, reduced once. The neck and shirt are
  cut out of it: they stay with the body and do not turn.
* Geometry: a height field over the texture, the head as an ellipsoid (hair, ears and
  all, deeper than wide) plus a raised face, the nose ridge and tip, nostril wings,
  eye sockets, brows, cheekbones, lips and chin. Normals come from its gradient.
* Turning: rotation about a vertical axis behind the face (yaw), then about a
  horizontal one at the ears (pitch), orthographic. A rotation about one image axis
  keeps the other axis's lines, so each pass works along rows (or columns): a texel is
  visible exactly when it lands at or beyond every texel on the camera's side of it
  (a running max, :func:`_unfold`), and the visible texels, in order, give the inverse
  map that ``cv2.remap`` samples. No holes, and occlusion is exact for the height field.
* Light: ``albedo * (ambient + key_intensity * max(0, n.key_light))`` plus
  ``albedo * screen_rgb * screen_gain * max(0, n.z)`` (the screen sits at the camera);
  the wall gets ``background_screen_gain`` instead. Then seeded sensor noise per frame.

Cost (``taskset -c 0``, ``OMP_NUM_THREADS=1``, ``cv2.setNumThreads(1)``, 320 px, seed 0,
on a shared 2-core machine, median of 40): 12.4 ms frontal, 13.0 ms at yaw 30, 17.8 ms
at yaw 30 with pitch 10 (the budget is 25 ms). The first frame of each mouth level
paints its texture (1.4 s), cached per style, portrait size and level.

Sign convention: yaw as :class:`avatar.types.HeadPose` (positive: the face turns to the
image's left, the subject's right); positive pitch: chin up. This is a test and
benchmark tool, never a consent: every frame is of a person who does not exist.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from avatar.procedural.geometry import curve, to_fixed
from avatar.synthetic import FaceStyle, draw_face
from consent.liveness.testclips import posed_landmarks

MOUTH_LEVELS = 8  # the mouth opening is quantised to this many textures
MAX_YAW_DEG = 60.0  # a height field has no back of the head to show beyond this
MAX_PITCH_DEG = 30.0
_SUPERSAMPLE = 1.5  # the face is painted at this multiple of its output scale
_PIVOT_Z = -0.03  # depth of the turning axis, portrait fractions (0: the head's middle plane)
_MOUTH_INSIDE = (0.27, 0.09, 0.10)
_TEETH = (0.86, 0.83, 0.76)


@dataclass(frozen=True, slots=True)
class Scene:
    """The room, the camera and the screen around the head.

    Attributes:
        size: side of the square output frame, pixels (at least 64).
        face_scale: apparent size of the head (its distance to the camera), 0.75..1.25;
            1.0 frames the head like the synthetic demo portrait.
        ambient: room light reaching every surface, RGB colour times intensity (>= 0).
        key_light: direction towards the room's main light in camera coordinates (x
            right, y down, z towards the camera); normalised on use, must not be zero.
        key_intensity: strength of the key light (>= 0).
        screen_gain: how much of the screen's colour reaches a face that looks into
            the camera (the screen sits at the camera; 1/d^2 of the face's distance).
        background_screen_gain: the same for the wall behind (much farther away).
        noise: camera sensor noise, standard deviation in 8-bit levels (>= 0).
        seed: the wall's pattern and, with the frame index, the noise (>= 0).
    """

    size: int = 320
    face_scale: float = 1.0
    ambient: tuple[float, float, float] = (0.75, 0.75, 0.75)
    key_light: tuple[float, float, float] = (-0.4, -0.3, 0.86)
    key_intensity: float = 0.35
    screen_gain: float = 0.35
    background_screen_gain: float = 0.03
    noise: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 64:
            raise ValueError(f"Scene.size must be an integer of at least 64 px, got {self.size}")
        if not 0.75 <= self.face_scale <= 1.25:
            raise ValueError(f"Scene.face_scale must be in 0.75..1.25, got {self.face_scale}")
        for name in ("ambient", "key_light"):
            value = getattr(self, name)
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"Scene.{name} must be three finite numbers, got {value}")
        if min(self.ambient) < 0:
            raise ValueError(f"Scene.ambient must not be negative, got {self.ambient}")
        if math.hypot(*self.key_light) < 1e-6:
            raise ValueError("Scene.key_light must be a direction, got a zero vector")
        for name in ("key_intensity", "screen_gain", "background_screen_gain", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Scene.{name} must be a finite number >= 0, got {value}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"Scene.seed must be a non-negative integer, got {self.seed}")


class Head:
    """A textured 3-D head of one synthetic person, rendered per frame.

    Construction is cheap; the first :meth:`render` of each mouth level paints its
    texture (about a second), later frames take milliseconds.

    Args:
        style: the person (:meth:`avatar.synthetic.FaceStyle.from_seed`).
        scene: the room, camera and screen.
    """

    def __init__(self, style: FaceStyle, scene: Scene) -> None:
        self.style = style
        self.scene = scene
        self.portrait_px = round(scene.size * scene.face_scale)
        self._offset = (scene.size - self.portrait_px) // 2  # portrait origin in the frame
        light = np.asarray(scene.key_light, np.float32)
        self._light = light / np.linalg.norm(light)
        self._ambient = np.asarray(scene.ambient, np.float32)
        self._static: tuple[np.ndarray, np.ndarray] | None = None

    def render(
        self,
        yaw_deg: float,
        mouth_open: float = 0.0,
        screen_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0),
        pitch_deg: float = 0.0,
        frame_index: int = 0,
    ) -> np.ndarray:
        """One camera frame of the head turned by ``yaw_deg`` and ``pitch_deg``.

        Args:
            yaw_deg: HeadPose sign (positive: the face turns to the image's left),
                at most :data:`MAX_YAW_DEG` either way.
            mouth_open: 0 (closed) .. 1 (wide), quantised to :data:`MOUTH_LEVELS`.
            screen_rgb: the colour the screen shows now, each 0..1.
            pitch_deg: positive: chin up; at most :data:`MAX_PITCH_DEG` either way.
            frame_index: picks the sensor noise (same arguments, same frame).

        Returns:
            uint8 RGB (size, size, 3).

        Raises:
            ValueError: an argument is non-finite or out of its range.
        """
        screen = _check_args(yaw_deg, mouth_open, screen_rgb, pitch_deg, frame_index)
        image, _ = self._compose(yaw_deg, mouth_open, screen, pitch_deg)
        scene = self.scene
        out = image * 255.0
        if scene.noise > 0:
            rng = np.random.default_rng([scene.seed, int(frame_index), 0x5E45])
            out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(scene.noise)
        np.clip(out + 0.5, 0.0, 255.0, out=out)
        return out.astype(np.uint8)

    def photo(self, size: int = 256) -> np.ndarray:
        """A frontal, mouth-closed, evenly lit still of this person, without screen
        light or noise: the enrolment photo, or the attacker's public photo.

        Args:
            size: side of the square photo (at least 64).

        Returns:
            uint8 RGB (size, size, 3).
        """
        even = replace(
            self.scene,
            size=size,
            face_scale=1.0,
            ambient=(0.85, 0.85, 0.85),
            key_light=(0.0, 0.0, 1.0),
            key_intensity=0.2,
            screen_gain=0.0,
            background_screen_gain=0.0,
            noise=0.0,
        )
        return Head(self.style, even).render(0.0)

    def coverage(
        self, yaw_deg: float, mouth_open: float = 0.0, pitch_deg: float = 0.0
    ) -> np.ndarray:
        """The head's (turning part's) opacity in the frame, float32 (size, size) 0..1:
        its silhouette, hair and ears included, the neck and shirt not."""
        _check_args(yaw_deg, mouth_open, (0.0, 0.0, 0.0), pitch_deg, 0)
        return self._compose(yaw_deg, mouth_open, np.zeros(3, np.float32), pitch_deg)[1]

    def visible_texels(self, yaw_deg: float, mouth_open: float = 0.0) -> np.ndarray:
        """Which texels of the head are in sight after a turn by ``yaw_deg``.

        Returns:
            bool (portrait_px, portrait_px) over the unturned portrait (where
            ``face_landmarks(style) * portrait_px`` are the landmarks): True where
            the head is opaque and no part of it stands between the texel and the camera.
        """
        _check_args(yaw_deg, mouth_open, (0.0, 0.0, 0.0), 0.0, 0)
        layer = self._layer(mouth_open)
        u = self._turned_columns(layer, math.radians(yaw_deg))[0]
        visible = _visible(u, math.sin(math.radians(yaw_deg)))
        out = np.zeros((self.portrait_px, self.portrait_px), bool)
        h, w = visible.shape
        out[layer.top : layer.top + h, layer.left : layer.left + w] = visible & (
            layer.color[..., 3] > 0.5
        )
        return out

    # ------------------------------------------------------------------ rendering

    def _layer(self, mouth_open: float) -> _Layer:
        level = round(float(np.clip(mouth_open, 0.0, 1.0)) * (MOUTH_LEVELS - 1))
        return _head_layer(self.style, self.portrait_px, level)

    def _turned_columns(self, layer: _Layer, yaw: float):
        """Where each texel lands along its row (portrait px) and its depth after the yaw."""
        h, w = layer.depth.shape
        centre, pivot = 0.5 * self.portrait_px, _PIVOT_Z * self.portrait_px
        x = (np.arange(w, dtype=np.float32) + (layer.left + 0.5 - centre))[None, :]
        z = layer.depth - pivot
        cos, sin = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
        return x * cos - z * sin + centre, x * sin + z * cos + pivot

    def _compose(self, yaw_deg, mouth_open, screen, pitch_deg) -> tuple[np.ndarray, np.ndarray]:
        """The lit frame (float32 0..1, before noise) and the head's opacity in it."""
        size, off = self.scene.size, self._offset
        base, screen_coeff = self._static_layers()
        image = base + screen_coeff * screen
        alpha = np.zeros((size, size), np.float32)
        layer = self._layer(mouth_open)
        yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
        h, _ = layer.depth.shape

        # Pass 1, yaw: along the texture's rows, onto the frame's columns.
        u, zc = self._turned_columns(layer, yaw)
        lo, hi = float(u.min()), float(u.max())
        c0, c1 = max(0, math.floor(lo + off)), min(size, math.ceil(hi + off) + 1)
        if c1 <= c0:
            return image, alpha
        queries = np.arange(c0, c1, dtype=np.float32) + (0.5 - off)
        map_x = _unfold(u, math.sin(yaw), queries)
        map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], map_x.shape)
        color = cv2.remap(layer.color, map_x, map_y, cv2.INTER_LINEAR)
        geometry = cv2.remap(
            np.dstack([layer.normal, zc]), map_x, map_y, cv2.INTER_LINEAR
        )  # normals (head axes) and depth after the yaw
        normal = geometry[..., :3]
        cos, sin = math.cos(yaw), math.sin(yaw)
        nx = normal[..., 0] * cos - normal[..., 2] * sin
        nz = normal[..., 0] * sin + normal[..., 2] * cos
        ny = normal[..., 1]
        rows = np.arange(h) + layer.top + off  # frame row of each texture row

        # Pass 2, pitch: along the frame's columns, the same way.
        if pitch != 0.0:
            centre, pivot = layer.pitch_axis * self.portrait_px, _PIVOT_Z * self.portrait_px
            y = (np.arange(h, dtype=np.float32) + (layer.top + 0.5 - centre))[:, None]
            cos, sin = math.cos(pitch), math.sin(pitch)
            v = y * cos - (geometry[..., 3] - pivot) * sin + centre  # (h, columns)
            r0 = max(0, math.floor(float(v.min()) + off))
            r1 = min(size, math.ceil(float(v.max()) + off) + 1)
            if r1 <= r0:
                return image, alpha
            queries = np.arange(r0, r1, dtype=np.float32) + (0.5 - off)
            map_y = np.ascontiguousarray(_unfold(np.ascontiguousarray(v.T), sin, queries).T)
            map_x = np.broadcast_to(
                np.arange(map_y.shape[1], dtype=np.float32)[None, :], map_y.shape
            )
            color = cv2.remap(color, map_x, map_y, cv2.INTER_LINEAR)
            turned = cv2.remap(np.dstack([nx, ny, nz]), map_x, map_y, cv2.INTER_LINEAR)
            nx = turned[..., 0]
            ny = turned[..., 1] * cos - turned[..., 2] * sin
            nz = turned[..., 1] * sin + turned[..., 2] * cos
            rows = np.arange(r0, r1)

        keep = (rows >= 0) & (rows < size)
        if not keep.any():
            return image, alpha
        k0, k1 = int(np.argmax(keep)), len(keep) - int(np.argmax(keep[::-1]))
        color, nx, ny, nz = color[k0:k1], nx[k0:k1], ny[k0:k1], nz[k0:k1]
        f0, f1 = int(rows[k0]), int(rows[k0]) + (k1 - k0)
        lx, ly, lz = (float(c) for c in self._light)
        key = np.maximum(nx * lx + ny * ly + nz * lz, 0.0) * np.float32(self.scene.key_intensity)
        front = np.maximum(nz, 0.0) * np.float32(self.scene.screen_gain)
        light = self._ambient + key[..., None] + front[..., None] * screen
        a = color[..., 3]
        region = image[f0:f1, c0:c1]
        region *= 1.0 - a[..., None]
        region += color[..., :3] * light
        alpha[f0:f1, c0:c1] = a
        return image, alpha

    def _static_layers(self) -> tuple[np.ndarray, np.ndarray]:
        """The wall and the body, lit by the room: ``base + screen_rgb * coeff``."""
        if self._static is None:
            self._static = _static_layers(self.style, self.scene, self.portrait_px, self._offset)
        return self._static


def _check_args(yaw_deg, mouth_open, screen_rgb, pitch_deg, frame_index) -> np.ndarray:
    if not math.isfinite(yaw_deg) or abs(yaw_deg) > MAX_YAW_DEG:
        raise ValueError(f"yaw_deg must be finite and within +-{MAX_YAW_DEG:g}, got {yaw_deg}")
    if not math.isfinite(pitch_deg) or abs(pitch_deg) > MAX_PITCH_DEG:
        raise ValueError(
            f"pitch_deg must be finite and within +-{MAX_PITCH_DEG:g}, got {pitch_deg}"
        )
    if not (math.isfinite(mouth_open) and 0.0 <= mouth_open <= 1.0):
        raise ValueError(f"mouth_open must be in 0..1, got {mouth_open}")
    screen = np.asarray(screen_rgb, np.float32)
    if screen.shape != (3,) or not np.all(np.isfinite(screen)) or np.any(screen < 0):
        raise ValueError(f"screen_rgb must be three finite numbers >= 0, got {screen_rgb}")
    if int(frame_index) != frame_index or frame_index < 0:
        raise ValueError(f"frame_index must be a non-negative integer, got {frame_index}")
    return screen


def _visible(u: np.ndarray, sin: float) -> np.ndarray:
    """Texels not hidden by the surface, per row of ``u`` (where each texel lands).

    The camera looks along the turned z axis; with ``sin < 0`` it sees the row from its
    low end, so a texel is hidden exactly when one before it lands further on (the
    surface folds over it), and the other way round for ``sin > 0``.
    """
    if sin > 0:
        return u <= np.minimum.accumulate(u[:, ::-1], axis=1)[:, ::-1]
    if sin < 0:
        return u >= np.maximum.accumulate(u, axis=1)
    return np.ones(u.shape, bool)


def _unfold(u: np.ndarray, sin: float, queries: np.ndarray) -> np.ndarray:
    """The texel column seen at each query position of each row (float32 (rows, queries)).

    ``u[r, c]`` is where texel c of row r lands. The visible texels land in increasing
    order, so one ``np.interp`` over all rows (each row shifted by ``span``) inverts
    them; a query outside a row's texels gets its end texel (transparent margin).
    """
    h = u.shape[0]
    rows, cols = np.nonzero(_visible(u, sin))
    landed = u[rows, cols]
    bounds = np.searchsorted(rows, np.arange(h + 1))
    lo, hi = landed[bounds[:-1]], landed[bounds[1:] - 1]
    span = float((hi - lo).max()) + 2.0
    shift = np.arange(h, dtype=np.float64) * span - lo
    keys = landed + shift[rows]
    q = np.clip(queries[None, :], lo[:, None], hi[:, None]) + shift[:, None]
    return np.interp(q, keys, cols.astype(np.float64)).astype(np.float32)


# ------------------------------------------------------------------ the head's texture


@dataclass(frozen=True, slots=True, eq=False)
class _Layer:
    """The turning part of the head, cropped from the portrait (portrait px).

    Attributes:
        color: (h, w, 4) float32, RGB premultiplied by alpha, and alpha.
        normal: (h, w, 3) float32 unit normals, head axes (x right, y down, z out).
        depth: (h, w) float32 height towards the camera, portrait px.
        top: the crop's first row in the portrait.
        left: the crop's first column in the portrait.
        pitch_axis: height of the nodding axis, portrait fraction.
    """

    color: np.ndarray
    normal: np.ndarray
    depth: np.ndarray
    top: int
    left: int
    pitch_axis: float


@functools.lru_cache(maxsize=24)
def _head_layer(style: FaceStyle, portrait_px: int, level: int) -> _Layer:
    """Paint the head of ``style`` with mouth level ``level`` and build its geometry."""
    p = portrait_px
    mouth = level / (MOUTH_LEVELS - 1)
    lm = posed_landmarks(style, 0.0, mouth)  # portrait fractions
    drawn = round(p * _SUPERSAMPLE)
    lit = _paint(style, lm, drawn, p)
    dark = _paint(replace(style, background=(0.0, 0.0, 0.0)), lm, drawn, p)
    yy, xx = (np.mgrid[0:p, 0:p].astype(np.float32) + 0.5) / p
    # draw_face's backdrop: background * gradient * vignette; what differs is the wall.
    backdrop = (1.05 - 0.12 * yy) * (1.0 - 0.18 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2))
    seen = (lit - dark).sum(-1) / (float(sum(style.background)) * backdrop)
    figure = np.clip(1.0 - seen, 0.0, 1.0)  # everything painted over the wall
    body = _body_masks(style, lm, p, p)[0]
    above_jaw = np.zeros((p, p), np.uint8)
    jaw = curve(lm[:17], samples=6) * p
    outline = np.concatenate([jaw, [[jaw[-1, 0], 0.0], [jaw[0, 0], 0.0]]])
    cv2.fillPoly(above_jaw, [to_fixed(outline)], 255, cv2.LINE_AA, 4)
    alpha = np.clip(figure - body * (1.0 - above_jaw / np.float32(255.0)), 0.0, 1.0)
    # draw_face softens the body's edges: drop the faint rim left just outside it (hair
    # behind the shirt is opaque there and stays).
    rim = (cv2.dilate(body, np.ones((5, 5), np.uint8)) - body > 0.01) & (above_jaw < 128)
    alpha[rim & (alpha < 0.6)] = 0.0
    color = dark * (alpha / np.maximum(figure, 1e-3))[..., None]

    ys, xs = np.nonzero(alpha > 1e-3)
    margin = 3
    top, bottom = max(0, ys.min() - margin), min(p, ys.max() + margin + 1)
    left, right = max(0, xs.min() - margin), min(p, xs.max() + margin + 1)
    depth = _height_field(style, lm, p)[top:bottom, left:right]
    gy, gx = np.gradient(cv2.GaussianBlur(depth, (0, 0), 0.8))
    normal = np.dstack([-gx, -gy, np.ones_like(depth)])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    crop = (slice(top, bottom), slice(left, right))
    layer = _Layer(
        color=np.ascontiguousarray(np.dstack([color, alpha])[crop], np.float32),
        normal=np.ascontiguousarray(normal, np.float32),
        depth=np.ascontiguousarray(depth, np.float32),
        top=int(top),
        left=int(left),
        pitch_axis=float((lm[0, 1] + lm[3, 1]) / 2),
    )
    for array in (layer.color, layer.normal, layer.depth):
        array.flags.writeable = False
    return layer


def _paint(style: FaceStyle, lm: np.ndarray, drawn: int, p: int) -> np.ndarray:
    """draw_face at ``drawn`` px with the mouth interior, reduced to ``p`` px, float 0..1."""
    pts = (lm * drawn).astype(np.float32)
    image = draw_face(style, pts, drawn).astype(np.float32) / 255.0
    inner = pts[60:68]
    if inner[[5, 6, 7], 1].mean() - inner[[1, 2, 3], 1].mean() > 0.004 * drawn:
        hole = np.zeros((drawn, drawn), np.uint8)
        cv2.fillPoly(hole, [to_fixed(curve(inner, closed=True, samples=6))], 255, cv2.LINE_AA, 4)
        teeth = np.zeros_like(hole)
        top = curve(inner[[0, 1, 2, 3, 4]], samples=6)
        band = np.concatenate([top, top[::-1] + [0.0, 0.018 * drawn]])
        cv2.fillPoly(teeth, [to_fixed(band)], 255, cv2.LINE_AA, 4)
        m = (hole / 255.0)[..., None].astype(np.float32)
        t = (np.minimum(hole, teeth) / 255.0)[..., None].astype(np.float32)
        image = image * (1 - m) + m * np.float32(_MOUTH_INSIDE)
        image = image * (1 - t) + t * np.float32(_TEETH)
    return cv2.resize(image, (p, p), interpolation=cv2.INTER_AREA)


def _height_field(style: FaceStyle, lm: np.ndarray, p: int) -> np.ndarray:
    """Height towards the camera of the unturned head, portrait px, over the portrait.

    An ellipsoid as wide as the hair and deeper than wide (round above the eyes,
    flatter below), the face raised on it, then the features, each a soft bump
    placed on the landmarks.
    """
    yy, xx = (np.mgrid[0:p, 0:p].astype(np.float32) + 0.5) / p
    cx = float(lm[27, 0])
    chin = lm[8]
    jaw_w = float(lm[16, 0] - lm[0, 0])
    brow_y = float(lm[19, 1])
    head_top = brow_y - 0.62 * (chin[1] - brow_y)
    middle = float(lm[0, 1])
    a = 0.5 * jaw_w * 1.35  # the hair's edge falls inside, where the slope is finite
    up = (middle - head_top) * 1.12
    down = (chin[1] - middle) * 1.12
    dx = (xx - cx) / a
    dy = np.where(yy < middle, (yy - middle) / up, (yy - middle) / down)
    r2 = dx**2 + np.where(yy < middle, dy**2, np.abs(dy) ** 3)
    z = 0.85 * a * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))

    face = np.zeros((p, p), np.uint8)
    outline = np.concatenate([curve(lm[:17], samples=6), [[lm[26, 0], head_top + 0.05]]])
    outline = np.concatenate([outline, [[lm[17, 0], head_top + 0.05]]])
    cv2.fillPoly(face, [to_fixed(outline * p)], 255, cv2.LINE_AA, 4)
    z += 0.03 * cv2.GaussianBlur(face.astype(np.float32) / 255.0, (0, 0), 0.025 * p)

    def bump(centre, radii, height):
        u = (xx - centre[0]) / radii[0]
        v = (yy - centre[1]) / radii[1]
        return height * np.exp(-(u * u + v * v))

    # Nose: a ridge from the bridge to the tip, widening and rising, then tip and wings.
    start, end = lm[27], lm[30] + [0.0, 0.006]
    along = end - start
    t = np.clip(((xx - start[0]) * along[0] + (yy - start[1]) * along[1]) / (along @ along), 0, 1)
    across = np.hypot(xx - (start[0] + t * along[0]), yy - (start[1] + t * along[1]))
    width = 0.009 + 0.008 * t
    z += (0.02 + 0.05 * t) * np.exp(-((across / width) ** 2))
    z += bump(lm[30] + [0.0, 0.004], (0.016, 0.014), 0.015)
    for wing in (31, 35):
        z += bump(lm[wing] + [0.0, -0.006], (0.014, 0.012), 0.02)
    # Sockets under the brows, brow ridges, cheekbones.
    for eye, brow, side in ((slice(36, 42), 19, -1), (slice(42, 48), 24, 1)):
        centre = lm[eye].mean(0)
        z += bump(centre, (0.04, 0.024), -0.02)
        z += bump(lm[brow] + [0.0, -0.008], (0.055, 0.016), 0.012)
        z += bump(centre + [side * 0.025, 0.075], (0.04, 0.03), 0.012)
    # Lips (the mouth interior recessed), chin.
    mouth_c = lm[48:60].mean(0)
    z += bump(mouth_c, (style.mouth_half_width * 1.1, 0.03), 0.018)
    inner = np.zeros((p, p), np.uint8)
    cv2.fillPoly(inner, [to_fixed(lm[60:68] * p)], 255, cv2.LINE_AA, 4)
    z -= 0.02 * cv2.GaussianBlur(inner.astype(np.float32) / 255.0, (0, 0), 0.004 * p)
    z += bump(chin - [0.0, 0.03], (0.045, 0.03), 0.02)
    return (z * p).astype(np.float32)


# ------------------------------------------------------------------ wall and body


def _body_masks(style: FaceStyle, lm: np.ndarray, p: int, canvas: int, off: int = 0):
    """draw_face's neck and shirt as float masks ``(body, neck, shirt)`` on a square
    ``canvas`` where the portrait (side ``p``) starts at pixel ``off``."""

    def px(value: float) -> float:
        return off + value * p

    cx = px(float(lm[27, 0]))
    neck_w = 0.3 * float(lm[16, 0] - lm[0, 0]) * p
    top, bottom = px(float(lm[4, 1])), px(0.97)
    quad = np.array(
        [
            [cx - neck_w, top],
            [cx + neck_w, top],
            [cx + neck_w * 1.08, bottom],
            [cx - neck_w * 1.08, bottom],
        ]
    )
    neck = np.zeros((canvas, canvas), np.uint8)
    cv2.fillPoly(neck, [to_fixed(quad)], 255, cv2.LINE_AA, 4)
    shoulders = np.zeros_like(neck)
    axes = (round(p * 0.5 * 16), round(p * 0.26 * 16))
    cv2.ellipse(
        shoulders, (round(cx * 16), round(px(1.1) * 16)), axes, 0, 0, 360, 255, -1,
        cv2.LINE_AA, 4,
    )  # fmt: skip
    collar = np.zeros_like(neck)
    axes = (round(neck_w * 1.2 * 16), round(p * 0.05 * 16))
    cv2.ellipse(
        collar, (round(cx * 16), round(px(0.84) * 16)), axes, 0, 0, 360, 255, -1,
        cv2.LINE_AA, 4,
    )  # fmt: skip
    neck_m = neck.astype(np.float32) / 255.0
    shirt_m = (shoulders.astype(np.float32) / 255.0) * (1.0 - collar.astype(np.float32) / 255.0)
    return np.maximum(neck_m, shirt_m), neck_m, shirt_m


def _static_layers(style: FaceStyle, scene: Scene, p: int, off: int):
    """Wall and body at frame resolution, lit: ``(base, screen_coeff)`` float32 (S, S, 3)."""
    size = scene.size
    rng = np.random.default_rng([scene.seed, 0x3A11])
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    # The wall: the style's colour, a soft uneven wash, a rail, a picture, fine grain.
    wash = cv2.resize(
        rng.standard_normal((7, 7)).astype(np.float32), (size, size),
        interpolation=cv2.INTER_CUBIC,
    )  # fmt: skip
    tone = (1.04 - 0.1 * yy) * (1.0 + 0.05 * wash)
    rail = rng.uniform(0.62, 0.74)
    tone *= np.where(yy > rail, 0.92, 1.0)
    tone -= 0.25 * np.exp(-(((yy - rail) * size / 1.5) ** 2))
    wall = np.asarray(style.background, np.float32) * tone[..., None]
    side = rng.choice([-1.0, 1.0])
    fx0 = 0.5 + side * rng.uniform(0.22, 0.3)
    fw, fh, fy0 = rng.uniform(0.16, 0.24), rng.uniform(0.18, 0.26), rng.uniform(0.08, 0.2)
    frame = (np.abs(xx - fx0) < fw / 2) & (yy > fy0) & (yy < fy0 + fh)
    inside = (np.abs(xx - fx0) < fw / 2 - 0.015) & (yy > fy0 + 0.015) & (yy < fy0 + fh - 0.015)
    wall[frame] = np.float32([0.32, 0.24, 0.18])
    picture = rng.uniform(0.25, 0.85, 3).astype(np.float32)
    wall[inside] = picture * (0.8 + 0.2 * yy[inside, None])
    wall = cv2.GaussianBlur(wall, (0, 0), 0.6)
    wall *= 1.0 + 0.015 * rng.standard_normal((size, size, 1)).astype(np.float32)

    # The body: draw_face's neck and shirt, mapped into the frame.
    lm = posed_landmarks(style, 0.0, 0.0)
    body, neck, shirt = _body_masks(style, lm, p, size, off)
    portrait_y = (np.arange(size, dtype=np.float32) + 0.5 - off) / p
    portrait_x = portrait_y[None, :]
    chin = float(lm[8, 1])
    shade = np.clip(0.62 + 0.35 * (portrait_y[:, None] - chin) / 0.12, 0.62, 0.9)
    skin = np.asarray(style.skin, np.float32)
    cloth = np.asarray(style.shirt, np.float32) * (1.0 - (portrait_x - 0.5) ** 2)[..., None]
    neck_colour = skin * shade[..., None]
    albedo_body = cloth * shirt[..., None] + neck_colour * (neck * (1 - shirt))[..., None]
    albedo_body /= np.maximum(body, 1e-3)[..., None]
    # Normals: the neck a cylinder, the shoulders a dome.
    jaw_w = float(lm[16, 0] - lm[0, 0])
    nx_neck = np.clip((portrait_x - 0.5) / (0.36 * jaw_w), -0.9, 0.9)
    nx_shirt = np.clip((portrait_x - 0.5) / 0.5 * 0.7, -0.9, 0.9)
    ny_shirt = np.clip((portrait_y[:, None] - 1.1) / 0.26 * 0.7, -0.9, 0.9)
    nx = np.where(shirt > 0.5, nx_shirt, nx_neck) * np.ones((size, 1), np.float32)
    ny = np.where(shirt > 0.5, ny_shirt, 0.0)
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.01, 1.0))
    light = np.asarray(scene.key_light, np.float32)
    light /= np.linalg.norm(light)
    ambient = np.asarray(scene.ambient, np.float32)
    key_body = scene.key_intensity * np.maximum(nx * light[0] + ny * light[1] + nz * light[2], 0)
    key_wall = scene.key_intensity * max(float(light[2]), 0.0)
    b = body[..., None]
    base = wall * (ambient + key_wall) * (1 - b) + albedo_body * (ambient + key_body[..., None]) * b
    coeff = wall * scene.background_screen_gain * (1 - b)
    coeff += albedo_body * (scene.screen_gain * nz)[..., None] * b
    return base.astype(np.float32), coeff.astype(np.float32)
