"""Dense motion: source and driving keypoints → a sampling flow and occlusion maps.

After FOMM / face-vid2vid: every keypoint ``k`` proposes the motion
``grid − kp_driving[k] + kp_source[k]`` (background: no motion); an hourglass looks at
the keypoint Gaussians' difference and at the source features warped by each proposal,
and predicts a softmax mask that mixes the proposals into one flow, plus one occlusion
map per pyramid level. Keypoints are used through their (x, y) projection.

The flow is a convex mix of the proposals, so when source and driving keypoints are
equal every proposal is the identity grid and so is the flow (up to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.blocks import Hourglass, identity_grid


class DenseMotionNetwork(nn.Module):
    """Keypoints → flow [B, H, W, 2] + occlusion [B, n_levels, H, W], at the finest level.

    Args:
        feature_channels: channels of the finest pyramid level it looks at.
        size: side of the finest pyramid level (H = W).
        n_kp: keypoints per code.
        n_levels: pyramid levels (one occlusion map each).
        squeeze_channels: channels the features are squeezed to before the per-keypoint warp.
        channels: hourglass channels.
        kp_variance: variance of the keypoint Gaussians.
        groups: GroupNorm groups.
    """

    def __init__(
        self,
        feature_channels: int,
        size: int,
        n_kp: int,
        n_levels: int,
        squeeze_channels: int,
        channels: tuple[int, ...],
        kp_variance: float,
        groups: int,
    ):
        super().__init__()
        self.n_kp = n_kp
        self.kp_variance = kp_variance
        self.squeeze = nn.Conv2d(feature_channels, squeeze_channels, 1)
        cin = (n_kp + 1) * (squeeze_channels + 1)
        self.hourglass = Hourglass(cin, channels, groups)
        self.to_mask = nn.Conv2d(self.hourglass.out_channels, n_kp + 1, 7, padding=3)
        self.to_occlusion = nn.Conv2d(self.hourglass.out_channels, n_levels, 7, padding=3)
        self.register_buffer("grid", identity_grid(size), persistent=False)

    def forward(
        self, features: Tensor, kp_source: Tensor, kp_driving: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``features`` [B, C, H, W]; keypoints [B, n_kp, 3] (source, driving).

        Returns:
            ``(flow, occlusion)``: flow [B, H, W, 2] is where each output cell samples the
            source (``grid_sample`` convention, align_corners=False); occlusion
            [B, n_levels, H, W] in (0, 1).
        """
        b, _, h, w = features.shape
        k1 = self.n_kp + 1
        grid = self.grid[:, None]  # [1, 1, H, W, 2]
        src = kp_source[..., :2][:, :, None, None, :]  # [B, K, 1, 1, 2]
        drv = kp_driving[..., :2][:, :, None, None, :]
        heat = self._gaussian(grid, drv) - self._gaussian(grid, src)  # [B, K, H, W]
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
        proposals = torch.cat([grid.expand(b, 1, h, w, 2), grid + (src - drv)], dim=1)
        squeezed = self.squeeze(features)
        c = squeezed.shape[1]
        repeated = squeezed[:, None].expand(b, k1, c, h, w).reshape(b * k1, c, h, w)
        warped = F.grid_sample(
            repeated,
            proposals.reshape(b * k1, h, w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(b, k1, c, h, w)
        x = torch.cat([heat[:, :, None], warped], dim=2).reshape(b, k1 * (c + 1), h, w)
        hidden = self.hourglass(x)
        mask = torch.softmax(self.to_mask(hidden), dim=1)  # [B, K+1, H, W]
        flow = (mask[..., None] * proposals).sum(dim=1)
        occlusion = torch.sigmoid(self.to_occlusion(hidden))
        return flow, occlusion

    def _gaussian(self, grid: Tensor, kp: Tensor) -> Tensor:
        d2 = ((grid - kp) ** 2).sum(dim=-1)
        return torch.exp(-0.5 * d2 / self.kp_variance)
