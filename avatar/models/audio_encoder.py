"""The audio encoder: log-mel (+ optional viseme ids) → one token per video frame.

Input contract (``avatar.neural_audio``): natural-log mel, 16 kHz, n_fft 400, hop 160 (100
frames/s), 80 bins, ``log(max(mel, 1e-5))``; ``mel_per_frame`` (4) mel frames per video
frame at 25 fps; ``[B, T·4, 80]`` float32. Viseme ids, when known, are ``[B, T]`` int64,
0 = silence, below ``n_visemes`` (``avatar.neural_audio.VISEME_NAMES``); their embedding is
added to the frame tokens.

Causality: every layer works per frame (Linear, LayerNorm) or looks only backwards in time
(left-padded dilated convolutions), so token ``t`` depends on mel frames of video frames
``≤ t`` within the window given, over at most ``receptive_field`` frames. The motion
sampler adds the look-ahead by ending the window ``lookahead_frames`` after the chunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.config import AudioEncoderConfig

SILENCE_LOG_MEL = math.log(1e-5)
"""The log-mel value of digital silence (the feature floor); used to pad past the audio."""


class _CausalConvBlock(nn.Module):
    def __init__(self, width: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel_size, dilation=dilation)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x).transpose(1, 2)
        h = self.conv(F.pad(h, (self.pad, 0)))
        return x + self.proj(F.silu(h.transpose(1, 2)))


class AudioEncoder(nn.Module):
    """Log-mel window [B, T·m, n_mels] (+ visemes [B, T]) → tokens [B, T, width], causal.

    Args:
        config: sizes (see :class:`AudioEncoderConfig`).
    """

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        w = config.width
        # Rough log-mel statistics of speech; training overwrites them with its own.
        self.register_buffer("mel_mean", torch.full((config.n_mels,), -6.0))
        self.register_buffer("mel_std", torch.full((config.n_mels,), 3.0))
        self.patch = nn.Linear(config.mel_per_frame * config.n_mels, w)
        self.visemes = nn.Embedding(config.n_visemes, w)
        self.layers = nn.ModuleList(
            _CausalConvBlock(w, config.kernel_size, 2**i) for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(w)

    def forward(self, mel: Tensor, visemes: Tensor | None = None) -> Tensor:
        """Encode a window of ``T`` video frames of audio.

        Args:
            mel: [B, T·mel_per_frame, n_mels] log-mel.
            visemes: optional [B, T] int64 ids in [0, n_visemes).

        Returns:
            [B, T, width]: token ``t`` for video frame ``t`` of the window.
        """
        b = mel.shape[0]
        m = self.config.mel_per_frame
        x = (mel - self.mel_mean) / self.mel_std
        x = self.patch(x.reshape(b, -1, m * self.config.n_mels))
        if visemes is not None:
            x = x + self.visemes(visemes)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
