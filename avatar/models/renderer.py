"""The renderer: per frame, warp the avatar's appearance features by the motion and decode.

``Renderer(pyramid, id_tokens, kp_source, kp_driving)`` → ``(rgb, flow, occlusion)``:

1. :class:`~avatar.models.dense_motion.DenseMotionNetwork` turns source → driving
   keypoints into a flow and occlusion maps at the finest pyramid level;
2. every pyramid level is warped by that flow (its displacement resized to the level)
   and multiplied by its occlusion map (:meth:`Renderer.warp`);
3. the decoder goes from the coarsest level to the finest, concatenating each warped
   level, cross-attending to the identity tokens at the ``attn_levels`` coarsest levels
   (so the appearance branch has the last word on identity), then upsamples ×4 to RGB
   (:meth:`Renderer.decode`, which is also the warp-free path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.blocks import ResBlock2d, SpatialCrossAttention, group_norm, identity_grid
from avatar.models.config import GeneratorConfig
from avatar.models.dense_motion import DenseMotionNetwork


class Renderer(nn.Module):
    """Warp + decoder.

    Args:
        config: the generator config (uses its appearance, motion and renderer parts).
        attention_backend: registry name for the decoder's cross-attention.
    """

    def __init__(self, config: GeneratorConfig, attention_backend: str = "sdpa"):
        super().__init__()
        app, rc = config.appearance, config.renderer
        self.config = config
        sizes = app.level_sizes
        self.n_levels = len(app.channels)
        self.dense_motion = DenseMotionNetwork(
            feature_channels=app.channels[0],
            size=sizes[0],
            n_kp=config.motion.n_kp,
            n_levels=self.n_levels,
            squeeze_channels=rc.dense_feature_channels,
            channels=rc.dense_channels,
            kp_variance=rc.kp_variance,
            groups=rc.groups,
        )
        for level, side in enumerate(sizes):
            self.register_buffer(f"grid{level}", identity_grid(side), persistent=False)
        # Decoder, coarsest level first.
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        prev = 0
        for level in reversed(range(self.n_levels)):
            c = app.channels[level]
            self.blocks.append(ResBlock2d(c + prev, c, rc.groups))
            attends = level >= self.n_levels - rc.attn_levels
            self.attns.append(
                SpatialCrossAttention(c, app.token_dim, rc.heads, rc.groups, attention_backend)
                if attends
                else None
            )
            prev = c
        self.ups = nn.ModuleList()
        for c in rc.up_channels:
            self.ups.append(ResBlock2d(prev, c, rc.groups))
            prev = c
        self.to_rgb = nn.Sequential(
            group_norm(prev, rc.groups), nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)
        )

    def forward(
        self,
        pyramid: tuple[Tensor, ...],
        id_tokens: Tensor,
        kp_source: Tensor,
        kp_driving: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Render one frame per batch item.

        Args:
            pyramid: the appearance pyramid, each level [B, C_i, H_i, W_i] (expand an
                avatar's cached pyramid to the batch of frames first).
            id_tokens: [B, N, token_dim].
            kp_source: the reference crop's posed keypoints [B, n_kp, 3].
            kp_driving: the frame's posed keypoints [B, n_kp, 3].

        Returns:
            ``(rgb, flow, occlusion)``: rgb [B, 3, S, S] in [-1, 1]; flow and occlusion
            as :meth:`warp` returns them (for losses and inspection).
        """
        warped, flow, occlusion = self.warp(pyramid, kp_source, kp_driving)
        return self.decode(warped, id_tokens), flow, occlusion

    def warp(
        self, pyramid: tuple[Tensor, ...], kp_source: Tensor, kp_driving: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Warp every pyramid level by the keypoints' dense motion.

        Returns:
            ``(warped, flow, occlusion)``: the warped levels (same shapes as ``pyramid``),
            the flow [B, H_0, W_0, 2] and the occlusion maps [B, n_levels, H_0, W_0].
        """
        flow, occlusion = self.dense_motion(pyramid[0], kp_source, kp_driving)
        displacement = (flow - self.grid0).permute(0, 3, 1, 2)
        warped = []
        for level, features in enumerate(pyramid):
            occ = occlusion[:, level : level + 1]
            if level == 0:
                grid = flow
            else:
                side = features.shape[-1]
                d = F.interpolate(displacement, size=(side, side), mode="bilinear")
                grid = getattr(self, f"grid{level}") + d.permute(0, 2, 3, 1)
                occ = F.interpolate(occ, size=(side, side), mode="bilinear")
            sampled = F.grid_sample(
                features, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
            warped.append(sampled * occ)
        return tuple(warped), flow, occlusion

    def decode(self, features: tuple[Tensor, ...], id_tokens: Tensor) -> Tensor:
        """Decode a (warped or not) pyramid to RGB [B, 3, S, S] in [-1, 1].

        Called directly with the unwarped pyramid it is the warp-free path (training
        warm-up, reconstruction of the reference crop).
        """
        h: Tensor | None = None
        for i, (block, attn) in enumerate(zip(self.blocks, self.attns, strict=True)):
            x = features[self.n_levels - 1 - i]
            if h is not None:
                x = torch.cat([x, F.interpolate(h, scale_factor=2.0, mode="nearest")], dim=1)
            h = block(x)
            if attn is not None:
                h = attn(h, id_tokens)
        assert h is not None
        for up in self.ups:
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.to_rgb(h))
