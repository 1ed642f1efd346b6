"""Layers shared by the generator's models (as diffusers keeps ``resnet.py`` and
``embeddings.py`` apart from its models): residual conv blocks, an hourglass, a
feature-map cross-attention, a transformer block with adaptive LayerNorm, and the
sinusoidal embedding. Each top-level model lives in its own file and is built from these.

Everything here is ONNX-friendly: static shapes from the config, no data-dependent control
flow, no complex numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.attention import Attention


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def identity_grid(size: int) -> Tensor:
    """The sampling grid that ``grid_sample(..., align_corners=False)`` maps to itself.

    Returns:
        [1, size, size, 2] of (x, y) cell centres in [-1, 1].
    """
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], dim=-1)[None]


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of the scalars ``x`` [B] → [B, dim] (``dim`` even)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half
    )
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock2d(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv3×3) twice, 1×1 skip if widths differ."""

    def __init__(self, cin: int, cout: int, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvNormAct(nn.Sequential):
    """conv3×3 → GroupNorm → SiLU."""

    def __init__(self, cin: int, cout: int, groups: int = 8):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), group_norm(cout, groups), nn.SiLU())


class Hourglass(nn.Module):
    """A small U-Net: ``len(channels)`` halvings, then back up with skip concatenation.

    The input side must be a multiple of ``2 ** len(channels)``. Output channels:
    :attr:`out_channels` (the last upsampled features concatenated with the input).
    """

    def __init__(self, cin: int, channels: tuple[int, ...], groups: int = 8):
        super().__init__()
        self.down = nn.ModuleList()
        skips = [cin]
        ch = cin
        for c in channels:
            self.down.append(ConvNormAct(ch, c, groups))
            skips.append(c)
            ch = c
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            out = channels[max(i - 1, 0)]
            self.up.append(ConvNormAct(ch, out, groups))
            ch = out + skips[i]
        self.out_channels = ch

    def forward(self, x: Tensor) -> Tensor:
        skips = [x]
        h = x
        for block in self.down:
            h = F.avg_pool2d(block(h), 2)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = block(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
        return h


class SpatialCrossAttention(nn.Module):
    """A feature map [B, C, H, W] attends to tokens [B, N, token_dim]; residual."""

    def __init__(self, channels: int, token_dim: int, heads: int, groups: int, backend: str):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.attn = Attention(channels, heads, kv_dim=token_dim, backend=backend)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)
        out = self.attn(q, tokens)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class FeedForward(nn.Sequential):
    """Linear → GELU (tanh) → Linear."""

    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Transformer block over frames, conditioned by adaptive LayerNorm (adaLN-Zero).

    Masked self-attention over frames, cross-attention to conditioning tokens, feed-forward.
    The modulation is zero-initialised, so a fresh block passes its input through the
    self-attention and feed-forward paths unchanged.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, backend=backend)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.cross = Attention(width, heads, backend=backend)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(width, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, cond: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        """``x`` [B, N, W] frames, ``cond`` [B, W], ``tokens`` [B, M, W], ``mask`` [N, N]."""
        s1, c1, g1, s3, c3, g3 = self.ada(cond)[:, None].chunk(6, dim=-1)
        x = x + g1 * self.attn(_modulate(self.norm1(x), s1, c1), mask=mask)
        x = x + self.cross(self.norm2(x), tokens)
        return x + g3 * self.ff(_modulate(self.norm3(x), s3, c3))
