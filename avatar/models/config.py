"""Configs of the neural dual-branch generator: frozen dataclasses, checked at construction.

One config per part, bundled by :class:`GeneratorConfig`; build a whole generator with
``GeneratorConfig.tiny()`` (tests, 64 px), ``.base()`` (256 px) or ``.large()`` (512 px).
Configs are embedded in checkpoints as JSON (:func:`config_to_dict` /
:func:`config_from_dict`); change :data:`CONFIG_VERSION` when a field's meaning changes.

Time base: video at ``fps`` (25) frames per second; audio features are log-mel at 100
frames per second (16 kHz, hop 160), so ``mel_per_frame`` (4) mel frames per video frame.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from avatar.models.errors import ModelConfigError

CONFIG_VERSION = 2
"""Version of the config layout stored in checkpoints; a mismatch refuses to load.
2: the motion encoder's head reads a grid of places (``MotionCodeConfig.encoder_grid``)
instead of one image-wide mean."""

MEL_FRAMES_PER_SECOND = 100
"""The audio feature contract: log-mel frames per second (16 kHz audio, hop 160)."""

POSE_DIM = 6
"""Pose part of a motion code: yaw, pitch, roll (radians), tx, ty, log-scale."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ModelConfigError(message)


def _positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        _require(value > 0, f"{owner}.{name} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class AppearanceConfig:
    """The appearance branch: reference crop → feature pyramid + identity tokens.

    Attributes:
        image_size: side of the square aligned reference crop, in pixels (RGB in [-1, 1]).
        stem_channels: channels after the first stride-2 convolution.
        channels: channels of each pyramid level; level 0 is at stride 4 (64² at 256 px)
            and each next level halves the resolution (32², 16², ...).
        blocks_per_level: residual blocks at each level.
        n_id_tokens: how many identity tokens (learned queries attending to the coarsest
            level).
        token_dim: width of the identity tokens.
        token_heads: attention heads of the token pooling.
        groups: GroupNorm groups (reduced to a divisor of the channel count).
    """

    image_size: int = 256
    stem_channels: int = 32
    channels: tuple[int, ...] = (64, 128, 256)
    blocks_per_level: int = 1
    n_id_tokens: int = 32
    token_dim: int = 256
    token_heads: int = 4
    groups: int = 8

    def __post_init__(self) -> None:
        _positive(
            "AppearanceConfig",
            image_size=self.image_size,
            stem_channels=self.stem_channels,
            blocks_per_level=self.blocks_per_level,
            n_id_tokens=self.n_id_tokens,
            token_dim=self.token_dim,
            token_heads=self.token_heads,
            groups=self.groups,
        )
        _require(len(self.channels) >= 1, "AppearanceConfig.channels needs at least one level")
        _positive("AppearanceConfig", **{f"channels[{i}]": c for i, c in enumerate(self.channels)})
        stride = self.strides[-1]
        _require(
            self.image_size % stride == 0,
            f"AppearanceConfig.image_size ({self.image_size}) must be a multiple of the "
            f"coarsest stride ({stride})",
        )
        _require(
            self.token_dim % self.token_heads == 0,
            f"AppearanceConfig.token_heads ({self.token_heads}) must divide token_dim "
            f"({self.token_dim})",
        )

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each pyramid level (4, 8, 16, ...)."""
        return tuple(4 * 2**i for i in range(len(self.channels)))

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Side of each pyramid level's feature map, in cells."""
        return tuple(self.image_size // s for s in self.strides)


@dataclass(frozen=True, slots=True)
class MotionCodeConfig:
    """The per-frame motion code and the motion encoder that reads it from an image.

    A code is ``[keypoints (n_kp·3) | expression deltas (n_kp·3) | pose (6)]``: implicit
    3D keypoints in canonical space, per-keypoint expression offsets, and the head pose
    (yaw, pitch, roll in radians, tx, ty in [-1, 1] image units, log-scale). See
    :func:`avatar.models.motion_code.keypoints_from_code`.

    Attributes:
        n_kp: number of implicit 3D keypoints.
        encoder_channels: channels of the motion encoder's stride-2 stages.
        encoder_hidden: width of the motion encoder's head.
        encoder_grid: the encoder's last feature map is averaged down to this many
            cells a side, and the head reads every cell: it knows *where* a feature is.
            An image-wide mean (the first layout) lost the place, and with it the
            lip gap, a pixel or two on a small crop: encoders trained that way
            learned no mouth opening on most seeds (docs/training.md).
        groups: GroupNorm groups.
    """

    n_kp: int = 15
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    encoder_hidden: int = 256
    encoder_grid: int = 8
    groups: int = 8

    def __post_init__(self) -> None:
        _positive(
            "MotionCodeConfig",
            n_kp=self.n_kp,
            encoder_hidden=self.encoder_hidden,
            encoder_grid=self.encoder_grid,
            groups=self.groups,
        )
        _require(len(self.encoder_channels) >= 1, "MotionCodeConfig.encoder_channels is empty")

    @property
    def code_dim(self) -> int:
        """Length of one motion code."""
        return 2 * 3 * self.n_kp + POSE_DIM


@dataclass(frozen=True, slots=True)
class RendererConfig:
    """The renderer: keypoints → dense motion (flow + occlusion) → warp → decoder.

    Attributes:
        dense_feature_channels: channels the source features are squeezed to before being
            warped once per keypoint inside the dense-motion network.
        dense_channels: channels of the dense-motion hourglass, one per down step.
        kp_variance: variance of the keypoint Gaussians, in [-1, 1] image units squared.
        up_channels: channels of the decoder's two ×2 upsampling stages (stride 4 → 1).
        attn_levels: how many of the coarsest pyramid levels cross-attend to the identity
            tokens in the decoder.
        heads: attention heads of those cross-attentions.
        groups: GroupNorm groups.
    """

    dense_feature_channels: int = 4
    dense_channels: tuple[int, ...] = (64, 128, 256)
    kp_variance: float = 0.01
    up_channels: tuple[int, int] = (64, 32)
    attn_levels: int = 2
    heads: int = 4
    groups: int = 8

    def __post_init__(self) -> None:
        _positive(
            "RendererConfig",
            dense_feature_channels=self.dense_feature_channels,
            kp_variance=self.kp_variance,
            heads=self.heads,
            groups=self.groups,
        )
        _require(len(self.dense_channels) >= 1, "RendererConfig.dense_channels is empty")
        _require(
            len(self.up_channels) == 2,
            f"RendererConfig.up_channels needs two stages (stride 4 → 2 → 1), "
            f"got {len(self.up_channels)}",
        )
        _require(self.attn_levels >= 0, "RendererConfig.attn_levels must be 0 or more")


@dataclass(frozen=True, slots=True)
class AudioEncoderConfig:
    """The audio encoder: log-mel (+ optional viseme ids) → one token per video frame.

    The encoder is causal over video frames: a frame's token depends on its own mel
    frames and earlier ones only. The look-ahead is added by where the sampler places
    the audio window (``MotionDiTConfig.lookahead_frames``), not inside the encoder.

    Attributes:
        n_mels: mel bins (80).
        mel_per_frame: mel frames per video frame (100 mel frames/s ÷ fps).
        width: token width.
        depth: causal dilated convolution blocks (dilation 1, 2, 4, ...).
        kernel_size: temporal kernel of each block.
        n_visemes: how many viseme ids: 0 (silence) to ``n_visemes - 1`` (16, as
            ``avatar.neural_audio`` emits).
    """

    n_mels: int = 80
    mel_per_frame: int = 4
    width: int = 256
    depth: int = 4
    kernel_size: int = 3
    n_visemes: int = 16

    def __post_init__(self) -> None:
        _positive(
            "AudioEncoderConfig",
            n_mels=self.n_mels,
            mel_per_frame=self.mel_per_frame,
            width=self.width,
            depth=self.depth,
            kernel_size=self.kernel_size,
            n_visemes=self.n_visemes,
        )

    @property
    def receptive_field(self) -> int:
        """How many video frames (this one and earlier) one token depends on."""
        return 1 + (self.kernel_size - 1) * sum(2**i for i in range(self.depth))


@dataclass(frozen=True, slots=True)
class MotionDiTConfig:
    """The motion branch: a flow-matching transformer over a chunk of motion codes.

    Attributes:
        chunk_frames: K, frames generated per chunk (8 at 25 fps = 320 ms).
        context_frames: C, previously generated frames each chunk attends to (carried
            state; causal).
        lookahead_frames: L, video frames of audio after a chunk's last frame that the
            chunk may hear (2 = 80 ms).
        width: transformer width.
        depth: transformer blocks.
        heads: attention heads.
        mlp_ratio: feed-forward width ÷ width.
        guidance_embed: True for a distilled student, which takes the two say weights
            (audio, identity) as an input embedding; False for the teacher, which is
            guided by classifier-free guidance in the sampler.
    """

    chunk_frames: int = 8
    context_frames: int = 8
    lookahead_frames: int = 2
    width: int = 384
    depth: int = 8
    heads: int = 6
    mlp_ratio: float = 4.0
    guidance_embed: bool = False

    def __post_init__(self) -> None:
        _positive(
            "MotionDiTConfig",
            chunk_frames=self.chunk_frames,
            context_frames=self.context_frames,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
        )
        _require(self.lookahead_frames >= 0, "MotionDiTConfig.lookahead_frames must be >= 0")
        _require(
            self.width % self.heads == 0,
            f"MotionDiTConfig.heads ({self.heads}) must divide width ({self.width})",
        )


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """The whole dual-branch generator.

    Attributes:
        appearance: the appearance branch.
        motion: the motion code and its encoder.
        renderer: dense motion, warp and decoder.
        audio: the audio encoder.
        dit: the motion diffusion transformer.
        fps: video frames per second; ``MEL_FRAMES_PER_SECOND / fps`` must equal
            ``audio.mel_per_frame``.
    """

    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    motion: MotionCodeConfig = field(default_factory=MotionCodeConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    dit: MotionDiTConfig = field(default_factory=MotionDiTConfig)
    fps: float = 25.0

    def __post_init__(self) -> None:
        _positive("GeneratorConfig", fps=self.fps)
        per_frame = MEL_FRAMES_PER_SECOND / self.fps
        _require(
            math.isclose(per_frame, self.audio.mel_per_frame),
            f"GeneratorConfig: {self.fps} fps needs audio.mel_per_frame = {per_frame:g} "
            f"(100 mel frames/s), got {self.audio.mel_per_frame}",
        )
        level0 = self.appearance.level_sizes[0]
        steps = 2 ** len(self.renderer.dense_channels)
        _require(
            level0 % steps == 0,
            f"GeneratorConfig: the dense-motion hourglass halves "
            f"{len(self.renderer.dense_channels)} times, so the finest pyramid level "
            f"({level0}²) must be a multiple of {steps}",
        )
        _require(
            self.renderer.attn_levels <= len(self.appearance.channels),
            f"GeneratorConfig: renderer.attn_levels ({self.renderer.attn_levels}) exceeds the "
            f"pyramid's {len(self.appearance.channels)} levels",
        )
        n_attn = self.renderer.attn_levels
        for c in self.appearance.channels[len(self.appearance.channels) - n_attn :]:
            _require(
                c % self.renderer.heads == 0,
                f"GeneratorConfig: renderer.heads ({self.renderer.heads}) must divide the "
                f"channels ({c}) of every pyramid level that attends to the identity tokens",
            )

    @property
    def image_size(self) -> int:
        """Side of the generated frames, in pixels."""
        return self.appearance.image_size

    @property
    def code_dim(self) -> int:
        """Length of one motion code."""
        return self.motion.code_dim

    @property
    def audio_context_frames(self) -> int:
        """Frames of audio before a chunk's context that its audio window also covers."""
        return self.audio.receptive_field - 1

    @property
    def window_frames(self) -> int:
        """Video frames of audio one chunk reads: context + receptive field + K + L."""
        d = self.dit
        return self.audio_context_frames + d.context_frames + d.chunk_frames + d.lookahead_frames

    def as_student(self) -> GeneratorConfig:
        """The same generator with a say-weight embedding (a distilled student)."""
        return dataclasses.replace(self, dit=dataclasses.replace(self.dit, guidance_embed=True))

    @classmethod
    def tiny(cls) -> GeneratorConfig:
        """64 px, well under a million parameters: for tests on CPU."""
        return cls(
            appearance=AppearanceConfig(
                image_size=64,
                stem_channels=8,
                channels=(16, 24, 32),
                n_id_tokens=4,
                token_dim=32,
                token_heads=2,
            ),
            motion=MotionCodeConfig(n_kp=6, encoder_channels=(8, 16, 32), encoder_hidden=32),
            renderer=RendererConfig(
                dense_feature_channels=2,
                dense_channels=(16, 32),
                up_channels=(16, 8),
                attn_levels=2,
                heads=2,
            ),
            audio=AudioEncoderConfig(width=32, depth=2, kernel_size=3),
            dit=MotionDiTConfig(
                chunk_frames=8, context_frames=4, lookahead_frames=2, width=32, depth=2, heads=2
            ),
        )

    @classmethod
    def base(cls) -> GeneratorConfig:
        """256 px, the default size for a live session on one GPU."""
        return cls()

    @classmethod
    def large(cls) -> GeneratorConfig:
        """512 px, more capacity in every part."""
        return cls(
            appearance=AppearanceConfig(
                image_size=512,
                stem_channels=48,
                channels=(96, 192, 384),
                blocks_per_level=2,
                n_id_tokens=64,
                token_dim=384,
                token_heads=6,
            ),
            motion=MotionCodeConfig(
                n_kp=21, encoder_channels=(32, 64, 128, 256, 512), encoder_hidden=512
            ),
            renderer=RendererConfig(
                dense_feature_channels=4,
                dense_channels=(64, 128, 256, 512),
                up_channels=(96, 48),
                attn_levels=2,
                heads=6,
            ),
            audio=AudioEncoderConfig(width=384, depth=5, kernel_size=3),
            dit=MotionDiTConfig(
                chunk_frames=8, context_frames=8, lookahead_frames=2, width=512, depth=12, heads=8
            ),
        )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config (nested frozen dataclasses) as plain JSON-ready values."""
    return dataclasses.asdict(config)


def _fits(value: Any, hint: type) -> bool:
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def config_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Rebuild a config from :func:`config_to_dict`'s output, naming any field that is wrong.

    Raises:
        ModelConfigError: a field is unknown or missing, or a value breaks a rule.
    """
    owner = where or cls.__name__
    if not isinstance(data, dict):
        raise ModelConfigError(f"{owner} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelConfigError(f"{owner} has unknown field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # the field's default applies
        hint = hints[f.name]
        value = data[f.name]
        if dataclasses.is_dataclass(hint):
            value = config_from_dict(hint, value, f"{owner}.{f.name}")
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            if not isinstance(value, list | tuple) or not all(_fits(v, item) for v in value):
                raise ModelConfigError(
                    f"{owner}.{f.name} must be a list of {item.__name__}, got {value!r}"
                )
            value = tuple(value)
        elif not _fits(value, hint):
            raise ModelConfigError(f"{owner}.{f.name} must be {hint.__name__}, got {value!r}")
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ModelConfigError(f"{owner}: {exc}") from None
