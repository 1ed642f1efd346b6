"""Running an exported generator with onnxruntime: :class:`OnnxRunner`.

It implements the pipeline's :class:`~avatar.pipelines.runner.Runner` Protocol (numpy
in, numpy out; rows of a batch are independent sessions, one ``session.run`` for all of
them), so the neural generator streams through it exactly as through the PyTorch runner::

    runner = OnnxRunner.load("exports/base")                # or a student checkpoint
    avatar = runner.encode_avatar(crop)                      # once per avatar
    codes = runner.motion_chunk([avatar], noise, context, mel, None, weights)
    frames = runner.render([avatar], codes)                  # uint8 [1, K, S, S, 3]

Providers: ``device="cpu"`` runs the ``CPUExecutionProvider``; ``"cuda"`` / ``"cuda:N"``
needs the ``CUDAExecutionProvider`` (the ``gpu`` extra, ``onnxruntime-gpu``) and a GPU
and fails plainly without them; ``"auto"`` takes CUDA when both are present, else the
CPU. ``tensorrt=True`` puts the ``TensorrtExecutionProvider`` first where it exists. The
choice is logged once per load, with what onnxruntime offered. The graphs run in float32
on every provider (TensorRT may use its own precision settings).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.deploy.onnx import (
    AVATAR_GRAPH,
    EXPORT_VERSION,
    GRAPHS,
    KEY_CONFIG,
    KEY_CONFIG_VERSION,
    KEY_EXPORT_VERSION,
    KEY_GRAPH,
    KEY_STEPS,
    KEY_WEIGHTS,
    MANIFEST_NAME,
    MOTION_GRAPH,
    RENDERER_GRAPH,
    example_inputs,
    graph_io,
    graph_modules,
)
from avatar.errors import ModelNotFoundError
from avatar.models.checkpoint import weights_path
from avatar.models.config import CONFIG_VERSION, GeneratorConfig, config_from_dict
from avatar.models.errors import CheckpointError, ModelConfigError
from avatar.models.generator import DualBranchGenerator
from avatar.pipelines.runner import (
    EncodedAvatar,
    RunnerSpec,
    check_crop,
    check_motion_inputs,
    check_render_inputs,
    check_rows,
    to_uint8_frames,
)
from avatar.samplers.flow_matching import MAX_STUDENT_STEPS

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True, slots=True)
class OnnxRunnerOptions:
    """How the exported graphs run.

    Attributes:
        device: ``auto`` (CUDA when onnxruntime-gpu and a GPU are present, else CPU),
            ``cpu``, ``cuda`` or ``cuda:N``.
        steps: student steps wanted; None takes the export's count. An export folder
            with another count is refused; a checkpoint is exported with this count.
        max_batch: the most rows (sessions) one call takes.
        tensorrt: try the TensorRT provider before CUDA (GPU only; its engines build on
            the first run of every new input shape, which takes minutes).
        threads: intra-op threads of the CPU provider; 0 lets onnxruntime choose.
        cache_dir: where a checkpoint's export is written (beside the checkpoint when
            empty).
    """

    device: str = "auto"
    steps: int | None = None
    max_batch: int = 8
    tensorrt: bool = False
    threads: int = 0
    cache_dir: str = ""

    def __post_init__(self) -> None:
        d = self.device
        ok = d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ModelConfigError(
                f"OnnxRunnerOptions.device must be auto, cpu, cuda or cuda:N, got {d!r}"
            )
        if self.steps is not None and not 1 <= self.steps <= MAX_STUDENT_STEPS:
            raise ModelConfigError(
                f"OnnxRunnerOptions.steps must be 1 to {MAX_STUDENT_STEPS} (a distilled "
                f"student), got {self.steps}"
            )
        if not 1 <= self.max_batch <= 256:
            raise ModelConfigError(
                f"OnnxRunnerOptions.max_batch must be 1 to 256, got {self.max_batch}"
            )
        if self.threads < 0:
            raise ModelConfigError(f"OnnxRunnerOptions.threads must be >= 0, got {self.threads}")


def _gpu_present() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver means no GPU here
        return False


def select_providers(
    options: OnnxRunnerOptions, available: Sequence[str] | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """The onnxruntime providers for ``options``, best first (CPU always last).

    Args:
        options: device and TensorRT choice.
        available: providers onnxruntime offers (``onnxruntime.get_available_providers()``
            when None).

    Raises:
        ModelConfigError: a CUDA device asked for where onnxruntime has no CUDA provider
            or no GPU is present (the message says what to install).
    """
    import onnxruntime as ort

    have = list(ort.get_available_providers() if available is None else available)
    device = options.device
    gpu_ok = CUDA in have and _gpu_present()
    if device.startswith("cuda") and not gpu_ok:
        why = "no GPU is visible" if CUDA in have else "onnxruntime has no CUDAExecutionProvider"
        raise ModelConfigError(
            f"avatar device {device!r} asked for, but {why}: install the gpu extra "
            "(pip install 'likeness[gpu]') on a machine with an NVIDIA GPU, or use device cpu"
        )
    if device == "cpu" or not gpu_ok:
        return [CPU]
    index = int(device[5:]) if device.startswith("cuda:") else 0
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    if options.tensorrt and TENSORRT in have:
        chosen.append((TENSORRT, {"device_id": index}))
    chosen.append((CUDA, {"device_id": index}))
    chosen.append(CPU)
    return chosen


def _provider_name(p: str | tuple[str, dict[str, Any]]) -> str:
    return p if isinstance(p, str) else p[0]


class OnnxRunner:
    """A :class:`~avatar.pipelines.runner.Runner` on onnxruntime: the three exported graphs.

    Build it with :meth:`load`; ``__init__`` only stores what it is given. Calls are not
    thread-safe: make them from one worker thread (the pipeline's scheduler does).

    Args:
        sessions: graph name → ``onnxruntime.InferenceSession``.
        config: the generator config the graphs were exported from.
        steps: student Euler steps unrolled in the motion graph.
        providers: the providers the sessions run on, best first.
        max_batch: the most rows (sessions) one call takes.
        export_dir: the folder the graphs were read from.
    """

    name = "onnx"

    def __init__(
        self,
        sessions: dict[str, Any],
        config: GeneratorConfig,
        steps: int,
        providers: list[str],
        max_batch: int = 8,
        export_dir: Path | None = None,
    ):
        self.sessions = sessions
        self.export_dir = export_dir
        self.config = config
        self.spec = RunnerSpec.from_config(config)
        self.steps = steps
        self.providers = providers
        self.max_batch = max_batch
        self._io = graph_io(config)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        options: OnnxRunnerOptions | None = None,
        **fields: Any,
    ) -> OnnxRunner:
        """Open an export folder (``likeness export onnx``), or export a checkpoint first.

        ``path`` is either a folder with ``avatar.onnx``, ``motion.onnx`` and
        ``renderer.onnx``, or a student checkpoint (``save_pretrained`` folder or
        ``.safetensors``): then its export is made once into ``options.cache_dir``
        (beside the checkpoint by default) and reused while the checkpoint is unchanged.
        All three graphs must come from one export of one model and this likeness's
        config and export versions.

        Args:
            path: export folder or checkpoint.
            options: providers, threads, steps, batch limit.
            fields: instead of ``options``, its fields by name (as
                :func:`avatar.pipelines.runner.load_runner` passes them).

        Returns:
            A runner; hand it to the neural pipeline, or call it directly.

        Raises:
            ModelNotFoundError: nothing usable at ``path``.
            CheckpointError: files of another version, of different models, or an export
                with another step count than ``options.steps``.
            ModelConfigError: bad options, or a CUDA device where none can run (see
                :func:`select_providers`).
            OnnxExportError: the checkpoint is a teacher.
        """
        import onnxruntime as ort

        if options is not None and fields:
            raise ModelConfigError("OnnxRunner.load: give options or fields, not both")
        try:
            options = options or OnnxRunnerOptions(**fields)
        except TypeError as exc:
            raise ModelConfigError(f"OnnxRunner.load: {exc}") from None
        folder = _export_folder(Path(path), options)
        missing = [g for g in GRAPHS if not (folder / f"{g}.onnx").is_file()]
        if missing:
            raise ModelNotFoundError(
                f"no ONNX export in {folder} (missing {', '.join(f'{g}.onnx' for g in missing)}):"
                " write one with `likeness export onnx CHECKPOINT OUT_DIR`"
            )
        providers = select_providers(options)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.log_severity_level = 3
        sessions, metas = {}, {}
        for graph in GRAPHS:
            file = folder / f"{graph}.onnx"
            try:
                sess = ort.InferenceSession(str(file), sess_options=so, providers=providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                raise CheckpointError(f"{file} cannot be loaded by onnxruntime: {exc}") from None
            sessions[graph] = sess
            metas[graph] = sess.get_modelmeta().custom_metadata_map
        config, steps = _check_metadata(folder, metas)
        if options.steps is not None and options.steps != steps:
            raise CheckpointError(
                f"the export in {folder} runs {steps} student steps, {options.steps} were "
                f"asked for: export again with --steps {options.steps}"
            )
        used = sessions[MOTION_GRAPH].get_providers()
        log.info(
            "avatar onnx runner: %s (device %s; onnxruntime offers %s), %d px, %d steps, %s",
            ", ".join(used),
            options.device,
            ", ".join(ort.get_available_providers()),
            config.image_size,
            steps,
            folder,
        )
        return cls(sessions, config, steps, used, options.max_batch, folder)

    # ------------------------------------------------------------ the work

    def _run(self, graph: str, feeds: dict[str, Any]) -> list[np.ndarray]:
        arrays = {
            k: np.ascontiguousarray(v.detach().cpu().numpy() if isinstance(v, Tensor) else v)
            for k, v in feeds.items()
        }
        return self.sessions[graph].run(None, arrays)

    def encode_avatar(self, crop: np.ndarray) -> EncodedAvatar:
        """Encode the aligned crop float32 [1, 3, S, S] in [-1, 1]; keep it per avatar.

        Raises:
            ModelInputError: wrong shape or dtype.
        """
        check_crop(self.spec, crop)
        out = self._run(AVATAR_GRAPH, {"image": crop})
        n = len(self.config.appearance.channels)
        return EncodedAvatar(
            pyramid=tuple(out[:n]),
            id_tokens=out[n],
            source_keypoints=out[n + 2],
            source_code=out[n + 1],
            runner=self.name,
        )

    def motion_chunk(
        self,
        avatars: Sequence[EncodedAvatar],
        noise: np.ndarray,
        context: np.ndarray,
        mel: np.ndarray,
        visemes: np.ndarray | None,
        weights: np.ndarray,
    ) -> np.ndarray:
        """One chunk per row, one graph run for all rows: float32 codes [B, K, D].

        Args:
            avatars: row ``b``'s avatar (from this runner's :meth:`encode_avatar`).
            noise: float32 [B, K, D] (``chunk_noise(seed, index, ...)`` per row).
            context: float32 [B, C, D], the previous C frames' codes.
            mel: float32 [B, W·m, n_mels], the chunk schedule's audio window.
            visemes: int64 [B, W] or None.
            weights: float32 [B, 2] say weights (audio, identity).

        Raises:
            ModelInputError: inputs that do not fit (the message names which).
        """
        b = check_motion_inputs(self.spec, avatars, noise, context, mel, visemes, weights)
        check_rows(self, avatars, "motion_chunk")
        if visemes is None:
            vis, keep = np.zeros((b, self.spec.window_frames), np.int64), np.zeros(b, np.float32)
        else:
            vis, keep = visemes, np.ones(b, np.float32)
        (codes,) = self._run(
            MOTION_GRAPH,
            {
                "mel": mel,
                "visemes": vis,
                "viseme_keep": keep,
                "context": context,
                "id_tokens": np.concatenate([a.id_tokens for a in avatars]),
                "noise": noise,
                "say": weights,
            },
        )
        return codes

    def render_float(self, avatars: Sequence[EncodedAvatar], codes: np.ndarray) -> np.ndarray:
        """Frames before rounding: float32 [B, T, 3, S, S] in [-1, 1] (for parity checks).

        Raises:
            ModelInputError: codes of the wrong shape or dtype for the avatars.
        """
        check_render_inputs(self.spec, avatars, codes)
        check_rows(self, avatars, "render")
        names = self._io[RENDERER_GRAPH]["inputs"]
        levels = [
            np.concatenate(level) for level in zip(*[a.pyramid for a in avatars], strict=True)
        ]
        values = [
            *levels,
            np.concatenate([a.id_tokens for a in avatars]),
            np.concatenate([a.source_keypoints for a in avatars]),
            codes,
        ]
        (frames,) = self._run(RENDERER_GRAPH, dict(zip(names, values, strict=True)))
        return frames

    def render(self, avatars: Sequence[EncodedAvatar], codes: np.ndarray) -> np.ndarray:
        """Frames of codes [B, T, D] on each row's avatar: uint8 [B, T, S, S, 3] RGB.

        Raises:
            ModelInputError: codes of the wrong shape or dtype for the avatars.
        """
        frames = to_uint8_frames(torch.from_numpy(self.render_float(avatars, codes)))
        return np.ascontiguousarray(frames.numpy())


def _export_folder(path: Path, options: OnnxRunnerOptions) -> Path:
    """The export folder ``path`` means; exports a checkpoint there first if needed."""
    if (path / f"{MOTION_GRAPH}.onnx").is_file() or not weights_path(path).is_file():
        return path
    from avatar.deploy.onnx import ExportOptions, export_checkpoint, file_sha256

    weights = weights_path(path)
    steps = options.steps or ExportOptions().steps
    digest = file_sha256(weights)[:16]
    base = Path(options.cache_dir) if options.cache_dir else weights.parent
    folder = base / f"onnx-{weights.stem}-{digest}-s{steps}"
    if (folder / MANIFEST_NAME).is_file():
        return folder
    log.info("avatar onnx runner: exporting %s to %s (once per checkpoint)", weights, folder)
    try:
        export_checkpoint(path, folder, ExportOptions(steps=steps))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the ONNX export of {weights} to {folder} ({exc}): run "
            "`likeness export onnx CHECKPOINT OUT_DIR` and point avatar.checkpoint at OUT_DIR"
        ) from None
    return folder


def _check_metadata(folder: Path, metas: dict[str, dict[str, str]]) -> tuple[GeneratorConfig, int]:
    for graph, meta in metas.items():
        if meta.get(KEY_GRAPH) != graph:
            raise CheckpointError(
                f"{folder / (graph + '.onnx')} is not a likeness {graph} graph "
                f"(metadata says {meta.get(KEY_GRAPH)!r}); export again"
            )
        if meta.get(KEY_EXPORT_VERSION) != str(EXPORT_VERSION):
            raise CheckpointError(
                f"{folder} holds export version {meta.get(KEY_EXPORT_VERSION)}, this likeness "
                f"runs version {EXPORT_VERSION}: export the checkpoint again"
            )
        if meta.get(KEY_CONFIG_VERSION) != str(CONFIG_VERSION):
            raise CheckpointError(
                f"{folder} has config version {meta.get(KEY_CONFIG_VERSION)}, this likeness "
                f"reads version {CONFIG_VERSION}: export the checkpoint again"
            )
    for key in (KEY_CONFIG, KEY_WEIGHTS, KEY_STEPS):
        values = {meta.get(key) for meta in metas.values()}
        if len(values) != 1:
            raise CheckpointError(
                f"the graphs in {folder} come from different exports ({key} differs): "
                "export the checkpoint again into an empty folder"
            )
    meta = metas[MOTION_GRAPH]
    try:
        config = config_from_dict(GeneratorConfig, json.loads(meta[KEY_CONFIG]))
        steps = int(meta[KEY_STEPS])
    except (KeyError, ValueError, ModelConfigError) as exc:
        raise CheckpointError(f"{folder} has unusable metadata ({exc}); export again") from None
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        log.warning(
            "avatar onnx runner: %s has no %s (graphs checked anyway)", folder, MANIFEST_NAME
        )
    return config, steps


def parity_report(
    gen: DualBranchGenerator,
    runner: OnnxRunner,
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
) -> dict[str, float]:
    """Largest absolute difference between PyTorch and onnxruntime for every graph.

    Runs each exported graph's PyTorch module (``avatar.deploy.onnx``) and the runner on
    :func:`~avatar.deploy.onnx.example_inputs` at each batch size (the renderer with a
    frame count other than K, to exercise its dynamic axis).

    Args:
        gen: the student the graphs were exported from, on the CPU.
        runner: the loaded export.
        batches: batch sizes to try.
        seed: seed of the inputs.

    Returns:
        ``{"avatar": d, "motion": d, "renderer": d}``, the worst over ``batches``; a
        healthy export is far below 1e-3.
    """
    modules = graph_modules(gen, runner.steps)
    worst = dict.fromkeys(GRAPHS, 0.0)
    with torch.no_grad():
        for i, b in enumerate(batches):
            inputs = example_inputs(gen, b, frames=gen.config.dit.chunk_frames - 3, seed=seed + i)
            for graph in GRAPHS:
                ref = modules[graph](*inputs[graph].values())
                refs = ref if isinstance(ref, tuple) else (ref,)
                got = runner._run(graph, inputs[graph])
                diff = max(
                    float(np.abs(r.numpy() - g).max()) for r, g in zip(refs, got, strict=True)
                )
                worst[graph] = max(worst[graph], diff)
    return worst
