"""The appearance branch: run once per avatar on the aligned reference crop.

``AppearanceEncoder(image)`` → ``(pyramid, id_tokens)``:

- ``pyramid``: a tuple of feature maps, level ``i`` at stride ``4·2^i`` with
  ``config.channels[i]`` channels (64², 32², 16² at 256 px). The renderer warps them.
- ``id_tokens``: ``[B, n_id_tokens, token_dim]``, learned queries that attend to the
  coarsest level. The renderer's decoder and the motion transformer cross-attend to them.

Cache both per avatar (they depend only on the reference crop).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar.models.attention import Attention
from avatar.models.blocks import FeedForward, ResBlock2d, group_norm
from avatar.models.config import AppearanceConfig


class AppearanceEncoder(nn.Module):
    """Reference crop → feature pyramid + identity tokens.

    Args:
        config: sizes (see :class:`AppearanceConfig`).
        attention_backend: registry name for the token pooling's attention.
    """

    def __init__(self, config: AppearanceConfig, attention_backend: str = "sdpa"):
        super().__init__()
        self.config = config
        g = config.groups
        c0 = config.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, config.stem_channels, 3, stride=2, padding=1),
            group_norm(config.stem_channels, g),
            nn.SiLU(),
            nn.Conv2d(config.stem_channels, c0, 3, stride=2, padding=1),
        )
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        prev = c0
        for i, c in enumerate(config.channels):
            self.downs.append(
                nn.Identity() if i == 0 else nn.Conv2d(prev, c, 3, stride=2, padding=1)
            )
            blocks = [ResBlock2d(c, c, g) for _ in range(config.blocks_per_level)]
            self.levels.append(nn.Sequential(*blocks))
            prev = c
        d = config.token_dim
        side = config.level_sizes[-1]
        self.to_kv = nn.Sequential(group_norm(prev, g), nn.Conv2d(prev, d, 1))
        self.kv_pos = nn.Parameter(0.02 * torch.randn(1, side * side, d))
        self.queries = nn.Parameter(0.02 * torch.randn(1, config.n_id_tokens, d))
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.pool = Attention(d, config.token_heads, backend=attention_backend)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = FeedForward(d)

    def forward(self, image: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """Encode ``image`` [B, 3, S, S] (RGB in [-1, 1], S = ``config.image_size``).

        Returns:
            ``(pyramid, id_tokens)`` as described in the module doc. Keep them with the
            avatar and pass them to the renderer and the motion transformer.
        """
        x = self.stem(image)
        pyramid = []
        for down, level in zip(self.downs, self.levels, strict=True):
            x = level(down(x))
            pyramid.append(x)
        kv = self.to_kv(x).flatten(2).transpose(1, 2) + self.kv_pos
        q = self.queries.expand(image.shape[0], -1, -1)
        tokens = q + self.pool(self.norm_q(q), self.norm_kv(kv))
        tokens = tokens + self.ff(self.norm_ff(tokens))
        return tuple(pyramid), tokens
