"""Faces on the command line: prepare a photo, animate it from speech, benchmark.

An avatar reference is one of: ``synthetic`` (the demo face drawn by code), the
id of a prepared avatar in the store, or a photo file (prepared on the fly and
stored). The consent gate for photos arrives with the consent milestone; until
then these commands only work on files the operator already has.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar.export import write_landmarks, write_mp4
from avatar.face import FaceAnalyzer, FaceOptions, read_image
from avatar.face.prepare import prepare_photo
from avatar.procedural.generator import ProceduralOptions, render_clip
from avatar.store import AvatarStore
from avatar.synthetic import make_demo_avatar
from avatar.types import PreparedAvatar
from runtime import components
from runtime.config import Settings
from runtime.errors import ConfigError, InputError
from voice.audio import read_audio
from voice.types import Timing

SYNTHETIC_REF = "synthetic"


def face_options(settings: Settings) -> FaceOptions:
    a = settings.avatar
    return FaceOptions(
        max_side=a.max_side,
        min_face_px=a.min_face_px,
        multiple=a.multiple_faces,
        max_abs_yaw_deg=a.max_abs_yaw_deg,
        backend=a.landmarks,
    )


def generator_options(settings: Settings) -> ProceduralOptions:
    a = settings.avatar
    return ProceduralOptions(fps=a.fps, size=a.size, sway=a.sway)


def neural_options(settings: Settings) -> Any:  # -> avatar.pipelines.neural.NeuralOptions
    """The neural generator's options from ``[avatar]`` (model sizes come from the model)."""
    from avatar.pipelines.neural import NeuralOptions

    a = settings.avatar
    return NeuralOptions(
        fps=a.fps,
        size=a.size,
        seed=a.seed,
        audio_weight=a.audio_weight,
        identity_weight=a.identity_weight,
    )


def load_avatar_engine(settings: Settings, sessions: int | None = None) -> Any:
    """The shared neural model of a process (a BatchScheduler; None for the procedural
    backend).

    Loads ``avatar.checkpoint`` with ``avatar.runtime`` on ``avatar.device`` and wraps it
    in the batch scheduler every session shares. With ``avatar.compile`` every batch
    size up to ``sessions`` (default ``server.max_sessions``) is compiled here, so no
    session waits for a compile. Blocking (seconds for big models, longer when
    compiling): call it once at start-up, in a worker thread from async code;
    ``await engine.aclose()`` at shutdown.

    Raises:
        ConfigError: no checkpoint given, or one that cannot be used (the message names
            ``avatar.checkpoint`` and why), or options that do not fit the model.
    """
    a = settings.avatar
    if a.backend != "neural":
        return None
    if not a.checkpoint:
        raise ConfigError(
            "avatar.backend = 'neural' needs avatar.checkpoint: a save_pretrained folder or "
            ".safetensors file of a trained generator (LIKENESS_AVATAR__CHECKPOINT=PATH)"
        )
    from avatar.errors import AvatarError
    from avatar.errors import ModelNotFoundError as AvatarModelNotFoundError
    from avatar.models.errors import CheckpointError, ModelConfigError
    from avatar.pipelines.runner import load_runner
    from avatar.pipelines.scheduler import BatchScheduler

    path = Path(a.checkpoint).expanduser()
    options: dict[str, Any] = {"steps": a.steps, "device": a.device}
    if a.compile:
        if a.runtime != "torch":
            raise ConfigError("avatar.compile = true needs avatar.runtime = 'torch'")
        options["compile"] = True
    try:
        runner = load_runner(a.runtime, path, **options)
        if abs(runner.spec.fps - a.fps) > 1e-6:
            raise ModelConfigError(f"the model makes {runner.spec.fps:g} fps video, not {a.fps:g}")
    except (AvatarModelNotFoundError, CheckpointError, ModelConfigError) as err:
        raise ConfigError(f"avatar.checkpoint={str(path)!r} cannot be used: {err}") from None
    except AvatarError as err:
        raise ConfigError(f"avatar.runtime={a.runtime!r} cannot run {path}: {err}") from None
    except Exception as err:  # from torch.compile: its cache folder, its compiler
        if not a.compile:
            raise
        raise _compile_failed(err) from err
    scheduler = BatchScheduler(runner)
    if a.compile:  # compile now, for every batch the sessions can make, not mid-session
        try:
            scheduler.warm_up(sessions or settings.server.max_sessions)
        except Exception as err:
            asyncio.run(scheduler.aclose())
            raise _compile_failed(err) from err
    return scheduler


def _compile_failed(err: Exception) -> ConfigError:
    return ConfigError(
        f"avatar.compile = true, but compiling the model failed: {err!s:.500}; set "
        "avatar.compile = false, or give torch.compile what it needs (a writable "
        "TORCHINDUCTOR_CACHE_DIR; on the CPU, a C++ compiler)"
    )


def avatar_generator(settings: Settings, avatar: PreparedAvatar, engine: Any = None) -> Any:
    """A generator for one session, chosen by ``avatar.backend``.

    Args:
        settings: the effective config.
        avatar: the consent-approved (or synthetic) face.
        engine: for the neural backend, the shared model from :func:`load_avatar_engine`.

    Returns:
        An :class:`avatar.base.AvatarGenerator` (procedural or neural).

    Raises:
        ConfigError: the neural backend without an engine.
        ImageInputError: the avatar cannot be animated.
    """
    if settings.avatar.backend != "neural":
        from avatar.procedural.generator import ProceduralGenerator

        return ProceduralGenerator.load(avatar, generator_options(settings))
    if engine is None:
        raise ConfigError("avatar.backend = 'neural' but no neural model was loaded")
    from avatar.pipelines.neural import NeuralGenerator

    return NeuralGenerator.load(avatar, neural_options(settings), engine)


def store(settings: Settings) -> AvatarStore:
    return AvatarStore(settings.avatars_dir)


def prepare_from_photo(settings: Settings, photo: Path) -> PreparedAvatar:
    """Detect, align and store the face of ``photo``; returns the prepared avatar."""
    analyzer = FaceAnalyzer.load(face_options(settings))
    prepared = prepare_photo(read_image(photo), analyzer, size=settings.avatar.size)
    store(settings).save(prepared)
    return prepared


def resolve_avatar(settings: Settings, ref: str) -> PreparedAvatar:
    """``synthetic``, a stored avatar id, or a photo file (see module doc)."""
    if ref == SYNTHETIC_REF:
        return make_demo_avatar(size=settings.avatar.size)
    path = Path(ref).expanduser()
    if path.is_file():
        return prepare_from_photo(settings, path)
    if ref in store(settings):
        return store(settings).load(ref)
    raise InputError(f"{ref}: not a photo file, a prepared avatar id, or '{SYNTHETIC_REF}'")


@dataclass(frozen=True, slots=True, eq=False)
class Speech:
    """Mono float32 speech with its rate and (optional) phoneme timings from t=0."""

    pcm: np.ndarray
    sample_rate: int
    timings: tuple[Timing, ...] = ()


def speech_from_file(path: Path) -> Speech:
    audio = read_audio(path, sample_rate=None)
    return Speech(audio.pcm, audio.sample_rate)


async def speech_from_text(settings: Settings, text: str) -> Speech:
    """Speak ``text`` with the configured TTS, keeping its timings on one clock."""
    tts = await components.load_tts(settings)
    pieces: list[np.ndarray] = []
    timings: list[Timing] = []
    offset = 0.0
    async for chunk in tts.synthesize(text):
        pieces.append(chunk.pcm)
        timings += [
            Timing(t.symbol, t.kind, t.start + offset, t.end + offset) for t in chunk.timings
        ]
        offset += chunk.duration
    if not pieces:
        raise InputError("nothing to say: the text has no words")
    return Speech(np.concatenate(pieces), tts.sample_rate, tuple(timings))


@dataclass(frozen=True, slots=True)
class ClipResult:
    path: Path
    frames: int
    duration: float
    render_s: float
    landmarks: Path | None


def animate_to_file(
    settings: Settings,
    avatar: PreparedAvatar,
    speech: Speech,
    output: Path,
    landmarks: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> ClipResult:
    """Render the whole utterance and write an mp4 with the audio muxed in."""
    options = generator_options(settings)
    timings = list(speech.timings) or None
    if settings.avatar.backend == "neural":
        engine = load_avatar_engine(settings, sessions=1)
        started = time.perf_counter()
        frames = asyncio.run(_neural_clip(settings, avatar, speech, engine))
    else:
        started = time.perf_counter()
        frames = render_clip(avatar, speech.pcm, speech.sample_rate, timings, options)
    render_s = time.perf_counter() - started
    write_mp4(output, frames, options.fps, speech.pcm, speech.sample_rate, on_frame=on_frame)
    if landmarks is not None:
        write_landmarks(landmarks, frames, options.fps)
    return ClipResult(output, len(frames), len(frames) / options.fps, render_s, landmarks)


async def _neural_clip(settings: Settings, avatar: PreparedAvatar, speech: Speech, engine: Any):
    from avatar.pipelines.neural import generate_clip

    try:
        timings = list(speech.timings) or None
        options = neural_options(settings)
        return await generate_clip(avatar, speech.pcm, speech.sample_rate, timings, options, engine)
    finally:
        await engine.aclose()


def pin_to_one_core() -> int:
    """Restrict this process (and its thread pools) to one CPU core; returns the core."""
    import cv2

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return core
