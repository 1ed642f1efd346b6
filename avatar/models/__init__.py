"""The neural dual-branch generator's models (no samplers, no pipelines here).

See ``avatar/models/README.md`` for the architecture, tensor shapes and costs.
"""

from avatar.models.appearance import AppearanceEncoder
from avatar.models.attention import (
    Attention,
    AttentionBackend,
    available_backends,
    get_backend,
    register_backend,
    set_attention_backend,
)
from avatar.models.audio_encoder import SILENCE_LOG_MEL, AudioEncoder
from avatar.models.config import (
    CONFIG_VERSION,
    AppearanceConfig,
    AudioEncoderConfig,
    GeneratorConfig,
    MotionCodeConfig,
    MotionDiTConfig,
    RendererConfig,
)
from avatar.models.dense_motion import DenseMotionNetwork
from avatar.models.errors import CheckpointError, ModelConfigError, ModelInputError
from avatar.models.generator import AvatarState, DualBranchGenerator
from avatar.models.motion_code import keypoints_from_code, split_code
from avatar.models.motion_dit import MotionDiT
from avatar.models.motion_encoder import MotionEncoder
from avatar.models.renderer import Renderer

__all__ = [
    "CONFIG_VERSION",
    "SILENCE_LOG_MEL",
    "AppearanceConfig",
    "AppearanceEncoder",
    "Attention",
    "AttentionBackend",
    "AudioEncoder",
    "AudioEncoderConfig",
    "AvatarState",
    "CheckpointError",
    "DenseMotionNetwork",
    "DualBranchGenerator",
    "GeneratorConfig",
    "ModelConfigError",
    "ModelInputError",
    "MotionCodeConfig",
    "MotionDiT",
    "MotionDiTConfig",
    "MotionEncoder",
    "Renderer",
    "RendererConfig",
    "available_backends",
    "get_backend",
    "keypoints_from_code",
    "register_backend",
    "set_attention_backend",
    "split_code",
]
