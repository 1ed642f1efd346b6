"""Reading photos into the one image form the face code takes: uint8 RGB (H, W, 3).

Use :func:`read_image` for files and :func:`as_rgb` for arrays that came from elsewhere
(a camera frame, a decoded upload). Both fail with :class:`~avatar.errors.ImageInputError`
naming what was wrong, so a caller can show the message to the person who sent the photo.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar.errors import ImageInputError

_LOGGER = logging.getLogger(__name__)

# Beyond this many pixels Pillow refuses to decode (a decompression bomb guard).
MAX_PIXELS = 200_000_000


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo file as uint8 RGB, upright as its camera recorded it (EXIF orientation).

    Grayscale, palette, 16-bit and CMYK images are converted to RGB; transparent pixels
    (RGBA, LA) are laid over white.

    Args:
        path: a JPEG, PNG, WebP, BMP, TIFF... file that Pillow can decode.

    Returns:
        A new (H, W, 3) uint8 array. Pass it to ``FaceAnalyzer.analyze``.

    Raises:
        ImageInputError: the file is missing, empty, not an image, truncated or corrupt,
            or too large to decode; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"Image {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"Image {str(path)!r} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageInputError(
                    f"Image {str(path)!r} is too large to decode ({img.width}x{img.height}); "
                    f"use a photo under {MAX_PIXELS // 1_000_000} megapixels"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            return _pil_to_rgb(img)
    except ImageInputError:
        raise
    except UnidentifiedImageError as err:
        raise ImageInputError(
            f"Image {str(path)!r} is not in a format that can be read (use JPEG or PNG)"
        ) from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"Image {str(path)!r} is corrupt or truncated: {err}") from err


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        data = np.asarray(img, dtype=np.float64)
        top = 65535.0 if data.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(data * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return as_rgb(np.asarray(img.convert("RGB")))


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Check an array and bring it to uint8 RGB (H, W, 3), contiguous.

    Args:
        image: uint8 (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA. A float array
            with values in [0, 1] is scaled to 0..255.

    Returns:
        The same array when it is already uint8 RGB and contiguous; otherwise a converted
        copy (alpha is dropped).

    Raises:
        ImageInputError: not an array, empty, an unknown shape, or a dtype other than
            uint8 / float.
    """
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f"Expected an image array, got {type(image).__name__}")
    if image.size == 0 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ImageInputError(f"Image array is empty or not 2-D: shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ImageInputError(
                f"Image array must be uint8 or float in [0, 1], not {image.dtype}"
            )
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    elif channels != 3:
        raise ImageInputError(f"Image array must have 1, 3 or 4 channels, not {channels}")
    return np.ascontiguousarray(image)


def downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink ``image`` so that its longer side is at most ``max_side`` (area filter).

    Args:
        image: uint8 RGB.
        max_side: the longest side allowed, in pixels.

    Returns:
        (small, scale): ``small`` is ``image`` itself when it already fits (scale 1.0);
        otherwise a resized copy, and a point (x, y) in ``small`` is (x / scale, y / scale)
        in ``image``.
    """
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Use the scale actually applied on the width, so mapping back is exact along x.
    _LOGGER.debug("downscaled %dx%d to %dx%d for detection", width, height, *size)
    return small, size[0] / width
