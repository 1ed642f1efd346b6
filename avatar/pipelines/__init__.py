"""Pipelines of the neural generator: models and samplers composed for streaming.

- :mod:`avatar.pipelines.runner`: the :class:`Runner` Protocol (three calls with static
  shapes: encode an avatar, one motion chunk, render frames) and :class:`TorchRunner`
  (CPU float32; CUDA with bf16 autocast and optional ``torch.compile``).
- :mod:`avatar.pipelines.scheduler`: :class:`BatchScheduler`, one runner call for the
  due chunks of every live session.
- :mod:`avatar.pipelines.neural`: :class:`NeuralGenerator`, the avatar contract
  (``avatar/base.py``) on the neural model; :func:`generate_clip` for whole clips.
- :mod:`avatar.pipelines.mel_segment`, :mod:`avatar.pipelines.framing`: a segment's audio as
  log-mel chunks; the model's face crop and the feathered paste-back.

What the faces look like depends on the checkpoint: an untrained or tiny model makes
blurry, meaningless faces.
"""

from avatar.pipelines.neural import NeuralGenerator, NeuralOptions, generate_clip
from avatar.pipelines.runner import (
    EncodedAvatar,
    Runner,
    RunnerSpec,
    TorchRunner,
    TorchRunnerOptions,
    load_runner,
)
from avatar.pipelines.scheduler import BatchScheduler, ChunkRequest, ChunkResult

__all__ = [
    "BatchScheduler",
    "ChunkRequest",
    "ChunkResult",
    "EncodedAvatar",
    "NeuralGenerator",
    "NeuralOptions",
    "Runner",
    "RunnerSpec",
    "TorchRunner",
    "TorchRunnerOptions",
    "generate_clip",
    "load_runner",
]
