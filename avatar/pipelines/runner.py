"""The three model calls the streaming pipeline makes, behind one small Protocol.

A :class:`Runner` runs the neural generator's work for the pipeline with static shapes
and plain arrays at its edge, so the same pipeline runs on PyTorch (:class:`TorchRunner`,
CPU or CUDA) or on onnxruntime (``avatar.deploy.onnx_runner.OnnxRunner``)::

    runner = TorchRunner.load("checkpoints/tiny-student", TorchRunnerOptions(steps=2))
    avatar = runner.encode_avatar(crop)                       # once per avatar
    codes = runner.motion_chunk([avatar], noise, context, mel, None, weights)
    frames = runner.render([avatar], codes)                   # uint8 [1, K, S, S, 3]

Shapes and dtypes (``B`` sessions in one batch, ``S`` the model's image side, ``D`` the
motion code length, ``K`` frames per chunk, ``C`` context frames, ``W`` the audio
window in video frames, ``m`` mel rows per frame; all in :class:`RunnerSpec`):

=================  ===========================================  ==========================
call               in                                           out
=================  ===========================================  ==========================
``encode_avatar``  crop float32 [1, 3, S, S], RGB in [-1, 1]     :class:`EncodedAvatar`
``motion_chunk``   avatars (B of them); noise float32 [B, K, D]; codes float32 [B, K, D]
                   context float32 [B, C, D]; mel float32
                   [B, W·m, n_mels]; visemes int64 [B, W] or
                   None; weights float32 [B, 2] (audio, id)
``render``         avatars (B of them); codes float32 [B, T, D]  uint8 [B, T, S, S, 3] RGB
=================  ===========================================  ==========================

Rows of a batch are independent sessions: row ``b`` of every input belongs to
``avatars[b]`` (the same avatar may appear in several rows). The noise is an input, so
each session keeps its own seed and chunk index (:func:`avatar.samplers.chunk_noise`)
and a chunk is the same whether it runs alone or batched (to float rounding). The
sampler's steps run inside ``motion_chunk`` (the runner's ``steps``; the student takes
the say weights as an input, the teacher uses them for guidance). ``render`` converts
to uint8 on the device: ``clip(round((x + 1) · 127.5), 0, 255)``. What a chunk computes
(audio conditioning, the velocity the sampler calls, the per-frame render expansion) is
written once in :mod:`avatar.models.chunk`; :class:`TorchRunner`, the exported graphs
(``avatar.deploy.onnx``) and :func:`avatar.samplers.chunks.sample_chunk` all call it.

An untrained or tiny model makes blurry, meaningless faces: these classes only move
tensors; what a face looks like depends entirely on the checkpoint's training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from avatar.errors import GeneratorError
from avatar.models.chunk import chunk_audio, render_codes, sample_codes
from avatar.models.errors import ModelConfigError, ModelInputError
from avatar.samplers.chunks import ChunkLayout

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True, slots=True)
class RunnerSpec(ChunkLayout):
    """The static sizes a runner's model implies (everything the pipeline must know).

    It is the model's :class:`~avatar.samplers.chunks.ChunkLayout` (K, C, L, A, m,
    n_mels and the window arithmetic) plus the sizes below.

    Attributes:
        image_size: S, side of the model's square face crop.
        code_dim: D, length of one frame's motion code.
        n_visemes: viseme ids are below this.
        fps: video frames per second.
        student: True when the model is a distilled student (say weights as an input).
    """

    image_size: int
    code_dim: int
    n_visemes: int
    fps: float
    student: bool

    @classmethod
    def from_config(cls, config: Any) -> RunnerSpec:
        """The spec of an ``avatar.models.GeneratorConfig`` (its chunk layout is the
        sampler's own :meth:`ChunkLayout.from_config`)."""
        return cls(
            **asdict(ChunkLayout.from_config(config)),
            image_size=config.image_size,
            code_dim=config.code_dim,
            n_visemes=config.audio.n_visemes,
            fps=float(config.fps),
            student=bool(config.dit.guidance_embed),
        )

    @property
    def mel_rows(self) -> int:
        """Rows of the mel window a chunk reads (W · m)."""
        return self.window_frames * self.mel_per_frame


@dataclass(frozen=True, slots=True, eq=False)
class EncodedAvatar:
    """One avatar encoded by a runner (batch 1), kept for every later call.

    The arrays other than ``source_code`` are in the runner's own form (torch tensors
    on its device for :class:`TorchRunner`, numpy arrays for onnxruntime): hand the
    object back to the runner that made it, never to another one.

    Attributes:
        pyramid: appearance feature maps, level ``i`` [1, C_i, H_i, W_i].
        id_tokens: identity tokens [1, N, E].
        source_keypoints: the crop's posed keypoints [1, n_kp, 3].
        source_code: the crop's motion code, float32 numpy [1, D]; repeat it C times for
            the first chunk's context.
        runner: the name of the runner that made it.
    """

    pyramid: tuple[Any, ...]
    id_tokens: Any
    source_keypoints: Any
    source_code: np.ndarray
    runner: str


@runtime_checkable
class Runner(Protocol):
    """What the streaming pipeline calls; see the module doc for shapes and dtypes.

    Attributes:
        name: "torch", "onnx", ...
        spec: the model's static sizes.
        steps: sampler steps run inside each ``motion_chunk``.
        max_batch: the most rows one call takes; the scheduler splits bigger batches.
    """

    name: str
    spec: RunnerSpec
    steps: int
    max_batch: int

    def encode_avatar(self, crop: np.ndarray) -> EncodedAvatar:
        """Encode the aligned face crop float32 [1, 3, S, S] in [-1, 1] (once per avatar)."""
        ...

    def motion_chunk(
        self,
        avatars: Sequence[EncodedAvatar],
        noise: np.ndarray,
        context: np.ndarray,
        mel: np.ndarray,
        visemes: np.ndarray | None,
        weights: np.ndarray,
    ) -> np.ndarray:
        """One motion chunk per row: float32 codes [B, K, D] (sampler steps inside)."""
        ...

    def render(self, avatars: Sequence[EncodedAvatar], codes: np.ndarray) -> np.ndarray:
        """Frames of motion codes [B, T, D] on each row's avatar: uint8 [B, T, S, S, 3]."""
        ...


def check_crop(spec: RunnerSpec, crop: np.ndarray) -> None:
    """Check ``encode_avatar``'s crop: float32 [1, 3, S, S].

    Raises:
        ModelInputError: wrong shape or dtype.
    """
    s = spec.image_size
    if not isinstance(crop, np.ndarray) or crop.shape != (1, 3, s, s):
        got = getattr(crop, "shape", type(crop))
        raise ModelInputError(f"encode_avatar: crop must be float32 [1, 3, {s}, {s}], {got}")
    if crop.dtype != np.float32:
        raise ModelInputError(f"encode_avatar: crop must be float32, got {crop.dtype}")


def check_rows(runner: Runner, avatars: Sequence[EncodedAvatar], call: str) -> None:
    """Check that ``runner`` encoded every avatar of a ``call`` and takes that many rows.

    Raises:
        ModelInputError: an avatar of another runner, or more rows than ``max_batch``.
    """
    for a in avatars:
        if a.runner != runner.name:
            raise ModelInputError(
                f"{call}: an avatar encoded by the {a.runner!r} runner was given; "
                "encode it with this runner"
            )
    if len(avatars) > runner.max_batch:
        raise ModelInputError(f"{call}: {len(avatars)} rows, this runner takes {runner.max_batch}")


def check_motion_inputs(
    spec: RunnerSpec,
    avatars: Sequence[EncodedAvatar],
    noise: np.ndarray,
    context: np.ndarray,
    mel: np.ndarray,
    visemes: np.ndarray | None,
    weights: np.ndarray,
) -> int:
    """Check ``motion_chunk``'s inputs against ``spec``; returns the batch size.

    Raises:
        ModelInputError: the message names the argument and the shape it must have.
    """
    b = len(avatars)
    k, c, d = spec.chunk_frames, spec.context_frames, spec.code_dim
    wanted = {
        "noise": (noise, (b, k, d), np.float32),
        "context": (context, (b, c, d), np.float32),
        "mel": (mel, (b, spec.mel_rows, spec.n_mels), np.float32),
        "weights": (weights, (b, 2), np.float32),
    }
    if visemes is not None:
        wanted["visemes"] = (visemes, (b, spec.window_frames), np.int64)
    if b < 1:
        raise ModelInputError("motion_chunk needs at least one avatar (one row)")
    for name, (value, shape, dtype) in wanted.items():
        if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
            got = f"{getattr(value, 'shape', type(value))} {getattr(value, 'dtype', '')}"
            raise ModelInputError(
                f"motion_chunk: {name} must be {np.dtype(dtype).name} {list(shape)}, got {got}"
            )
    return b


def check_render_inputs(
    spec: RunnerSpec, avatars: Sequence[EncodedAvatar], codes: np.ndarray
) -> int:
    """Check ``render``'s inputs; returns the batch size.

    Raises:
        ModelInputError: codes of the wrong shape or dtype for the avatars.
    """
    b = len(avatars)
    ok = (
        isinstance(codes, np.ndarray)
        and codes.dtype == np.float32
        and codes.ndim == 3
        and codes.shape[0] == b
        and codes.shape[2] == spec.code_dim
        and b >= 1
    )
    if not ok:
        got = f"{getattr(codes, 'shape', type(codes))} {getattr(codes, 'dtype', '')}"
        raise ModelInputError(
            f"render: codes must be float32 [{b}, T, {spec.code_dim}] for {b} avatars, got {got}"
        )
    return b


def to_uint8_frames(rgb: Tensor) -> Tensor:
    """float [B, T, 3, S, S] in [-1, 1] → uint8 [B, T, S, S, 3], on ``rgb``'s device: the
    rounding every runner's ``render`` applies, ``clip(round((x + 1) · 127.5), 0, 255)``."""
    import torch

    x = ((rgb.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2)


@dataclass(frozen=True, slots=True)
class TorchRunnerOptions:
    """How :class:`TorchRunner` runs the model.

    Attributes:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
        steps: sampler steps per chunk (a student takes 1 to 4; a teacher any number).
        bf16: run under bf16 autocast. None (default): on CUDA only, the CPU runs
            float32; True: also on the CPU (worth it on CPUs with bf16 units; the tests
            use it to run the GPU's number path here); False: float32 everywhere.
        compile: ``torch.compile`` the renderer and the motion transformer (on CUDA in
            mode "reduce-overhead", which captures CUDA graphs; on the CPU with
            inductor's C++ backend, which needs a C++ compiler); batches are padded to
            the next of 1, 2, 4, 8, ... rows so each size compiles once. The first call
            of each batch size compiles (tens of seconds).
        max_batch: the most rows (sessions) one call takes.
        pad_batches: pad every batch to the next of 1, 2, 4, 8, ... rows (repeating the
            last row, whose outputs are dropped); None pads only when compiling.
        attention_backend: attention registry name for every layer ("sdpa", "math").
    """

    device: str = "auto"
    steps: int = 2
    bf16: bool | None = None
    compile: bool = False
    max_batch: int = 8
    pad_batches: bool | None = None
    attention_backend: str = "sdpa"

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ModelConfigError(
                f"TorchRunnerOptions.device={self.device!r}: use auto, cpu, cuda or cuda:N"
            )
        if not 1 <= self.steps <= 64:
            raise ModelConfigError(f"TorchRunnerOptions.steps={self.steps} is outside 1..64")
        if not 1 <= self.max_batch <= 256:
            raise ModelConfigError(
                f"TorchRunnerOptions.max_batch={self.max_batch} is outside 1..256"
            )


def resolve_device(name: str) -> str:
    """ "auto" → "cuda" when a GPU is usable, else "cpu"; other names are checked.

    Raises:
        ModelConfigError: CUDA asked for but not available here.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelConfigError(
            f"device {name!r} asked for, but this torch build sees no CUDA GPU; "
            "use device 'cpu' or install the gpu extra on a machine with a GPU"
        )
    return name


def _bucket(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


class TorchRunner:
    """A :class:`Runner` on PyTorch: CPU float32, or CUDA with bf16 autocast, and an
    optional ``torch.compile`` (see :class:`TorchRunnerOptions`).

    Calls are not thread-safe: make them from one worker thread (the pipeline's
    scheduler does). Build it with :meth:`load` (a checkpoint) or directly from a model.

    Args:
        model: a ``DualBranchGenerator`` (teacher or student), any device; it is moved
            to the runner's device and put in eval mode.
        options: device, steps, bf16, compile, batch limit.

    Raises:
        ModelConfigError: a student with more than 4 steps, or an unusable device.
    """

    name = "torch"

    def __init__(self, model: Any, options: TorchRunnerOptions | None = None) -> None:
        import torch

        from avatar.samplers.flow_matching import (
            FlowMatchingStudent,
            FlowMatchingTeacher,
            StudentOptions,
            TeacherOptions,
        )

        self.options = options or TorchRunnerOptions()
        self.device = torch.device(resolve_device(self.options.device))
        self.model = model.to(self.device).eval()
        self.spec = RunnerSpec.from_config(model.config)
        self.steps = self.options.steps
        self.max_batch = self.options.max_batch
        if self.spec.student:
            StudentOptions(steps=self.steps)  # checks 1..4 steps
            self._sampler: Any = FlowMatchingStudent(StudentOptions(steps=self.steps))
        else:
            self._teacher = lambda wa, wi: FlowMatchingTeacher(
                TeacherOptions(steps=self.steps, audio_weight=wa, identity_weight=wi)
            )
        cuda = self.device.type == "cuda"
        bf16 = self.options.bf16
        self._autocast = cuda if bf16 is None else bf16
        compiled = self.options.compile
        pad = self.options.pad_batches
        self._pad = compiled if pad is None else pad
        self._render_fn = model.renderer
        self._dit_fn = model.motion_dit
        if compiled:
            mode = "reduce-overhead" if cuda else None  # CUDA graphs need CUDA
            self._render_fn = torch.compile(model.renderer, mode=mode)
            self._dit_fn = torch.compile(model.motion_dit, mode=mode)
        self._stacks: dict[tuple[int, ...], tuple[tuple[EncodedAvatar, ...], tuple[Any, ...]]] = {}

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], options: TorchRunnerOptions | None = None
    ) -> TorchRunner:
        """Load a ``save_pretrained`` checkpoint (student or teacher) and wrap it.

        Raises:
            ModelNotFoundError: nothing at ``path``.
            CheckpointError: the file is not a usable generator checkpoint.
            ModelConfigError: bad options for this model (e.g. 8 steps for a student).
        """
        from avatar.models.generator import DualBranchGenerator

        options = options or TorchRunnerOptions()
        model = DualBranchGenerator.from_pretrained(
            path, attention_backend=options.attention_backend
        )
        return cls(model, options)

    # ------------------------------------------------------------------ helpers

    def _ctx(self) -> Any:
        import contextlib

        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self._autocast:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        return stack

    def _tensor(self, array: np.ndarray, rows: int | None = None) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if rows is not None and rows > t.shape[0]:  # pad the batch (compiled shapes)
            t = torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])
        return t

    def _rows(self, b: int) -> int:
        return _bucket(b) if self._pad else b

    def _stacked(self, avatars: Sequence[EncodedAvatar], rows: int) -> tuple[Any, ...]:
        """(pyramid levels..., id tokens, source keypoints) of the rows, cached per batch."""
        import torch

        rows_of = (*avatars, *[avatars[-1]] * (rows - len(avatars)))
        key = tuple(id(a) for a in rows_of)
        # The entry keeps its avatars alive, so their ids cannot be reused meanwhile.
        if key not in self._stacks:
            if len(self._stacks) > 64:
                self._stacks.clear()
            parts = [*zip(*[a.pyramid for a in rows_of], strict=True)]
            parts += [[a.id_tokens for a in rows_of], [a.source_keypoints for a in rows_of]]
            self._stacks[key] = (rows_of, tuple(torch.cat(p) for p in parts))
        return self._stacks[key][1]

    def warm_up(self, max_rows: int | None = None) -> list[int]:
        """Run every batch size a call can take up to ``max_rows`` once on a blank face,
        so the compiles (and CUDA graph captures) happen now, not in a session's first
        chunk. Without ``compile`` it only loads kernels (fast).

        Args:
            max_rows: the most sessions expected at once (default ``max_batch``).

        Returns:
            The batch sizes run: the padding buckets (1, 2, 4, ...) up to ``max_rows``,
            or every size when batches are not padded.
        """
        spec = self.spec
        top = min(self.max_batch, max_rows or self.max_batch)
        sizes = sorted({self._rows(b) for b in range(1, top + 1)})
        blank = self.encode_avatar(np.zeros((1, 3, spec.image_size, spec.image_size), np.float32))
        for b in sizes:
            avatars = [blank] * b
            noise = np.zeros((b, spec.chunk_frames, spec.code_dim), np.float32)
            context = np.repeat(blank.source_code[:, None], spec.context_frames, 1)
            mel = np.zeros((b, spec.mel_rows, spec.n_mels), np.float32)
            weights = np.ones((b, 2), np.float32)
            codes = self.motion_chunk(avatars, noise, np.repeat(context, b, 0), mel, None, weights)
            self.render(avatars, codes)
        self.forget(blank)
        return sizes

    def forget(self, avatar: EncodedAvatar) -> None:
        """Drop cached batches holding ``avatar`` (call when a session ends)."""
        self._stacks = {k: v for k, v in self._stacks.items() if id(avatar) not in k}

    # ------------------------------------------------------------------- calls

    def encode_avatar(self, crop: np.ndarray) -> EncodedAvatar:
        """Encode the crop float32 [1, 3, S, S] in [-1, 1]; keep the result per avatar.

        Raises:
            ModelInputError: wrong shape or dtype.
        """
        check_crop(self.spec, crop)
        with self._ctx():
            state = self.model.encode_avatar(self._tensor(crop))
        code = state.source_code.float().cpu().numpy()
        return EncodedAvatar(
            pyramid=tuple(level.float() for level in state.pyramid),
            id_tokens=state.id_tokens.float(),
            source_keypoints=state.source_keypoints.float(),
            source_code=code,
            runner=self.name,
        )

    def motion_chunk(
        self,
        avatars: Sequence[EncodedAvatar],
        noise: np.ndarray,
        context: np.ndarray,
        mel: np.ndarray,
        visemes: np.ndarray | None,
        weights: np.ndarray,
    ) -> np.ndarray:
        """One chunk per row (see the module doc); float32 codes [B, K, D]."""
        b = check_motion_inputs(self.spec, avatars, noise, context, mel, visemes, weights)
        check_rows(self, avatars, "motion_chunk")
        rows = self._rows(b)
        with self._ctx():
            ids = self._stacked(avatars, rows)[-2]
            vis = None if visemes is None else self._tensor(visemes, rows)
            audio = chunk_audio(self.model, self._tensor(mel, rows), vis)
            ctx = self._tensor(context, rows)
            x0 = self._tensor(noise, rows)
            if self.spec.student:
                # The sampler's own weights are replaced by each row's: one pass per step.
                w = self._tensor(weights, rows).to(x0.dtype)
                codes = self._sample(self._sampler, x0, ctx, audio, ids, w)
            else:
                codes = self._sample_teacher(x0, ctx, audio, ids, weights, rows)
        return codes[:b].float().cpu().numpy()

    def _sample(
        self, sampler: Any, x0: Any, ctx: Any, audio: Any, ids: Any, guidance: Any = None
    ) -> Any:
        """The chunk's sampler steps (the shared ``sample_codes``) through the possibly
        compiled transformer."""
        dit = self.model.motion_dit
        return sample_codes(
            dit, sampler, x0, ctx, audio, ids, guidance=guidance, forward=self._dit_fn
        )

    def _sample_teacher(
        self, x0: Any, ctx: Any, audio: Any, ids: Any, weights: np.ndarray, rows: int
    ) -> Any:
        """The teacher's guidance weights are options of its sampler: rows with the same
        weights run together, one sampler per group."""
        import torch

        padded = np.concatenate([weights, np.repeat(weights[-1:], rows - len(weights), 0)])
        groups: dict[tuple[float, float], list[int]] = {}
        for i, (wa, wi) in enumerate(padded.tolist()):
            groups.setdefault((wa, wi), []).append(i)
        if len(groups) == 1:
            ((wa, wi),) = groups
            return self._sample(self._teacher(wa, wi), x0, ctx, audio, ids)
        out = torch.empty_like(x0)
        for (wa, wi), index in groups.items():
            sel = torch.tensor(index, device=x0.device)
            part = [z.index_select(0, sel) for z in (x0, ctx, audio, ids)]
            out[sel] = self._sample(self._teacher(wa, wi), *part)
        return out

    def render(self, avatars: Sequence[EncodedAvatar], codes: np.ndarray) -> np.ndarray:
        """Frames of codes [B, T, D] on each row's avatar: uint8 [B, T, S, S, 3]."""
        b = check_render_inputs(self.spec, avatars, codes)
        check_rows(self, avatars, "render")
        rows = self._rows(b)
        with self._ctx():
            *pyramid, ids, kp_src = self._stacked(avatars, rows)
            n_kp = self.model.config.motion.n_kp
            code = self._tensor(codes, rows)
            rgb = render_codes(self._render_fn, n_kp, pyramid, ids, kp_src, code)
            x = to_uint8_frames(rgb)[:b]
        return np.ascontiguousarray(x.cpu().numpy())


def load_runner(kind: str, checkpoint: str | os.PathLike[str], **options: Any) -> Runner:
    """The runner ``kind`` ("torch" or "onnx") for a checkpoint.

    Args:
        kind: "torch", or "onnx" (needs ``avatar.deploy.onnx_runner``).
        checkpoint: a ``save_pretrained`` folder or file (onnx: also an export folder).
        options: fields of that runner's options (``TorchRunnerOptions`` for torch,
            ``OnnxRunnerOptions`` for onnx).

    Raises:
        ModelConfigError: an unknown kind or bad options.
        ModelNotFoundError / CheckpointError: from loading the checkpoint.
    """
    if kind == "torch":
        return TorchRunner.load(checkpoint, TorchRunnerOptions(**options))
    if kind == "onnx":
        try:
            from avatar.deploy.onnx_runner import OnnxRunner
        except ImportError as err:
            raise GeneratorError(f"the onnx runner is not available here: {err}") from err
        return OnnxRunner.load(checkpoint, **options)
    raise ModelConfigError(f"unknown runner {kind!r}: use 'torch' or 'onnx'")
