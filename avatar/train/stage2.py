"""Stage 2: the motion branch (audio encoder + motion transformer) by flow matching.

1. **Motion codes.** The stage-1 motion encoder (frozen) encodes every frame of every
   video in the shards, and the appearance encoder encodes a few reference frames per
   video (their identity tokens and codes stand in for the avatar photo). The result is
   cached in the run folder (``codes.safetensors``) with a fingerprint of the shards and
   the encoders, so a resumed run does not encode again (:class:`MotionCorpus`).
2. **Chunks.** A training item is what the chunk sampler sees at inference
   (:mod:`avatar.samplers.chunks`): a chunk of ``K`` codes starting at a random frame
   ``s``, the ``C`` codes before it as context (frames before the video's start read the
   reference frame's code, as the first chunk reads the avatar's), the log-mel window of
   frames ``[s − C − A, s + K + L)`` (silence outside the audio) and a reference frame's
   identity tokens.
3. **Flow matching.** ``x_t = (1 − t)·noise + t·data`` with ``t ~ U(0, 1)`` and the codes
   in normalised units; the transformer regresses the velocity ``data − noise`` (MSE).
   The audio and the identity tokens are dropped independently
   (:func:`~avatar.samplers.flow_matching.condition_dropout`) so that the teacher's
   two say weights work; the context gets a little noise, because at inference it is
   the model's own output.

Before the first step the transformer's ``code_mean`` / ``code_std`` and the audio
encoder's ``mel_mean`` / ``mel_std`` are set from the corpus. The appearance branch,
the motion encoder and the renderer are frozen and saved unchanged with the result,
which is a complete teacher generator for :mod:`avatar.train.stage3` and for sampling
with :class:`~avatar.samplers.flow_matching.FlowMatchingTeacher`.

Memory: the corpus (codes, and the mel rows at 1.3 kB per frame) is held in memory;
about 1.3 GB per million frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from avatar.models.audio_encoder import SILENCE_LOG_MEL
from avatar.models.chunk import chunk_audio
from avatar.models.generator import DualBranchGenerator
from avatar.samplers.chunks import ChunkLayout
from avatar.samplers.flow_matching import condition_dropout, flow_matching_pair
from avatar.train.data import PreprocessError, load_entries
from avatar.train.loop import (
    LoopOptions,
    StepInfo,
    TrainError,
    TrainResult,
    cpu_threads,
    resume_config,
    seed_everything,
    step_generator,
    train,
)

CODES_FILE = "codes.safetensors"
SMOOTH_FRAMES = 1.0
"""Default σ (frames) of the temporal smoothing of the training codes."""
_CODES_FORMAT = "likeness-motion-codes-v1"


@dataclass(frozen=True, slots=True)
class MotionTrainOptions:
    """Batches and conditioning of stage 2.

    Attributes:
        batch_size: chunks per step.
        audio_dropout: probability of training a chunk without its audio.
        identity_dropout: probability of training a chunk without identity tokens
            (independent of the audio's).
        context_noise: std of the Gaussian noise added to the context (normalised units).
        reference_frames: reference frames per video (evenly spaced) whose identity
            tokens and codes stand in for an avatar photo.
        std_floor: the smallest per-dimension ``code_std``, in code units.
        smooth_frames: the σ, in frames, of the centred Gaussian that smooths each
            video's codes over time before training (0: raw codes). Codes read frame by
            frame carry jitter that no audio predicts; LivePortrait smooths its driving
            motion for the same reason.
        eval_chunks: chunks in the fixed validation batch.
    """

    batch_size: int = 32
    audio_dropout: float = 0.2
    identity_dropout: float = 0.2
    context_noise: float = 0.05
    reference_frames: int = 4
    std_floor: float = 1e-3
    smooth_frames: float = SMOOTH_FRAMES
    eval_chunks: int = 64

    def __post_init__(self) -> None:
        if min(self.batch_size, self.reference_frames, self.eval_chunks) < 1:
            raise TrainError(
                "MotionTrainOptions: batch_size, reference_frames and eval_chunks must be >= 1"
            )
        for name in ("audio_dropout", "identity_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TrainError(f"MotionTrainOptions.{name} must be in [0, 1], got {value}")
        if self.context_noise < 0 or self.std_floor <= 0 or self.smooth_frames < 0:
            raise TrainError(
                "MotionTrainOptions: context_noise >= 0, std_floor > 0 and smooth_frames >= 0 "
                "needed"
            )


@dataclass(frozen=True, slots=True, eq=False)
class MotionVideo:
    """One video's motion codes and audio.

    Attributes:
        key: the video's key in the shards.
        codes: [N, code_dim] per-frame motion codes.
        mel: [4 N, n_mels] log-mel rows.
        ref_codes: [R, code_dim] codes of the reference frames.
        ref_tokens: [R, n_id_tokens, token_dim] their identity tokens.
    """

    key: str
    codes: Tensor
    mel: Tensor
    ref_codes: Tensor
    ref_tokens: Tensor


def _fingerprint(model: DualBranchGenerator, entries: dict[str, Any], refs: int) -> str:
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode())
    digest.update(f"refs={refs}".encode())
    for part in (model.motion_encoder, model.appearance):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def smooth_codes(codes: Tensor, sigma: float) -> Tensor:
    """Codes [N, D] smoothed over time by a centred Gaussian of ``sigma`` frames (the
    ends use the nearest frame as padding); ``sigma = 0`` returns them unchanged."""
    if sigma <= 0 or len(codes) < 2:
        return codes
    radius = max(int(math.ceil(3 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(codes.dtype)
    padded = F.pad(codes.T[None], (radius, radius), mode="replicate")
    weight = kernel.expand(codes.shape[1], 1, -1)
    return F.conv1d(padded, weight, groups=codes.shape[1])[0].T.contiguous()


def _images(frames: Tensor) -> Tensor:
    """uint8 [n, S, S, 3] → float [n, 3, S, S] in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _tensor(path: Path, name: str) -> Tensor:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor(name)


def _encode(
    model: DualBranchGenerator, frames: Tensor, refs: int, batch: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes of every frame, and codes + identity tokens of ``refs`` evenly spaced frames."""
    size = model.config.image_size
    if frames.shape[1] != size:
        raise TrainError(
            f"the shards hold {frames.shape[1]} px crops but the model renders {size} px: "
            "preprocess with the matching --size"
        )
    device = next(model.parameters()).device
    codes = torch.cat(
        [
            model.motion_encoder(_images(frames[i : i + batch]).to(device)).float().cpu()
            for i in range(0, len(frames), batch)
        ]
    )
    n = len(frames)
    picks = sorted({(2 * j + 1) * n // (2 * refs) for j in range(refs)})
    _, tokens = model.appearance(_images(frames[picks]).to(device))
    return codes, codes[picks].clone(), tokens.float().cpu()


class MotionCorpus:
    """Every video's motion codes, mel rows and reference identities, and chunk sampling.

    Build it with :meth:`extract`; draw training chunks with :meth:`sample`.

    Args:
        videos: the videos (each at least ``chunk_frames`` long).
        layout: the chunk arithmetic of the model it feeds.
    """

    def __init__(self, videos: list[MotionVideo], layout: ChunkLayout):
        self.videos = [v for v in videos if len(v.codes) >= layout.chunk_frames]
        if not self.videos:
            raise TrainError(
                f"no video has the {layout.chunk_frames} frames one chunk needs: preprocess "
                "longer videos"
            )
        self.layout = layout
        counts = torch.tensor([len(v.codes) - layout.chunk_frames + 1 for v in self.videos])
        self._weights = counts.double() / counts.sum()

    @classmethod
    @torch.no_grad()
    def extract(
        cls,
        model: DualBranchGenerator,
        shards: str | os.PathLike[str],
        cache: str | os.PathLike[str] | None = None,
        *,
        reference_frames: int = 4,
        smooth_frames: float = 0.0,
        batch: int = 64,
    ) -> MotionCorpus:
        """Encode every frame of ``shards`` with ``model``'s motion encoder.

        Args:
            model: a generator with a trained motion encoder and appearance encoder.
            shards: a preprocessed folder at the model's image size.
            cache: a ``.safetensors`` file to reuse (if its fingerprint matches the
                shards and the encoders) or write.
            reference_frames: evenly spaced reference frames per video.
            smooth_frames: σ of the temporal smoothing of the codes (see
                :func:`smooth_codes`); the cache holds the raw codes.
            batch: frames per encoder call.

        Raises:
            PreprocessError: no finished video in ``shards``.
            TrainError: crops of another size than the model's.
        """
        root = Path(shards)
        entries = {k: e for k, e in load_entries(root).items() if e["status"] == "done"}
        if not entries:
            raise PreprocessError(
                f"{root}: no preprocessed video (run `likeness train preprocess` first)"
            )
        layout = ChunkLayout.from_config(model.config)
        fingerprint = _fingerprint(model, entries, reference_frames)
        cached = _read_cache(cache, fingerprint) if cache is not None else None
        was_training = model.training
        model.eval()
        videos, tensors = [], {}
        try:
            for key, entry in sorted(entries.items()):
                files = [root / "videos" / key / s["file"] for s in entry["shards"]]
                mel = torch.cat([_tensor(f, "mel") for f in files]).float()
                if cached is not None:
                    codes, ref_codes, ref_tokens = (cached[f"{key}/{n}"] for n in _CACHED)
                else:
                    frames = torch.cat([_tensor(f, "frames") for f in files])
                    codes, ref_codes, ref_tokens = _encode(model, frames, reference_frames, batch)
                    tensors[f"{key}/codes"] = codes
                    tensors[f"{key}/ref_codes"] = ref_codes
                    tensors[f"{key}/ref_tokens"] = ref_tokens
                codes = smooth_codes(codes, smooth_frames)
                videos.append(MotionVideo(key, codes, mel, ref_codes, ref_tokens))
        finally:
            model.train(was_training)
        if cache is not None and cached is None:
            _write_cache(Path(cache), tensors, fingerprint)
        return cls(videos, layout)

    @property
    def frames(self) -> int:
        """Frames in the corpus."""
        return sum(len(v.codes) for v in self.videos)

    def code_stats(self, std_floor: float) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std (floored) of all codes."""
        codes = torch.cat([v.codes for v in self.videos]).double()
        return codes.mean(0).float(), codes.std(0).clamp_min(std_floor).float()

    def mel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-bin mean and std of all mel rows."""
        mel = torch.cat([v.mel for v in self.videos]).double()
        return mel.mean(0).float(), mel.std(0).clamp_min(1e-3).float()

    def chunk(self, video: int, start: int, reference: int) -> dict[str, Tensor]:
        """The training chunk of video ``video`` starting at frame ``start``.

        Returns:
            ``context`` [C, D], ``target`` [K, D], ``mel`` [W·m, n_mels] (the chunk's
            audio window as the sampler builds it), ``id_tokens`` [N, E] and ``source``
            [D] (the reference code that pads the context before frame 0).
        """
        lay, v = self.layout, self.videos[video]
        k, c, m = lay.chunk_frames, lay.context_frames, lay.mel_per_frame
        n = len(v.codes)
        source = v.ref_codes[reference]
        context = source.expand(c, -1).clone()
        lo = max(start - c, 0)
        if start > lo:
            context[c - (start - lo) :] = v.codes[lo:start]
        first = start - c - lay.audio_context_frames  # the window's first frame
        rows = lay.window_frames * m
        mel = v.mel.new_full((rows, v.mel.shape[1]), SILENCE_LOG_MEL)
        a, b = max(first, 0), min(first + lay.window_frames, n)
        if b > a:
            mel[(a - first) * m : (b - first) * m] = v.mel[a * m : b * m]
        return {
            "context": context,
            "target": v.codes[start : start + k],
            "mel": mel,
            "id_tokens": v.ref_tokens[reference],
            "source": source,
        }

    def sample(self, generator: torch.Generator, batch: int) -> dict[str, Tensor]:
        """A batch of random chunks (stacked :meth:`chunk` outputs), drawn from ``generator``."""
        which = torch.multinomial(self._weights, batch, replacement=True, generator=generator)
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        r = torch.rand(batch, generator=generator, dtype=torch.float64)
        items = []
        for i, vid in enumerate(which.tolist()):
            v = self.videos[vid]
            starts = len(v.codes) - self.layout.chunk_frames + 1
            refs = len(v.ref_codes)
            items.append(self.chunk(vid, int(u[i] * starts), int(r[i] * refs)))
        return {name: torch.stack([it[name] for it in items]) for name in items[0]}


_CACHED = ("codes", "ref_codes", "ref_tokens")


def _read_cache(path: str | os.PathLike[str], fingerprint: str) -> dict[str, Tensor] | None:
    file = Path(path)
    if not file.is_file():
        return None
    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != _CODES_FORMAT or meta.get("fingerprint") != fingerprint:
            return None
        return {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118


def _write_cache(path: Path, tensors: dict[str, Tensor], fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: t.contiguous() for k, t in tensors.items()},
        str(tmp),
        metadata={"format": _CODES_FORMAT, "fingerprint": fingerprint},
    )
    os.replace(tmp, path)


def motion_velocity(
    model: DualBranchGenerator,
    batch: dict[str, Tensor],
    x: Tensor,
    t: Tensor,
    audio_keep: Tensor,
    id_keep: Tensor,
    guidance: Tensor | None = None,
    context_noise: Tensor | None = None,
) -> Tensor:
    """The transformer's velocity for a batch of chunks (normalised units), with the
    audio window encoded as every sampler path does (:func:`avatar.models.chunk.chunk_audio`)."""
    audio = chunk_audio(model, batch["mel"])
    context = model.motion_dit.normalize(batch["context"])
    if context_noise is not None:
        context = context + context_noise
    return model.motion_dit(x, t, context, audio, batch["id_tokens"], audio_keep, id_keep, guidance)


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class MotionTask:
    """Stage 2 as a :class:`~avatar.train.loop.TrainTask`.

    Args:
        model: the generator with a trained stage 1 (on the training device).
        corpus: training chunks.
        options: batches and conditioning.
        validation: the corpus of the fixed validation batch (held-out videos), or None
            to draw it from ``corpus`` with a fixed seed.
        fresh: True sets the code and mel statistics from ``corpus`` (a new run).
    """

    stage = "motion"

    def __init__(
        self,
        model: DualBranchGenerator,
        corpus: MotionCorpus,
        options: MotionTrainOptions,
        validation: MotionCorpus | None = None,
        fresh: bool = True,
    ):
        self.model, self.corpus, self.options = model, corpus, options
        self.device = next(model.parameters()).device
        if fresh:
            mean, std = corpus.code_stats(options.std_floor)
            model.motion_dit.code_mean.copy_(mean)
            model.motion_dit.code_std.copy_(std)
            mel_mean, mel_std = corpus.mel_stats()
            model.audio_encoder.mel_mean.copy_(mel_mean)
            model.audio_encoder.mel_std.copy_(mel_std)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("audio_encoder.", "motion_dit.")))
        self.val = validation_batch(corpus, model, options.eval_chunks)
        self.heldout = None
        if validation is not None:
            self.heldout = validation_batch(validation, model, options.eval_chunks)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def batches(self, start: int, stop: int, seed: int) -> Iterator[dict[str, Tensor]]:
        for step in range(start, stop):
            yield self.corpus.sample(step_generator(seed, step, "data"), self.options.batch_size)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator):
        o, dev = self.options, self.device
        batch = _to(batch, dev)
        b, shape = batch["target"].shape[0], batch["target"].shape
        noise = torch.randn(shape, generator=generator).to(dev)
        t = torch.rand(b, generator=generator).to(dev)
        ctx_noise = o.context_noise * torch.randn(batch["context"].shape, generator=generator)
        audio_keep, id_keep = condition_dropout(
            b, o.audio_dropout, o.identity_dropout, generator=generator, device=dev
        )
        data = self.model.motion_dit.normalize(batch["target"])
        x_t, target = flow_matching_pair(data, noise, t)
        v = motion_velocity(
            self.model, batch, x_t, t, audio_keep, id_keep, context_noise=ctx_noise.to(dev)
        )
        loss = F.mse_loss(v.float(), target)
        return loss, {"fm_mse": float(loss.detach())}

    @torch.no_grad()
    def evaluate(self, model: DualBranchGenerator) -> dict[str, float]:
        """The flow-matching loss on the fixed validation batches (see
        :func:`validation_batch`): ``fm_mse`` on training videos, ``heldout_fm_mse`` on
        the held-out ones if given."""
        out = {"fm_mse": validation_loss(model, *self.val)}
        if self.heldout is not None:
            out["heldout_fm_mse"] = validation_loss(model, *self.heldout)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "videos": len(self.corpus.videos),
            "frames": self.corpus.frames,
        }


def validation_batch(
    corpus: MotionCorpus, model: DualBranchGenerator, chunks: int, seed: int = 2024
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """A fixed validation batch: ``chunks`` chunks drawn with ``seed``, their noise, and
    times ``t`` spread evenly over (0, 1) (``(i + 0.5) / chunks``)."""
    g = torch.Generator().manual_seed(seed)
    batch = corpus.sample(g, chunks)
    k, d = model.config.dit.chunk_frames, model.config.code_dim
    noise = torch.randn(chunks, k, d, generator=g)
    return batch, noise, (torch.arange(chunks) + 0.5) / chunks


@torch.no_grad()
def validation_loss(
    model: DualBranchGenerator, batch: dict[str, Tensor], noise: Tensor, t: Tensor
) -> float:
    """Flow-matching MSE (normalised units) of ``model`` on a fixed batch, noise and ``t``,
    with audio and identity kept."""
    device = next(model.parameters()).device
    batch = _to(batch, device)
    noise, t = noise.to(device), t.to(device)
    ones = torch.ones(len(t), device=device)
    data = model.motion_dit.normalize(batch["target"])
    x_t, target = flow_matching_pair(data, noise, t)
    guidance = None
    if model.config.dit.guidance_embed:
        guidance = torch.ones(len(t), 2, device=device)
    v = motion_velocity(model, batch, x_t, t, ones, ones, guidance)
    return float(F.mse_loss(v.float(), target))


def load_stage_model(
    path: str | os.PathLike[str], device: torch.device, *, student: bool | None = None
) -> DualBranchGenerator:
    """Load a previous stage's generator for training (train mode, on ``device``).

    Args:
        path: a checkpoint folder or file (e.g. ``RUN/model``).
        device: where to put it.
        student: require a teacher (False) or a student (True); None accepts both.

    Raises:
        ModelNotFoundError: nothing at ``path``.
        CheckpointError: not a generator checkpoint.
        TrainError: a student where a teacher is needed, or the reverse.
    """
    model = DualBranchGenerator.from_pretrained(path, device=device).train()
    if student is not None and model.config.dit.guidance_embed != student:
        want, got = ("student", "teacher") if student else ("teacher", "student")
        raise TrainError(f"{path} holds a {got} generator; this stage needs a {want}")
    return model


def train_motion(
    shards: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    renderer: str | os.PathLike[str],
    options: MotionTrainOptions | None = None,
    loop: LoopOptions | None = None,
    heldout: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train stage 2 from the stage-1 model ``renderer`` (or resume ``run_dir``).

    Args:
        shards: the preprocessed training folder (usually stage 1's).
        run_dir: the run folder; a checkpoint there is resumed.
        renderer: the stage-1 model (``RUN/model`` of :func:`train_renderer`).
        options: batches and conditioning.
        loop: steps, optimizer, EMA, device.
        heldout: preprocessed held-out videos for the validation loss.
        on_step: progress callback.

    Returns:
        The result; ``result.model_path`` is a teacher for
        :func:`avatar.train.stage3.distill` and ``FlowMatchingTeacher``.

    Raises:
        TrainError, PreprocessError, ModelNotFoundError, CheckpointError: see the
        messages.
    """
    loop = loop or LoopOptions()
    options = options or MotionTrainOptions()
    with cpu_threads(loop.cpu_threads):
        seed_everything(loop.seed)
        model = load_stage_model(renderer, loop.torch_device, student=False)
        fresh = resume_config(run_dir) is None
        run = Path(run_dir)
        corpus = MotionCorpus.extract(
            model,
            shards,
            run / CODES_FILE,
            reference_frames=options.reference_frames,
            smooth_frames=options.smooth_frames,
        )
        validation = None
        if heldout is not None:
            validation = MotionCorpus.extract(
                model,
                heldout,
                run / ("heldout_" + CODES_FILE),
                reference_frames=1,
                smooth_frames=options.smooth_frames,
            )
        task = MotionTask(model, corpus, options, validation, fresh=fresh)
        return train(task, run_dir, loop, on_step=on_step)
