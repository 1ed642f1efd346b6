"""The neural generator as a Ray Serve deployment: one GPU pool for every session node.

Session nodes (``likeness serve``) keep everything per session (audio, segments, the
clock, the paste-back) and send each chunk's model work to a pool of replicas through a
``DeploymentHandle`` (:mod:`avatar.pipelines.ray_engine` is that client)::

    connect_ray("auto")                                  # join the cluster (ray start --head)
    handle = pool_handle(PoolOptions(checkpoint="ckpt/student"), deploy=True)
    spec = handle.spec.remote().result()

What a replica does, and why:

- **Loads and warms the model at start**, exactly as the local engine does
  (:func:`avatar.pipelines.runner.load_runner`, then ``warm_up`` for every batch size
  up to ``max_batch_size``), in its constructor: Serve routes nothing to a replica
  before its constructor has returned, so no session waits for a load or a compile.
- **Batches the chunks of all sessions in the cluster** with ``@serve.batch``: the
  chunks that reach a replica within ``batch_wait_timeout_s`` (at most
  ``max_batch_size``) become one ``motion_chunk`` and one ``render`` call, through the
  same :class:`~avatar.pipelines.scheduler.BatchScheduler` a single process uses (its
  one model thread, its row stacking and statistics), so the batched computation is
  written once. Serve 2.60 splits every gathered batch by ``multiplexed_model_id``
  (``ray/serve/batching.py``, ``_split_batch_by_model_id``: it assumes one model per
  batch) and runs the parts concurrently; here a "model" is a face, and rows of other
  faces can share a call, so the scheduler behind it joins the parts (they reach it
  within its 2 ms gather) into one model call again. Serve hands a replica at most
  ``max_ongoing_requests`` requests at a time, so that must be at least
  ``max_batch_size`` (Serve's default of 5 would cap every batch at 5):
  :class:`PoolOptions` refuses less.
- **Keeps each face's appearance encoding** with model multiplexing: the face id (a
  hash of the session node's face key, so Ray's logs carry no avatar ids) is the
  ``multiplexed_model_id``, and Serve routes a face's chunks to a replica that already
  holds it. Serve's loader only receives the id, so every request also carries a
  :class:`FaceSource`: a reference to the face crop in Ray's object store, put there
  once by the session node. A replica that does not hold the face (a new replica,
  one that evicted it, a face routed elsewhere under load) fetches the crop and
  encodes it before the chunk runs: no error, no round trip back to the node. The
  crop lives as long as its node holds the reference; once the node has let go (its
  last session of that face ended, or the node died) a replica that needs the face
  answers with a :class:`~avatar.errors.GeneratorError` that says so.
- **Answers per chunk, not per frame.** A chunk's frames are made by one ``render``
  call for every row of the batch at once (one set of kernel launches for ``B·K``
  frames): all ``K`` frames exist at the same moment, so a per-frame stream would only
  split the transfer, and the engine interface hands a session whole chunks anyway
  (the node's paste-back then releases the frames one by one). Rendering frame by
  frame would cost ``K`` times the launches for an earlier first frame.

An untrained or tiny checkpoint makes meaningless faces: the pool only moves tensors.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import ray
from ray import serve

from avatar.errors import GeneratorError
from avatar.models.errors import ModelConfigError
from avatar.pipelines.runner import EncodedAvatar, RunnerSpec, load_runner
from avatar.pipelines.scheduler import BatchScheduler, ChunkRequest, ChunkResult
from avatar.streaming import check_ranges

DEPLOYMENT = "generator"
# Faces whose encodings one replica keeps (least recently used go first). A tiny
# model's encoding is kilobytes; a 256 px model's appearance pyramid some megabytes of
# GPU memory, so 64 faces stay well under a GPU's memory next to the model.
FACES_PER_REPLICA = 64


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The generator pool: its model (as the local engine loads it) and its Serve shape.

    Attributes:
        checkpoint: the model, a path every Ray node with a replica can read.
        runtime: "torch" or "onnx" (as ``avatar.runtime``).
        device: "auto", "cpu", "cuda" or "cuda:N", inside the replica.
        steps: sampler steps per chunk.
        compile: ``torch.compile`` (torch only; compiled at the replica's warm-up).
        app: the Serve application's name; every node of one pool uses the same.
        max_batch_size: the most chunks (sessions) in one model call.
        batch_wait_timeout_s: how long a replica's first chunk waits for others.
        max_ongoing_requests: requests Serve hands one replica at once (>= max_batch_size).
        min_replicas: replicas kept running.
        max_replicas: the autoscaler's ceiling (= min_replicas: a fixed number).
        gpus_per_replica: GPUs (a Ray resource) each replica reserves; 0 for CPU replicas.
        cpus_per_replica: CPUs each replica reserves; also its torch threads (at least 1).
    """

    checkpoint: str
    runtime: str = "torch"
    device: str = "auto"
    steps: int = 2
    compile: bool = False
    app: str = "likeness-generator"
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    max_ongoing_requests: int = 16
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            ("max_batch_size", 1 <= self.max_batch_size <= 256, "1..256"),
            ("batch_wait_timeout_s", 0.0 <= self.batch_wait_timeout_s <= 1.0, "0..1 s"),
            ("min_replicas", 1 <= self.min_replicas <= 1024, "1..1024"),
            ("gpus_per_replica", 0.0 <= self.gpus_per_replica <= 16, "0..16"),
            ("cpus_per_replica", 0.0 < self.cpus_per_replica <= 256, "0..256 (not 0)"),
        )
        check_ranges(self, checks)
        if self.max_ongoing_requests < self.max_batch_size:
            raise ModelConfigError(
                f"PoolOptions.max_ongoing_requests={self.max_ongoing_requests} is below "
                f"max_batch_size={self.max_batch_size}: Serve would hand a replica at most "
                f"{self.max_ongoing_requests} chunks, so no batch could be bigger"
            )
        if self.compile and self.runtime != "torch":
            raise ModelConfigError("PoolOptions.compile needs runtime 'torch'")
        if self.max_replicas < self.min_replicas:
            raise ModelConfigError(
                f"PoolOptions.max_replicas={self.max_replicas} is below "
                f"min_replicas={self.min_replicas}"
            )

    @property
    def threads(self) -> int:
        """torch threads in a replica: its reserved CPUs, at least one."""
        return max(1, int(self.cpus_per_replica))

    def runner_fields(self) -> dict[str, Any]:
        """``load_runner``'s options for this pool (the local engine passes the same)."""
        fields: dict[str, Any] = {
            "steps": self.steps,
            "device": self.device,
            "max_batch": self.max_batch_size,
        }
        if self.compile:
            fields["compile"] = True
        if self.runtime == "onnx":
            fields["threads"] = self.threads
        return fields


@dataclass(frozen=True, slots=True, eq=False)
class FaceSource:
    """Where a replica finds a face's crop when it does not hold the face.

    Attributes:
        crop: an ``ObjectRef`` to the crop float32 [1, 3, S, S], owned by the session
            node that put it (it lives as long as that node holds it).
    """

    crop: Any


@dataclass(frozen=True, slots=True, eq=False)
class RemoteChunk:
    """One session's next chunk as sent to the pool (arrays as in ``ChunkRequest``)."""

    source: FaceSource
    noise: np.ndarray
    context: np.ndarray
    mel: np.ndarray
    visemes: np.ndarray | None
    weights: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class RemoteResult:
    """A chunk's result and how it was made.

    Attributes:
        result: codes and crops, as the local scheduler returns them.
        serve_batch: chunks in the ``@serve.batch`` call it was part of.
        replica: the replica that made it.
    """

    result: ChunkResult
    serve_batch: int
    replica: str


def face_id(key: str) -> str:
    """The multiplexed model id of a face key: a hash, so Serve's logs and routing
    tables carry no avatar ids. The same key gives the same id on every node."""
    return "face-" + hashlib.sha256(key.encode()).hexdigest()[:24]


class _Face:
    """One face's encoding on a replica: what Serve's multiplexed cache holds. Emptied
    (``avatar = None``) when its node lets go; refilled from the next request's source."""

    __slots__ = ("__weakref__", "avatar", "lock")

    def __init__(self) -> None:
        self.avatar: EncodedAvatar | None = None
        self.lock = asyncio.Lock()


class GeneratorReplica:
    """A Serve replica of the neural generator (see the module doc). Deploy it with
    :func:`build_app`; call it through a handle with ``multiplexed_model_id`` set to
    :func:`face_id` of the face for ``encode``, ``chunk`` and ``drop``.
    """

    def __init__(self, options: PoolOptions) -> None:
        """Load the model, warm every batch size up to ``max_batch_size`` (blocking: Serve
        routes to the replica only after this returns)."""
        self.options = options
        runner = load_runner(options.runtime, options.checkpoint, **options.runner_fields())
        # Serve gathers the batch; the scheduler's 2 ms joins the per-face parts Serve
        # splits it into (see the module doc).
        self.scheduler = BatchScheduler(runner, gather_s=0.002)
        if runner.name == "torch":
            import torch

            torch.set_num_threads(options.threads)
            self.scheduler.run_blocking(torch.set_num_threads, options.threads)
        self.warmed = self.scheduler.warm_up(options.max_batch_size)
        self._run_batch.set_max_batch_size(options.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        self._faces: weakref.WeakValueDictionary[str, _Face] = weakref.WeakValueDictionary()
        self._serve_sizes: dict[int, int] = {}
        self.name = _replica_name()

    def spec(self) -> RunnerSpec:
        """The model's static sizes (a session node needs them to frame and cut audio)."""
        return self.scheduler.spec

    def warmed_sizes(self) -> list[int]:
        """The batch sizes this replica ran at start."""
        return list(self.warmed)

    async def encode(self, source: FaceSource) -> np.ndarray:
        """Encode the request's face (if this replica does not hold it); returns its
        source motion code float32 [1, D], the first chunk's context."""
        avatar = await self._ready(source)
        return avatar.source_code

    async def chunk(self, request: RemoteChunk) -> RemoteResult:
        """One session's next chunk, batched with whatever else is due on this replica."""
        avatar = await self._ready(request.source)
        return await self._run_batch((avatar, request))

    async def drop(self) -> bool:
        """Forget the request's face here (its node's last session of it ended): its
        encoding goes at once, and comes back only from a later request's source.
        Returns whether this replica held it."""
        face = self._faces.get(serve.get_multiplexed_model_id())
        if face is None or face.avatar is None:
            return False
        avatar, face.avatar = face.avatar, None
        forget = getattr(self.scheduler.runner, "forget", None)
        if forget is not None:
            await self.scheduler.call(forget, avatar)
        return True

    def stats(self) -> dict[str, Any]:
        """What this replica did: ``serve_batches`` (chunks per ``@serve.batch`` call, one
        face each → count), ``runner_batches`` (rows per model call → count: the batch
        sizes reached), time in the model, faces held."""
        s = self.scheduler.stats
        return {
            "replica": self.name,
            "serve_batches": dict(self._serve_sizes),
            "runner_batches": dict(s.sizes),
            "max_rows": s.max_rows,
            "rows": s.rows,
            "motion_ms": s.motion_ms,
            "render_ms": s.render_ms,
            "faces": sum(1 for f in self._faces.values() if f.avatar is not None),
        }

    @serve.multiplexed(max_num_models_per_replica=FACES_PER_REPLICA)
    async def _face(self, face: str) -> _Face:
        """Serve's per-replica face cache: an empty holder, filled by :meth:`_ready`
        (the loader gets only the id; the crop comes with the request)."""
        holder = _Face()
        self._faces[face] = holder
        return holder

    async def _ready(self, source: FaceSource) -> EncodedAvatar:
        face = await self._face(serve.get_multiplexed_model_id())
        async with face.lock:
            if face.avatar is None:
                crop = await _fetch_crop(source)
                runner = self.scheduler.runner
                face.avatar = await self.scheduler.call(runner.encode_avatar, crop)
            return face.avatar

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # set from options at start
    async def _run_batch(
        self, items: list[tuple[EncodedAvatar, RemoteChunk]]
    ) -> list[RemoteResult]:
        """The chunks of one face that Serve gathered; the scheduler joins them with the
        other faces' parts into one model call (and splits only what cannot share one:
        viseme use, more than ``max_batch`` rows)."""
        n = len(items)
        self._serve_sizes[n] = self._serve_sizes.get(n, 0) + 1
        requests = [
            ChunkRequest(avatar, *_writable(r.noise, r.context, r.mel, r.visemes, r.weights))
            for avatar, r in items
        ]
        results = await asyncio.gather(*(self.scheduler.chunk(r) for r in requests))
        return [RemoteResult(result, n, self.name) for result in results]


def _writable(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    """Own copies of arrays Ray deserialized read-only (zero copy), which torch warns
    about; a chunk's inputs are kilobytes."""
    return [None if a is None else np.array(a) for a in arrays]


async def _fetch_crop(source: FaceSource) -> np.ndarray:
    try:
        crop = await source.crop
    except Exception as err:  # the owner (a session node) let go of it or went away
        raise GeneratorError(
            "the face's crop is no longer in Ray's object store (its session node "
            f"released the face or went away): encode the face again ({type(err).__name__})",
            retryable=True,
        ) from None
    return np.array(crop, np.float32)  # an own, writable copy (see _writable)


def _replica_name() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside Serve (a direct construction in a test)
        return "local"


def build_app(options: PoolOptions) -> Any:
    """The Serve application of the pool: fixed ``min_replicas`` replicas, or Serve's
    autoscaler between ``min_replicas`` and ``max_replicas`` aiming at one full batch
    in flight per replica (``target_ongoing_requests = max_batch_size``). Serve's
    autoscaler decides over tens of seconds: nodes keep their own 503 for the moments
    before it reacts."""
    if options.max_replicas > options.min_replicas:
        scaling: dict[str, Any] = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "initial_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.max_batch_size,
            }
        }
    else:
        scaling = {"num_replicas": options.min_replicas}
    deployment = serve.deployment(GeneratorReplica).options(
        name=DEPLOYMENT,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={
            "num_gpus": options.gpus_per_replica,
            "num_cpus": options.cpus_per_replica,
        },
        **scaling,
    )
    return deployment.bind(options)


def connect_ray(address: str) -> None:
    """Join the Ray cluster at ``address`` (blocking; once per process).

    Args:
        address: "auto" (the cluster ``ray start`` runs on this machine), "local" (start
            a private one in this process: one host, no ``ray start``), "HOST:PORT" (the
            head's GCS port, 6379 by default) or "ray://HOST:PORT" (Ray Client). A
            process that already called ``ray.init`` keeps that connection.

    Raises:
        GeneratorError: nothing answers at the address, or Ray refused to connect; the
            message says which and what to start.
    """
    if address not in ("auto", "local"):
        _check_reachable(address)
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise GeneratorError(
            f"cannot join a Ray cluster at {address!r}: {err!s:.300}; start the GPU pool's "
            "head with `ray start --head --num-gpus=N` (or use address 'local' on one host)",
            retryable=True,
        ) from None


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A quick TCP check, so a wrong address fails in seconds with a plain message
    (Ray's own connect retries for much longer)."""
    url = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise GeneratorError(
            f"Ray address {address!r} is not 'auto', 'local', HOST:PORT or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise GeneratorError(
            f"nothing answers at {host}:{port} ({reason}): is the GPU pool's Ray running "
            "there (`ray start --head`)?",
            retryable=True,
        ) from None


def pool_handle(options: PoolOptions, deploy: bool, wait_s: float = 120.0) -> Any:
    """The ``DeploymentHandle`` of the running pool; with ``deploy`` it is deployed first
    when it is not running. Blocking, at most about ``wait_s``; call :func:`connect_ray`
    first.

    With several session nodes, let one deploy (``deploy=True``) and the others attach:
    they wait up to ``wait_s`` for the pool to be running.

    Raises:
        GeneratorError: the pool failed to deploy (a checkpoint its replicas cannot
            load: Serve's message says), or it is not running after ``wait_s`` (for
            instance no node has the GPUs a replica asks for).
    """
    state, _ = _app_state(options.app)
    if deploy and state in (None, "DEPLOY_FAILED", "UNHEALTHY"):
        _deploy(options)
    _wait_running(options.app, wait_s)
    return serve.get_app_handle(options.app)


def _deploy(options: PoolOptions) -> None:
    """Start the deployment without waiting for it (Serve's public ``serve.run`` waits
    with no bound, forever when no node has the GPUs asked for); the caller waits."""
    from ray.serve.api import _run  # ray 2.60's serve.run without the unbounded wait

    try:
        serve.start(proxy_location="Disabled")  # sessions call handles: no HTTP proxy
        _run(build_app(options), _blocking=False, name=options.app, route_prefix=None)
    except Exception as err:  # Serve reports a refused deploy as RuntimeError and others
        raise GeneratorError(
            f"the generator pool {options.app!r} failed to deploy: {err!s:.800}"
        ) from None


def _wait_running(app: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    state, message = _app_state(app)
    while state != "RUNNING":
        late = time.monotonic() > deadline
        if state == "DEPLOY_FAILED" or late:
            waited = f" after {wait_s:g} s" if late else ""
            said = f": {message:.1000}" if message else ""
            raise GeneratorError(
                f"the generator pool {app!r} is {state or 'not deployed'} in this Ray "
                f"cluster{waited}{said}; check its replicas (a checkpoint they cannot "
                "read, no node with the GPUs asked for) or deploy it from one node "
                "(avatar.ray.deploy = true)"
            )
        time.sleep(0.25)
        state, message = _app_state(app)


def _app_state(app: str) -> tuple[str | None, str]:
    """The Serve application's status ("RUNNING", "DEPLOYING", ...; None if absent) and
    Serve's message about it."""
    try:
        found = serve.status().applications.get(app)
    except Exception:  # no Serve instance in the cluster yet
        return None, ""
    if found is None:
        return None, ""
    said = [found.message, *(d.message for d in found.deployments.values())]
    message = " ".join(_gist(str(m)) for m in said if m and str(m).strip())
    return str(getattr(found.status, "value", found.status)), message


def _gist(message: str) -> str:
    """Serve's message without the traceback: its first line, and the exception line a
    traceback ends with."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
