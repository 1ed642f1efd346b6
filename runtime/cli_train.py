"""``likeness train ...``: training data and training of the neural generator.

``train synth-corpus OUT`` writes synthetic talking clips (the procedural generator
speaking eSpeak NG sentences); ``train preprocess SRC OUT`` turns a folder of
talking-head videos into shards (face crops, 16 kHz log-mel rows) and can be rerun to
resume. ``train renderer | motion | distill SHARDS RUN`` run the three training stages
(``docs/training.md``); rerun one with the same RUN to resume it, Ctrl-C saves. All
show a progress bar on stderr and print a one-line summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.cli_common import err_console, handle_errors
from runtime.errors import InputError

if TYPE_CHECKING:
    from avatar.train.loop import LoopOptions

train_app = typer.Typer(
    help="Training: synthetic clips, preprocessing into shards, the three training stages.",
    no_args_is_help=True,
)

# eSpeak NG voices and settings the synthetic corpus cycles through. Names as
# espeak_SetVoiceByName finds them (the voice file's name: "en-gb" alone is not found).
_VOICES = ("en-us", "en-gb-scotland", "en-us+f3", "en-gb-x-gbclan+f2", "en-us+m3", "en-gb-x-rp")


def espeak_speaker() -> Callable[[str, int], Any]:
    """A ``speak(text, variant)`` for :func:`avatar.train.synthetic.make_synthetic_corpus`
    built on eSpeak NG; ``variant`` picks the voice, speed and pitch.

    Raises:
        voice.errors.BackendUnavailableError: eSpeak NG is not installed.
    """
    from avatar.train.synthetic import SpokenText
    from voice.tts.espeak import EspeakOptions, EspeakTTS
    from voice.types import Timing

    voices: dict[tuple, EspeakTTS] = {}

    def speak(text: str, variant: int) -> SpokenText:
        options = EspeakOptions(
            voice=_VOICES[variant % len(_VOICES)],
            words_per_minute=140 + (variant // 7) % 50,
            pitch=35 + (variant // 11) % 30,
        )
        key = (options.voice, options.words_per_minute, options.pitch)
        if key not in voices:
            voices[key] = EspeakTTS.load(options)
        tts = voices[key]

        async def collect():
            return [chunk async for chunk in tts.synthesize(text)]

        chunks = asyncio.run(collect())
        pieces, timings, offset = [], [], 0.0
        for chunk in chunks:
            pieces.append(chunk.pcm)
            timings += [
                Timing(t.symbol, t.kind, t.start + offset, t.end + offset) for t in chunk.timings
            ]
            offset += chunk.duration
        pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return SpokenText(pcm, tts.sample_rate, tuple(timings))

    return speak


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def _say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False)


@train_app.command("synth-corpus")
@handle_errors
def synth_corpus(
    out: Annotated[Path, typer.Argument(help="folder for the clips (created)")],
    clips: Annotated[int, typer.Option("--clips", min=1, max=100_000, help="how many")] = 10,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.5, max=600, help="length of each clip")
    ] = 8.0,
    size: Annotated[int, typer.Option(min=64, max=2048, help="frame height, px (even)")] = 256,
    seed: Annotated[int, typer.Option(help="faces, sentences, voices and drift")] = 0,
    crf: Annotated[
        int,
        typer.Option(
            min=0, max=51, help="H.264 quality: 0 lossless (the same clips on every machine)"
        ),
    ] = 0,
) -> None:
    """Synthetic talking clips (mp4 + landmarks + JSON) for tests and demos; existing
    clips are kept, so a rerun finishes an interrupted one."""
    from avatar.train.synthetic import make_synthetic_corpus

    if size % 2:
        raise InputError(f"--size {size} must be even (H.264 needs even frame sizes)")
    speak = espeak_speaker()
    with _progress() as progress:
        task = progress.add_task("synthetic clips", total=clips)
        written = make_synthetic_corpus(
            out,
            clips,
            seconds,
            size,
            seed,
            speak,
            on_clip=lambda done, _: progress.update(task, completed=done),
            crf=crf,
        )
    frames = sum(c.frames for c in written)
    _say(f"wrote {len(written)} synthetic clips ({frames} frames at 25 fps) to {out}")


@train_app.command("preprocess")
@handle_errors
def preprocess_videos(
    src: Annotated[Path, typer.Argument(help="videos: SRC/*.mp4 or SRC/id*/VIDEO/*.mp4")],
    out: Annotated[Path, typer.Argument(help="output folder; rerun with it to resume")],
    size: Annotated[str, typer.Option(help="crop size: tiny (64), base (256), large (512)")] = (
        "base"
    ),
    shard_frames: Annotated[int, typer.Option(min=1, max=100_000, help="frames per shard")] = 250,
    detect_stride: Annotated[
        int, typer.Option(min=1, max=250, help="detect the face every N frames")
    ] = 5,
) -> None:
    """Face crops at 25 fps, 16 kHz log-mel rows and landmarks, in shards; resumable."""
    from avatar.train.data import PreprocessError, PreprocessOptions, preprocess

    try:
        options = PreprocessOptions.preset(
            size, shard_frames=shard_frames, detect_stride=detect_stride
        )
    except PreprocessError as err:
        raise InputError(str(err)) from None
    with _progress() as progress:
        videos = progress.add_task("videos", total=None)
        frames = progress.add_task("frames", total=None)

        def on_progress(event) -> None:
            progress.update(videos, total=event.videos, completed=event.index)
            label = {"track": "finding faces", "crop": "writing shards"}.get(event.stage)
            if label:
                progress.update(
                    frames, description=label, total=event.total, completed=event.frames
                )
            else:
                progress.update(videos, completed=event.index + 1)

        try:
            report = preprocess(src, out, options, on_progress=on_progress)
        except PreprocessError as err:
            raise InputError(str(err)) from None
    for key, reason in report.skipped.items():
        _say(f"skipped {key}: {reason}")
    rate = report.frames / report.seconds if report.seconds > 0 else 0.0
    _say(
        f"{len(report.processed)} video(s) processed ({len(report.skipped)} skipped), "
        f"{len(report.resumed)} already done; {report.frames} frames in {report.shards} "
        f"shards ({rate:.0f} frames/s); manifest: {out / 'manifest.json'}"
    )


# ---------------------------------------------------------------- training stages

_Steps = Annotated[int, typer.Option("--steps", min=1, help="train until this many steps")]
_Lr = Annotated[float, typer.Option("--lr", min=0.0, help="peak learning rate")]
_Seed = Annotated[int, typer.Option(help="initial weights and every random draw")]
_Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1")]
_Budget = Annotated[
    float | None, typer.Option("--time-budget", min=1.0, help="stop (and save) after seconds")
]
_Heldout = Annotated[
    Path | None, typer.Option("--heldout", help="preprocessed held-out videos for validation")
]
_Threads = Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads")]
_Workers = Annotated[int, typer.Option("--workers", min=0, help="data-loading processes")]
_Every = Annotated[int, typer.Option("--checkpoint-every", min=0, help="steps between saves")]


def _loop(
    steps: int,
    lr: float,
    seed: int,
    device: str,
    time_budget: float | None,
    threads: int | None,
    workers: int,
    checkpoint_every: int,
) -> LoopOptions:
    from avatar.train.loop import LoopOptions

    return LoopOptions(
        max_steps=steps,
        lr=lr,
        warmup_steps=min(100, steps // 10),
        seed=seed,
        device=device,
        time_budget_s=time_budget,
        cpu_threads=threads,
        num_workers=workers,
        checkpoint_every=checkpoint_every,
        log_every=max(1, min(50, steps // 20)),
    )


def _run_stage(name: str, steps: int, start: Callable[[Callable], Any]) -> None:
    """Run a stage with a progress bar; map its errors and print how it ended."""
    from avatar.models.errors import CheckpointError, ModelConfigError
    from avatar.train.data import PreprocessError
    from avatar.train.loop import TrainError

    with _progress() as progress:
        task = progress.add_task(f"training {name}", total=steps)

        def on_step(info) -> None:
            loss = info.scalars.get("loss")
            label = f"training {name}" + (f" (loss {loss:.4f})" if loss is not None else "")
            progress.update(task, completed=info.step, description=label)

        try:
            result = start(on_step)
        except (TrainError, PreprocessError, CheckpointError, ModelConfigError) as err:
            raise InputError(str(err)) from None
    evals = ", ".join(f"{k} {v:.4g}" for k, v in result.last_eval.items())
    ending = {
        "finished": "finished",
        "interrupted": "interrupted (Ctrl-C), saved",
        "time_budget": "stopped by the time budget, saved",
    }[result.status]
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    _say(
        f"{name}: {ending} at step {result.step}{resumed} in {result.seconds:.0f} s"
        + (f"; validation: {evals}" if evals else "")
        + f"; model: {result.model_path}; scalars: {result.run_dir / 'scalars.jsonl'}"
    )
    if result.status != "finished":
        _say("run the same command again to resume (raise --steps to train further)")
    if result.status == "interrupted":
        raise typer.Exit(130)


@train_app.command("renderer")
@handle_errors
def train_renderer_command(
    shards: Annotated[Path, typer.Argument(help="preprocessed training videos")],
    run: Annotated[Path, typer.Argument(help="run folder; rerun with it to resume")],
    size: Annotated[str, typer.Option(help="tiny (64 px), base (256), large (512)")] = "base",
    batch: Annotated[int, typer.Option(min=1, help="frame pairs per step")] = 8,
    steps: _Steps = 20_000,
    lr: _Lr = 2e-4,
    seed: _Seed = 0,
    device: _Device = "cpu",
    time_budget: _Budget = None,
    heldout: _Heldout = None,
    threads: _Threads = None,
    workers: _Workers = 0,
    checkpoint_every: _Every = 1000,
) -> None:
    """Stage 1: appearance encoder, motion encoder and renderer, self-supervised from
    pairs of frames of the same video; resumable, Ctrl-C saves."""
    from avatar.train.loop import TrainError
    from avatar.train.stage1 import RendererTrainOptions, train_renderer, training_config

    try:
        config = training_config(size)
    except TrainError as err:
        raise InputError(str(err)) from None
    loop = _loop(steps, lr, seed, device, time_budget, threads, workers, checkpoint_every)
    options = RendererTrainOptions(batch_size=batch)
    _run_stage(
        "renderer",
        steps,
        lambda on_step: train_renderer(
            shards,
            run,
            config=config,
            options=options,
            loop=loop,
            heldout=heldout,
            on_step=on_step,
        ),  # fmt: skip
    )


@train_app.command("motion")
@handle_errors
def train_motion_command(
    shards: Annotated[Path, typer.Argument(help="preprocessed training videos")],
    run: Annotated[Path, typer.Argument(help="run folder; rerun with it to resume")],
    renderer: Annotated[Path, typer.Option(help="the stage-1 model (RUN/model)")],
    batch: Annotated[int, typer.Option(min=1, help="chunks per step")] = 32,
    steps: _Steps = 20_000,
    lr: _Lr = 2e-4,
    seed: _Seed = 0,
    device: _Device = "cpu",
    time_budget: _Budget = None,
    heldout: _Heldout = None,
    threads: _Threads = None,
    checkpoint_every: _Every = 1000,
) -> None:
    """Stage 2: the audio encoder and motion transformer (flow matching on the stage-1
    motion codes, with condition dropout for the say weights)."""
    from avatar.train.stage2 import MotionTrainOptions, train_motion

    loop = _loop(steps, lr, seed, device, time_budget, threads, 0, checkpoint_every)
    options = MotionTrainOptions(batch_size=batch)
    _run_stage(
        "motion",
        steps,
        lambda on_step: train_motion(
            shards,
            run,
            renderer=renderer,
            options=options,
            loop=loop,
            heldout=heldout,
            on_step=on_step,
        ),  # fmt: skip
    )


@train_app.command("distill")
@handle_errors
def train_distill_command(
    shards: Annotated[Path, typer.Argument(help="preprocessed training videos")],
    run: Annotated[Path, typer.Argument(help="run folder; rerun with it to resume")],
    teacher: Annotated[Path, typer.Option(help="the stage-2 model (RUN/model)")],
    student_steps: Annotated[int, typer.Option(min=1, max=4, help="the student's steps")] = 2,
    teacher_steps: Annotated[int, typer.Option(min=1, help="the teacher's steps")] = 25,
    pool: Annotated[int, typer.Option(min=1, help="chunks per teacher pool")] = 1024,
    batch: Annotated[int, typer.Option(min=1, help="chunks per step")] = 32,
    steps: _Steps = 5_000,
    lr: _Lr = 1e-4,
    seed: _Seed = 0,
    device: _Device = "cpu",
    time_budget: _Budget = None,
    heldout: _Heldout = None,
    threads: _Threads = None,
    checkpoint_every: _Every = 1000,
) -> None:
    """Stage 3: distil the guided many-step teacher into a few-step student that takes
    the say weights as input."""
    from avatar.train.loop import TrainError
    from avatar.train.stage3 import DistillOptions, distill

    try:
        options = DistillOptions(
            batch_size=batch,
            student_steps=student_steps,
            teacher_steps=teacher_steps,
            pool_size=max(pool, batch),
        )
    except TrainError as err:
        raise InputError(str(err)) from None
    loop = _loop(steps, lr, seed, device, time_budget, threads, 0, checkpoint_every)
    _run_stage(
        "distill",
        steps,
        lambda on_step: distill(
            shards,
            run,
            teacher=teacher,
            options=options,
            loop=loop,
            heldout=heldout,
            on_step=on_step,
        ),  # fmt: skip
    )
