"""A benchmark of the neural generator: ``likeness bench avatar --backend neural``.

What it measures, for one model size, runtime (PyTorch or onnxruntime) and device:

- **fps per stream and scaling**: for ``n`` in ``streams`` (1, 2, 4, 8), ``n`` sessions'
  chunks run batched as one ``motion_chunk`` and one ``render`` call of the runner (the
  scheduler's batching), over ``seconds`` of speech-like audio per stream after one
  warm-up chunk. ``fps_per_stream`` = frames each stream got per wall second;
  ``fps_total`` = all streams together. This is the model's throughput: it leaves out
  the paste-back into the output frame and the event loop.
- **sessions end to end**: for each ``n``, ``n`` real
  :class:`~avatar.pipelines.neural.NeuralGenerator` sessions on the shared scheduler,
  each pushed ``seconds`` of audio at once and read as fast as frames come:
  ``session_fps_per_stream`` = speaking frames per stream per wall second, with
  everything a live session does (log-mel, batching across sessions, paste-back into
  the output frame at its size) but the network.
- **ms per chunk**, split into motion (audio encoder + the student's steps) and renderer
  (K frames), at one stream (median over the chunks).
- **first-chunk latency** through the real :class:`~avatar.pipelines.neural.NeuralGenerator`:
  from the first ``push_audio`` of an utterance (one second of audio pushed at once) to
  its first speaking frame out of the iterator. A chunk also needs its audio:
  ``first_chunk_audio_ms`` (K + L frames) must have arrived before it can start, so a
  live stream's latency is that plus the compute.
- **GFLOPs per frame**, counted with ``torch.utils.flop_counter.FlopCounterMode``
  (:func:`avatar.models.costs.measure_costs`): renderer per frame + (audio encoder +
  steps × transformer pass) / K.
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` (PyTorch runtime); on the
  CPU the process's peak resident set (it includes the Python runtime and libraries).

Without a checkpoint the weights are random (seeded): the timings hold, the faces are
meaningless; the result says which.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.samplers.chunks import chunk_noise
from avatar.types import EndOfSegment, PreparedAvatar, VideoFrame

SIZES = ("tiny", "base", "large")
RUNTIMES = ("torch", "onnx")
SAMPLE_RATE = 16_000
RANDOM_WEIGHTS = "random-initialised (timing only: the faces are meaningless)"


class NeuralBenchError(AvatarError, ValueError):
    """Options the benchmark cannot run with; the message names the option."""


@dataclass(frozen=True, slots=True)
class NeuralBenchOptions:
    """What to measure.

    Attributes:
        size: model size, ``tiny`` (64 px), ``base`` (256 px) or ``large`` (512 px);
            ignored when ``checkpoint`` is given (its config decides).
        runtime: ``torch`` or ``onnx``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        streams: concurrent stream counts for the scaling runs, each batched.
        seconds: speech per stream in each scaling run (at least one chunk).
        steps: student sampler steps per chunk (1 to 4).
        checkpoint: a student checkpoint (or, for onnx, an export folder); empty for
            random weights.
        compile: PyTorch: ``torch.compile`` the renderer and transformer (CUDA graphs on CUDA).
        seed: seed of the random weights and of the noise.
        threads: CPU threads for the model (``torch.set_num_threads`` for the run, or
            onnxruntime's intra-op threads); 0 keeps the library's default (all cores).
    """

    size: str = "tiny"
    runtime: str = "torch"
    device: str = "auto"
    streams: tuple[int, ...] = (1, 2, 4, 8)
    seconds: float = 2.0
    steps: int = 2
    checkpoint: str = ""
    compile: bool = False
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise NeuralBenchError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.runtime not in RUNTIMES:
            raise NeuralBenchError(
                f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )
        if not self.streams or any(not 1 <= n <= 64 for n in self.streams):
            raise NeuralBenchError(f"streams must be counts from 1 to 64, got {self.streams}")
        if not 0 < self.seconds <= 600:
            raise NeuralBenchError(f"seconds must be in (0, 600], got {self.seconds}")
        if not 1 <= self.steps <= 4:
            raise NeuralBenchError(f"steps must be 1 to 4 (a distilled student), got {self.steps}")
        if self.compile and self.runtime != "torch":
            raise NeuralBenchError("compile is for the torch runtime (onnx has its own graph)")
        if not 0 <= self.threads <= 256:
            raise NeuralBenchError(f"threads must be 0 (default) to 256, got {self.threads}")


def parse_streams(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` → ``(1, 2, 4, 8)``.

    Raises:
        NeuralBenchError: not a comma-separated list of positive integers.
    """
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise NeuralBenchError(f"--streams must look like 1,2,4,8, got {text!r}")
    return tuple(sorted(set(counts)))


# ---------------------------------------------------------------- building the runner


def _config(options: NeuralBenchOptions) -> Any:
    from avatar.models.config import GeneratorConfig

    return getattr(GeneratorConfig, options.size)().as_student()


def _random_student(options: NeuralBenchOptions) -> Any:
    from avatar.models.generator import DualBranchGenerator

    torch.manual_seed(options.seed)
    return DualBranchGenerator(_config(options)).eval()


def build_runner(options: NeuralBenchOptions, workdir: Path) -> tuple[Any, str]:
    """The runner to time and a description of its weights.

    Args:
        options: runtime, device, size, checkpoint.
        workdir: a scratch folder (the ONNX export of random weights goes there).

    Returns:
        ``(runner, weights)``.
    """
    from avatar.pipelines.runner import TorchRunner, TorchRunnerOptions

    top = max(options.streams)
    if options.runtime == "torch":
        torch_options = TorchRunnerOptions(
            device=options.device, steps=options.steps, compile=options.compile, max_batch=top
        )
        if options.checkpoint:
            return TorchRunner.load(options.checkpoint, torch_options), options.checkpoint
        return TorchRunner(_random_student(options), torch_options), RANDOM_WEIGHTS
    from avatar.deploy.onnx import ExportOptions, export_onnx
    from avatar.deploy.onnx_runner import OnnxRunner, OnnxRunnerOptions

    onnx_options = OnnxRunnerOptions(
        device=options.device, steps=options.steps, max_batch=top, threads=options.threads
    )
    if options.checkpoint:
        return OnnxRunner.load(options.checkpoint, onnx_options), options.checkpoint
    export_onnx(_random_student(options), workdir / "onnx", ExportOptions(steps=options.steps))
    return OnnxRunner.load(workdir / "onnx", onnx_options), RANDOM_WEIGHTS


def _device_of(runner: Any) -> str:
    if hasattr(runner, "device"):
        return str(runner.device)
    providers = getattr(runner, "providers", ["?"])
    return "cuda" if providers[0] != "CPUExecutionProvider" else "cpu"


# ---------------------------------------------------------------- inputs


def output_size(image_size: int) -> int:
    """Output frame side for a model crop side: 256 px at least (the demo face's frame)."""
    return max(256, image_size)


def _crop(avatar: PreparedAvatar | None, size: int) -> np.ndarray:
    """The avatar's image (the drawn demo face when None) as a model crop [1, 3, S, S]."""
    import cv2

    if avatar is None:
        from avatar.synthetic import make_demo_avatar

        avatar = make_demo_avatar(size=output_size(size))
    image = cv2.resize(avatar.image, (size, size), interpolation=cv2.INTER_AREA)
    x = image.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _mel_windows(spec: Any, seconds: float, n_chunks: int, seed: int) -> list[np.ndarray]:
    """The chunk schedule's mel windows [1, W·m, n_mels] over speech-like audio."""
    from avatar.models.audio_encoder import SILENCE_LOG_MEL
    from avatar.neural_audio import log_mel
    from avatar.procedural.bench import speech_like_audio

    mel = log_mel(speech_like_audio(seconds, SAMPLE_RATE, seed=seed), SAMPLE_RATE)
    m, k = spec.mel_per_frame, spec.chunk_frames
    before = (spec.audio_context_frames + spec.context_frames) * m
    total = before + (n_chunks * k + spec.lookahead_frames) * m + spec.mel_rows
    padded = np.full((total, spec.n_mels), SILENCE_LOG_MEL, np.float32)
    padded[before : before + min(len(mel), total - before)] = mel[: total - before]
    return [padded[i * k * m : i * k * m + spec.mel_rows][None] for i in range(n_chunks)]


# ---------------------------------------------------------------- measurements


def _rss_mb() -> float:
    """Peak resident set of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cuda_device(runner: Any) -> Any:
    device = getattr(runner, "device", None)
    return device if isinstance(device, torch.device) and device.type == "cuda" else None


def run_streams(runner: Any, crop: np.ndarray, n: int, seconds: float, seed: int) -> dict:
    """Time ``n`` streams batched through the runner over ``seconds`` of speech each.

    Returns:
        streams, chunks, fps_per_stream, fps_total, motion_ms_per_chunk and
        render_ms_per_chunk (medians per batched call).
    """
    spec = runner.spec
    k, c = spec.chunk_frames, spec.context_frames
    n_chunks = max(1, math.ceil(seconds * spec.fps / k))
    windows = _mel_windows(spec, seconds, n_chunks + 1, seed)
    avatars = [runner.encode_avatar(crop) for _ in range(n)]
    context = np.concatenate([np.repeat(a.source_code[:, None], c, 1) for a in avatars])
    weights = np.tile(np.array([[1.0, 1.0]], np.float32), (n, 1))
    motion, render = [], []
    for index in range(n_chunks + 1):  # chunk 0 warms up and is not timed
        noise = np.concatenate(
            [
                chunk_noise(seed + s, index, (1, k, spec.code_dim), "cpu", torch.float32).numpy()
                for s in range(n)
            ]
        )
        mel = np.repeat(windows[index], n, 0)
        t0 = time.perf_counter()
        codes = runner.motion_chunk(avatars, noise, context, mel, None, weights)
        t1 = time.perf_counter()
        frames = runner.render(avatars, codes)
        t2 = time.perf_counter()
        if frames.shape[:2] != (n, k):
            raise AvatarError(f"the runner returned frames {frames.shape}, expected ({n}, {k}, …)")
        context = np.concatenate([context, codes], 1)[:, -c:]
        if index:
            motion.append(t1 - t0)
            render.append(t2 - t1)
    wall = sum(motion) + sum(render)
    return {
        "streams": n,
        "chunks": n_chunks,
        "fps_per_stream": n_chunks * k / wall,
        "fps_total": n * n_chunks * k / wall,
        "motion_ms_per_chunk": 1000.0 * statistics.median(motion),
        "render_ms_per_chunk": 1000.0 * statistics.median(render),
    }


async def _first_chunk(scheduler: Any, avatar: PreparedAvatar, seed: int) -> dict:
    """First audio in → first speaking frame out, through the real NeuralGenerator."""
    from avatar.pipelines.neural import NeuralGenerator, NeuralOptions
    from avatar.procedural.bench import speech_like_audio

    spec = scheduler.spec
    options = NeuralOptions(fps=spec.fps, size=avatar.image.shape[0], seed=seed)
    generator = NeuralGenerator.load(avatar, options, scheduler)
    frames = aiter(generator)
    try:
        idle = await anext(frames)  # warm: idle motion runs the same calls
        if not isinstance(idle, VideoFrame):
            raise AvatarError("the neural generator did not start with an idle frame")
        audio = speech_like_audio(1.0, SAMPLE_RATE, seed=seed)
        start = time.perf_counter()
        await generator.push_audio(audio, SAMPLE_RATE)
        await generator.flush()
        while True:
            item = await anext(frames)
            if isinstance(item, VideoFrame) and item.speaking:
                first_ms = 1000.0 * (time.perf_counter() - start)
                break
        count, t0 = 1, time.perf_counter()
        while not isinstance(item := await anext(frames), EndOfSegment):
            count += 1
        wall = time.perf_counter() - t0
        return {
            "first_chunk_ms": first_ms,
            "generator_fps": (count - 1) / wall if wall > 0 and count > 1 else 0.0,
            "output_size": generator.size,
        }
    finally:
        await generator.aclose()


async def _sessions(scheduler: Any, avatar: PreparedAvatar, n: int, seconds: float, seed: int):
    """``n`` generators speaking at once on the shared scheduler: frames per stream per
    wall second, end to end (see the module doc)."""
    from avatar.pipelines.neural import NeuralGenerator, NeuralOptions
    from avatar.procedural.bench import speech_like_audio

    spec = scheduler.spec
    size = avatar.image.shape[0]
    options = [NeuralOptions(fps=spec.fps, size=size, seed=seed + i) for i in range(n)]
    gens = [NeuralGenerator.load(avatar, o, scheduler) for o in options]
    streams = [aiter(g) for g in gens]
    audio = speech_like_audio(seconds, SAMPLE_RATE, seed=seed)

    async def speak(gen: Any, frames: Any) -> int:
        await gen.push_audio(audio, SAMPLE_RATE)
        await gen.flush()
        count = 0
        while not isinstance(item := await anext(frames), EndOfSegment):
            count += isinstance(item, VideoFrame) and item.speaking
        return count

    try:
        await asyncio.gather(*[anext(f) for f in streams])  # encoded and warm: idle frames
        start = time.perf_counter()
        counts = await asyncio.gather(*[speak(g, f) for g, f in zip(gens, streams, strict=True)])
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*[g.aclose() for g in gens])
    return statistics.mean(counts) / wall


async def _session_rows(scheduler: Any, avatar: PreparedAvatar, options: Any) -> dict[int, float]:
    rows = {}
    for n in options.streams:
        rows[n] = await _sessions(scheduler, avatar, n, options.seconds, options.seed)
    return rows


def bench_neural(
    options: NeuralBenchOptions | None = None, avatar: PreparedAvatar | None = None
) -> dict[str, Any]:
    """Run the benchmark (blocking; it runs its own event loop for the generator part).

    Args:
        options: what to measure.
        avatar: the face (the drawn demo face when None); only its image is used for
            the scaling runs.

    Returns:
        ``{"config": {...}, "metrics": {...}, "scaling": [...]}``: the metrics are flat
        (for the table); ``scaling`` has one row per stream count. Add the machine and
        write it with ``runtime.cli_common.write_bench``.

    Raises:
        NeuralBenchError: unusable options.
        ModelConfigError: a CUDA device asked for where none can run.
    """
    options = options or NeuralBenchOptions()
    threads_before = torch.get_num_threads()
    if options.threads and options.runtime == "torch":
        torch.set_num_threads(options.threads)
    try:
        return _bench(options, avatar)
    finally:
        torch.set_num_threads(threads_before)


def _bench(options: NeuralBenchOptions, avatar: PreparedAvatar | None) -> dict[str, Any]:
    from avatar.models.costs import measure_costs
    from avatar.pipelines.scheduler import BatchScheduler

    threads = options.threads or torch.get_num_threads()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as tmp:
        runner, weights = build_runner(options, Path(tmp))
        cuda = _cuda_device(runner)
        if cuda is not None:
            torch.cuda.reset_peak_memory_stats(cuda)
        spec = runner.spec
        crop = _crop(avatar, spec.image_size)
        # Every model call in the scheduler's one model thread, as in a live server.
        scheduler = BatchScheduler(runner)
        try:
            if options.compile:  # every batch size the sessions can make, before timing
                scheduler.warm_up(max(options.streams))
            scaling = [
                scheduler.run_blocking(run_streams, runner, crop, n, options.seconds, options.seed)
                for n in options.streams
            ]
            if avatar is None:
                from avatar.synthetic import make_demo_avatar

                avatar = make_demo_avatar(size=output_size(spec.image_size))
            latency = asyncio.run(_first_chunk(scheduler, avatar, options.seed))
            sessions = asyncio.run(_session_rows(scheduler, avatar, options))
        finally:
            asyncio.run(scheduler.aclose())
        peak = torch.cuda.max_memory_allocated(cuda) / 2**20 if cuda is not None else _rss_mb()
        config = getattr(runner, "config", None) or runner.model.config
    costs = measure_costs(config)
    one = next((row for row in scaling if row["streams"] == 1), scaling[0])
    k = spec.chunk_frames
    metrics: dict[str, Any] = {
        "fps_per_stream": one["fps_per_stream"] if one["streams"] == 1 else float("nan"),
        "realtime_factor": one["fps_per_stream"] / spec.fps,
        "first_chunk_ms": latency["first_chunk_ms"],
        "first_chunk_audio_ms": 1000.0 * (k + spec.lookahead_frames) / spec.fps,
        "motion_ms_per_chunk": one["motion_ms_per_chunk"],
        "render_ms_per_chunk": one["render_ms_per_chunk"],
        "render_ms_per_frame": one["render_ms_per_chunk"] / k,
        "gflops_per_frame": costs.per_frame_gflops(options.steps),
        "gflops_renderer_per_frame": costs.renderer_gflops,
        "gflops_motion_per_frame": (costs.audio_gflops + options.steps * costs.dit_gflops) / k,
        "peak_memory_mb": peak,
        "generator_fps": latency["generator_fps"],
    }
    for row in scaling:
        n = row["streams"]
        row["session_fps_per_stream"] = sessions[n]
        metrics[f"fps_per_stream_x{n}"] = row["fps_per_stream"]
        metrics[f"fps_total_x{n}"] = row["fps_total"]
        metrics[f"session_fps_per_stream_x{n}"] = sessions[n]
    return {
        "config": {
            "backend": "neural",
            "size": options.size if not options.checkpoint else "checkpoint",
            "image_size": spec.image_size,
            "output_size": latency["output_size"],
            "runtime": options.runtime,
            "device": _device_of(runner),
            "steps": options.steps,
            "compile": options.compile,
            "chunk_frames": k,
            "fps": spec.fps,
            "streams": list(options.streams),
            "seconds": options.seconds,
            "weights": weights,
            "params_m": round(costs.total_params / 1e6, 3),
            "peak_memory": "torch.cuda.max_memory_allocated"
            if cuda is not None
            else "process peak RSS (ru_maxrss)",
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "metrics": metrics,
        "scaling": scaling,
    }
