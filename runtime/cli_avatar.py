"""``likeness avatar ...``, ``likeness animate`` and ``likeness bench avatar``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.cli_common import (
    check_output,
    counting_progress,
    err_console,
    handle_errors,
    out,
    print_table,
    require_file,
    state,
    write_bench,
)
from runtime.errors import InputError

if TYPE_CHECKING:
    from runtime.animation import FaceUse

avatar_app = typer.Typer(help="Faces: prepare photos, make synthetic clips.", no_args_is_help=True)


@avatar_app.command("prepare")
@handle_errors
def prepare(
    photo: Annotated[Path, typer.Argument(help="a frontal photo of one face")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Detect, align and cache a face; prints its id, face box, pose and warnings."""
    from runtime.avatar_components import prepare_from_photo

    prepared = prepare_from_photo(state.load(), require_file(photo, "photo"))
    box, pose = prepared.source_box, prepared.pose
    info = {
        "id": prepared.id,
        "face_box": [round(v, 1) for v in (box.x0, box.y0, box.x1, box.y1)] if box else None,
        "pose": {k: round(getattr(pose, k), 1) for k in ("yaw", "pitch", "roll")} if pose else None,
        "size": prepared.image.shape[0],
        "warnings": list(prepared.warnings),
    }
    if as_json:
        out.print_json(json.dumps(info))
        return
    rows = [[k, json.dumps(v)] for k, v in info.items() if k != "warnings"]
    print_table(f"avatar {prepared.id}", ["", "value"], rows)
    for warning in prepared.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)


def _animate(
    face: str,
    audio: Path | None,
    say: str | None,
    output: Path,
    landmarks: Path | None,
    use: FaceUse,
    backend: str | None = None,
) -> None:
    from runtime.animation import FacePermit, animate_to_file, speech_from_file, speech_from_text
    from runtime.avatar_components import resolve_avatar

    if (audio is None) == (say is None):
        raise InputError("give either an audio file or --say TEXT")
    settings = state.load()
    if backend is not None and backend != settings.avatar.backend:
        avatar_config = settings.avatar.model_copy(update={"backend": backend})
        settings = settings.model_copy(update={"avatar": avatar_config})
    check_output(output)
    avatar = resolve_avatar(settings, face, save=False)
    with FacePermit.ask(settings, avatar, use) as permit:  # before any speech is made
        if audio is not None:
            speech = speech_from_file(require_file(audio, "audio file"))
        else:
            speech = asyncio.run(speech_from_text(settings, say or ""))
        total = int(len(speech.pcm) / speech.sample_rate * settings.avatar.fps) + 1
        with counting_progress() as progress:
            task = progress.add_task("encoding", total=total)
            result = animate_to_file(
                settings,
                avatar,
                speech,
                output,
                landmarks,
                on_frame=lambda n: progress.update(task, completed=n),
                permit=permit,
            )
    kind = "synthetic" if avatar.synthetic else "photo"
    mark = "synthetic" if result.grant_id is None else f"grant {result.grant_id}"
    err_console.print(
        f"wrote {result.path}: {result.frames} frames, {result.duration:.2f} s "
        f"({kind} avatar {avatar.id}, rendered at {result.frames / result.render_s:.0f} fps; "
        f"every frame labelled AI-generated and watermarked: {mark})",
        markup=False,
        highlight=False,
    )
    if result.landmarks is not None:
        err_console.print(f"wrote {result.landmarks}", markup=False, highlight=False)


FACE_HELP = "a photo file, a prepared avatar id, or 'synthetic' (the drawn demo face)"
DEPLOYMENT_HELP = "the grant deployment asked for (a real face needs a grant covering it)"


@avatar_app.command("synth")
@handle_errors
def synth(
    face: Annotated[str, typer.Argument(help=FACE_HELP)],
    audio: Annotated[Path | None, typer.Argument(help="speech (any rate)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="clip .mp4")] = Path("clip.mp4"),
    say: Annotated[str | None, typer.Option(help="speak this text instead of a file")] = None,
    deployment: Annotated[str, typer.Option(help=DEPLOYMENT_HELP)] = "cli",
) -> None:
    """A synthetic talking clip for tests and training: mp4 + per-frame landmarks (.npz).

    A real person's face needs their grant for purpose "training-data" in the
    deployment (default "cli"); without one: exit 2 with the reason, nothing written.
    """
    from runtime.animation import TRAINING_DATA, FaceUse

    landmarks = output.with_suffix(".landmarks.npz")
    _animate(face, audio, say, output, landmarks, FaceUse(TRAINING_DATA, deployment), "procedural")


def animate(
    face: Annotated[str, typer.Argument(help=FACE_HELP)],
    audio: Annotated[Path | None, typer.Argument(help="speech (any rate)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="video .mp4")] = Path("out.mp4"),
    say: Annotated[str | None, typer.Option(help="speak this text instead of a file")] = None,
    backend: Annotated[
        str | None, typer.Option(help="procedural | neural (default: avatar.backend)")
    ] = None,
    deployment: Annotated[str, typer.Option(help=DEPLOYMENT_HELP)] = "cli",
) -> None:
    """Animate a face from speech into an mp4 with the audio muxed in.

    A real person's face needs their grant for purpose "offline-video" in the
    deployment (default "cli"); without one: exit 2 with the reason, nothing written.
    Every frame is labelled "AI-generated" and watermarked with the grant id (or
    "synthetic"). ``--backend neural`` needs ``avatar.checkpoint``
    (LIKENESS_AVATAR__CHECKPOINT=PATH).
    """
    from runtime.animation import OFFLINE_VIDEO, FaceUse

    if backend not in (None, "procedural", "neural"):
        raise InputError(f"unknown avatar backend {backend!r}; available: procedural, neural")
    _animate(face, audio, say, output, None, FaceUse(OFFLINE_VIDEO, deployment), backend)


def _bench_neural(
    json_path: Path | None,
    seconds: float,
    face: str,
    size: str,
    engine: str,
    device: str,
    streams: str,
    checkpoint: str,
    steps: int,
    threads: int,
    compile_: bool,
    deployment: str,
) -> None:
    """``bench avatar --backend neural``: all cores, a table per stream count, JSON."""
    from avatar.bench_neural import (
        NeuralBenchError,
        NeuralBenchOptions,
        bench_neural,
        parse_streams,
    )
    from runtime.animation import BENCHMARK, FacePermit, FaceUse
    from runtime.avatar_components import resolve_avatar
    from runtime.bench import machine_info

    try:
        counts = parse_streams(streams)
        options = NeuralBenchOptions(
            size, engine, device, counts, seconds, steps, checkpoint, compile_, threads=threads
        )
    except NeuralBenchError as err:
        raise InputError(str(err)) from None
    settings = state.load()
    avatar = None if face == "synthetic" else resolve_avatar(settings, face, save=False)
    if avatar is None:
        result = bench_neural(options, None)
    else:
        with FacePermit.ask(settings, avatar, FaceUse(BENCHMARK, deployment)):
            result = bench_neural(options, avatar)
    result = {"bench": "avatar", "machine": machine_info(), **result}
    result["config"]["face"] = face
    write_bench("avatar", result, json_path)
    rows = [
        [r["streams"], f"{r['fps_per_stream']:.1f}", f"{r['fps_total']:.1f}"]
        + [f"{r['motion_ms_per_chunk']:.1f}", f"{r['render_ms_per_chunk']:.1f}"]
        + [f"{r['session_fps_per_stream']:.1f}"]
        for r in result["scaling"]
    ]
    columns = ["streams", "fps/stream", "fps total", "motion ms/chunk", "render ms/chunk"]
    columns.append("sessions: fps/stream")
    print_table("batched streams", columns, rows)
    err_console.print(f"weights: {result['config']['weights']}", markup=False, highlight=False)


def bench_avatar(
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    backend: Annotated[str, typer.Option(help="generator")] = "procedural",
    seconds: Annotated[float, typer.Option(min=1, max=600, help="speech to render")] = 10.0,
    face: Annotated[str, typer.Option(help=FACE_HELP)] = "synthetic",
    size: Annotated[str, typer.Option(help="neural: tiny | base | large")] = "tiny",
    engine: Annotated[str, typer.Option("--runtime", help="neural: torch | onnx")] = "torch",
    device: Annotated[str, typer.Option(help="neural: auto | cpu | cuda | cuda:N")] = "auto",
    streams: Annotated[str, typer.Option(help="neural: concurrent streams")] = "1,2,4,8",
    checkpoint: Annotated[str, typer.Option(help="neural: student; empty = random")] = "",
    steps: Annotated[int, typer.Option(min=1, max=4, help="neural: student steps")] = 2,
    threads: Annotated[int, typer.Option(min=0, help="neural: CPU threads; 0 = all")] = 0,
    compile_: Annotated[
        bool, typer.Option("--compile", help="neural, torch: torch.compile (CUDA graphs)")
    ] = False,
    deployment: Annotated[str, typer.Option(help=DEPLOYMENT_HELP)] = "cli",
) -> None:
    """Procedural: one CPU core, fps, frame ms, first frame, CPU use. Neural: fps per
    stream and with 1-8 batched streams, first-chunk latency, ms per chunk, GFLOPs, memory.

    A real person's face (``--face PHOTO``) needs their grant for purpose "benchmark"
    in the deployment (default "cli"); no frame is written.
    """
    from avatar.procedural.bench import bench_procedural
    from runtime.animation import BENCHMARK, FacePermit, FaceUse, pin_to_one_core
    from runtime.avatar_components import generator_options, resolve_avatar
    from runtime.bench import machine_info

    if backend == "neural":
        options = (size, engine, device, streams, checkpoint, steps, threads, compile_)
        _bench_neural(json_path, seconds, face, *options, deployment)
        return
    if backend != "procedural":
        raise InputError(f"unknown avatar backend {backend!r}; available: procedural, neural")
    settings = state.load()
    avatar = resolve_avatar(settings, face, save=False)
    with FacePermit.ask(settings, avatar, FaceUse(BENCHMARK, deployment)):
        core = pin_to_one_core()
        options = generator_options(settings)
        metrics = bench_procedural(avatar, seconds=seconds, options=options)
    result = {
        "bench": "avatar",
        "machine": {**machine_info(), "pinned_core": core},
        "config": {"backend": backend, "size": options.size, "fps": options.fps, "face": face},
        "metrics": metrics,
    }
    write_bench("avatar", result, json_path)


def register_avatar_commands(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the top-level ``animate`` and ``bench avatar`` commands."""
    app.command("animate")(handle_errors(animate))
    bench_app.command("avatar")(handle_errors(bench_avatar))
