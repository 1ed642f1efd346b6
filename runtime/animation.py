"""Faces on the command line: prepare a photo, animate it from speech, benchmark.

An avatar reference is one of: ``synthetic`` (the demo face drawn by code), the
id of a prepared avatar in the store, or a photo file (prepared on the fly).

A real person's face is rendered only with their consent, asked of the same gate
as live sessions (``consent.gate.ConsentGate.check``, audited): :meth:`FacePermit.ask`
before any work, for a :class:`FaceUse` (deployment ``cli``, purpose
``offline-video``, ``training-data`` or ``benchmark``). A refusal is an
:class:`~runtime.errors.InputError` with the gate's reason (exit 2) and nothing is
written. Every frame written to a file carries what a session's frames carry
(:func:`frame_stamp`): the visible "AI-generated" label and the invisible watermark
of the grant id, or "synthetic" for the demo face, which needs no grant.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avatar.export import write_landmarks, write_mp4
from avatar.face import FaceAnalyzer, FaceOptions, read_image
from avatar.face.prepare import prepare_photo
from avatar.procedural.generator import ProceduralOptions, render_clip
from avatar.store import AvatarStore
from avatar.synthetic import make_demo_avatar
from avatar.types import PreparedAvatar
from consent.watermark import Watermark
from consent.watermark_key import WatermarkKey, key_dir
from runtime import components
from runtime.config import Settings
from runtime.errors import ConfigError, InputError
from runtime.label import AiLabel, FrameStamp
from voice.audio import read_audio
from voice.types import Timing

if TYPE_CHECKING:
    from avatar.pipelines.neural import NeuralOptions

SYNTHETIC_REF = "synthetic"
CLI_DEPLOYMENT = "cli"  # the grant deployment of the command line
OFFLINE_VIDEO = "offline-video"  # grant purpose: ``likeness animate``
TRAINING_DATA = "training-data"  # grant purpose: ``likeness avatar synth``
BENCHMARK = "benchmark"  # grant purpose: ``likeness bench avatar --face PHOTO``


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


def neural_options(settings: Settings) -> NeuralOptions:
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


def prepare_from_photo(settings: Settings, photo: Path, save: bool = True) -> PreparedAvatar:
    """Detect and align the face of ``photo`` (and store it, with ``save``)."""
    analyzer = FaceAnalyzer.load(face_options(settings))
    prepared = prepare_photo(read_image(photo), analyzer, size=settings.avatar.size)
    if save:
        store(settings).save(prepared)
    return prepared


def resolve_avatar(settings: Settings, ref: str, save: bool = True) -> PreparedAvatar:
    """``synthetic``, a stored avatar id, or a photo file (see module doc).

    A photo is prepared on the fly and, with ``save``, stored under its id. The
    consent-gated commands pass ``save=False``: a refused face leaves nothing behind.
    """
    if ref == SYNTHETIC_REF:
        return make_demo_avatar(size=settings.avatar.size)
    path = Path(ref).expanduser()
    if path.is_file():
        return prepare_from_photo(settings, path, save)
    if ref in store(settings):
        return store(settings).load(ref)
    raise InputError(f"{ref}: not a photo file, a prepared avatar id, or '{SYNTHETIC_REF}'")


@dataclass(frozen=True, slots=True)
class FaceUse:
    """What an offline render of a face is for: the scope its grant must cover.

    Attributes:
        purpose: the purpose asked for (``offline-video``, ``training-data``, ``benchmark``).
        deployment: the deployment asked for; ``cli`` on the command line.
    """

    purpose: str = OFFLINE_VIDEO
    deployment: str = CLI_DEPLOYMENT


class FacePermit:
    """The consent gate's leave to render one face offline, held while rendering.

    Get it with :meth:`ask` before any work; call :meth:`confirm` right before the
    frames are written (it asks again when a revoke or an expiry may have ended the
    permission, as a live session does) and mark the frames with the grant id it
    returns; :meth:`close` at the end (or use it as a context manager). A synthetic
    face gets a permit without asking: no grant, frames marked "synthetic".
    """

    def __init__(
        self, gate: Any = None, consent: Any = None, use: FaceUse | None = None, epoch: int = 0
    ) -> None:
        self._gate = gate  # consent.gate.ConsentGate; None for the synthetic face
        self._consent = consent  # runtime.session.ConsentUse, checked and allowed
        self.use = use or FaceUse()
        self.avatar_id: str | None = None if consent is None else consent.avatar_id
        self._epoch = epoch  # the revocation epoch seen at the last check
        self.use_id = f"cli-{uuid.uuid4().hex[:12]}"  # names the use in the audit log

    @classmethod
    def ask(cls, settings: Settings, avatar: PreparedAvatar, use: FaceUse) -> FacePermit:
        """Ask the consent gate whether ``avatar`` may be rendered for ``use`` (audited).

        Blocking (opens the consent store). As for a session's offer, a registered
        deployment must also list the face (``consent.portal.deployment_allows``).

        Raises:
            InputError: refused; the message is the gate's reason in plain words.
        """
        if avatar.synthetic:
            return cls(use=use)
        from consent.portal import deployment_allows
        from runtime.session import ConsentUse

        gate = components.consent_gate(settings)
        try:
            epoch = gate.epoch()
            consent = ConsentUse(gate, avatar.id, use.deployment, use.purpose)
            decision = consent.check()
            if not decision.allowed:
                raise InputError(f"no permission to use this face: {decision.reason}")
            if deployment_allows(gate.store, use.deployment, avatar.id) is False:
                raise InputError(f"deployment {use.deployment!r} is not set up to show this face")
            permit = cls(gate, consent, use, epoch)
            gate.record_use(
                "use_start", avatar_id=avatar.id, deployment=use.deployment, session=permit.use_id
            )
        except BaseException:
            gate.store.close()
            raise
        return permit

    @property
    def grant_id(self) -> str | None:
        """The grant the face is rendered under; None for the synthetic face."""
        return None if self._consent is None else self._consent.grant_id

    def covers(self, avatar: PreparedAvatar) -> bool:
        """True when this permit is for ``avatar`` (a synthetic permit: the synthetic face)."""
        return avatar.synthetic if self.avatar_id is None else avatar.id == self.avatar_id

    def confirm(self) -> str | None:
        """Check that the permission still holds; returns the grant id to mark frames with.

        Asks the gate again (audited) only when the revocation epoch moved or the
        grant expired since the last check; it may then answer with another grant.

        Raises:
            InputError: the permission ended; write nothing.
            ValueError: the permit was closed already.
        """
        if self._consent is None:
            return None  # the synthetic face
        if self._gate is None:
            raise ValueError("this permit was closed; ask the gate again")
        epoch = self._gate.epoch()
        if epoch != self._epoch or time.time() >= self._consent.expires_at:
            self._epoch = epoch
            decision = self._consent.check()
            if not decision.allowed:
                raise InputError(f"no permission to use this face any more: {decision.reason}")
        return self.grant_id

    def close(self) -> None:
        """Audit the end of the use and close the consent store; safe to call twice."""
        gate, self._gate = self._gate, None
        if gate is None:
            return
        try:
            gate.record_use(
                "use_end",
                avatar_id=self._consent.avatar_id,
                deployment=self.use.deployment,
                session=self.use_id,
            )
        finally:
            gate.store.close()

    def __enter__(self) -> FacePermit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_stamp(settings: Settings, grant_id: str | None, size: int) -> FrameStamp:
    """Both marks a session puts on every frame, for ``size``-square frames: the visible
    "AI-generated" label, then (with ``consent.watermark``) the invisible watermark of
    ``grant_id`` (None: "synthetic"). Blocking: reads or creates the data dir's
    watermark key (~5 ms)."""
    watermark = None
    if settings.consent.watermark:
        key = WatermarkKey.load(key_dir(settings.data_dir))
        watermark = Watermark.make(key, grant_id, size)
    return FrameStamp(AiLabel(size), watermark)


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
    """A written clip.

    Attributes:
        path: the mp4.
        frames: frames written.
        duration: seconds of video.
        render_s: seconds spent rendering (not encoding).
        landmarks: the per-frame landmarks file, if asked for.
        grant_id: the grant every frame's watermark names; None: "synthetic".
    """

    path: Path
    frames: int
    duration: float
    render_s: float
    landmarks: Path | None
    grant_id: str | None = None


def animate_to_file(
    settings: Settings,
    avatar: PreparedAvatar,
    speech: Speech,
    output: Path,
    landmarks: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
    permit: FacePermit | None = None,
) -> ClipResult:
    """Render the whole utterance and write an mp4 with the audio muxed in.

    Args:
        permit: the consent gate's leave for ``avatar`` (:meth:`FacePermit.ask`; the
            caller closes it); None asks for the default use, ``offline-video`` in ``cli``.

    The permission is confirmed before writing, and every frame carries the label and
    the watermark of its grant (or "synthetic").

    Raises:
        InputError: the consent gate refused (its reason in the message); no file
            is written.
        ValueError: ``permit`` is for another face.
    """
    owned = permit is None
    permit = permit or FacePermit.ask(settings, avatar, FaceUse())
    try:
        if not permit.covers(avatar):
            raise ValueError(f"the permit is for avatar {permit.avatar_id}, not {avatar.id}")
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
        grant_id = permit.confirm()
        size = frames[0].image.shape[0] if frames else settings.avatar.size
        stamp = frame_stamp(settings, grant_id, size)
        marked = (replace(frame, image=stamp.apply(frame.image)) for frame in frames)
        write_mp4(output, marked, options.fps, speech.pcm, speech.sample_rate, on_frame=on_frame)
        if landmarks is not None:
            write_landmarks(landmarks, frames, options.fps)
    finally:
        if owned:
            permit.close()
    n = len(frames)
    return ClipResult(output, n, n / options.fps, render_s, landmarks, grant_id)


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
