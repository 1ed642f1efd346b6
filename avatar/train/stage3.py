"""Stage 3: distil the many-step guided teacher into a few-step student.

Method: **direct regression onto the teacher's ODE endpoints** (knowledge distillation
of a sampler, as in Luhman & Luhman 2021, with the say weights as an input as in
guidance distillation, Meng et al. 2023). For a training chunk (context, audio window,
identity tokens from :class:`~avatar.train.stage2.MotionCorpus`), a noise ``x0`` and say
weights ``(w_a, w_id)`` drawn uniformly from their ranges, the teacher integrates
``teacher_steps`` Euler steps of its two-weight classifier-free guidance
(``v_u + w_a (v_a − v_u) + w_id (v_f − v_a)``, the same combination as
:class:`~avatar.samplers.flow_matching.FlowMatchingTeacher`, here with weights per item)
to an endpoint ``x1``. The student runs its own ``student_steps`` Euler steps from the
same ``x0`` with the weights fed to its embedding, exactly as
:class:`~avatar.samplers.flow_matching.FlowMatchingStudent` samples, and the loss is the
MSE between its endpoint and ``x1`` (normalised code units), back-propagated through all
student steps. No progressive halving, no consistency loss: one stage, one target.

The teacher's endpoints are the expensive part (``3 × teacher_steps`` transformer passes
per chunk), so they are computed for a pool of ``pool_size`` chunks at a time and the
student draws its batches from the pool; the pool is rebuilt every ``pool_refresh``
steps from fresh chunks, noise and weights. Everything is drawn from the seed and the
pool's index, so a resumed run rebuilds the same pool.

The student starts as a copy of the teacher (its say-weight embedding is
zero-initialised, so it starts as the teacher's conditional velocity); only its motion
transformer trains. The audio encoder and the other parts are the teacher's, frozen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.generator import DualBranchGenerator
from avatar.samplers.flow_matching import time_grid
from avatar.train.loop import (
    LoopOptions,
    StepInfo,
    TrainError,
    TrainResult,
    autocast,
    cpu_threads,
    resume_config,
    seed_everything,
    step_generator,
    train,
)
from avatar.train.stage2 import (
    CODES_FILE,
    SMOOTH_FRAMES,
    MotionCorpus,
    load_stage_model,
    motion_velocity,
)

EVAL_WEIGHTS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (2.0, 1.5), (3.0, 0.5))
"""Say weights (audio, identity) the validation compares student and teacher at."""


@dataclass(frozen=True, slots=True)
class DistillOptions:
    """Stage 3's teacher, student and sampling of say weights.

    Attributes:
        batch_size: chunks per student step.
        teacher_steps: the teacher's Euler steps (its targets).
        student_steps: the student's Euler steps (1 to 4).
        audio_weight_range: ``(low, high)`` of the uniform draw of the audio say weight.
        identity_weight_range: the same for the identity say weight.
        pool_size: chunks whose teacher endpoints are computed at a time.
        pool_refresh: steps between two pools.
        smooth_frames: temporal smoothing of the context codes (as in stage 2).
        eval_chunks: chunks of the fixed validation batch.
    """

    batch_size: int = 32
    teacher_steps: int = 25
    student_steps: int = 2
    audio_weight_range: tuple[float, float] = (0.0, 3.0)
    identity_weight_range: tuple[float, float] = (0.0, 3.0)
    pool_size: int = 1024
    pool_refresh: int = 500
    smooth_frames: float = SMOOTH_FRAMES
    eval_chunks: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.student_steps <= 4:
            raise TrainError(
                f"DistillOptions.student_steps must be 1 to 4, got {self.student_steps}"
            )
        if self.teacher_steps < self.student_steps:
            raise TrainError("DistillOptions.teacher_steps must be at least student_steps")
        if min(self.batch_size, self.pool_size, self.pool_refresh, self.eval_chunks) < 1:
            raise TrainError("DistillOptions: sizes and pool_refresh must be >= 1")
        if self.pool_size < self.batch_size:
            raise TrainError("DistillOptions.pool_size must be at least batch_size")
        for name in ("audio_weight_range", "identity_weight_range"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise TrainError(f"DistillOptions.{name} must be 0 <= low <= high, got {low, high}")


_CONDITIONS = ("mel", "context", "id_tokens")


def _guided(
    teacher: DualBranchGenerator, batch: dict[str, Tensor], x: Tensor, t: Tensor, w: Tensor
) -> Tensor:
    """The teacher's guided velocity with per-item say weights ``w`` [B, 2] (3 passes in
    one batch: unconditional, audio only, full)."""
    b = x.shape[0]
    rep = {k: batch[k].repeat(3, *([1] * (batch[k].ndim - 1))) for k in _CONDITIONS}
    ones, zeros = torch.ones(b, device=x.device), torch.zeros(b, device=x.device)
    ak = torch.cat([zeros, ones, ones])
    ik = torch.cat([zeros, zeros, ones])
    v_u, v_a, v_f = motion_velocity(teacher, rep, x.repeat(3, 1, 1), t.repeat(3), ak, ik).chunk(3)
    wa, wi = w[:, 0, None, None], w[:, 1, None, None]
    return v_u + wa * (v_a - v_u) + wi * (v_f - v_a)


@torch.no_grad()
def teacher_states(
    teacher: DualBranchGenerator,
    batch: dict[str, Tensor],
    noise: Tensor,
    weights: Tensor,
    steps: int,
    times: tuple[float, ...] = (1.0,),
) -> Tensor:
    """Integrate the guided teacher from ``noise`` [B, K, D] (t = 0) in ``steps`` Euler
    steps with per-item say weights [B, 2] (normalised units).

    Returns:
        Its states at ``times`` [len(times), B, K, D], linearly interpolated between the
        Euler grid's points where a time falls between them (``(1.0,)``: the endpoint).
    """
    x = noise
    grid = time_grid(steps)
    states = [x]
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        t = torch.full((x.shape[0],), t0, device=x.device)
        x = x + (t1 - t0) * _guided(teacher, batch, x, t, weights).float()
        states.append(x)
    out = []
    for tau in times:
        j = min(int(tau * steps), steps - 1)
        frac = tau * steps - j
        out.append(torch.lerp(states[j], states[j + 1], frac))
    return torch.stack(out)


def student_endpoints(
    student: DualBranchGenerator,
    batch: dict[str, Tensor],
    noise: Tensor,
    weights: Tensor,
    steps: int,
) -> Tensor:
    """The student's ``steps`` Euler steps from ``noise`` with say weights [B, 2] as its
    input (as ``FlowMatchingStudent`` samples); differentiable."""
    x = noise
    b = x.shape[0]
    ones = torch.ones(b, device=x.device)
    times = time_grid(steps)
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        t = torch.full((b,), t0, device=x.device)
        x = x + (t1 - t0) * motion_velocity(student, batch, x, t, ones, ones, weights).float()
    return x


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def make_student(teacher: DualBranchGenerator) -> DualBranchGenerator:
    """A student generator that starts as a copy of ``teacher`` (fresh say-weight embedding).

    Raises:
        TrainError: ``teacher`` is already a student.
    """
    if teacher.config.dit.guidance_embed:
        raise TrainError("the teacher is already a student (its transformer takes say weights)")
    student = DualBranchGenerator(teacher.config.as_student())
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("motion_dit.w_embed.") for k in missing):
        raise TrainError(f"cannot copy the teacher into a student: {missing} {unexpected}")
    return student.to(next(teacher.parameters()).device)


class DistillTask:
    """Stage 3 as a :class:`~avatar.train.loop.TrainTask`.

    Args:
        teacher: the stage-2 generator (frozen here).
        student: its copy from :func:`make_student` (on the same device).
        corpus: training chunks.
        options: teacher, student and weights.
        validation: held-out chunks for the validation (None: fixed training chunks).
        bf16: compute the teacher's pool under bf16 autocast on CUDA.
    """

    stage = "distill"

    def __init__(
        self,
        teacher: DualBranchGenerator,
        student: DualBranchGenerator,
        corpus: MotionCorpus,
        options: DistillOptions,
        validation: MotionCorpus | None = None,
        bf16: bool = True,
    ):
        self.teacher, self.model, self.corpus, self.options = teacher, student, corpus, options
        self.device = next(student.parameters()).device
        self.bf16 = bf16
        teacher.eval().requires_grad_(False)
        for name, p in student.named_parameters():
            p.requires_grad_(name.startswith("motion_dit."))
        g = torch.Generator().manual_seed(2025)
        n = options.eval_chunks
        self.val = (validation or corpus).sample(g, n)
        shape = (n, teacher.config.dit.chunk_frames, teacher.config.code_dim)
        self.val_noise = torch.randn(shape, generator=g)
        self.val_targets = {
            w: teacher_states(
                teacher,
                _to(self.val, self.device),
                self.val_noise.to(self.device),
                torch.tensor(w, device=self.device).expand(n, 2),
                options.teacher_steps,
            )[0]
            for w in EVAL_WEIGHTS
        }

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _weights(self, n: int, g: torch.Generator) -> Tensor:
        o = self.options
        u = torch.rand(n, 2, generator=g)
        lows = torch.tensor([o.audio_weight_range[0], o.identity_weight_range[0]])
        highs = torch.tensor([o.audio_weight_range[1], o.identity_weight_range[1]])
        return lows + u * (highs - lows)

    def _pool(self, index: int, seed: int) -> dict[str, Tensor]:
        o, dev = self.options, self.device
        g = step_generator(seed, index, "distill-pool")
        chunks = self.corpus.sample(g, o.pool_size)
        shape = (o.pool_size, self.teacher.config.dit.chunk_frames, self.teacher.config.code_dim)
        noise = torch.randn(shape, generator=g)
        weights = self._weights(o.pool_size, g)
        states = []
        with autocast(dev, self.bf16):
            for i in range(0, o.pool_size, 256):
                part = _to({k: chunks[k][i : i + 256] for k in _CONDITIONS}, dev)
                states.append(
                    teacher_states(
                        self.teacher,
                        part,
                        noise[i : i + 256].to(dev),
                        weights[i : i + 256].to(dev),
                        o.teacher_steps,
                    )[0].cpu()
                )
        pool = {k: chunks[k] for k in _CONDITIONS}
        return {**pool, "noise": noise, "weights": weights, "teacher": torch.cat(states)}

    def batches(self, start: int, stop: int, seed: int) -> Iterator[dict[str, Tensor]]:
        o = self.options
        pool, index = None, -1
        for step in range(start, stop):
            if step // o.pool_refresh != index:
                index = step // o.pool_refresh
                pool = self._pool(index, seed)
            assert pool is not None
            g = step_generator(seed, step, "data")
            pick = torch.randint(0, o.pool_size, (o.batch_size,), generator=g)
            yield {k: v[pick] for k, v in pool.items()}

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator):
        o = self.options
        batch = _to(batch, self.device)
        noise, weights, target = batch.pop("noise"), batch.pop("weights"), batch.pop("teacher")
        end = student_endpoints(self.model, batch, noise, weights, o.student_steps)
        endpoint = F.mse_loss(end.float(), target)
        return endpoint, {"endpoint_mse": float(endpoint.detach())}

    @torch.no_grad()
    def evaluate(self, model: DualBranchGenerator) -> dict[str, float]:
        """RMSE, in code units, between the student's and the teacher's endpoints on the
        fixed validation chunks and noise, at each of :data:`EVAL_WEIGHTS`, and their
        mean (``rmse``)."""
        batch, noise = _to(self.val, self.device), self.val_noise.to(self.device)
        std = model.motion_dit.code_std
        out = {}
        for w, target in self.val_targets.items():
            weights = torch.tensor(w, device=self.device).expand(len(noise), 2)
            end = student_endpoints(model, batch, noise, weights, self.options.student_steps)
            out[f"rmse_wa{w[0]:g}_wid{w[1]:g}"] = float(((end - target) * std).pow(2).mean().sqrt())
        out["rmse"] = sum(out.values()) / len(out)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "method": "direct regression of the student's endpoint onto the teacher's",
            "videos": len(self.corpus.videos),
            "frames": self.corpus.frames,
        }


@torch.no_grad()
def sampler_gap(
    teacher: DualBranchGenerator,
    students: list[DualBranchGenerator],
    corpus: MotionCorpus,
    *,
    audio_weight: float,
    identity_weight: float,
    teacher_steps: int = 25,
    student_steps: int = 2,
    seeds: tuple[int, ...] = (0, 1),
) -> tuple[list[float], float]:
    """How far students' samples are from the teacher's, through the real samplers.

    Every chunk boundary ``i·K`` of every video of ``corpus`` is sampled by
    :func:`~avatar.samplers.chunks.sample_chunk` with ``FlowMatchingTeacher`` and with
    ``FlowMatchingStudent`` from the same noise (seed, chunk index), the same audio
    window and the video's own codes as context (teacher forcing: one chunk's error does
    not feed the next).

    Returns:
        ``(rmse, spread)``: per student, the RMSE between its samples and the teacher's
        in code units; and the RMS spread of the corpus's codes around their mean (the
        scale the errors compare with).
    """
    from avatar.samplers.chunks import sample_chunk
    from avatar.samplers.flow_matching import (
        FlowMatchingStudent,
        FlowMatchingTeacher,
        StudentOptions,
        TeacherOptions,
    )

    t_sampler = FlowMatchingTeacher(TeacherOptions(teacher_steps, audio_weight, identity_weight))
    s_sampler = FlowMatchingStudent(StudentOptions(student_steps, audio_weight, identity_weight))
    device = next(teacher.parameters()).device
    k = teacher.config.dit.chunk_frames
    errors: list[list[Tensor]] = [[] for _ in students]
    spread = []
    for index, video in enumerate(corpus.videos):
        chunks = [corpus.chunk(index, s, 0) for s in range(0, len(video.codes) - k + 1, k)]
        batch = _to({n: torch.stack([c[n] for c in chunks]) for n in chunks[0]}, device)
        inputs = {
            "mel_window": batch["mel"],
            "viseme_window": None,
            "context": batch["context"],
            "id_tokens": batch["id_tokens"],
            "index": index,
        }
        for seed in seeds:
            reference = sample_chunk(teacher, t_sampler, seed=seed, **inputs)
            for i, student in enumerate(students):
                out = sample_chunk(student, s_sampler, seed=seed, **inputs)
                errors[i].append((out - reference).pow(2).flatten())
        codes = video.codes.to(device)
        spread.append((codes - codes.mean(0)).pow(2).flatten())
    rmse = [float(torch.cat(e).mean().sqrt()) for e in errors]
    return rmse, float(torch.cat(spread).mean().sqrt())


def distill(
    shards: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    teacher: str | os.PathLike[str],
    options: DistillOptions | None = None,
    loop: LoopOptions | None = None,
    heldout: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Distil the stage-2 teacher into a student (or resume ``run_dir``).

    Args:
        shards: the preprocessed training folder.
        run_dir: the run folder; a checkpoint there is resumed.
        teacher: the stage-2 model (``RUN/model`` of :func:`~avatar.train.stage2.train_motion`).
        options: teacher, student and weights.
        loop: steps, optimizer, EMA, device.
        heldout: preprocessed held-out videos for the validation.
        on_step: progress callback.

    Returns:
        The result; ``result.model_path`` is a student generator: sample it with
        ``FlowMatchingStudent(StudentOptions(steps=options.student_steps, ...))``.

    Raises:
        TrainError, PreprocessError, ModelNotFoundError, CheckpointError: see the messages.
    """
    loop = loop or LoopOptions()
    options = options or DistillOptions()
    with cpu_threads(loop.cpu_threads):
        seed_everything(loop.seed)
        device = loop.torch_device
        teacher_model = load_stage_model(teacher, device, student=False)
        resume_config(run_dir)  # a foreign checkpoint fails here, before any work
        run = Path(run_dir)
        corpus = MotionCorpus.extract(
            teacher_model, shards, run / CODES_FILE, smooth_frames=options.smooth_frames
        )
        validation = None
        if heldout is not None:
            validation = MotionCorpus.extract(
                teacher_model,
                heldout,
                run / ("heldout_" + CODES_FILE),
                reference_frames=1,
                smooth_frames=options.smooth_frames,
            )
        student = make_student(teacher_model).train()
        task = DistillTask(teacher_model, student, corpus, options, validation, loop.bf16)
        return train(task, run_dir, loop, on_step=on_step)
