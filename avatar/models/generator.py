"""The dual-branch generator: a thin container of its five models.

::

    gen = DualBranchGenerator.from_pretrained("checkpoints/base")   # or (GeneratorConfig.tiny())
    avatar = gen.encode_avatar(reference_crop)       # once per avatar; cache it
    codes = generate_motion(gen, sampler, mel, avatar.id_tokens, seed=..., context=...)
    frames = gen.render(avatar, codes)               # [B, T, 3, S, S] in [-1, 1]

The motion codes come from :mod:`avatar.samplers` (this module never imports samplers);
one chunk's computation (audio, velocity, rendering) is written once in
:mod:`avatar.models.chunk`, which :meth:`DualBranchGenerator.render` calls.
The parts (``appearance``, ``motion_encoder``, ``renderer``, ``audio_encoder``,
``motion_dit``) have plain tensor forwards with static shapes per chunk, for export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar.models.appearance import AppearanceEncoder
from avatar.models.attention import set_attention_backend
from avatar.models.audio_encoder import AudioEncoder
from avatar.models.checkpoint import load_state, read_pretrained, save_pretrained
from avatar.models.chunk import render_codes
from avatar.models.config import GeneratorConfig
from avatar.models.errors import ModelInputError
from avatar.models.motion_code import keypoints_from_code
from avatar.models.motion_dit import MotionDiT
from avatar.models.motion_encoder import MotionEncoder
from avatar.models.renderer import Renderer


@dataclass(frozen=True, slots=True, eq=False)
class AvatarState:
    """What the generator keeps per avatar (from :meth:`DualBranchGenerator.encode_avatar`).

    Attributes:
        pyramid: appearance feature maps, level ``i`` [B, C_i, H_i, W_i].
        id_tokens: identity tokens [B, N, token_dim]; also the motion branch's condition.
        source_code: the reference crop's motion code [B, code_dim]; a natural context
            for the first chunk (repeat it C times).
        source_keypoints: its posed keypoints [B, n_kp, 3].
    """

    pyramid: tuple[Tensor, ...]
    id_tokens: Tensor
    source_code: Tensor
    source_keypoints: Tensor


class DualBranchGenerator(nn.Module):
    """Appearance encoder, motion encoder, renderer, audio encoder and motion transformer.

    Args:
        config: sizes of every part (``GeneratorConfig.tiny()/.base()/.large()``).
        attention_backend: registry name used by every attention layer.
    """

    def __init__(self, config: GeneratorConfig, attention_backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.appearance = AppearanceEncoder(config.appearance, attention_backend)
        self.motion_encoder = MotionEncoder(config.motion)
        self.renderer = Renderer(config, attention_backend)
        self.audio_encoder = AudioEncoder(config.audio)
        self.motion_dit = MotionDiT(
            config.dit,
            code_dim=config.code_dim,
            audio_dim=config.audio.width,
            token_dim=config.appearance.token_dim,
            n_id_tokens=config.appearance.n_id_tokens,
            attention_backend=attention_backend,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        attention_backend: str = "sdpa",
    ) -> DualBranchGenerator:
        """Build the generator from a checkpoint's embedded config and load its weights.

        Returns:
            The model on ``device`` in eval mode; wrap calls in ``torch.inference_mode()``.

        Raises:
            ModelNotFoundError: no checkpoint at ``path``.
            CheckpointError: the file is unusable (the message says why).
        """
        config, state = read_pretrained(path, GeneratorConfig, cls.__name__)
        model = cls(config, attention_backend)
        load_state(model, state, path)
        return model.to(device).eval()

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Save weights + config to ``path`` (a folder or a ``.safetensors`` file).

        Returns:
            The file written; :meth:`from_pretrained` reads it back bit for bit.
        """
        return save_pretrained(self, self.config, path, type(self).__name__)

    def set_attention_backend(self, name: str) -> int:
        """Switch every attention layer to backend ``name``; returns how many switched."""
        return set_attention_backend(self, name)

    def keypoints(self, code: Tensor) -> Tensor:
        """Posed keypoints of motion codes [..., code_dim] → [..., n_kp, 3]."""
        return keypoints_from_code(code, self.config.motion.n_kp)

    def encode_avatar(self, image: Tensor) -> AvatarState:
        """Encode the aligned reference crop(s) [B, 3, S, S], RGB in [-1, 1].

        Returns:
            The avatar's state; cache it and pass it to :meth:`render` and (its
            ``id_tokens``) to the motion sampler.

        Raises:
            ModelInputError: wrong shape or dtype.
        """
        s = self.config.image_size
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, s, s):
            raise ModelInputError(
                f"reference image must be [B, 3, {s}, {s}] RGB in [-1, 1], got "
                f"{list(image.shape)}; align and resize the crop to {s} px first"
            )
        if not image.is_floating_point():
            raise ModelInputError(f"reference image must be float in [-1, 1], got {image.dtype}")
        pyramid, tokens = self.appearance(image)
        code = self.motion_encoder(image)
        return AvatarState(pyramid, tokens, code, self.keypoints(code))

    def render(self, avatar: AvatarState, codes: Tensor) -> Tensor:
        """Render motion codes [B, T, code_dim] on the avatar → frames [B, T, 3, S, S].

        Raises:
            ModelInputError: codes of the wrong shape for this avatar.
        """
        b = avatar.id_tokens.shape[0]
        if codes.ndim != 3 or codes.shape[0] != b or codes.shape[2] != self.config.code_dim:
            raise ModelInputError(
                f"motion codes must be [{b}, T, {self.config.code_dim}], got {list(codes.shape)}"
            )
        return render_codes(
            self.renderer,
            self.config.motion.n_kp,
            avatar.pyramid,
            avatar.id_tokens,
            avatar.source_keypoints,
            codes,
        )
