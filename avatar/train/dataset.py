"""Random training windows from preprocessed shards (a torch ``Dataset``).

Each item is a window of ``window`` consecutive frames of one video, the mel rows
of exactly those frames (frame ``k`` of the window ↔ rows ``4k .. 4k+3``), their
landmarks, and a reference frame of the same video (outside the window when the video
is long enough), as the renderer and the motion branch train on. A window may span two
shards; only the rows it needs are read (safetensors slices).

Items are drawn at random but reproducibly: item ``i`` depends only on ``seed``, the
epoch (:meth:`ShardDataset.set_epoch`) and ``i``, so a ``DataLoader`` with workers gives
the same batches on every run. Videos are drawn in proportion to how many windows they
hold.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avatar.neural_audio import MEL_PER_FRAME
from avatar.train.data import PreprocessError, load_entries
from avatar.train.shards import read_rows


@dataclass(frozen=True, slots=True)
class _Video:
    key: str
    frames: int
    starts: tuple[int, ...]  # first frame of each shard
    paths: tuple[Path, ...]


class ShardDataset(Dataset):
    """Windows of ``window`` frames with aligned mel rows and a reference frame.

    Args:
        root: a folder written by :func:`avatar.train.data.preprocess`.
        window: frames per item.
        samples: items per epoch; None gives one window's worth per ``window`` frames
            of the whole corpus.
        seed: base of the random draws.
        normalize: True gives float32 images in [-1, 1], channels first; False keeps
            uint8 ``[W, S, S, 3]`` as stored.

    Each item is a dict:

    * ``frames``: ``[W, 3, S, S]`` float32 (or ``[W, S, S, 3]`` uint8),
    * ``mel``: ``[4 W, 80]`` float32, rows ``4k .. 4k+3`` belong to frame ``k``,
    * ``landmarks``: ``[W, 68, 2]`` float32 in crop pixels (NaN where no face),
    * ``reference``: ``[3, S, S]`` (or ``[S, S, 3]``), a frame of the same video,
    * ``video`` (str), ``start`` (first frame index in the video),
      ``reference_index`` (the reference's frame index).

    Raises:
        PreprocessError: no video in ``root`` has at least ``window`` frames.
    """

    def __init__(
        self,
        root: str | Path,
        window: int = 8,
        samples: int | None = None,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        if window < 1:
            raise PreprocessError(f"ShardDataset: window={window} must be at least 1 frame")
        self.root = Path(root)
        self.window = window
        self.seed = seed
        self.normalize = normalize
        self.epoch = 0
        videos = []
        for key, entry in sorted(load_entries(self.root).items()):
            if entry["status"] != "done" or entry["frames"] < window:
                continue
            shards = entry["shards"]
            videos.append(
                _Video(
                    key,
                    entry["frames"],
                    tuple(s["start"] for s in shards),
                    tuple(self.root / "videos" / key / s["file"] for s in shards),
                )
            )
        if not videos:
            raise PreprocessError(
                f"{self.root}: no preprocessed video has at least {window} frames "
                "(run `likeness train preprocess` first, or use a shorter window)"
            )
        self.videos = videos
        counts = np.array([v.frames - window + 1 for v in videos], np.float64)
        self._weights = counts / counts.sum()
        total = sum(v.frames for v in videos)
        self.samples = samples if samples is not None else max(total // window, 1)

    def __len__(self) -> int:
        return self.samples

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of windows (call it at the start of every epoch)."""
        self.epoch = epoch

    def _read(self, video: _Video, name: str, start: int, stop: int) -> np.ndarray:
        """Rows of frames ``start:stop`` of ``name``, across shard boundaries."""
        scale = MEL_PER_FRAME if name == "mel" else 1
        parts = []
        shard = bisect.bisect_right(video.starts, start) - 1
        pos = start
        while pos < stop:
            first = video.starts[shard]
            end = video.starts[shard + 1] if shard + 1 < len(video.starts) else video.frames
            upto = min(stop, end)
            parts.append(
                read_rows(video.paths[shard], name, (pos - first) * scale, (upto - first) * scale)
            )
            pos = upto
            shard += 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def window_at(self, video_index: int, start: int) -> dict[str, np.ndarray]:
        """The raw (uint8, as stored) frames, mel and landmarks of one chosen window."""
        video = self.videos[video_index]
        stop = start + self.window
        if not 0 <= start <= video.frames - self.window:
            raise IndexError(f"{video.key}: window {start}:{stop} is outside 0:{video.frames}")
        return {
            "frames": self._read(video, "frames", start, stop),
            "mel": self._read(video, "mel", start, stop),
            "landmarks": self._read(video, "landmarks", start, stop),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.samples:
            raise IndexError(f"ShardDataset: index {index} outside 0..{self.samples - 1}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        which = int(rng.choice(len(self.videos), p=self._weights))
        video = self.videos[which]
        start = int(rng.integers(0, video.frames - self.window + 1))
        before, after = start, video.frames - start - self.window
        if before + after > 0:  # a frame before or after the window
            pick = int(rng.integers(0, before + after))
            ref = pick if pick < before else start + self.window + (pick - before)
        else:
            ref = start + int(rng.integers(0, self.window))
        item = self.window_at(which, start)
        frames = item["frames"]
        reference = self._read(video, "frames", ref, ref + 1)[0]
        if self.normalize:
            frames = _to_float(frames).permute(0, 3, 1, 2)
            reference = _to_float(reference).permute(2, 0, 1)
        else:
            frames, reference = torch.from_numpy(frames), torch.from_numpy(reference)
        return {
            "frames": frames.contiguous(),
            "mel": torch.from_numpy(item["mel"]),
            "landmarks": torch.from_numpy(item["landmarks"]),
            "reference": reference.contiguous(),
            "video": video.key,
            "start": start,
            "reference_index": ref,
        }


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)
