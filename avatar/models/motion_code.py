"""The per-frame motion code and how it becomes 3D keypoints (pure functions, no weights).

A code of length ``6·n_kp + 6`` is ``[canonical keypoints | expression deltas | pose]``:

- canonical keypoints ``k`` (n_kp × 3): implicit, learned, in [-1, 1] image units;
- expression deltas ``δ`` (n_kp × 3): per-keypoint offsets (lips, eyes, brows);
- pose: yaw, pitch, roll (radians), tx, ty ([-1, 1] image units), log-scale.

Driving keypoints are ``x = exp(log_scale) · R(yaw, pitch, roll) (k + δ) + (tx, ty, 0)``
(the face-vid2vid / LivePortrait form); the renderer uses their (x, y) projection. An
all-zero pose is the identity transform.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avatar.models.config import POSE_DIM


def split_code(code: Tensor, n_kp: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``code`` [..., 6·n_kp + 6] into its parts.

    Returns:
        keypoints [..., n_kp, 3], expression deltas [..., n_kp, 3], pose [..., 6].
    """
    lead = code.shape[:-1]
    n = 3 * n_kp
    kp = code[..., :n].reshape(*lead, n_kp, 3)
    delta = code[..., n : 2 * n].reshape(*lead, n_kp, 3)
    return kp, delta, code[..., 2 * n : 2 * n + POSE_DIM]


def join_code(kp: Tensor, delta: Tensor, pose: Tensor) -> Tensor:
    """The inverse of :func:`split_code`."""
    lead = kp.shape[:-2]
    return torch.cat([kp.reshape(*lead, -1), delta.reshape(*lead, -1), pose], dim=-1)


def rotation_matrix(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """Rotation ``Rz(roll) · Ry(yaw) · Rx(pitch)`` for angles [...] → [..., 3, 3]."""
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cr, sr = torch.cos(roll), torch.sin(roll)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1)
    shape = (*yaw.shape, 3, 3)
    return rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)


def keypoints_from_code(code: Tensor, n_kp: int) -> Tensor:
    """Posed 3D keypoints of a motion code: [..., code_dim] → [..., n_kp, 3]."""
    kp, delta, pose = split_code(code, n_kp)
    rot = rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2])
    posed = (kp + delta) @ rot.transpose(-1, -2)
    scale = torch.exp(pose[..., 5])[..., None, None]
    shift = torch.stack([pose[..., 3], pose[..., 4], torch.zeros_like(pose[..., 3])], -1)
    return scale * posed + shift[..., None, :]


def default_keypoint_layout(n_kp: int) -> Tensor:
    """A fixed spread of ``n_kp`` points in [-0.6, 0.6]² (a sunflower spiral), z = 0.

    Used to initialise the motion encoder, so fresh keypoints do not all sit at the centre.
    """
    i = torch.arange(n_kp, dtype=torch.float64) + 0.5
    r = 0.6 * torch.sqrt(i / n_kp)
    theta = i * math.pi * (3 - math.sqrt(5))
    xy = torch.stack([r * torch.cos(theta), r * torch.sin(theta), torch.zeros_like(r)], -1)
    return xy.float()
