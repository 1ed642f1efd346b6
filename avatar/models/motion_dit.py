"""The motion branch: a flow-matching diffusion transformer over one chunk of motion codes.

Sequence: ``C`` context frames (previously generated motion, clean) followed by ``K``
chunk frames (noisy motion ``x_t``); each frame token also gets its audio token (added)
and a learned position. Self-attention is causal over frames (frame ``i`` sees frames
``≤ i``), so context frames never see the noisy chunk. Every block cross-attends to the
avatar's identity tokens and is conditioned (adaLN-Zero) on the flow time ``t`` and, in a
distilled student, on the two say weights (audio, identity).

Flow matching convention: ``x_t = (1 − t)·noise + t·data``, the model predicts the
velocity ``data − noise``; the sampler integrates ``t`` from 0 to 1. Codes are handled in
normalised units: :meth:`MotionDiT.normalize` / :meth:`MotionDiT.denormalize` use the
``code_mean`` / ``code_std`` buffers that training sets from its data.

Condition dropout: ``audio_keep`` / ``id_keep`` ([B] floats, 1 keep, 0 drop) swap the
audio tokens / identity tokens for learned null tokens. Training drops them independently;
the teacher's classifier-free guidance runs the dropped passes at sampling time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar.models.blocks import DiTBlock, sinusoidal_embedding
from avatar.models.config import MotionDiTConfig
from avatar.models.errors import ModelInputError

_EMBED = 256
GUIDANCE_SCALE = 100.0
"""Say weights are multiplied by this before their sinusoidal embedding."""


def _mlp(cin: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, width), nn.SiLU(), nn.Linear(width, width))


class MotionDiT(nn.Module):
    """Velocity of the chunk's motion codes given context, audio and identity.

    Args:
        config: sizes and chunking (see :class:`MotionDiTConfig`).
        code_dim: length of a motion code.
        audio_dim: width of the audio tokens.
        token_dim: width of the identity tokens.
        n_id_tokens: how many identity tokens (for the learned null tokens).
        attention_backend: registry name for its attention layers.
    """

    def __init__(
        self,
        config: MotionDiTConfig,
        code_dim: int,
        audio_dim: int,
        token_dim: int,
        n_id_tokens: int,
        attention_backend: str = "sdpa",
    ):
        super().__init__()
        self.config = config
        w = config.width
        n = config.context_frames + config.chunk_frames
        self.code_in = nn.Linear(code_dim, w)
        self.context_in = nn.Linear(code_dim, w)
        self.audio_in = nn.Linear(audio_dim, w)
        self.id_in = nn.Linear(token_dim, w)
        self.audio_null = nn.Parameter(0.02 * torch.randn(audio_dim))
        self.id_null = nn.Parameter(0.02 * torch.randn(n_id_tokens, token_dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n, w))
        self.t_embed = _mlp(_EMBED, w)
        self.w_embed = _mlp(2 * _EMBED, w) if config.guidance_embed else None
        if self.w_embed is not None:  # a fresh student starts as its teacher's conditional
            nn.init.zeros_(self.w_embed[2].weight)
            nn.init.zeros_(self.w_embed[2].bias)
        self.blocks = nn.ModuleList(
            DiTBlock(w, config.heads, config.mlp_ratio, attention_backend)
            for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, code_dim)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("mask", torch.ones(n, n, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_std", torch.ones(code_dim))

    def normalize(self, code: Tensor) -> Tensor:
        """Motion codes → the model's normalised units."""
        return (code - self.code_mean) / self.code_std

    def denormalize(self, z: Tensor) -> Tensor:
        """The model's normalised units → motion codes."""
        return z * self.code_std + self.code_mean

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        audio: Tensor,
        id_tokens: Tensor,
        audio_keep: Tensor,
        id_keep: Tensor,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity of the chunk.

        Args:
            x: noisy chunk [B, K, code_dim], normalised.
            t: flow time [B] in [0, 1].
            context: the previous C frames [B, C, code_dim], normalised.
            audio: audio tokens of the C + K frames [B, C + K, audio_dim].
            id_tokens: [B, n_id_tokens, token_dim].
            audio_keep: [B], 1.0 to use the audio, 0.0 for the null audio token.
            id_keep: [B], 1.0 to use the identity tokens, 0.0 for the null ones.
            guidance: [B, 2] say weights (audio, identity); required by a student
                (``guidance_embed``), refused by a teacher.

        Returns:
            velocity [B, K, code_dim] in normalised units.
        """
        if (guidance is None) == (self.w_embed is not None):
            kind = "a student (guidance_embed)" if self.w_embed is not None else "a teacher"
            need = "needs" if self.w_embed is not None else "takes no"
            raise ModelInputError(
                f"MotionDiT is {kind} and {need} `guidance` say weights; use the matching "
                "sampler (FlowMatchingStudent for students, FlowMatchingTeacher for teachers)"
            )
        a = audio_keep.to(audio.dtype)[:, None, None]
        audio = a * audio + (1 - a) * self.audio_null
        k = id_keep.to(id_tokens.dtype)[:, None, None]
        ids = self.id_in(k * id_tokens + (1 - k) * self.id_null)
        h = torch.cat([self.context_in(context), self.code_in(x)], dim=1)
        h = h + self.pos + self.audio_in(audio)
        cond = self.t_embed(sinusoidal_embedding(t * 1000.0, _EMBED))
        if self.w_embed is not None and guidance is not None:
            g = guidance * GUIDANCE_SCALE
            emb = torch.cat(
                [sinusoidal_embedding(g[:, 0], _EMBED), sinusoidal_embedding(g[:, 1], _EMBED)], -1
            )
            cond = cond + self.w_embed(emb)
        for block in self.blocks:
            h = block(h, cond, ids, self.mask)
        h = h[:, self.config.context_frames :]
        shift, scale = self.ada_out(cond)[:, None].chunk(2, dim=-1)
        return self.out(self.norm_out(h) * (1 + scale) + shift)
