"""Flow-matching samplers: Euler steps from noise (t = 0) to motion (t = 1). No weights.

Convention (as in :mod:`avatar.models.motion_dit`): ``x_t = (1 − t)·noise + t·data`` and
the model predicts the velocity ``data − noise``.

A sampler calls a *velocity function* ``velocity(x, t, audio_keep, id_keep, guidance)``
(all batch-first tensors; :mod:`avatar.samplers.chunks` builds it around the motion
transformer) and never sees the model itself.

- :class:`FlowMatchingTeacher`: many Euler steps with the standard two-condition
  classifier-free guidance. With ``v_u`` (no audio, no identity), ``v_a`` (audio only) and
  ``v_f`` (both), the guided velocity is
  ``v_u + w_a·(v_a − v_u) + w_id·(v_f − v_a)``, computed as the equal linear combination
  ``(1 − w_a)·v_u + (w_a − w_id)·v_a + w_id·v_f`` so that passes whose coefficient is zero
  are not run: say weights (0, 0) run only the unconditional pass, (1, 1) only the full one.
- :class:`FlowMatchingStudent`: 1–4 Euler steps of a distilled student that takes the say
  weights as an input embedding: one pass per step, no CFG doubling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from avatar.models.errors import ModelConfigError

VelocityFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""``velocity(x, t, audio_keep, id_keep, guidance) -> v`` with x [N, K, D], t [N],
keep masks [N] (1 keep, 0 drop), guidance [N, 2] or None; returns [N, K, D]."""

MAX_STUDENT_STEPS = 4


def _check_weights(owner: str, audio: float, identity: float) -> None:
    for name, w in (("audio_weight", audio), ("identity_weight", identity)):
        if not (math.isfinite(w) and w >= 0):
            raise ModelConfigError(f"{owner}.{name} must be a finite number >= 0, got {w}")


@dataclass(frozen=True, slots=True)
class TeacherOptions:
    """How the many-step teacher samples.

    Attributes:
        steps: Euler steps from t = 0 to 1 (25–50 is typical).
        audio_weight: say weight audio → motion (w_a); 1 = plain conditional, >1 follows
            the speech more strongly, 0 ignores it.
        identity_weight: say weight appearance → identity (w_id), same scale.
        batched: run the needed guidance passes as one batch (faster) instead of one
            call each (less memory). Results agree to rounding.
    """

    steps: int = 32
    audio_weight: float = 2.0
    identity_weight: float = 1.5
    batched: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ModelConfigError(f"TeacherOptions.steps must be at least 1, got {self.steps}")
        _check_weights("TeacherOptions", self.audio_weight, self.identity_weight)


@dataclass(frozen=True, slots=True)
class StudentOptions:
    """How the distilled student samples.

    Attributes:
        steps: Euler steps, 1 to 4.
        audio_weight: say weight audio → motion, fed to the student's embedding.
        identity_weight: say weight appearance → identity, likewise.
    """

    steps: int = 2
    audio_weight: float = 2.0
    identity_weight: float = 1.5

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STUDENT_STEPS:
            raise ModelConfigError(
                f"StudentOptions.steps must be 1 to {MAX_STUDENT_STEPS}, got {self.steps}"
            )
        _check_weights("StudentOptions", self.audio_weight, self.identity_weight)


def time_grid(steps: int) -> list[float]:
    """The ``steps + 1`` uniform times from 0 to 1 the samplers step between."""
    return [i / steps for i in range(steps + 1)]


class FlowMatchingTeacher:
    """Euler sampler with two-weight classifier-free guidance (for a teacher model).

    Args:
        options: steps and say weights.
    """

    guidance_embedded = False

    def __init__(self, options: TeacherOptions | None = None):
        self.options = options or TeacherOptions()

    def passes(self) -> tuple[tuple[float, float, float], ...]:
        """The guidance passes run per step as ``(coefficient, audio_keep, id_keep)``."""
        o = self.options
        wa, wi = o.audio_weight, o.identity_weight
        terms = ((1.0 - wa, 0.0, 0.0), (wa - wi, 1.0, 0.0), (wi, 1.0, 1.0))
        return tuple(term for term in terms if term[0] != 0.0)

    def velocity(self, velocity: VelocityFn, x: Tensor, t: Tensor) -> Tensor:
        """The guided velocity at ``x`` [B, K, D], time ``t`` [B]."""
        passes = self.passes()
        b = x.shape[0]

        def keep(value: float, n: int) -> Tensor:
            return torch.full((n * b,), value, dtype=x.dtype, device=x.device)

        if self.options.batched and len(passes) > 1:
            n = len(passes)
            ak = torch.cat([keep(a, 1) for _, a, _ in passes])
            ik = torch.cat([keep(i, 1) for _, _, i in passes])
            outs = velocity(x.repeat(n, 1, 1), t.repeat(n), ak, ik, None).chunk(n)
        else:
            outs = tuple(velocity(x, t, keep(a, 1), keep(i, 1), None) for _, a, i in passes)
        v = passes[0][0] * outs[0]
        for (coef, _, _), out in zip(passes[1:], outs[1:], strict=True):
            v = v + coef * out
        return v

    def sample(self, velocity: VelocityFn, noise: Tensor) -> Tensor:
        """Integrate from ``noise`` [B, K, D] at t = 0 to t = 1; returns the sample."""
        return _euler(
            noise, time_grid(self.options.steps), lambda x, t: self.velocity(velocity, x, t)
        )


class FlowMatchingStudent:
    """Few-step Euler sampler for a distilled student (say weights as an input embedding).

    Args:
        options: steps (1–4) and say weights.
    """

    guidance_embedded = True

    def __init__(self, options: StudentOptions | None = None):
        self.options = options or StudentOptions()

    def sample(self, velocity: VelocityFn, noise: Tensor) -> Tensor:
        """Integrate from ``noise`` [B, K, D] at t = 0 to t = 1, one model pass per step."""
        b = noise.shape[0]
        ones = torch.ones(b, dtype=noise.dtype, device=noise.device)
        w = torch.tensor(
            [self.options.audio_weight, self.options.identity_weight],
            dtype=noise.dtype,
            device=noise.device,
        ).expand(b, 2)
        return _euler(
            noise, time_grid(self.options.steps), lambda x, t: velocity(x, t, ones, ones, w)
        )


def _euler(x: Tensor, times: list[float], step: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    b = x.shape[0]
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        t = torch.full((b,), t0, dtype=x.dtype, device=x.device)
        x = x + (t1 - t0) * step(x, t)
    return x


def flow_matching_pair(data: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Training pair for flow matching: ``(x_t, target velocity)`` for ``t`` [B] in [0, 1]."""
    tt = t.reshape(-1, *([1] * (data.ndim - 1))).to(data.dtype)
    return (1 - tt) * noise + tt * data, data - noise


def condition_dropout(
    batch: int,
    p_audio: float,
    p_identity: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Independent condition dropout for training: ``(audio_keep, id_keep)`` [batch] of 0/1.

    Each condition is dropped with its own probability, independently, so the model learns
    the unconditional, audio-only, identity-only and full velocities that guidance needs.
    """
    for name, p in (("p_audio", p_audio), ("p_identity", p_identity)):
        if not 0.0 <= p <= 1.0:
            raise ModelConfigError(f"condition_dropout: {name} must be in [0, 1], got {p}")
    u = torch.rand(2, batch, generator=generator).to(device)
    return (u[0] >= p_audio).float(), (u[1] >= p_identity).float()
