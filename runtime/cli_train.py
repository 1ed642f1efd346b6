"""``likeness train ...``: training data for the neural generator.

``train synth-corpus OUT`` writes synthetic talking clips (the procedural generator
speaking eSpeak NG sentences); ``train preprocess SRC OUT`` turns a folder of
talking-head videos into shards (face crops, 16 kHz log-mel rows) and can be rerun to
resume. Both show a progress bar on stderr and print a one-line summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.cli_common import err_console, handle_errors
from runtime.errors import InputError

train_app = typer.Typer(
    help="Training data: synthetic clips, video preprocessing into shards.",
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
