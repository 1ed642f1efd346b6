"""Training data for the neural generator: videos → face crops, mel rows, shards.

Modules (no training loops here; those live in ``avatar/train/stage*.py``):

* :mod:`avatar.train.video`: decode a video at 25 fps and its audio at 16 kHz mono.
* :mod:`avatar.train.crops`: track the face, smooth the crop box, measure its jitter.
* :mod:`avatar.train.shards`: the shard format (safetensors) and atomic writes.
* :mod:`avatar.train.data`: :func:`preprocess` a folder of videos, resumably.
* :mod:`avatar.train.dataset`: :class:`ShardDataset`, random aligned training windows.
* :mod:`avatar.train.synthetic`: synthetic talking clips from the procedural generator.

Typical use::

    from avatar.train import PreprocessOptions, ShardDataset, preprocess

    preprocess("videos/", "shards/", PreprocessOptions.preset("base"))
    data = ShardDataset("shards/", window=8)

Importing this package is cheap; :mod:`avatar.train.dataset` (torch) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avatar.train.data import (
    SIZES,
    InjectedFault,
    PreprocessError,
    PreprocessEvent,
    PreprocessOptions,
    PreprocessReport,
    find_videos,
    load_entries,
    preprocess,
)

if TYPE_CHECKING:
    from avatar.train.dataset import ShardDataset

__all__ = [
    "SIZES",
    "InjectedFault",
    "PreprocessError",
    "PreprocessEvent",
    "PreprocessOptions",
    "PreprocessReport",
    "ShardDataset",
    "find_videos",
    "load_entries",
    "preprocess",
]


def __getattr__(name: str) -> Any:
    if name == "ShardDataset":
        from avatar.train.dataset import ShardDataset

        return ShardDataset
    raise AttributeError(f"module 'avatar.train' has no attribute {name!r}")
