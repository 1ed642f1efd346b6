"""One model call for the chunks of all live sessions that are due together.

Every :class:`~avatar.pipelines.neural.NeuralGenerator` of a process hands its chunks to
one :class:`BatchScheduler`. Requests that arrive while the model is busy, or within
``gather_s`` of the first one, are stacked on the batch dimension and run as **one**
``motion_chunk`` and **one** ``render`` call (at most ``runner.max_batch`` rows each),
in the scheduler's single worker thread, so the event loop never waits on a model and
the runner (not thread-safe) only ever sees one call at a time::

    scheduler = BatchScheduler(TorchRunner.load(path))
    gen_a = NeuralGenerator.load(avatar_a, options, scheduler)   # sessions share it
    gen_b = NeuralGenerator.load(avatar_b, options, scheduler)
    ...
    await scheduler.aclose()                                     # after the generators

Rows never mix: each session's noise, context and audio are its own, so a chunk is the
same batched or alone, to float rounding.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from avatar.errors import GeneratorError
from avatar.pipelines.runner import EncodedAvatar, Runner, RunnerSpec


@dataclass(frozen=True, slots=True, eq=False)
class ChunkRequest:
    """One session's next chunk (batch 1 arrays, shapes as ``Runner.motion_chunk``).

    Attributes:
        avatar: the session's encoded avatar.
        noise: float32 [1, K, D].
        context: float32 [1, C, D].
        mel: float32 [1, W·m, n_mels].
        visemes: int64 [1, W] or None.
        weights: float32 [1, 2] say weights (audio, identity).
    """

    avatar: EncodedAvatar
    noise: np.ndarray
    context: np.ndarray
    mel: np.ndarray
    visemes: np.ndarray | None
    weights: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class ChunkResult:
    """A chunk's motion codes float32 [1, K, D] and its crops uint8 [K, S, S, 3]."""

    codes: np.ndarray
    crops: np.ndarray
    batch_rows: int
    motion_ms: float
    render_ms: float


@dataclass(slots=True)
class SchedulerStats:
    """What the scheduler did: batches (one motion + one render call each), rows, time."""

    batches: int = 0
    rows: int = 0
    max_rows: int = 0
    motion_ms: float = 0.0
    render_ms: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # rows per batch -> count


@runtime_checkable
class ChunkEngine(Protocol):
    """What the sessions of a process share to have their chunks made: this module's
    :class:`BatchScheduler` (the model in this process), or the client of a remote pool
    (:class:`avatar.pipelines.ray_engine.RayEngine`). ``NeuralGenerator.load`` takes
    either as a shared engine and wraps anything else (a runner) in a scheduler of its
    own."""

    spec: RunnerSpec

    def warm_up(self, max_rows: int | None = None) -> list[int]: ...

    async def encode(self, key: str, crop: np.ndarray) -> EncodedAvatar: ...

    def release(self, key: str) -> None: ...

    async def chunk(self, request: ChunkRequest) -> ChunkResult: ...

    async def aclose(self) -> None: ...


class BatchScheduler:
    """Gathers due chunks of all sessions into batched runner calls (see the module doc).

    Args:
        runner: the model runner every session shares.
        gather_s: how long the first request of an idle scheduler waits for others
            (requests that queue while a batch runs join the next batch anyway).
    """

    def __init__(self, runner: Runner, gather_s: float = 0.002) -> None:
        if not 0.0 <= gather_s <= 0.5:
            raise ValueError(f"BatchScheduler.gather_s={gather_s} is outside 0..0.5 s")
        self.runner = runner
        self.spec = runner.spec
        self.gather_s = gather_s
        self.stats = SchedulerStats()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="likeness-neural")
        self._pending: list[tuple[ChunkRequest, asyncio.Future]] = []
        self._drain: asyncio.Task | None = None
        self._encoded: dict[str, tuple[EncodedAvatar, int]] = {}  # key -> (avatar, users)
        self._closed = False

    async def call(self, func, *args):
        """Run ``func(*args)`` in the model thread (for one-off work such as warm-up)."""
        if self._closed:
            raise GeneratorError("the neural scheduler is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    def run_blocking(self, func, *args):
        """Blocking: ``func(*args)`` in the model thread, where the sessions' calls run
        (CUDA graph trees are kept per thread). Not from the event loop's thread."""
        if self._closed:
            raise GeneratorError("the neural scheduler is closed")
        return self._pool.submit(func, *args).result()

    def warm_up(self, max_rows: int | None = None) -> list[int]:
        """Blocking: the runner's ``warm_up`` (compiles, CUDA graph captures) in the model
        thread. Call it before any session starts, e.g. at start-up in a worker thread.

        Returns:
            The batch sizes run ([] for a runner without ``warm_up``).
        """
        warm_up = getattr(self.runner, "warm_up", None)
        return [] if warm_up is None else self.run_blocking(warm_up, max_rows)

    async def encode(self, key: str, crop: np.ndarray) -> EncodedAvatar:
        """The encoded avatar for ``key`` (encoded once while any session uses it).

        Pair every call with :meth:`release` when the session ends.
        """
        held = self._encoded.get(key)
        if held is None:
            avatar = await self.call(self.runner.encode_avatar, crop)
            held = self._encoded.get(key) or (avatar, 0)
        self._encoded[key] = (held[0], held[1] + 1)
        return held[0]

    def release(self, key: str) -> None:
        """A session is done with ``key``'s avatar; the last one frees it."""
        held = self._encoded.get(key)
        if held is None:
            return
        if held[1] > 1:
            self._encoded[key] = (held[0], held[1] - 1)
            return
        del self._encoded[key]
        forget = getattr(self.runner, "forget", None)
        if forget is not None and not self._closed:
            self._pool.submit(forget, held[0])  # in the model thread, like every runner call

    @property
    def encoded_avatars(self) -> int:
        """How many encoded avatars are held (for tests and metrics)."""
        return len(self._encoded)

    async def chunk(self, request: ChunkRequest) -> ChunkResult:
        """Run one chunk, batched with whatever other sessions have due now.

        Raises:
            GeneratorError: the runner failed (the message says how); the other rows of
                the batch get the same error.
        """
        if self._closed:
            raise GeneratorError("the neural scheduler is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((request, future))
        drain = self._drain
        if drain is None or drain.done() or drain.get_loop() is not loop:
            self._drain = loop.create_task(self._run_pending(), name="neural-batches")
        return await asyncio.shield(future)

    async def _run_pending(self) -> None:
        loop = asyncio.get_running_loop()
        if self.gather_s > 0:
            await asyncio.sleep(self.gather_s)
        while self._pending:
            batch = self._take_batch()
            try:
                results = await loop.run_in_executor(self._pool, self._run_batch, batch)
            except Exception as err:
                error = GeneratorError(f"neural generator: batch of {len(batch)} failed: {err}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _take_batch(self) -> list[tuple[ChunkRequest, asyncio.Future]]:
        """The oldest requests that fit one call (same viseme use, at most max_batch)."""
        first = self._pending[0][0]
        with_visemes = first.visemes is not None
        batch, rest = [], []
        for item in self._pending:
            fits = (item[0].visemes is not None) == with_visemes
            if fits and len(batch) < self.runner.max_batch and not item[1].cancelled():
                batch.append(item)
            elif not item[1].cancelled():
                rest.append(item)
        self._pending = rest
        return batch

    def _run_batch(self, batch: list[tuple[ChunkRequest, asyncio.Future]]) -> list[ChunkResult]:
        """Worker thread: one motion_chunk and one render call for every row."""
        reqs = [r for r, _ in batch]
        avatars = [r.avatar for r in reqs]
        started = time.perf_counter()
        codes = self.runner.motion_chunk(
            avatars,
            np.concatenate([r.noise for r in reqs]),
            np.concatenate([r.context for r in reqs]),
            np.concatenate([r.mel for r in reqs]),
            None if reqs[0].visemes is None else np.concatenate([r.visemes for r in reqs]),
            np.concatenate([r.weights for r in reqs]),
        )
        moved = time.perf_counter()
        crops = self.runner.render(avatars, codes)
        done = time.perf_counter()
        motion_ms, render_ms = 1000 * (moved - started), 1000 * (done - moved)
        s = self.stats
        s.batches += 1
        s.rows += len(reqs)
        s.max_rows = max(s.max_rows, len(reqs))
        s.motion_ms += motion_ms
        s.render_ms += render_ms
        s.sizes[len(reqs)] = s.sizes.get(len(reqs), 0) + 1
        return [
            ChunkResult(codes[i : i + 1], crops[i], len(reqs), motion_ms, render_ms)
            for i in range(len(reqs))
        ]

    async def aclose(self) -> None:
        """Stop: pending chunks fail, the worker thread ends after its current call."""
        self._closed = True
        for _, future in self._pending:
            if not future.done():
                future.set_exception(GeneratorError("the neural scheduler was closed"))
        self._pending.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
