"""Where the neural model's face crop sits in the output frame, and pasting it back.

The neural generator works on a tight square face crop of side ``S`` (64, 256 or 512
pixels), framed as the training data were (``avatar.train.crops``: a square of
``crop_scale`` times the landmarks' longer extent, moved up by ``crop_shift`` of its
side). The output frame is the prepared avatar at the output size; every generated crop
is put back into it with the feathered paste-back of :func:`avatar.face.paste_back`
(same mask, same blending), with the mask and its footprint computed once per avatar.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar.procedural.renderer import fit_avatar
from avatar.train.crops import crop_frame, raw_boxes
from avatar.types import PreparedAvatar


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """The frame-to-crop affine (2x3) of :func:`avatar.train.crops.crop_frame`'s box."""
    cx, cy, side = (float(v) for v in box)
    s = size / side
    x0, y0 = cx - side / 2, cy - side / 2
    return np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5]])


@dataclass(frozen=True, slots=True, eq=False)
class FaceFraming:
    """One avatar's output frame, its model crop and the paste-back mask.

    Build it with :meth:`create`; use :attr:`model_input` once (encode the avatar) and
    :meth:`paste` for every generated crop.

    Attributes:
        frame: the avatar at the output size, uint8 (size, size, 3), read-only.
        crop: the model's face crop, uint8 (S, S, 3).
        matrix: frame-to-crop affine (2x3 float64), as :func:`avatar.face.paste_back` takes.
        feather_px: soft edge width in crop pixels.
    """

    frame: np.ndarray
    crop: np.ndarray
    matrix: np.ndarray
    feather_px: float
    _alpha: np.ndarray  # (n, 1) float32 weights of the pixels inside the footprint
    _inside: tuple[np.ndarray, np.ndarray]  # their (rows, cols)

    @classmethod
    def create(
        cls,
        avatar: PreparedAvatar,
        size: int,
        model_size: int,
        crop_scale: float = 1.8,
        crop_shift: float = -0.08,
        feather_px: float | None = None,
    ) -> FaceFraming:
        """Frame ``avatar`` at ``size`` px and cut its ``model_size`` px model crop."""
        frame, landmarks = fit_avatar(avatar, size)
        frame.setflags(write=False)
        box = raw_boxes(landmarks[None], crop_scale, crop_shift)[0]
        crop = crop_frame(frame, box, model_size)
        matrix = crop_matrix(box, model_size)
        feather = model_size / 16 if feather_px is None else float(feather_px)
        # The mask exactly as avatar.face.paste_back builds it.
        centres = np.arange(model_size, dtype=np.float32) + 0.5
        edge = np.minimum(centres, model_size - centres)
        ramp = np.clip(edge / max(feather, 1e-6), 0.0, 1.0)
        ramp = ramp * ramp * (3 - 2 * ramp)
        mask = np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        alpha = cv2.warpAffine(mask, matrix, (size, size), flags=flags, borderValue=0.0)
        inside = np.nonzero(alpha > 0)
        return cls(frame, crop, matrix, feather, alpha[inside][:, None], inside)

    @property
    def model_input(self) -> np.ndarray:
        """The crop as the runners take it: float32 [1, 3, S, S] in [-1, 1]."""
        x = self.crop.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        return np.ascontiguousarray(x, dtype=np.float32)

    def paste(self, crop: np.ndarray) -> np.ndarray:
        """A new output frame with the generated ``crop`` (uint8 (S, S, 3)) pasted in.

        Equal to ``avatar.face.paste_back(self.frame, crop, self.matrix, self.feather_px)``.
        """
        out = self.frame.copy()
        if not len(self._alpha):
            return out
        size = self.frame.shape[0]
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warped = cv2.warpAffine(
            np.ascontiguousarray(crop),
            self.matrix,
            (size, size),
            flags=flags,
            borderMode=cv2.BORDER_REPLICATE,
        )
        a = self._alpha
        blend = warped[self._inside].astype(np.float32) * a
        blend += self.frame[self._inside].astype(np.float32) * (1 - a)
        out[self._inside] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        return out
