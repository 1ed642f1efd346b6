"""The invisible watermark: every frame a session sends carries its grant id (or "synthetic").

Use: the session builds one :class:`Watermark` per (grant, frame size) with
:meth:`Watermark.make` and calls :meth:`Watermark.apply` on every frame (through
``runtime.label.FrameStamp``, after the visible label). ``likeness consent
detect-watermark frame.png`` calls :func:`detect` with every grant id in the consent store.

Method: spread spectrum, keyed, content-independent
---------------------------------------------------
* The pattern lives in the luma (the same value is added to R, G and B: VP8 and JPEG
  keep luma best). It is defined in the 2-D Fourier domain in cycles per *frame*:
  every coefficient with radius 32-96 cycles per frame side (12,790 of them; 0.06-0.19
  cycles/px at 512 px) gets unit magnitude, a keyed random phase, and the sign of one of
  1,024 chips of the payload's code. The inverse FFT, scaled to an RMS of 2.6 grey levels
  and rounded, is the pattern.
* The payload is the grant id, or "synthetic" for synthetic avatars. Its code is 1,024
  signs from HMAC-SHA256(key, payload) (a 1,024-bit keyed digest); it is not decoded
  blind but matched against every grant of the store (soft decoding with the store as
  the code book, which is far stronger than carrying 128 bits with error correction).
* Phases, the chip of each coefficient and the codes all come from the server's secret
  (``consent.watermark_key``, 0600 next to the signing keys): without it nobody can
  detect the mark or forge a given grant id.
* Per frame it is one saturating add (``cv2.add`` of the positive part, ``cv2.subtract``
  of the negative part of the precomputed uint8 pattern): no transform, no content
  analysis. The pattern is made once per session (5 ms at 512²).
* Detection: luma → resized to 256² (any square size works, since the pattern is in
  cycles per frame) → FFT → for each band coefficient the cosine between its phase and
  the keyed phase (phase only, so the picture's own strength drops out) → summed per
  chip (y, 1,024 values) → score of a payload = code·y / |y|. For an image that does not
  carry that payload (unmarked, marked by another key or with another grant) the score
  is a sum of independent ±|yᵢ|/|y| terms (the keyed code knows nothing of the picture),
  so P(score ≥ t) ≤ exp(-t²/2) whatever the picture (Hoeffding). A match needs
  ``n·exp(-t²/2) ≤ 1e-9`` over n candidates: t = 6.4 for 1 grant, 7.1 for 100, 7.7 for
  10,000, 8.3 for a million. The right payload scores up to √1024 = 32. A second test,
  on |y|² (chi-square, ``presence``), tells a mark of this key whose grant is no longer
  in the store (purged) from no mark at all.

Why not ``invisible-watermark`` (0.2.0): its default dwtDct does not survive a 50 % resize
(checked in STACK.md), and its RivaGAN needs onnx weights and pulls ``opencv-python``,
which clashes with our ``opencv-python-headless``; both embed per frame with transforms
of the content (milliseconds per frame). Ours needs only numpy/OpenCV and costs one add.

Measured (2-core CPU, 512² frames, strength 2.6). Scores of the right grant (a match
needs about 7, the maximum is 32), on frames of the synthetic face from the procedural
generator and of the astronaut photo::

    change                                     synthetic      astronaut
    PSNR of the marked frame                   39.8 dB        39.9 dB
    none, or PNG                               30.1           29.8
    JPEG q90 / q75 / q50 / q30                 30/30/29/27    30/30/29/28
    resize to 50 % and back (+ JPEG q75)       30.0 (29.6)    29.5 (29.0)
    resize to 25 % and back                    24.9           22.4
    screenshot scaled to 720 px / 300 px       30.1 / 30.0    29.7 / 29.5
    stretched to 4:3 (the detector squares it) 30.1           29.7
    grey; brightness x0.7 + 20                 30.1           29.8
    Gaussian blur sigma 1 / sigma 2            30.0 / 29.7    29.5 / 26.2
    noise sigma 8                              29.5           29.0
    aiortc VP8 500 kbps (its default), >= 1 s  min 25.4       min 21.5
      its first second (coarse keyframe)       min 6.6        min 15.9
    aiortc VP8 250 kbps (its minimum), >= 1 s  min 14.3       min 12.1
      its first second                         min 3.5        min 7.1
    aiortc VP8 1.5 Mbps (its maximum)          min 25.7       min 25.9
    H.264 (libx264 ultrafast, 500 kbps)        min 12.3       min 17.9
    crop 2 % or 10 % at one corner             lost (< 1)     lost (< 1)
    rotate 1 or 5 degrees; mirror              lost (< 4)     lost (< 4)

Not survived: any crop (even 2 %), rotation or mirroring; a screenshot that includes
the page around the video; filming the screen. At VP8's lowest bitrate (250 kbps) the
first ~0.8 s of a synthetic face's stream (flat colours, a coarse first keyframe) is too
faint; the frames after it are strong. Frames smaller than 192 px keep only part of the
band (a 128 px frame scores ~5 after JPEG q75: not detected). The pattern is the same in
every frame of a session, so averaging many frames estimates it: it can then be removed,
or copied onto another image (still naming the same grant, never another one). It is
provenance, not proof: the visible label stays the first mark.

Cost at 512² (2 shared cores): label 0.045 ms, label + watermark 0.12 ms per frame
(0.07 ms the add alone; 1.9 ms at 2048²); the pattern 5 ms once per session; detection
2 ms per image plus 0.13 s for 10,000 candidate grants. False matches: 232 unmarked
images (scikit-image photos and random square crops, noise, flat and drawn images,
unmarked frames, frames marked by another key) against 101 candidates: best score 3.8,
no match, no "present".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from consent.watermark_key import WatermarkKey

SYNTHETIC = "synthetic"  # the payload of synthetic avatars' frames
BAND = (32.0, 96.0)  # radial band of the pattern, in cycles per frame side
CHIPS = 1024  # length of each payload's keyed code
ANALYSIS = 256  # detection looks at the luma resized to this square size
FALSE_MATCH = 1e-9  # allowed chance that an unmarked image matches any candidate
PRESENCE_THRESHOLD = 8.0  # "a mark of this key, grant unknown" (chi-square z, see detect)


@dataclass(frozen=True, slots=True)
class WatermarkOptions:
    """How strongly frames are marked.

    Attributes:
        strength: RMS of the added luma pattern in grey levels (0-255). 2.6 gives a PSNR of
            about 39.8 dB (3.2 is the most that keeps 38 dB). Weaker is less robust: at 1.5
            (44.5 dB) PNG/JPEG/resizing still read clearly, but VP8 at 250 kbps loses it.
    """

    strength: float = 2.6

    def __post_init__(self) -> None:
        if not 0.5 <= self.strength <= 8.0:
            raise ValueError(f"watermark strength must be 0.5-8 grey levels, got {self.strength}")


def payload_of(grant_id: str | None) -> str:
    """The payload a frame carries: the grant id (lower-case hex, no dashes) or "synthetic".

    Args:
        grant_id: the grant a real face is shown under; None for a synthetic avatar.
    """
    if grant_id is None:
        return SYNTHETIC
    text = grant_id.strip().lower().replace("-", "")
    if not text or text == SYNTHETIC:
        raise ValueError(f"not a grant id: {grant_id!r}")
    return text


@dataclass(frozen=True, slots=True)
class _Layout:
    """Which spectral coefficients carry the mark, their keyed phases and chips."""

    ky: np.ndarray  # vertical frequency (cycles per frame), may be negative
    kx: np.ndarray  # horizontal frequency, 1 .. BAND[1]
    phase: np.ndarray  # unit complex, keyed
    chip: np.ndarray  # chip index of each coefficient, keyed
    counts: np.ndarray  # coefficients per chip


@functools.lru_cache(maxsize=8)
def _layout(key: WatermarkKey) -> _Layout:
    lo, hi = BAND
    r = int(hi)
    ky, kx = np.meshgrid(np.arange(-r, r + 1), np.arange(1, r + 1), indexing="ij")
    radius = np.hypot(ky, kx)
    inside = (radius >= lo) & (radius < hi)
    ky, kx = ky[inside], kx[inside]
    n = ky.size
    u = np.frombuffer(key.stream("phase", 4 * n), dtype="<u4").astype(np.float64)
    phase = np.exp(2j * np.pi * u / 2.0**32)
    order = np.argsort(np.frombuffer(key.stream("chip", 4 * n), dtype="<u4"), kind="stable")
    chip = np.empty(n, np.int64)
    chip[order] = np.arange(n) % CHIPS
    counts = np.bincount(chip, minlength=CHIPS)
    return _Layout(ky, kx, phase, chip, counts)


def code_of(key: WatermarkKey, payload: str) -> np.ndarray:
    """The ±1 code (``CHIPS`` long, float64) of ``payload`` under ``key``."""
    bits = np.unpackbits(np.frombuffer(key.stream(f"code|{payload}", CHIPS // 8), np.uint8))
    return bits.astype(np.float64) * 2 - 1


def pattern(key: WatermarkKey, payload: str, size: int, strength: float) -> np.ndarray:
    """The float luma pattern (size, size) for ``payload``, RMS ``strength`` grey levels."""
    if size < 2 * BAND[0] + 2:
        raise ValueError(f"frames must be at least {2 * int(BAND[0]) + 2} px, got {size}")
    lay = _layout(key)
    code = code_of(key, payload)
    keep = (np.abs(lay.ky) < size / 2) & (lay.kx < size / 2)
    spectrum = np.zeros((size, size // 2 + 1), np.complex128)
    spectrum[lay.ky[keep] % size, lay.kx[keep]] = code[lay.chip[keep]] * lay.phase[keep]
    w = np.fft.irfft2(spectrum, s=(size, size))
    return w * (strength / w.std())


class Watermark:
    """A precomputed pattern for one payload and frame size; :meth:`apply` is one add.

    Build it with :meth:`make` (~10 ms at 512², blocking: call from a worker thread),
    then call :meth:`apply` on every frame before it is sent.
    """

    def __init__(self, payload: str, size: int, plus: np.ndarray, minus: np.ndarray) -> None:
        self.payload = payload
        self.size = size
        self._plus = plus  # uint8 (size, size, 3): where the pattern is positive
        self._minus = minus  # uint8 (size, size, 3): where it is negative

    @classmethod
    def make(
        cls,
        key: WatermarkKey,
        grant_id: str | None,
        size: int,
        options: WatermarkOptions | None = None,
    ) -> Watermark:
        """The watermark of ``grant_id`` (None: a synthetic avatar) for size×size frames."""
        options = options or WatermarkOptions()
        payload = payload_of(grant_id)
        w = np.rint(pattern(key, payload, size, options.strength))
        plus = np.clip(w, 0, 255).astype(np.uint8)
        minus = np.clip(-w, 0, 255).astype(np.uint8)
        return cls(payload, size, cv2.merge([plus] * 3), cv2.merge([minus] * 3))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Add the pattern to ``image`` (uint8 (size, size, 3)) in place and return it.

        The same value goes to R, G and B, so only the luma changes. Pass a copy when
        the caller's image must stay unchanged.
        """
        if image.shape != self._plus.shape or image.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 {self._plus.shape} frames, got {image.dtype} {image.shape}"
            )
        cv2.add(image, self._plus, dst=image)
        cv2.subtract(image, self._minus, dst=image)
        return image


def _luma(image: np.ndarray) -> np.ndarray:
    """Float32 luma of an RGB(A) or grey image (uint8 or float in 0-255)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        if img.shape[2] not in (3, 4):
            raise ValueError(f"expected an RGB, RGBA or grey image, got shape {img.shape}")
        rgb = img[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected an RGB, RGBA or grey image, got shape {img.shape}")
    return img.astype(np.float32)


def soft_chips(key: WatermarkKey, image: np.ndarray) -> np.ndarray:
    """The ``CHIPS`` soft chip values of ``image``: N(0, ≤1) each when it is not marked.

    The luma is resized to ``ANALYSIS``² (the pattern is defined in cycles per frame,
    so any square size works), and each band coefficient gives the cosine between its
    phase and the keyed phase (phase only: the picture's own strength drops out).
    """
    luma = _luma(image)
    h, w = luma.shape
    if min(h, w) < 16:
        raise ValueError(f"image too small to carry a watermark: {w}x{h}")
    shrink = h > ANALYSIS or w > ANALYSIS
    luma = cv2.resize(
        luma, (ANALYSIS, ANALYSIS), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    spectrum = np.fft.rfft2(luma - luma.mean())
    lay = _layout(key)
    v = spectrum[lay.ky % ANALYSIS, lay.kx] * np.conj(lay.phase)
    mag = np.abs(v)
    cos = np.divide(v.real, mag, out=np.zeros_like(mag), where=mag > 1e-9)
    return np.bincount(lay.chip, cos, minlength=CHIPS) * np.sqrt(2.0 / lay.counts)


def scores(key: WatermarkKey, chips: np.ndarray, payloads: Iterable[str]) -> dict[str, float]:
    """Normalised correlation of ``chips`` with each payload's code.

    For an image not marked with that payload (unmarked, or marked with another one)
    the score is a sum of independent ±|y_i|/|y| terms, so ``P(score ≥ t) ≤ exp(-t²/2)``
    whatever the picture; the right payload scores up to ``√CHIPS`` (32).
    """
    norm = float(np.linalg.norm(chips)) or 1.0
    return {p: float(code_of(key, p) @ chips) / norm for p in payloads}


def threshold(candidates: int) -> float:
    """The score a match needs so that ``candidates`` tries give a false match with
    probability below ``FALSE_MATCH`` (Hoeffding: ``n·exp(-t²/2) ≤ FALSE_MATCH``)."""
    return math.sqrt(2 * math.log(max(candidates, 1) / FALSE_MATCH))


@dataclass(frozen=True, slots=True)
class Detection:
    """What :func:`detect` found.

    Attributes:
        found: a candidate matched: ``grant_id`` (or ``synthetic``) is the answer.
        grant_id: the matched grant id; None when nothing matched or it is synthetic.
        synthetic: the frame is from a synthetic avatar (made by likeness).
        score: the best candidate's score (threshold ``needed``; the maximum is 32).
        needed: the score a match needed with this many candidates.
        false_match: bound on the chance that an unmarked image scores this high.
        presence: chi-square z of the chips' energy: ≥ ``PRESENCE_THRESHOLD`` means a
            mark made with this key is there even when no candidate matches (a grant
            purged from the store).
    """

    found: bool
    grant_id: str | None
    synthetic: bool
    score: float
    needed: float
    false_match: float
    presence: float

    @property
    def present(self) -> bool:
        """A mark of this key is in the image (matched or not)."""
        return self.found or self.presence >= PRESENCE_THRESHOLD


def detect(key: WatermarkKey, image: np.ndarray, grant_ids: Iterable[str]) -> Detection:
    """Look for the mark of any of ``grant_ids`` (and of "synthetic") in ``image``.

    Args:
        key: the server's watermark key (the one the frames were stamped with).
        image: the frame, uint8 RGB/RGBA/grey of any square size.
        grant_ids: every grant id the frame could carry (the consent store's grants).

    Returns:
        The best candidate and its score. When ``found`` is False, report "no likeness
        watermark found" (or, if ``present``, a mark whose grant is not in the store).
    """
    chips = soft_chips(key, image)
    candidates = {payload_of(g): g for g in grant_ids}
    candidates[SYNTHETIC] = None
    result = scores(key, chips, candidates)
    best = max(result, key=result.__getitem__)
    score = result[best]
    needed = threshold(len(candidates))
    energy = float(chips @ chips)
    presence = (energy - CHIPS) / math.sqrt(2 * CHIPS)
    found = score >= needed
    return Detection(
        found=found,
        grant_id=candidates[best] if found else None,
        synthetic=found and best == SYNTHETIC,
        score=score,
        needed=needed,
        false_match=min(1.0, len(candidates) * math.exp(-(max(score, 0.0) ** 2) / 2)),
        presence=presence,
    )


__all__ = [
    "ANALYSIS",
    "BAND",
    "CHIPS",
    "SYNTHETIC",
    "Detection",
    "Watermark",
    "WatermarkOptions",
    "code_of",
    "detect",
    "pattern",
    "payload_of",
    "scores",
    "soft_chips",
    "threshold",
]
