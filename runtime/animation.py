"""Faces on the command line: animate a face from speech into an mp4, benchmark.

The faces come from :func:`runtime.avatar_components.resolve_avatar` (``synthetic``,
a prepared avatar id, or a photo file) and the generators from the same module as a
live session's.

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
from typing import TYPE_CHECKING

import numpy as np

from avatar.export import write_landmarks, write_mp4
from avatar.procedural.generator import render_clip
from avatar.types import PreparedAvatar, VideoFrame
from runtime import components
from runtime.avatar_components import generator_options, load_avatar_engine, neural_options
from runtime.config import Settings
from runtime.errors import InputError
from runtime.label import frame_stamp
from voice.audio import read_audio
from voice.types import Timing

if TYPE_CHECKING:
    from avatar.pipelines.scheduler import ChunkEngine
    from consent.gate import ConsentGate
    from runtime.admission import ConsentUse

CLI_DEPLOYMENT = "cli"  # the grant deployment of the command line
OFFLINE_VIDEO = "offline-video"  # grant purpose: ``likeness animate``
TRAINING_DATA = "training-data"  # grant purpose: ``likeness avatar synth``
BENCHMARK = "benchmark"  # grant purpose: ``likeness bench avatar --face PHOTO``


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
        self,
        gate: ConsentGate | None = None,
        consent: ConsentUse | None = None,
        use: FaceUse | None = None,
        epoch: int = 0,
    ) -> None:
        self._gate = gate  # None for the synthetic face
        self._consent = consent  # checked and allowed; None for the synthetic face
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
        from runtime.admission import ConsentUse

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


async def _neural_clip(
    settings: Settings, avatar: PreparedAvatar, speech: Speech, engine: ChunkEngine
) -> list[VideoFrame]:
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
