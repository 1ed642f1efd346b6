"""The neural generator: the dual-branch model behind the avatar contract, streaming.

It implements :class:`avatar.base.AvatarGenerator` exactly as the procedural generator
does (same clock, segments, ``flush``, ``clear_buffer``, idle frames, underrun), with
the neural model doing the drawing::

    runner = TorchRunner.load("checkpoints/student")          # or an OnnxRunner
    scheduler = BatchScheduler(runner)                          # shared by all sessions
    gen = NeuralGenerator.load(prepared_avatar, NeuralOptions(size=512), scheduler)
    await gen.push_audio(pcm, 22050)                            # any rate, any piece size
    await gen.flush()
    async for item in gen: ...                                  # VideoFrame / EndOfSegment
    await gen.aclose()

How a frame is made: the avatar's face crop (framed as the training crops were,
:mod:`avatar.pipelines.framing`) is encoded once per avatar (appearance cached while a
session uses it). Speech is resampled to 16 kHz and turned into log-mel rows as it
arrives (:mod:`avatar.pipelines.mel_segment`); each chunk of ``K`` frames (8 = 320 ms at
25 fps) runs once its audio plus the look-ahead has arrived: one motion-branch call
(the sampler's steps inside), one renderer call, batched with the other sessions' due
chunks (:class:`~avatar.pipelines.scheduler.BatchScheduler`), then the crops are pasted
back into the avatar's frame with the feathered paste-back, in order, each frame ready
to show as soon as it is pasted (the first frame of a chunk does not wait for the other
seven; ~2 ms each at 512 px). Model calls run in the scheduler's worker thread and the
paste-back in a thread: the event loop never waits.

Motion stays continuous: a chunk's context is the codes of the ``C`` frames before it on
screen, also after ``clear_buffer`` (the barge-in cut keeps what was shown) and between
turns, where idle frames come from the motion branch with silent audio (the face keeps
breathing and moving a little). Within a segment the chunks are exactly those of
:func:`avatar.samplers.generate_motion` on the segment's 16 kHz log-mel with
``seed=segment_seed(options.seed, segment_id)`` and the on-screen context.

Quality: what the faces look like depends entirely on the checkpoint. An untrained or
tiny model produces blurry, meaningless faces; the tests prove the machinery (clock,
batching, barge-in, parity), not the look. ``mouth_open`` is 0 and ``landmarks`` None:
the neural model has no 68-point landmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from avatar.errors import GeneratorError
from avatar.models.audio_encoder import SILENCE_LOG_MEL
from avatar.models.errors import ModelConfigError
from avatar.pipelines.framing import FaceFraming
from avatar.pipelines.mel_segment import NeuralSegment
from avatar.pipelines.runner import EncodedAvatar, Runner
from avatar.pipelines.scheduler import BatchScheduler, ChunkEngine, ChunkRequest, ChunkResult
from avatar.samplers.chunks import chunk_noise
from avatar.streaming import SegmentedGenerator, check_avatar, check_ranges
from avatar.types import EndOfSegment, PreparedAvatar, TimingLike, VideoFrame


@dataclass(frozen=True, slots=True)
class NeuralOptions:
    """How the neural generator animates (the model's own sizes come from the runner).

    Attributes:
        fps: frames per second; must equal the model's fps (25 for every size).
        size: side of the square output frames in pixels (the avatar is resized to it).
        seed: noise seed; segments and idle motion derive theirs from it.
        audio_weight: say weight of the audio on the motion (1 plain, >1 stronger).
        identity_weight: say weight of the photo on the motion.
        visemes: also feed viseme ids from the pushed phoneme timings (only for models
            trained with them).
        underrun_timeout: seconds to wait for more audio of an unflushed segment before
            counting the missing audio as silence.
        crop_scale: the model crop's side as a multiple of the landmarks' extent (as in
            training's ``PreprocessOptions.crop_scale``).
        crop_shift: the crop centre's vertical move, a fraction of the side.
        feather_px: soft edge of the paste-back in model-crop pixels (None: S / 16).
    """

    fps: float = 25.0
    size: int = 512
    seed: int = 0
    audio_weight: float = 1.0
    identity_weight: float = 1.0
    visemes: bool = False
    underrun_timeout: float = 1.0
    crop_scale: float = 1.8
    crop_shift: float = -0.08
    feather_px: float | None = None

    def __post_init__(self) -> None:
        checks = (
            ("fps", 1.0 <= self.fps <= 120.0, "1..120"),
            ("size", 64 <= self.size <= 2048, "64..2048"),
            ("seed", self.seed >= 0, ">= 0"),
            ("audio_weight", 0.0 <= self.audio_weight <= 10.0, "0..10"),
            ("identity_weight", 0.0 <= self.identity_weight <= 10.0, "0..10"),
            ("underrun_timeout", 0.0 < self.underrun_timeout <= 30.0, "0..30 s"),
            ("crop_scale", 1.0 <= self.crop_scale <= 4.0, "1..4"),
            ("crop_shift", -0.5 <= self.crop_shift <= 0.5, "-0.5..0.5"),
            ("feather_px", self.feather_px is None or self.feather_px >= 0, ">= 0 or None"),
        )
        check_ranges(self, checks)


def stream_seed(seed: int, what: str) -> int:
    """A seed derived from the generator's ``seed`` for one stream of chunks."""
    digest = hashlib.sha256(f"likeness.neural:{seed}:{what}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def segment_seed(seed: int, segment_id: int) -> int:
    """The noise seed of speech segment ``segment_id`` (its chunk ``i`` uses
    ``chunk_noise(segment_seed(...), i, ...)``)."""
    return stream_seed(seed, f"speech:{segment_id}")


@dataclass(slots=True)
class _Job:
    """A chunk being made (model call + paste-back)."""

    task: asyncio.Future
    epoch: int
    segment: NeuralSegment | None  # None: idle
    chunk: int  # the segment's chunk index (idle: the idle chunk counter)
    first_index: int  # generator index of the chunk's first frame


@dataclass(slots=True)
class _Ready:
    """A made frame: its motion code, and its image once pasted back."""

    image: asyncio.Future  # -> uint8 [size, size, 3]
    index: int
    code: np.ndarray  # [D]
    segment: NeuralSegment | None


class _PasteBack:
    """A chunk's crops pasted back into the avatar's frame in a worker thread, in order;
    ``images[k]`` resolves as soon as frame ``k`` is pasted."""

    def __init__(self, framing: FaceFraming, crops: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        self.images = [loop.create_future() for _ in range(len(crops))]

        def work() -> None:  # only this thread resolves the futures
            for future, crop in zip(self.images, crops, strict=True):
                try:
                    image = framing.paste(crop)
                except Exception as exc:  # raised when the frame is taken
                    loop.call_soon_threadsafe(future.set_exception, exc)
                else:
                    loop.call_soon_threadsafe(future.set_result, image)

        self.done = loop.run_in_executor(None, work)


class NeuralGenerator(SegmentedGenerator[NeuralSegment]):
    """Streams frames of one avatar for one session (see :mod:`avatar.base` and the
    module doc). Build it with :meth:`load`; push audio, flush, iterate; ``aclose()``.
    ``push_audio``, ``flush`` and ``clear_buffer`` come from
    :class:`~avatar.streaming.SegmentedGenerator`.

    Attributes:
        name: "neural".
        fps: frames per second.
        size: output side in pixels.
        scheduler: the batch scheduler (shared with other sessions, or its own).
    """

    name = "neural"
    options: NeuralOptions

    def __init__(
        self,
        framing: FaceFraming,
        scheduler: ChunkEngine,
        options: NeuralOptions,
        key: str,
        owns_scheduler: bool = False,
    ) -> None:
        """Keep ready parts; most callers want :meth:`load`."""
        super().__init__(options)
        self.framing = framing
        self.scheduler = scheduler
        self.spec = scheduler.spec
        self._key = key
        self._owns_scheduler = owns_scheduler
        self._weights = np.array([[options.audio_weight, options.identity_weight]], np.float32)
        self._idle_seed = stream_seed(options.seed, "idle")
        self._idle_chunks = 0
        self._avatar: EncodedAvatar | None = None
        self._encoding: asyncio.Future | None = None
        self._shown: np.ndarray | None = None  # codes [1, C, D] of the last C frames shown
        self._ready: deque[_Ready] = deque()
        self._job: _Job | None = None
        self._pasting: set[asyncio.Future] = set()  # paste-back threads still running

    @classmethod
    def load(
        cls,
        avatar: PreparedAvatar,
        options: NeuralOptions | None = None,
        runner: Runner | ChunkEngine | None = None,
    ) -> NeuralGenerator:
        """Frame ``avatar`` for the model (cheap); its appearance is encoded at the first
        frame, in the model thread, and cached while any session uses it.

        Args:
            avatar: the consent-approved prepared avatar.
            options: output size, seed, say weights...
            runner: a shared :class:`~avatar.pipelines.scheduler.ChunkEngine` (a
                :class:`BatchScheduler` batching across sessions, or a remote pool's
                client), or a runner (this generator then has its own scheduler, closed
                by ``aclose``).

        Raises:
            ImageInputError: the avatar's image or landmarks cannot be used.
            ModelConfigError: options that do not fit the model (fps), or no runner.
        """
        options = options or NeuralOptions()
        if runner is None:
            raise ModelConfigError("NeuralGenerator.load needs a runner or a BatchScheduler")
        check_avatar(avatar)
        owns = not isinstance(runner, ChunkEngine)
        scheduler = BatchScheduler(runner) if owns else runner
        spec = scheduler.spec
        if abs(spec.fps - options.fps) > 1e-6:
            raise ModelConfigError(
                f"NeuralOptions.fps={options.fps} but the model makes {spec.fps} fps video; "
                f"set avatar.fps = {spec.fps:g}"
            )
        framing = FaceFraming.create(
            avatar,
            options.size,
            spec.image_size,
            options.crop_scale,
            options.crop_shift,
            options.feather_px,
        )
        key = f"{avatar.id}|{options.size}|{options.crop_scale}|{options.crop_shift}"
        return cls(framing, scheduler, options, key, owns)

    def _new_segment(self, segment_id: int) -> NeuralSegment:
        seed = segment_seed(self.options.seed, segment_id)
        return NeuralSegment(segment_id, seed, self.spec, self.options.visemes)

    def _speech_takes_over(self) -> None:
        """Speech takes over from idle at the next slot: idle frames made ahead go."""
        self._ready = deque(r for r in self._ready if r.segment is not None)

    def _drop_queued(self) -> None:
        """Forget queued speech and the frames made ahead (the motion goes on from the
        frames already shown: no jump)."""
        super()._drop_queued()
        self._ready.clear()

    @property
    def _starved_wait(self) -> float:
        """Seconds to wait for audio again once a segment has run dry (one chunk)."""
        return self.spec.chunk_frames / self.fps

    async def aclose(self) -> None:
        """Stop: iteration ends, queued audio is dropped; waits for a chunk being made."""
        if self._closed:
            return
        self._shut()
        pending = [f for f in (self._job and self._job.task, self._encoding) if f is not None]
        pending += self._pasting
        if pending:
            await asyncio.wait(pending)
        encoding = self._encoding
        if encoding is not None and not encoding.cancelled() and encoding.exception() is None:
            self.scheduler.release(self._key)  # once per generator that encoded
        self._avatar = None
        if self._owns_scheduler:
            await self.scheduler.aclose()

    # ---------------------------------------------------------------- output

    def __aiter__(self) -> NeuralGenerator:
        return self

    async def __anext__(self) -> VideoFrame | EndOfSegment:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._ends:
                return self._ends.popleft()
            if self._job is not None and self._job.task.done():
                await self._collect()
                continue
            if self._ready:
                self._prefetch()
                head = self._ready[0].image
                if not head.done():  # still being pasted back (shielded: it stays booked)
                    await asyncio.wait([head])
                    continue  # clear_buffer or speech may have dropped it meanwhile
                return self._take()
            if self._avatar is None:
                await self._encode()
                continue
            if self._job is None:
                if self._segments:
                    seg = self._segments[0]
                    if seg.finished():
                        return self._pop_finished(seg)
                    if seg.start_index < 0:
                        seg.start_index = self._index
                        seg.context = self._shown.copy()
                    if not seg.chunk_ready():
                        await self._wait_for_audio(seg)
                        continue
                    self._job = self._start_speech(seg)
                else:
                    self._job = self._start_idle()
            await self._collect()

    async def _encode(self) -> None:
        if self._encoding is None:
            self._encoding = asyncio.ensure_future(
                self.scheduler.encode(self._key, self.framing.model_input)
            )
        try:
            avatar = await asyncio.shield(self._encoding)
        except Exception as err:
            self._encoding = None
            raise GeneratorError(f"neural: encoding the avatar failed: {err}") from err
        if self._avatar is None and not self._closed:
            self._avatar = avatar
            c = self.spec.context_frames
            self._shown = np.repeat(avatar.source_code[:, None], c, axis=1).astype(np.float32)

    async def _collect(self) -> None:
        """Wait for the job (shielded: a cancelled caller keeps it) and book its frames."""
        job = self._job
        assert job is not None
        try:
            result, pastes = await asyncio.shield(job.task)
        except Exception as err:
            self._job = None
            raise GeneratorError(f"neural: chunk {job.chunk} failed: {err}") from err
        self._job = None
        if self._closed or job.epoch != self._epoch:
            return  # cut by clear_buffer (or closed) meanwhile
        seg = job.segment
        if seg is not None:
            seg.advance(result.codes)
        elif self._segments:
            return  # idle, but speech arrived meanwhile: it takes the slots
        for k, image in enumerate(pastes.images):
            self._ready.append(_Ready(image, job.first_index + k, result.codes[0, k], seg))

    def _take(self) -> VideoFrame:
        item = self._ready.popleft()
        try:
            image = item.image.result()
        except Exception as err:
            raise GeneratorError(f"neural: pasting frame {item.index} back failed: {err}") from err
        assert self._shown is not None
        c = self.spec.context_frames
        self._shown = np.concatenate([self._shown, item.code[None, None]], axis=1)[:, -c:]
        self._index = item.index + 1
        pts = item.index / self.fps
        if item.segment is None:
            return VideoFrame(image, pts, item.index)
        item.segment.done += 1
        return VideoFrame(image, pts, item.index, None, 0.0, True, item.segment.id)

    def _prefetch(self) -> None:
        """Start the playing segment's next chunk while its frames are still being taken."""
        if self._job is not None or not self._segments or self._avatar is None:
            return
        seg = self._segments[0]
        if seg.start_index >= 0 and seg.context is not None and seg.chunk_ready():
            self._job = self._start_speech(seg)

    def _start_speech(self, seg: NeuralSegment) -> _Job:
        i = seg.next_chunk
        mel, visemes = seg.window(i)
        assert seg.context is not None
        noise = self._noise(seg.seed, i)
        request = self._request(noise, seg.context, mel, visemes)
        first = seg.start_index + i * self.spec.chunk_frames
        task = asyncio.ensure_future(self._make(request, seg.chunk_frames(i)))
        return _Job(task, self._epoch, seg, i, first)

    def _start_idle(self) -> _Job:
        s = self.spec
        i = self._idle_chunks
        self._idle_chunks += 1
        mel = np.full((1, s.mel_rows, s.n_mels), SILENCE_LOG_MEL, np.float32)
        visemes = np.zeros((1, s.window_frames), np.int64) if self.options.visemes else None
        assert self._shown is not None
        request = self._request(self._noise(self._idle_seed, i), self._shown, mel, visemes)
        task = asyncio.ensure_future(self._make(request, s.chunk_frames))
        return _Job(task, self._epoch, None, i, self._index)

    def _noise(self, seed: int, index: int) -> np.ndarray:
        shape = (1, self.spec.chunk_frames, self.spec.code_dim)
        return chunk_noise(seed, index, shape, "cpu", torch.float32).numpy()

    def _request(self, noise, context, mel, visemes) -> ChunkRequest:
        assert self._avatar is not None
        ctx = np.ascontiguousarray(context, np.float32)
        return ChunkRequest(self._avatar, noise, ctx, mel, visemes, self._weights)

    async def _make(self, request: ChunkRequest, n: int) -> tuple[ChunkResult, _PasteBack]:
        result = await self.scheduler.chunk(request)
        pastes = _PasteBack(self.framing, result.crops[:n])
        self._pasting.add(pastes.done)
        pastes.done.add_done_callback(self._pasting.discard)
        return result, pastes


async def generate_clip(
    avatar: PreparedAvatar,
    pcm: np.ndarray,
    sample_rate: int,
    timings: Sequence[TimingLike] | None,
    options: NeuralOptions,
    runner: Runner | ChunkEngine,
) -> list[VideoFrame]:
    """Animate a whole utterance offline: ``ceil(duration · fps)`` speaking frames.

    The same streaming path as a live session (one segment, pushed at once), so a clip
    shows exactly what a session would. Frame ``i`` has ``pts = i / fps``.

    Raises:
        ImageInputError, ModelConfigError: from :meth:`NeuralGenerator.load`.
        GeneratorError: the model failed.
    """
    gen = NeuralGenerator.load(avatar, options, runner)
    frames: list[VideoFrame] = []
    try:
        await gen.push_audio(pcm, sample_rate, timings)
        await gen.flush()
        async for item in gen:
            if isinstance(item, EndOfSegment):
                break
            frames.append(item)
    finally:
        await gen.aclose()
    return frames
