"""The motion encoder: one image → one motion code (learned self-supervised).

Run it on the reference crop once per avatar (the source code the renderer warps from),
and on driving frames during training, where the renderer's reconstruction loss teaches
it keypoints, expression and pose without labels. Code layout:
:mod:`avatar.models.motion_code`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar.models.blocks import ResBlock2d
from avatar.models.config import MotionCodeConfig
from avatar.models.motion_code import default_keypoint_layout


class MotionEncoder(nn.Module):
    """Image [B, 3, S, S] (RGB in [-1, 1]) → motion code [B, code_dim].

    Fresh weights give codes close to the default keypoint layout with no expression and
    an identity pose, so an untrained renderer starts from the identity warp.

    Args:
        config: sizes (see :class:`MotionCodeConfig`).
    """

    def __init__(self, config: MotionCodeConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        prev = 3
        for c in config.encoder_channels:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), ResBlock2d(c, c, config.groups)]
            prev = c
        self.features = nn.Sequential(*layers)
        # A grid of places, not one mean: the head must know where the lips are.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(config.encoder_grid), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(prev * config.encoder_grid**2, config.encoder_hidden),
            nn.SiLU(),
            nn.Linear(config.encoder_hidden, config.code_dim),
        )
        last = self.head[2]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            last.bias.zero_()
            last.bias[: 3 * config.n_kp] = default_keypoint_layout(config.n_kp).flatten()

    def forward(self, image: Tensor) -> Tensor:
        """Encode ``image``; returns the motion code [B, code_dim]."""
        return self.head(self.pool(self.features(image)))
