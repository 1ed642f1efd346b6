"""One neural chunk, written once: audio conditioning, the velocity, sampling, rendering.

Every path that turns a chunk's inputs into motion codes, or motion codes into frames,
calls these functions, so the paths cannot drift apart:

- :func:`avatar.samplers.chunks.sample_chunk` (one shot and :class:`MotionStream`);
- ``TorchRunner.motion_chunk`` and ``TorchRunner.render`` (:mod:`avatar.pipelines.runner`,
  rows are sessions; its transformer and renderer may be ``torch.compile``'d, so they are
  passed in as ``forward`` / ``renderer``);
- ``MotionChunkGraph`` and, through :meth:`DualBranchGenerator.render`, ``RendererGraph``
  (:mod:`avatar.deploy.onnx`): the graphs the ``OnnxRunner`` runs;
- :meth:`avatar.models.generator.DualBranchGenerator.render`.

::

    codes = chunk_codes(gen, sampler, mel=window, visemes=None, context=ctx,
                        id_tokens=avatar.id_tokens, noise=chunk_noise(seed, i, ...))
    frames = render_codes(gen.renderer, n_kp, avatar.pyramid, avatar.id_tokens,
                          avatar.source_keypoints, codes)        # [B, T, 3, S, S]

The pieces of :func:`chunk_codes` are public for callers that batch differently (the
runner groups a teacher's rows by their say weights): :func:`chunk_audio` →
:func:`sample_codes` (which builds :func:`chunk_velocity`). Nothing here holds weights
or imports a sampler: the sampler is handed in (anything with ``sample(velocity,
noise)``), so models stay below samplers. Shapes: ``B`` rows, ``K`` chunk frames, ``C``
context frames, ``D`` code length, ``W`` window frames (A + C + K + L), ``m`` mel rows
per frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from avatar.models.config import GeneratorConfig
from avatar.models.motion_code import keypoints_from_code

if TYPE_CHECKING:
    from avatar.samplers.flow_matching import VelocityFn


class ChunkModel(Protocol):
    """What a chunk needs of a model (``DualBranchGenerator`` fits)."""

    @property
    def config(self) -> GeneratorConfig: ...

    @property
    def audio_encoder(self) -> Any: ...

    @property
    def motion_dit(self) -> Any: ...


class ChunkSampler(Protocol):
    """A flow-matching sampler (``FlowMatchingTeacher`` or ``FlowMatchingStudent``)."""

    def sample(self, velocity: VelocityFn, noise: Tensor) -> Tensor: ...


def chunk_audio(
    model: ChunkModel,
    mel: Tensor,
    visemes: Tensor | None = None,
    *,
    viseme_keep: Tensor | None = None,
) -> Tensor:
    """The audio tokens a chunk is conditioned on: the encoder over its window, last C + K.

    Args:
        model: the generator (its audio encoder and config).
        mel: the chunk's window [B, W·m, n_mels] (rows outside the audio are silence).
        visemes: the window's viseme ids [B, W] int64, or None.
        viseme_keep: [B], 1 where row ``b`` uses its visemes and 0 where it is encoded as
            if none were given (an exact select, for a graph without optional inputs);
            None uses ``visemes`` on every row.

    Returns:
        Audio tokens [B, C + K, A]; hand them to :func:`sample_codes`.
    """
    d = model.config.dit
    n_cond = d.context_frames + d.chunk_frames
    encoder = model.audio_encoder
    if viseme_keep is None:
        return encoder(mel, visemes)[:, -n_cond:]
    # Exactly the no-viseme tokens where viseme_keep is 0 (a select, not a blend).
    with_visemes = encoder(mel, visemes)
    without = encoder(mel, None)
    keep = (viseme_keep > 0.5)[:, None, None]
    return torch.where(keep, with_visemes, without)[:, -n_cond:]


def chunk_velocity(
    forward: Callable[..., Tensor],
    context: Tensor,
    audio: Tensor,
    id_tokens: Tensor,
    guidance: Tensor | None = None,
) -> VelocityFn:
    """The velocity function a sampler calls for one chunk of ``B`` rows.

    A teacher stacks its guidance passes (``n·B`` rows); the conditions are repeated
    ``n`` times to match.

    Args:
        forward: the motion transformer's call (``MotionDiT`` or a compiled wrapper).
        context: the previous C frames [B, C, D], already normalised.
        audio: :func:`chunk_audio`'s tokens [B, C + K, A].
        id_tokens: [B, N, E].
        guidance: per-row say weights [B, 2] that replace the sampler's own (a student
            serving sessions with different weights); None passes the sampler's.

    Returns:
        ``velocity(x, t, audio_keep, id_keep, guidance)`` in normalised units.
    """
    b = context.shape[0]

    def velocity(x: Tensor, t: Tensor, ak: Tensor, ik: Tensor, g: Tensor | None) -> Tensor:
        n = x.shape[0] // b

        def rep(z: Tensor) -> Tensor:
            return z if n == 1 else z.repeat(n, *([1] * (z.ndim - 1)))

        given = g if guidance is None else rep(guidance)
        return forward(x, t, rep(context), rep(audio), rep(id_tokens), ak, ik, given)

    return velocity


def sample_codes(
    dit: Any,
    sampler: ChunkSampler,
    noise: Tensor,
    context: Tensor,
    audio: Tensor,
    id_tokens: Tensor,
    *,
    guidance: Tensor | None = None,
    forward: Callable[..., Tensor] | None = None,
) -> Tensor:
    """Run the sampler's steps for one chunk: motion codes from its noise and conditions.

    Args:
        dit: the ``MotionDiT`` (its code normalisation; its forward unless ``forward``).
        sampler: teacher or student sampler; must match the transformer's kind.
        noise: [B, K, D] (:func:`avatar.samplers.chunks.chunk_noise` per row).
        context: the previous C frames' codes [B, C, D] (not normalised).
        audio: :func:`chunk_audio`'s tokens [B, C + K, A].
        id_tokens: [B, N, E].
        guidance: per-row say weights [B, 2] (see :func:`chunk_velocity`).
        forward: the transformer call to use instead of ``dit`` (``torch.compile``'d).

    Returns:
        Motion codes [B, K, D]; append them to the context for the next chunk.
    """
    call = dit if forward is None else forward
    velocity = chunk_velocity(call, dit.normalize(context), audio, id_tokens, guidance)
    return dit.denormalize(sampler.sample(velocity, noise))


def chunk_codes(
    model: ChunkModel,
    sampler: ChunkSampler,
    *,
    mel: Tensor,
    visemes: Tensor | None,
    context: Tensor,
    id_tokens: Tensor,
    noise: Tensor,
    viseme_keep: Tensor | None = None,
    guidance: Tensor | None = None,
    forward: Callable[..., Tensor] | None = None,
) -> Tensor:
    """One chunk of motion: :func:`chunk_audio` then :func:`sample_codes`.

    Args:
        model: the generator.
        sampler: teacher or student sampler.
        mel: the chunk's audio window [B, W·m, n_mels].
        visemes: its viseme ids [B, W] int64, or None.
        context: the previous C frames' codes [B, C, D].
        id_tokens: [B, N, E].
        noise: [B, K, D].
        viseme_keep: see :func:`chunk_audio`.
        guidance: see :func:`chunk_velocity`.
        forward: see :func:`sample_codes`.

    Returns:
        Motion codes [B, K, D].
    """
    audio = chunk_audio(model, mel, visemes, viseme_keep=viseme_keep)
    dit = model.motion_dit
    return sample_codes(
        dit, sampler, noise, context, audio, id_tokens, guidance=guidance, forward=forward
    )


def render_codes(
    renderer: Callable[..., tuple[Tensor, Tensor, Tensor]],
    n_kp: int,
    pyramid: tuple[Tensor, ...] | list[Tensor],
    id_tokens: Tensor,
    source_keypoints: Tensor,
    codes: Tensor,
) -> Tensor:
    """Render motion codes on avatars: every frame of row ``b`` on row ``b``'s avatar.

    The avatar's pyramid, identity tokens and keypoints are expanded to one per frame and
    the ``B·T`` frames go through the renderer as one batch.

    Args:
        renderer: the ``Renderer`` (or a compiled wrapper).
        n_kp: keypoints per code (``config.motion.n_kp``).
        pyramid: appearance levels, level ``i`` [B, C_i, H_i, W_i].
        id_tokens: [B, N, E].
        source_keypoints: [B, n_kp, 3].
        codes: [B, T, D].

    Returns:
        Frames [B, T, 3, S, S] in [-1, 1].
    """
    b, t = id_tokens.shape[0], codes.shape[1]

    def per_frame(x: Tensor) -> Tensor:
        return x[:, None].expand(b, t, *x.shape[1:]).reshape(b * t, *x.shape[1:])

    rgb, _, _ = renderer(
        tuple(per_frame(level) for level in pyramid),
        per_frame(id_tokens),
        per_frame(source_keypoints),
        keypoints_from_code(codes.reshape(b * t, -1), n_kp),
    )
    return rgb.reshape(b, t, *rgb.shape[1:])
