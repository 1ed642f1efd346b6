"""Tiny generators and inputs with real (random, seeded) weights for the neural model tests.

Fresh models start with several zero-initialised layers (adaLN-Zero, the transformer's
output), which would make many checks pass trivially; :func:`make_generator` therefore
adds seeded noise to every parameter so every path carries signal.
"""

from __future__ import annotations

import torch

from avatar.models import DualBranchGenerator, GeneratorConfig


def make_generator(config: GeneratorConfig | None = None, seed: int = 0) -> DualBranchGenerator:
    """A generator of ``config`` (tiny by default) with seeded, non-degenerate weights."""
    torch.manual_seed(seed)
    gen = DualBranchGenerator(config or GeneratorConfig.tiny()).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return gen


def reference_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB crops in [-1, 1] (blurred noise, so convolutions see structure)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return x * 2 - 1


def speech_mel(batch: int, rows: int, seed: int = 0) -> torch.Tensor:
    """Log-mel-like features [batch, rows, 80]: around -6 with structure over time."""
    g = torch.Generator().manual_seed(seed)
    return -6.0 + 2.0 * torch.randn(batch, rows, 80, generator=g)
