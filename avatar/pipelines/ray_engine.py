"""A session node's client of the Ray Serve generator pool: the engine behind
``avatar.engine = "ray"``.

It stands where the local :class:`~avatar.pipelines.scheduler.BatchScheduler` stands:
every :class:`~avatar.pipelines.neural.NeuralGenerator` of the node hands it its
chunks, and it sends each one to the pool (:mod:`avatar.deploy.ray_serve`) through a
``DeploymentHandle``, where the chunks of all nodes' sessions are batched together::

    connect_ray("auto")
    engine = RayEngine.connect(PoolOptions(checkpoint="ckpt/student"), deploy=True)
    gen = NeuralGenerator.load(avatar, NeuralOptions(), engine)     # as with a scheduler
    ...
    await engine.aclose()                                           # the pool goes on

Everything per session (audio, segments, the clock, noise seeds, the paste-back) stays
on the node, so a chunk is the same row the local engine would compute: the frames
match the local engine's to float rounding.

A face is encoded on the pool, not here: :meth:`encode` puts the face crop in Ray's
object store once and asks a replica for the face's source motion code; the
:class:`~avatar.pipelines.runner.EncodedAvatar` it returns is a stand-in (only
``source_code`` is real) that this engine maps back to the face. Every chunk request
carries the crop's reference, so any replica can encode the face when it needs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from avatar.deploy.ray_serve import (
    FaceSource,
    PoolOptions,
    RemoteChunk,
    RemoteResult,
    face_id,
    pool_handle,
)
from avatar.errors import GeneratorError
from avatar.pipelines.runner import EncodedAvatar, RunnerSpec
from avatar.pipelines.scheduler import ChunkRequest, ChunkResult

RUNNER_NAME = "ray"


@dataclass(slots=True)
class RayStats:
    """What this node's chunks met on the pool (a node sees its own chunks only).

    Attributes:
        chunks: chunks answered.
        max_rows: the most rows of a model call one of them ran in.
        sizes: chunks per the rows of the model call they ran in (rows -> count): the
            batch sizes reached, all faces and nodes together.
        serve_sizes: chunks per the size of their ``@serve.batch`` call (Serve splits
            its batches by face, see :mod:`avatar.deploy.ray_serve`).
        model_ms: time in the model (motion + render) of those calls, summed per chunk.
        call_ms: round trip of the handle calls, summed; ``call_ms - model_ms`` is what
            the pool adds per chunk (transfer, routing, the batch wait).
        replicas: the replicas that answered.
    """

    chunks: int = 0
    max_rows: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    serve_sizes: dict[int, int] = field(default_factory=dict)
    model_ms: float = 0.0
    call_ms: float = 0.0
    replicas: set[str] = field(default_factory=set)

    @property
    def overhead_ms(self) -> float:
        """Mean time per chunk outside the model (0 before any chunk)."""
        return (self.call_ms - self.model_ms) / self.chunks if self.chunks else 0.0


@dataclass(slots=True, eq=False)
class _Held:
    """A face this node uses: its pool id, its crop reference, its stand-in, its users."""

    face: str
    source: FaceSource
    stub: asyncio.Future  # -> EncodedAvatar (the stand-in)
    users: int = 0


class RayEngine:
    """Sends chunks to the Ray Serve pool (see the module doc). Build it with
    :meth:`connect`; share it between the node's sessions; ``await aclose()`` at
    shutdown (the pool keeps running for the other nodes).

    A :class:`~avatar.pipelines.scheduler.ChunkEngine`, as the local
    ``BatchScheduler`` is, so ``NeuralGenerator.load`` takes it as a shared engine; it
    runs no model and no thread here.

    Attributes:
        handle: the pool's ``DeploymentHandle``.
        spec: the model's static sizes (from a replica).
        call_timeout_s: a chunk that takes longer fails (retryable), so a lost pool
            cannot stall a session.
        stats: batch sizes and times seen by this node's chunks.
    """

    def __init__(self, handle: Any, spec: RunnerSpec, call_timeout_s: float = 10.0) -> None:
        """Keep a handle (cheap); most callers want :meth:`connect`."""
        self.handle = handle
        self.spec = spec
        self.call_timeout_s = call_timeout_s
        self.stats = RayStats()
        self._faces: dict[str, _Held] = {}
        self._keys: dict[int, str] = {}  # id(stand-in) -> face key
        self._drops: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    def connect(
        cls,
        options: PoolOptions,
        deploy: bool = False,
        wait_s: float = 120.0,
        call_timeout_s: float = 10.0,
    ) -> RayEngine:
        """The pool's client: attach to the running pool (deploy it first with
        ``deploy`` when it is not running) and read the model's spec. Blocking, not
        from an event loop's thread; join the cluster first
        (:func:`avatar.deploy.ray_serve.connect_ray`).

        Raises:
            GeneratorError: the pool is not running or failed to deploy, or its
                replica did not answer within ``wait_s``.
        """
        handle = pool_handle(options, deploy, wait_s)
        try:
            spec = handle.spec.remote().result(timeout_s=wait_s)
        except Exception as err:
            raise GeneratorError(
                f"the generator pool {options.app!r} did not answer: {err!s:.300}",
                retryable=True,
            ) from None
        return cls(handle, spec, call_timeout_s)

    # ------------------------------------------------------------- the engine calls

    async def call(self, func, *args):
        """Not available: this engine runs no model in this process."""
        raise GeneratorError("the Ray engine runs no model here: its model is on the pool")

    def run_blocking(self, func, *args):
        """Not available: this engine runs no model in this process."""
        raise GeneratorError("the Ray engine runs no model here: its model is on the pool")

    def warm_up(self, max_rows: int | None = None) -> list[int]:
        """Blocking: the batch sizes a replica ran at its start (replicas warm
        themselves before Serve routes to them; ``max_rows`` is the pool's
        ``max_batch_size``, set at deploy time)."""
        return list(self.handle.warmed_sizes.remote().result(timeout_s=self.call_timeout_s))

    async def encode(self, key: str, crop: np.ndarray) -> EncodedAvatar:
        """The stand-in for ``key``'s face, encoded on the pool once while any session of
        this node uses it. Pair every call with :meth:`release`.

        Raises:
            GeneratorError: the pool failed or timed out.
        """
        if self._closed:
            raise GeneratorError("the Ray engine is closed")
        held = self._faces.get(key)
        if held is None:
            source = FaceSource(ray.put(np.ascontiguousarray(crop, np.float32)))
            future = asyncio.ensure_future(self._encode_remote(key, face_id(key), source))
            held = self._faces[key] = _Held(face_id(key), source, future)
        held.users += 1
        try:
            return await asyncio.shield(held.stub)
        except BaseException:
            held.users -= 1
            if held.users <= 0 and self._faces.get(key) is held:
                del self._faces[key]  # the next session tries again
            raise

    async def _encode_remote(self, key: str, face: str, source: FaceSource) -> EncodedAvatar:
        code = await self._call("encode", face, source)
        stub = EncodedAvatar((), None, None, np.asarray(code, np.float32), RUNNER_NAME)
        self._keys[id(stub)] = key
        return stub

    def release(self, key: str) -> None:
        """A session is done with ``key``'s face; after the last one, the replica that
        holds it forgets it (others let it go by LRU, and cannot re-encode it: the
        crop's reference goes with it)."""
        held = self._faces.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users > 0:
            return
        del self._faces[key]
        stub = held.stub
        if stub.done() and not stub.cancelled() and stub.exception() is None:
            self._keys.pop(id(stub.result()), None)
        if not self._closed:
            task = asyncio.ensure_future(self._drop(held.face))
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    async def _drop(self, face: str) -> None:
        with contextlib.suppress(GeneratorError):  # best effort: LRU lets it go anyway
            await self._call("drop", face)

    @property
    def encoded_avatars(self) -> int:
        """How many faces this node holds on the pool (for tests and metrics)."""
        return len(self._faces)

    async def chunk(self, request: ChunkRequest) -> ChunkResult:
        """Run one chunk on the pool, batched there with the due chunks of every node.

        Raises:
            GeneratorError: an avatar this engine did not encode (or already released),
                or the pool failed or timed out (``retryable``).
        """
        key = self._keys.get(id(request.avatar))
        held = None if key is None else self._faces.get(key)
        if held is None:
            raise GeneratorError("the Ray engine got an avatar it did not encode (or released)")
        r = request
        remote = RemoteChunk(held.source, r.noise, r.context, r.mel, r.visemes, r.weights)
        started = time.perf_counter()
        out: RemoteResult = await self._call("chunk", held.face, remote)
        self._count(out, 1000 * (time.perf_counter() - started))
        return out.result

    def _count(self, out: RemoteResult, call_ms: float) -> None:
        s, rows, n = self.stats, out.result.batch_rows, out.serve_batch
        s.chunks += 1
        s.max_rows = max(s.max_rows, rows)
        s.sizes[rows] = s.sizes.get(rows, 0) + 1
        s.serve_sizes[n] = s.serve_sizes.get(n, 0) + 1
        s.model_ms += out.result.motion_ms + out.result.render_ms
        s.call_ms += call_ms
        s.replicas.add(out.replica)

    async def replica_stats(self) -> dict[str, Any]:
        """The stats of the replica this call reaches (with one replica: the pool's)."""
        return await self._call("stats", None)

    async def _call(self, method: str, face: str | None, *args: Any) -> Any:
        """One handle call with the timeout, every failure as a GeneratorError."""
        if self._closed:
            raise GeneratorError("the Ray engine is closed")
        handle = self.handle if face is None else self.handle.options(multiplexed_model_id=face)
        response = getattr(handle, method).remote(*args)
        try:
            return await asyncio.wait_for(_awaited(response), self.call_timeout_s)
        except TimeoutError:
            response.cancel()
            raise GeneratorError(
                f"the generator pool did not answer {method} within {self.call_timeout_s:g} s",
                retryable=True,
            ) from None
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as err:  # raised in the replica, a replica died, back-pressure
            raise _pool_error(method, err) from None

    async def aclose(self) -> None:
        """Stop: later calls fail; waits briefly for the faces' drops. The pool, Serve
        and the Ray connection stay (other nodes use them)."""
        if self._closed:
            return
        drops = list(self._drops)
        if drops:
            await asyncio.wait(drops, timeout=self.call_timeout_s)
        self._closed = True
        self._faces.clear()
        self._keys.clear()


async def _awaited(response: Any) -> Any:
    return await response


def _pool_error(method: str, err: Exception) -> GeneratorError:
    """A failed handle call as a GeneratorError: an error raised in the replica comes
    back wrapped with Serve's traceback (``RayTaskError``), so its cause says what
    went wrong; anything else (a replica that died, Serve refusing) may pass on retry."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, GeneratorError):
        return GeneratorError(f"generator pool: {cause}", retryable=cause.retryable)
    what = cause if isinstance(cause, Exception) else err
    return GeneratorError(
        f"generator pool: {method} failed: {type(what).__name__}: {what!s:.300}",
        retryable=True,
    )
