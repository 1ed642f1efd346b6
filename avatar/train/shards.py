"""Shards: fixed-length runs of one video's crops and features, as safetensors files.

One shard holds up to ``shard_frames`` consecutive frames of one video:

=============  ==========================  =========================================
tensor         shape, dtype                meaning
=============  ==========================  =========================================
``frames``     ``[n, S, S, 3]`` uint8      RGB face crops
``mel``        ``[4 n, 80]`` float32       log-mel rows, frame ``i`` ↔ rows 4i..4i+3
``landmarks``  ``[n, 68, 2]`` float32      68 landmarks in crop pixels (NaN: no face)
``boxes``      ``[n, 3]`` float32          crop (centre x, centre y, side), source px
=============  ==========================  =========================================

The safetensors metadata (strings) carry ``format``, ``video`` (the key), ``source``
(path relative to the source folder), ``fps``, ``size``, ``start`` (index of the
shard's first frame in the video) and ``frames``. safetensors lets a reader slice a
tensor without reading the rest of the file, which is what random training windows
need (:func:`read_rows`).

Shards are written to a temporary name and renamed, so a crash never leaves a half
shard under a shard's name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SHARD_FORMAT = "likeness-shard-v1"
TENSORS = ("frames", "mel", "landmarks", "boxes")


def shard_name(index: int) -> str:
    """File name of a video's shard number ``index``."""
    return f"shard_{index:05d}.safetensors"


def write_shard(
    path: str | Path,
    frames: np.ndarray,
    mel: np.ndarray,
    landmarks: np.ndarray,
    boxes: np.ndarray,
    metadata: dict[str, str],
) -> Path:
    """Write one shard atomically (temporary file + rename).

    Raises:
        ValueError: the arrays do not agree (``4 n`` mel rows, ``n`` frames, square crops).
    """
    n = len(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"write_shard: frames must be uint8 [n, S, S, 3], got {frames.shape}")
    if mel.shape != (4 * n, mel.shape[1]) or landmarks.shape != (n, 68, 2) or len(boxes) != n:
        raise ValueError(
            f"write_shard: {n} frames need mel [{4 * n}, 80], landmarks [{n}, 68, 2] and "
            f"{n} boxes; got {mel.shape}, {landmarks.shape}, {len(boxes)}"
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tensors = {
        "frames": np.ascontiguousarray(frames),
        "mel": np.ascontiguousarray(mel, np.float32),
        "landmarks": np.ascontiguousarray(landmarks, np.float32),
        "boxes": np.ascontiguousarray(boxes, np.float32),
    }
    try:
        save_file(tensors, name, metadata={**metadata, "format": SHARD_FORMAT})
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return target


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata strings of a shard."""
    with safe_open(str(path), framework="numpy") as handle:
        return dict(handle.metadata() or {})


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a shard (whole arrays)."""
    with safe_open(str(path), framework="numpy") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


def read_rows(path: str | Path, name: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of one tensor, reading only those bytes."""
    with safe_open(str(path), framework="numpy") as handle:
        return handle.get_slice(name)[start:stop]
