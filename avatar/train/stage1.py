"""Stage 1: the renderer, the appearance encoder and the motion encoder, self-supervised.

Each training pair is two frames of the same video from the shards: a **source** (the
dataset's reference frame) and a **driving** frame. The appearance encoder reads the
source; the motion encoder reads both; the renderer warps the source's features from
the source keypoints to the driving keypoints and must reconstruct the driving frame.
Nothing is labelled by hand; the losses are:

- **L1** between the reconstruction and the driving frame (RGB in [-1, 1]).
- **Perceptual**: L1 between features of a *fixed, seeded random* convolution pyramid
  (:class:`RandomFeatureLoss`; three stages of conv 3×3 + ReLU + 2× average pooling, He
  initialised from a fixed seed, never trained, never saved). A pretrained VGG (as FOMM
  and LivePortrait use) would need a download; random conv features are a known, weaker
  stand-in that still weighs edges and textures at three scales more than raw pixels do.
  Swap in a pretrained network here for production training.
- **Keypoint priors**, simple versions of those in FOMM / face-vid2vid / LivePortrait:
  *equivariance* (keypoints of an affinely transformed driving frame are the transformed
  keypoints, FOMM), *separation* (canonical keypoints at least ``separation_distance``
  apart, face-vid2vid's coverage prior), *depth* (canonical keypoints' mean depth 0),
  *deformation* (small expression deltas, face-vid2vid) and **landmark guidance** (the
  posed keypoints listed in :data:`GUIDES` follow 2D landmarks that preprocessing
  already stored, LivePortrait's landmark-guided keypoints for lips and eyes), plus a
  term that makes the distance between the two lip keypoints follow the landmarks'
  mouth opening. So :data:`MOUTH_KEYPOINTS` measure the mouth opening of a code
  (:func:`mouth_opening`). Frames without a detected face skip these terms.

Use :func:`train_renderer`; the result's model feeds stage 2 (:mod:`avatar.train.stage2`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from avatar.models.config import GeneratorConfig
from avatar.models.generator import DualBranchGenerator
from avatar.models.motion_code import keypoints_from_code, split_code
from avatar.train.dataset import ShardDataset
from avatar.train.loop import (
    LoopOptions,
    StepInfo,
    TrainError,
    TrainResult,
    cpu_threads,
    resume_config,
    seed_everything,
    train,
)

GUIDES: tuple[tuple[int, ...], ...] = (
    (62,),  # 0 upper inner lip, centre
    (66,),  # 1 lower inner lip, centre
    (48,),  # 2 left mouth corner
    (54,),  # 3 right mouth corner
    (36, 37, 38, 39, 40, 41),  # 4 left eye (mean)
    (42, 43, 44, 45, 46, 47),  # 5 right eye (mean)
    (30,),  # 6 nose tip
    (8,),  # 7 chin
    (19,),  # 8 left brow
    (24,),  # 9 right brow
)
"""The 68-point landmarks (iBUG indices, averaged) that keypoint ``i`` follows, for the
first ``min(n_kp, len(GUIDES))`` keypoints; further keypoints are free."""

MOUTH_KEYPOINTS = (0, 1)
"""Keypoints on the upper and lower inner lip (see :data:`GUIDES`)."""

SIZES = ("tiny", "base", "large")


def training_config(size: str) -> GeneratorConfig:
    """The generator config a training run of ``size`` starts from.

    ``"tiny"`` is ``GeneratorConfig.tiny()`` with a motion transformer of width 64
    instead of 32: on the synthetic test corpus the width-32 transformer's flow-matching
    loss plateaus at about 78 % below its start, width 64 goes past 90 % in the same
    steps. ``"base"`` and ``"large"`` are the generator's own sizes.

    Raises:
        TrainError: an unknown size.
    """
    if size == "tiny":
        tiny = GeneratorConfig.tiny()
        return dataclasses.replace(tiny, dit=dataclasses.replace(tiny.dit, width=64))
    if size == "base":
        return GeneratorConfig.base()
    if size == "large":
        return GeneratorConfig.large()
    raise TrainError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")


@dataclass(frozen=True, slots=True)
class RendererTrainOptions:
    """Losses and batches of stage 1.

    Attributes:
        batch_size: (source, driving) pairs per step.
        l1_weight: weight of the RGB L1 loss.
        perceptual_weight: weight of the random-feature perceptual loss.
        perceptual_seed: seed of the fixed random feature pyramid.
        equivariance_weight: weight of the keypoint equivariance loss.
        equivariance_rotation_deg: the random transform's rotation range (±).
        equivariance_scale: its log-scale range (±).
        equivariance_shift: its shift range (±, in [-1, 1] image units).
        landmark_weight: weight of the landmark guidance of the keypoints in
            :data:`GUIDES` (0 turns it off).
        mouth_weight: weight of the mouth-opening guidance: the vertical distance
            between the two :data:`MOUTH_KEYPOINTS` follows that of their landmarks (a
            sub-pixel quantity at 64 px that the position loss alone learns slowly).
        separation_weight: weight of the canonical keypoints' separation prior.
        separation_distance: the distance (in [-1, 1] units) below which keypoints push
            apart.
        depth_weight: weight of the canonical keypoints' depth prior (mean z = 0).
        deformation_weight: weight of the L1 prior on expression deltas.
        eval_pairs: held-out pairs the PSNR is measured on.
    """

    batch_size: int = 8
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_seed: int = 1234
    equivariance_weight: float = 1.0
    equivariance_rotation_deg: float = 10.0
    equivariance_scale: float = 0.1
    equivariance_shift: float = 0.1
    landmark_weight: float = 10.0
    mouth_weight: float = 50.0
    separation_weight: float = 1.0
    separation_distance: float = 0.05
    depth_weight: float = 0.1
    deformation_weight: float = 0.1
    eval_pairs: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_pairs < 1:
            raise TrainError("RendererTrainOptions: batch_size and eval_pairs must be >= 1")
        weights = ("l1_weight", "perceptual_weight", "equivariance_weight", "landmark_weight",
                   "mouth_weight", "separation_weight", "depth_weight",
                   "deformation_weight")  # fmt: skip
        for name in weights:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TrainError(f"RendererTrainOptions.{name} must be >= 0, got {value}")


class RandomFeatureLoss(nn.Module):
    """L1 between features of a fixed random conv pyramid (a download-free perceptual loss).

    Three stages of conv 3×3 (He-normal weights from ``seed``, zero bias) + ReLU + 2×
    average pooling; the loss is the mean over stages of the mean absolute feature
    difference. The weights are buffers: never trained and not part of any checkpoint.

    Args:
        seed: seeds the weights (the loss is the same function for the same seed).
        channels: output channels of the three stages.
    """

    def __init__(self, seed: int = 1234, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        prev = 3
        for i, c in enumerate(channels):
            std = math.sqrt(2.0 / (prev * 9))
            self.register_buffer(f"w{i}", torch.randn(c, prev, 3, 3, generator=g) * std)
            prev = c
        self.stages = len(channels)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Perceptual distance between image batches ``x`` and ``y`` [B, 3, H, W]."""
        total = x.new_zeros(())
        for i in range(self.stages):
            w = getattr(self, f"w{i}")
            x = F.avg_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)
            y = F.avg_pool2d(F.relu(F.conv2d(y, w, padding=1)), 2)
            total = total + (x - y).abs().mean()
        return total / self.stages


class StepIndexed(Dataset):
    """Item ``k`` is item ``k % batch`` of epoch ``k // batch`` of ``dataset``: the batch
    of step ``s`` is items ``s·batch .. (s+1)·batch − 1``, whatever workers load them.

    Args:
        dataset: has ``set_epoch(epoch)`` and at least ``batch`` items per epoch (a
            :class:`~avatar.train.dataset.ShardDataset` with ``samples=batch``).
        batch: items per step.
    """

    def __init__(self, dataset: Any, batch: int):
        self.dataset, self.batch = dataset, batch

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, k: int) -> Any:
        self.dataset.set_epoch(k // self.batch)
        return self.dataset[k % self.batch]


def _ignore_sigint(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C


def step_batches(
    dataset: Any, batch: int, start: int, stop: int, num_workers: int = 0
) -> Iterator[Any]:
    """Batches of steps ``start .. stop − 1`` of a :class:`StepIndexed` dataset, loaded by
    ``num_workers`` processes (which ignore Ctrl-C, so the loop can save)."""
    loader = DataLoader(
        StepIndexed(dataset, batch),
        batch_size=batch,
        sampler=range(start * batch, stop * batch),
        num_workers=num_workers,
        worker_init_fn=_ignore_sigint if num_workers else None,
        persistent_workers=False,
    )
    return iter(loader)


def landmark_targets(landmarks: Tensor, size: int, n_kp: int) -> tuple[Tensor, Tensor]:
    """Guide positions of the first keypoints from 68 landmarks in crop pixels.

    Args:
        landmarks: [B, 68, 2] in crop pixels (pixel centres at integers; NaN: no face).
        size: the crop side in pixels.
        n_kp: keypoints per code.

    Returns:
        ``(targets, valid)``: [B, G, 2] in [-1, 1] grid units (x, y) and [B] bool, with
        ``G = min(n_kp, len(GUIDES))``.
    """
    g = min(n_kp, len(GUIDES))
    points = torch.stack([landmarks[:, list(ids)].mean(dim=1) for ids in GUIDES[:g]], dim=1)
    targets = (points + 0.5) * (2.0 / size) - 1.0
    valid = torch.isfinite(targets).all(dim=2).all(dim=1)
    return torch.nan_to_num(targets), valid


def mouth_opening(codes: Tensor, n_kp: int) -> Tensor:
    """Mouth opening of motion codes [..., code_dim] → [...]: the vertical distance from
    the upper to the lower inner-lip keypoint (:data:`MOUTH_KEYPOINTS`), in [-1, 1] units.

    Meaningful for models trained with landmark guidance (``landmark_weight > 0``).
    """
    kp = keypoints_from_code(codes, n_kp)
    upper, lower = MOUTH_KEYPOINTS
    return kp[..., lower, 1] - kp[..., upper, 1]


def _random_affine(batch: int, options: RendererTrainOptions, g: torch.Generator) -> Tensor:
    """Random affine maps [B, 2, 3] (``affine_grid`` convention: output → input)."""
    u = torch.rand(batch, 4, generator=g) * 2 - 1
    angle = u[:, 0] * math.radians(options.equivariance_rotation_deg)
    scale = torch.exp(u[:, 1] * options.equivariance_scale)
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    shift = u[:, 2:] * options.equivariance_shift
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )


def psnr(prediction: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB of images in [-1, 1] (as 0..1 images), per item [B]."""
    mse = ((prediction.float() - target.float()) / 2).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def reconstruct(model: DualBranchGenerator, source: Tensor, driving: Tensor) -> Tensor:
    """Reconstruct ``driving`` [B, 3, S, S] from ``source`` (stage 1's forward)."""
    pyramid, tokens = model.appearance(source)
    kp_s = model.keypoints(model.motion_encoder(source))
    kp_d = model.keypoints(model.motion_encoder(driving))
    rgb, _, _ = model.renderer(pyramid, tokens, kp_s, kp_d)
    return rgb


class RendererTask:
    """Stage 1 as a :class:`~avatar.train.loop.TrainTask`.

    Args:
        model: the generator (on the training device).
        shards: the preprocessed training folder.
        options: losses and batch size.
        heldout: a preprocessed folder of held-out videos for the PSNR; None measures it
            on fixed pairs of the training folder.
        num_workers: data-loading processes.
    """

    stage = "renderer"

    def __init__(
        self,
        model: DualBranchGenerator,
        shards: str | os.PathLike[str],
        options: RendererTrainOptions,
        heldout: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
    ):
        self.model = model
        self.shards, self.heldout = Path(shards), None if heldout is None else Path(heldout)
        self.options = options
        self.num_workers = num_workers
        self.device = next(model.parameters()).device
        self.perceptual = RandomFeatureLoss(options.perceptual_seed).to(self.device)
        size = model.config.image_size
        ShardDataset(self.shards, window=1)  # fail fast on an empty folder
        pairs = ShardDataset(
            self.heldout or self.shards, window=1, samples=options.eval_pairs, seed=4321
        )
        items = [pairs[i] for i in range(len(pairs))]
        got = items[0]["reference"].shape[-1]
        if got != size:
            raise TrainError(
                f"the shards hold {got} px crops but the model renders {size} px: preprocess "
                f"with the matching --size, or train a model of {got} px"
            )
        self.eval_source = torch.stack([it["reference"] for it in items]).to(self.device)
        self.eval_driving = torch.stack([it["frames"][0] for it in items]).to(self.device)
        self.eval_landmarks = torch.stack([it["landmarks"][0] for it in items]).to(self.device)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        parts = ("appearance.", "motion_encoder.", "renderer.")
        return [(n, p) for n, p in self.model.named_parameters() if n.startswith(parts)]

    def batches(self, start: int, stop: int, seed: int):
        data = ShardDataset(self.shards, window=1, samples=self.options.batch_size, seed=seed)
        return step_batches(data, self.options.batch_size, start, stop, self.num_workers)

    def loss(self, batch: dict[str, Any], generator: torch.Generator):
        o, model, dev = self.options, self.model, self.device
        n_kp = model.config.motion.n_kp
        source = batch["reference"].to(dev)
        driving = batch["frames"][:, 0].to(dev)
        b = driving.shape[0]
        theta = _random_affine(b, o, generator).to(dev)
        grid = F.affine_grid(theta, list(driving.shape), align_corners=False)
        transformed = F.grid_sample(driving, grid, padding_mode="border", align_corners=False)
        pyramid, tokens = model.appearance(source)
        codes = model.motion_encoder(torch.cat([source, driving, transformed]))
        code_s, code_d, code_t = codes.float().chunk(3)
        kp_s, kp_d = keypoints_from_code(code_s, n_kp), keypoints_from_code(code_d, n_kp)
        rgb, _, _ = model.renderer(pyramid, tokens, kp_s, kp_d)
        rgb = rgb.float()
        values: dict[str, Tensor] = {}
        values["l1"] = (rgb - driving).abs().mean()
        values["perceptual"] = self.perceptual(rgb, driving)
        # Equivariance: keypoints of T(driving) are T⁻¹ applied to driving's keypoints.
        a, t = theta[:, :, :2], theta[:, :, 2]
        expected = torch.linalg.solve(a[:, None], (kp_d[..., :2] - t[:, None])[..., None])
        kp_t = keypoints_from_code(code_t, n_kp)[..., :2]
        values["equivariance"] = (kp_t - expected[..., 0]).abs().mean()
        targets, valid = landmark_targets(batch["landmarks"][:, 0].to(dev), driving.shape[-1], n_kp)
        g = targets.shape[1]
        err = (kp_d[:, :g, :2] - targets).abs().mean(dim=(1, 2))
        values["landmark"] = (err * valid).sum() / valid.sum().clamp_min(1)
        if g > max(MOUTH_KEYPOINTS):
            upper, lower = MOUTH_KEYPOINTS
            opening = kp_d[:, lower, 1] - kp_d[:, upper, 1]
            wanted = targets[:, lower, 1] - targets[:, upper, 1]
            values["mouth"] = ((opening - wanted).abs() * valid).sum() / valid.sum().clamp_min(1)
        else:
            values["mouth"] = values["landmark"].new_zeros(())
        canon_s, delta_s, _ = split_code(code_s, n_kp)
        canon_d, delta_d, _ = split_code(code_d, n_kp)
        canon = torch.cat([canon_s, canon_d])
        dist = torch.cdist(canon[..., :2], canon[..., :2])
        off = ~torch.eye(n_kp, dtype=torch.bool, device=dev)
        values["separation"] = F.relu(o.separation_distance - dist)[:, off].mean()
        values["depth"] = canon[..., 2].mean(dim=1).abs().mean()
        values["deformation"] = torch.cat([delta_s, delta_d]).abs().mean()
        total = (
            o.l1_weight * values["l1"]
            + o.perceptual_weight * values["perceptual"]
            + o.equivariance_weight * values["equivariance"]
            + o.landmark_weight * values["landmark"]
            + o.mouth_weight * values["mouth"]
            + o.separation_weight * values["separation"]
            + o.depth_weight * values["depth"]
            + o.deformation_weight * values["deformation"]
        )
        with torch.no_grad():
            values["psnr"] = psnr(rgb, driving).mean()
        return total, {k: float(v.detach()) for k, v in values.items()}

    @torch.no_grad()
    def evaluate(self, model: DualBranchGenerator) -> dict[str, float]:
        """PSNR (dB) of the reconstructions of the held-out pairs, and how far (in pixels)
        the guided keypoints of their driving frames are from the landmarks."""
        size, n_kp = model.config.image_size, model.config.motion.n_kp
        scores, errors = [], []
        for start in range(0, len(self.eval_source), 16):
            src = self.eval_source[start : start + 16]
            drv = self.eval_driving[start : start + 16]
            scores.append(psnr(reconstruct(model, src, drv).float(), drv))
            targets, valid = landmark_targets(self.eval_landmarks[start : start + 16], size, n_kp)
            kp = model.keypoints(model.motion_encoder(drv).float())[:, : targets.shape[1], :2]
            err = (kp - targets).norm(dim=2).mean(dim=1) * size / 2
            errors.append(err[valid])
        out = {"psnr": float(torch.cat(scores).mean())}
        errors_all = torch.cat(errors)
        if len(errors_all):
            out["landmark_px"] = float(errors_all.mean())
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "shards": str(self.shards),
            "heldout": None if self.heldout is None else str(self.heldout),
            "options": asdict(self.options),
            "perceptual": "fixed random conv pyramid (seeded), not a pretrained VGG",
        }


def train_renderer(
    shards: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    config: GeneratorConfig | None = None,
    options: RendererTrainOptions | None = None,
    loop: LoopOptions | None = None,
    heldout: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train stage 1 from preprocessed shards (or resume the run in ``run_dir``).

    Args:
        shards: a folder written by :func:`avatar.train.data.preprocess` at the model's
            image size.
        run_dir: the run folder; if it holds a checkpoint, training resumes from it (its
            config wins over ``config``).
        config: the generator's sizes; ``training_config("tiny")`` when None.
        options: losses and batch size.
        loop: steps, optimizer, EMA, device.
        heldout: preprocessed held-out videos for the validation PSNR.
        on_step: progress callback taking a :class:`~avatar.train.loop.StepInfo`.

    Returns:
        The result; pass ``result.model_path`` to :func:`avatar.train.stage2.train_motion`.

    Raises:
        TrainError: bad options, or the shards' crop size does not match the model.
        PreprocessError: no usable shards.
    """
    loop = loop or LoopOptions()
    options = options or RendererTrainOptions()
    config = resume_config(run_dir) or config or training_config("tiny")
    with cpu_threads(loop.cpu_threads):
        seed_everything(loop.seed)
        model = DualBranchGenerator(config).to(loop.torch_device)
        task = RendererTask(model, shards, options, heldout, loop.num_workers)
        return train(task, run_dir, loop, on_step=on_step)
