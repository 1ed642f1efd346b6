"""Build the avatar components from the one config: the avatar half of ``components.py``.

Like :mod:`runtime.components` (voice, dialogue, consent), this turns
:class:`~runtime.config.Settings` into the avatar package's own options and objects,
for the server and the command line alike: face analysis options, the avatar store,
an avatar reference resolved to a :class:`~avatar.types.PreparedAvatar`, the neural
model a process shares, and the generator of one session.

An avatar reference is one of: ``synthetic`` (the demo face drawn by code), the
id of a prepared avatar in the store, or a photo file (prepared on the fly).
Nothing here asks for consent: callers gate which face they animate (the server per
offer, the command line with :class:`runtime.animation.FacePermit`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatar.face import FaceAnalyzer, FaceOptions, read_image
from avatar.face.prepare import prepare_photo
from avatar.procedural.generator import ProceduralOptions
from avatar.store import AvatarStore
from avatar.synthetic import make_demo_avatar
from avatar.types import PreparedAvatar
from runtime.config import Settings
from runtime.errors import ConfigError, InputError

if TYPE_CHECKING:
    from avatar.base import AvatarGenerator
    from avatar.pipelines.neural import NeuralOptions
    from avatar.pipelines.scheduler import ChunkEngine

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


def load_avatar_engine(settings: Settings, sessions: int | None = None) -> ChunkEngine | None:
    """The shared neural model of a process (a ChunkEngine: the local BatchScheduler, or
    with ``avatar.engine = "ray"`` the pool's client; None for the procedural
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
    if a.engine == "ray":
        return _ray_engine(settings)
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


def _ray_engine(settings: Settings) -> ChunkEngine:
    """``avatar.engine = "ray"``: join the Ray cluster, deploy or attach to the generator
    pool (its replicas load ``avatar.checkpoint`` and warm up there) and return its
    client, which every session shares like the local scheduler (docs/ray-serve.md).

    Raises:
        ConfigError: Ray is not installed, nothing answers at ``avatar.ray.address``,
            or the pool cannot be deployed or reached (the message says which).
    """
    a, r = settings.avatar, settings.avatar.ray
    try:
        from avatar.deploy.ray_serve import PoolOptions, connect_ray
        from avatar.pipelines.ray_engine import RayEngine
    except ImportError as err:
        raise ConfigError(
            f"avatar.engine = 'ray' needs Ray Serve: pip install -e '.[cluster]' ({err})"
        ) from None
    from avatar.errors import GeneratorError

    try:
        pool = PoolOptions(
            checkpoint=str(Path(a.checkpoint).expanduser().resolve()),
            runtime=a.runtime,
            device=a.device,
            steps=a.steps,
            compile=a.compile,
            app=r.app,
            max_batch_size=r.max_batch_size,
            batch_wait_timeout_s=r.batch_wait_timeout_s,
            max_ongoing_requests=r.max_ongoing_requests,
            min_replicas=r.min_replicas,
            max_replicas=r.max_replicas,
            gpus_per_replica=r.gpus_per_replica,
            cpus_per_replica=r.cpus_per_replica,
        )
    except ValueError as err:  # ModelConfigError too
        raise ConfigError(f"avatar.ray: {err}") from None
    try:
        connect_ray(r.address)
    except GeneratorError as err:
        raise ConfigError(f"avatar.ray.address={r.address!r}: {err}") from None
    try:
        engine = RayEngine.connect(pool, r.deploy, r.wait_s, r.call_timeout_s)
    except GeneratorError as err:
        raise ConfigError(f"avatar.engine = 'ray': {err}") from None
    if abs(engine.spec.fps - a.fps) > 1e-6:
        raise ConfigError(
            f"avatar.checkpoint={a.checkpoint!r} cannot be used: the model makes "
            f"{engine.spec.fps:g} fps video, not {a.fps:g}"
        )
    return engine


def _compile_failed(err: Exception) -> ConfigError:
    return ConfigError(
        f"avatar.compile = true, but compiling the model failed: {err!s:.500}; set "
        "avatar.compile = false, or give torch.compile what it needs (a writable "
        "TORCHINDUCTOR_CACHE_DIR; on the CPU, a C++ compiler)"
    )


def avatar_generator(
    settings: Settings, avatar: PreparedAvatar, engine: ChunkEngine | None = None
) -> AvatarGenerator:
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
    """The prepared avatars under ``<data dir>/avatars``."""
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
