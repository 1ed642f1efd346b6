"""The training loop shared by the three stages: seeds, EMA, checkpoints, resume, scalars.

A stage (:mod:`avatar.train.stage1`, ``stage2``, ``stage3``) is a :class:`TrainTask`: it
owns the model, says which parameters train, yields one batch per step and computes the
loss. :func:`train` does the rest::

    result = train(task, "runs/renderer", LoopOptions(max_steps=20_000, device="cuda"))
    result.model_path          # runs/renderer/model/model.safetensors (EMA weights)

The run folder::

    RUN/checkpoint/model.safetensors   training weights (safetensors + embedded config)
    RUN/checkpoint/ema.safetensors     EMA weights, same format (``from_pretrained`` reads it)
    RUN/checkpoint/state.pt            step, optimizer, EMA count, RNG states, options
    RUN/model/model.safetensors        the model to use: EMA weights, written at the end,
                                       on Ctrl-C and at each checkpoint
    RUN/scalars.jsonl                  one JSON object per scalar: {"step", "tag", "value",
                                       "wall"}; tags TensorBoard-style ("train/loss", "lr")
    RUN/run.json                       stage, options, status, last step

Reproducibility: step ``s`` draws everything random (batch, noise, augmentation) from
:func:`step_generator` ``(seed, s)`` and the task's own per-step draws, never from
global state, and a checkpoint holds all state that changes between steps. So a run
stopped at any checkpoint and resumed continues exactly: on the CPU with the same
thread settings the weights are bit-identical to an uninterrupted run's (tested).

Rerunning :func:`train` on a run folder that holds a checkpoint resumes it (raise
``max_steps`` to train further). A first Ctrl-C (SIGINT) finishes the current step,
saves and returns with status ``"interrupted"``; a second one aborts at once. On CUDA
the forward passes run under bf16 autocast (``LoopOptions.bf16``); losses are computed
in float32.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import AvatarError
from avatar.models.checkpoint import load_state, read_pretrained
from avatar.models.config import GeneratorConfig
from avatar.models.generator import DualBranchGenerator

CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
SCALARS = "scalars.jsonl"
RUN_INFO = "run.json"
_STATE = "state.pt"
_EMA = "ema.safetensors"


class TrainError(AvatarError, ValueError):
    """Training cannot start or go on: bad options, data or run folder (the message says
    which and what to do)."""


@dataclass(frozen=True, slots=True)
class LoopOptions:
    """How long and how a stage trains (the parts every stage shares).

    Attributes:
        max_steps: train until this many optimizer steps in total (a resumed run counts
            the steps it already did).
        time_budget_s: stop (and save) after this many seconds of this invocation; None
            for no limit. A run stopped by the budget resumes like any other.
        lr: peak AdamW learning rate.
        warmup_steps: linear learning-rate warm-up from 0.
        schedule: after the warm-up, ``"cosine"`` decays the rate to ``min_lr_ratio × lr``
            at ``max_steps`` (so raising ``max_steps`` on resume reshapes the rest of the
            curve); ``"constant"`` keeps it.
        min_lr_ratio: the cosine schedule's final rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        grad_clip: clip the gradients' global norm to this; 0 turns clipping off.
        ema_decay: the EMA's decay; it ramps up as ``min(decay, (1 + n) / (10 + n))``
            over the first updates, so short runs still average sensibly.
        seed: seeds the model's initial weights and every per-step draw.
        log_every: write training scalars every this many steps.
        eval_every: run the task's validation every this many steps (0: only before the
            first and after the last step).
        checkpoint_every: save a resumable checkpoint every this many steps (0: only at
            the end, on Ctrl-C and when the time budget runs out).
        device: torch device, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        bf16: bf16 autocast for the forward passes on CUDA (ignored on the CPU).
        num_workers: data-loading worker processes (0 loads in the training process).
        cpu_threads: torch's intra-op CPU threads while training (restored after); None
            leaves torch's setting. Small models on a busy machine run much faster on 1.
    """

    max_steps: int = 20_000
    time_budget_s: float | None = None
    lr: float = 2e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 1000
    device: str = "cpu"
    bf16: bool = True
    num_workers: int = 0
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        checks = (
            (self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}"),
            (
                self.time_budget_s is None or self.time_budget_s > 0,
                f"time_budget_s must be positive, got {self.time_budget_s}",
            ),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (
                self.schedule in ("cosine", "constant"),
                f"schedule must be 'cosine' or 'constant', got {self.schedule!r}",
            ),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (
                self.cpu_threads is None or self.cpu_threads >= 1,
                f"cpu_threads must be at least 1, got {self.cpu_threads}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise TrainError(f"LoopOptions.{message}")

    @property
    def torch_device(self) -> torch.device:
        """The device, checked: a CUDA device needs a CUDA build and a GPU."""
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise TrainError(f"LoopOptions.device {self.device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainError(
                f"device {self.device!r} asked for, but torch sees no CUDA GPU (CPU build or "
                "no driver): install the gpu extra on a GPU machine, or use --device cpu"
            )
        return device


class TrainTask(Protocol):
    """What a training stage gives :func:`train`.

    Attributes:
        stage: ``"renderer"``, ``"motion"`` or ``"distill"`` (recorded in the run).
        model: the whole generator (saved at checkpoints; its config is embedded).
    """

    stage: str
    model: DualBranchGenerator

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """The named parameters the optimizer updates (names as in ``model``)."""
        ...

    def batches(self, start: int, stop: int, seed: int) -> Iterator[Any]:
        """One batch per step ``start .. stop - 1``; batch ``s`` depends only on
        ``(seed, s)`` and the data."""
        ...

    def loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The loss to minimise and named scalars to log (``"l1"`` → ``train/l1``)."""
        ...

    def evaluate(self, model: DualBranchGenerator) -> dict[str, float]:
        """Validation scalars of ``model`` (``"psnr"`` → ``val/psnr``); ``{}`` for none."""
        ...

    def describe(self) -> dict[str, Any]:
        """The stage's options and data, JSON-ready, for ``run.json``."""
        ...


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What :func:`train` reports after each step (for progress bars)."""

    step: int
    max_steps: int
    scalars: dict[str, float]
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        run_dir: the run folder.
        model_path: the EMA model to use (``DualBranchGenerator.from_pretrained``).
        step: steps done in total.
        status: ``"finished"``, ``"interrupted"`` (Ctrl-C) or ``"time_budget"``; rerun
            :func:`train` with the same run folder to continue an unfinished run.
        resumed_from: the step this invocation started from (0 for a fresh run).
        seconds: wall time of this invocation.
        first_eval: validation scalars before this invocation's first step.
        last_eval: validation scalars of the EMA model at the end.
    """

    run_dir: Path
    model_path: Path
    step: int
    status: str
    resumed_from: int
    seconds: float
    first_eval: dict[str, float]
    last_eval: dict[str, float]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, salt: str = "loss") -> torch.Generator:
    """A CPU generator for the random draws of step ``step``, independent of earlier
    steps; ``salt`` separates independent streams (the loop's ``"loss"``, a task's
    ``"data"``)."""
    digest = hashlib.sha256(f"likeness.train:{salt}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class EMA:
    """Exponential moving average of named parameters (kept in float32 on their device).

    Args:
        params: the named parameters to follow.
        decay: the target decay; it ramps up as ``min(decay, (1 + n) / (10 + n))``.
    """

    def __init__(self, params: list[tuple[str, nn.Parameter]], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in params}

    @torch.no_grad()
    def update(self, params: list[tuple[str, nn.Parameter]]) -> None:
        """Move the averages towards the current parameters (call after each step)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in params:
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)

    def model_copy(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (on the CPU, eval mode) with the averaged parameters."""
        clone = copy.deepcopy(model).to("cpu").eval()
        state = clone.state_dict()
        for name, value in self.shadow.items():
            state[name].copy_(value)
        return clone


class _StopFlag:
    """SIGINT handling: the first Ctrl-C asks the loop to stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_config(run_dir: str | os.PathLike[str]) -> GeneratorConfig | None:
    """The generator config of a run folder's checkpoint, or None if it has none.

    Stages call it to build the model a resumed run needs before calling :func:`train`.
    """
    path = Path(run_dir) / CHECKPOINT_DIR
    if not (path / _STATE).is_file():
        return None
    config, _ = read_pretrained(path, GeneratorConfig, DualBranchGenerator.__name__)
    return config


def learning_rate(step: int, options: LoopOptions) -> float:
    """The learning rate of step ``step`` (0-based) under ``options``' schedule."""
    if options.warmup_steps and step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    if options.schedule == "constant":
        return options.lr
    span = max(options.max_steps - options.warmup_steps, 1)
    progress = min(max(step - options.warmup_steps, 0) / span, 1.0)
    low = options.min_lr_ratio
    return options.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))


class _Scalars:
    """Appends scalars to ``scalars.jsonl``; a resumed run first drops records past its step."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if resume_step and path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            path.write_text("".join(f"{line}\n" for line in kept))
        elif not resume_step:
            path.write_text("")

    def write(self, step: int, values: dict[str, float], prefix: str) -> None:
        now = round(time.time(), 3)
        with self.path.open("a") as fh:
            for tag, value in values.items():
                record = {"step": step, "tag": f"{prefix}{tag}", "value": float(value)}
                fh.write(json.dumps({**record, "wall": now}) + "\n")


def read_scalars(run_dir: str | os.PathLike[str], tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one tag from a run's ``scalars.jsonl``, in order."""
    path = Path(run_dir) / SCALARS
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["tag"] == tag:
                out.append((record["step"], record["value"]))
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _save(
    run_dir: Path,
    task: TrainTask,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    step: int,
    options: LoopOptions,
) -> Path:
    """Write the resumable checkpoint and the EMA model; returns the model's file."""
    ckpt = run_dir / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    ema_model = ema.model_copy(task.model)
    task.model.save_pretrained(ckpt)
    ema_model.save_pretrained(ckpt / _EMA)
    state = {
        "step": step,
        "stage": task.stage,
        "seed": options.seed,
        "optimizer": optimizer.state_dict(),
        "ema_updates": ema.updates,
        "rng": _rng_state(),
    }
    tmp = ckpt / (_STATE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt / _STATE)
    return ema_model.save_pretrained(run_dir / MODEL_DIR)


def _load(
    run_dir: Path,
    task: TrainTask,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    options: LoopOptions,
) -> int:
    """Restore a checkpoint into the task's model, the EMA and the optimizer; returns
    the step to continue from."""
    ckpt = run_dir / CHECKPOINT_DIR
    state = torch.load(ckpt / _STATE, map_location="cpu", weights_only=True)
    if state["stage"] != task.stage:
        raise TrainError(
            f"{run_dir} holds a {state['stage']} run, not a {task.stage} run: use another "
            "run folder"
        )
    if state["seed"] != options.seed:
        raise TrainError(
            f"{run_dir} was started with seed {state['seed']}, not {options.seed}: resume "
            "with the same seed, or use another run folder"
        )
    device = next(task.model.parameters()).device
    _, weights = read_pretrained(ckpt, GeneratorConfig, DualBranchGenerator.__name__)
    load_state(task.model, weights, ckpt)
    task.model.to(device)
    _, averaged = read_pretrained(ckpt / _EMA, GeneratorConfig, DualBranchGenerator.__name__)
    for name in ema.shadow:
        ema.shadow[name] = averaged[name].float().to(device)
    ema.updates = int(state["ema_updates"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return int(state["step"])


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``bf16``; a no-op context otherwise."""
    if device.type == "cuda" and bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op CPU threads set to ``count`` (None: unchanged)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    task: TrainTask,
    run_dir: str | os.PathLike[str],
    options: LoopOptions,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train ``task`` in ``run_dir`` (resuming its checkpoint if there is one).

    The task's model must already be on ``options.device``. Call
    :func:`seed_everything` before building a fresh model, so its initial weights follow
    the seed.

    Args:
        task: the stage.
        run_dir: the run folder (created).
        options: steps, optimizer, EMA, logging, device.
        on_step: called after every step (progress bars); it may raise to abort.

    Returns:
        What happened; load ``result.model_path`` with
        ``DualBranchGenerator.from_pretrained`` for the trained (EMA) model.

    Raises:
        TrainError: the run folder holds another stage or seed, or a loss is not finite.
    """
    with cpu_threads(options.cpu_threads):
        return _train(task, Path(run_dir), options, on_step)


def _train(
    task: TrainTask,
    run: Path,
    options: LoopOptions,
    on_step: Callable[[StepInfo], None] | None,
) -> TrainResult:
    started = time.monotonic()
    run.mkdir(parents=True, exist_ok=True)
    device = options.torch_device
    params = task.trainable()
    if not params:
        raise TrainError(f"the {task.stage} stage has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [p for _, p in params],
        lr=options.lr,
        betas=options.betas,
        weight_decay=options.weight_decay,
    )
    ema = EMA(params, options.ema_decay)
    start = 0
    if (run / CHECKPOINT_DIR / _STATE).is_file():
        start = _load(run, task, ema, optimizer, options)
    scalars = _Scalars(run / SCALARS, start)
    info = {
        "stage": task.stage,
        "loop": dataclasses.asdict(options),
        "task": task.describe(),
        "config": dataclasses.asdict(task.model.config),
    }
    _write_json(run / RUN_INFO, {**info, "status": "running", "step": start})
    task.model.train()
    first_eval = _evaluate(task, task.model)
    if first_eval and start == 0:
        scalars.write(0, first_eval, "val/")
    step, status = start, "finished"
    model_path = run / MODEL_DIR
    with _StopFlag() as stop:
        batches = task.batches(start, options.max_steps, options.seed)
        for step in range(start, options.max_steps):
            batch = next(batches)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, options)
            generator = step_generator(options.seed, step)
            with autocast(device, options.bf16):
                loss, values = task.loss(batch, generator)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"{task.stage} loss is {float(loss)} at step {step}: lower the learning "
                    f"rate (now {options.lr}) or resume from the last checkpoint"
                )
            values = {"loss": float(loss.detach()), **values}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], options.grad_clip)
                values = {**values, "grad_norm": float(norm)}
            optimizer.step()
            ema.update(params)
            done = step + 1
            if done % options.log_every == 0 or done == options.max_steps:
                scalars.write(done, values, "train/")
                scalars.write(done, {"lr": optimizer.param_groups[0]["lr"]}, "")
            if options.eval_every and done % options.eval_every == 0:
                scalars.write(done, _evaluate(task, task.model), "val/")
            if on_step is not None:
                on_step(StepInfo(done, options.max_steps, values, time.monotonic() - started))
            step = done
            over = (
                options.time_budget_s is not None
                and time.monotonic() - started >= options.time_budget_s
            )
            if stop.requested or over:
                status = "interrupted" if stop.requested else "time_budget"
                break
            if options.checkpoint_every and done % options.checkpoint_every == 0:
                _save(run, task, ema, optimizer, done, options)
        model_path = _save(run, task, ema, optimizer, step, options)
    last_eval = _evaluate(task, ema.model_copy(task.model).to(device))
    if last_eval:
        scalars.write(step, {f"ema_{k}": v for k, v in last_eval.items()}, "val/")
    seconds = time.monotonic() - started
    _write_json(
        run / RUN_INFO,
        {**info, "status": status, "step": step, "seconds": round(seconds, 3), "eval": last_eval},
    )
    return TrainResult(run, model_path, step, status, start, seconds, first_eval, last_eval)


def _evaluate(task: TrainTask, model: DualBranchGenerator) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in task.evaluate(model).items()}
    finally:
        model.train(was_training)
