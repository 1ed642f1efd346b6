"""ONNX export of the neural generator: three graphs, one folder, a manifest.

``export_onnx(student, out_dir)`` (or ``likeness export onnx CHECKPOINT OUT_DIR``) writes:

- ``avatar.onnx``: the per-avatar work of ``prepare(photo)``. ``image [B, 3, S, S]`` →
  ``pyramid_0 .. pyramid_{L-1}``, ``id_tokens``, ``source_code``, ``source_keypoints``
  (appearance encoder + motion encoder + keypoints, i.e. ``DualBranchGenerator.encode_avatar``).
- ``motion.onnx``: the whole per-chunk motion work of a **distilled student**: the audio
  encoder over the chunk's window, then every Euler step of the student sampler, unrolled.
  Inputs ``mel [B, W·m, n_mels]``, ``visemes [B, W]`` int64, ``viseme_keep [B]`` (1 = use
  the visemes, 0 = as if none were given), ``context [B, C, D]``, ``id_tokens``,
  ``noise [B, K, D]`` and ``say [B, 2]`` (audio weight, identity weight) → ``codes [B, K, D]``.
  It is exactly :func:`avatar.samplers.chunks.sample_chunk` (both call
  :func:`avatar.models.chunk.chunk_codes`) with a
  :class:`~avatar.samplers.flow_matching.FlowMatchingStudent`, except that the noise is an
  input: the runner draws it with :func:`~avatar.samplers.chunks.chunk_noise` (a
  ``torch.Generator`` cannot live in a graph), so seeds mean the same thing in both runtimes.
  A graph has no optional inputs, so the audio encoder runs with and without the visemes
  and ``viseme_keep`` selects per row (an exact select; the encoder is under 2 % of a
  chunk's FLOPs at every size).
- ``renderer.onnx``: ``pyramid_*``, ``id_tokens``, ``source_keypoints [B, n_kp, 3]`` and
  ``codes [B, T, D]`` → ``frames [B, T, 3, S, S]`` in [-1, 1] (``DualBranchGenerator.render``).

Why the student's steps are unrolled into one motion graph rather than exporting the
transformer step and looping in Python: a chunk then costs one ``session.run`` instead of
``steps + 1`` (the per-call overhead is most of the time at small sizes and grows with
session batching), intermediate tensors never leave onnxruntime, and TensorRT sees the
whole chunk at once. The price is that the step count is fixed at export
(``ExportOptions.steps``, recorded in the metadata; the runner refuses other counts):
export again for another count. The teacher (32 steps × 3 guidance passes) is a training
tool and is not exported; distil it first.

Every graph has a dynamic batch axis ``batch`` (sessions batched into one run) and the
renderer a dynamic ``frames`` axis. Exported with the TorchScript exporter
(``dynamo=False``; the dynamo exporter needs ``onnxscript``, which is not installed),
opset 17. Each file carries metadata (``likeness.*``): the graph name, the generator config
as JSON, its version, the SHA-256 of the checkpoint file (when exported from one) and of
the weights, and the student's step count. ``manifest.json`` repeats them with every
graph's input and output names.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avatar.errors import AvatarError
from avatar.models.checkpoint import weights_path
from avatar.models.chunk import chunk_codes
from avatar.models.config import CONFIG_VERSION, GeneratorConfig, config_to_dict
from avatar.models.generator import AvatarState, DualBranchGenerator
from avatar.samplers.flow_matching import MAX_STUDENT_STEPS, FlowMatchingStudent, StudentOptions

AVATAR_GRAPH = "avatar"
MOTION_GRAPH = "motion"
RENDERER_GRAPH = "renderer"
GRAPHS = (AVATAR_GRAPH, MOTION_GRAPH, RENDERER_GRAPH)
MANIFEST_NAME = "manifest.json"
EXPORT_VERSION = 1
"""Bumped when the graphs' inputs or outputs change; the runner checks it."""

KEY_GRAPH = "likeness.graph"
KEY_CONFIG = "likeness.config"
KEY_CONFIG_VERSION = "likeness.config_version"
KEY_EXPORT_VERSION = "likeness.export_version"
KEY_CHECKPOINT = "likeness.checkpoint_sha256"
KEY_WEIGHTS = "likeness.weights_sha256"
KEY_STEPS = "likeness.student_steps"


class OnnxExportError(AvatarError, ValueError):
    """The model cannot be exported as asked (a teacher, bad options); nothing was written
    under the final names. The message says what to change."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How to export.

    Attributes:
        steps: student Euler steps unrolled into ``motion.onnx`` (1 to 4); the runner
            only runs this count.
        opset: ONNX opset (17: the oldest that every onnxruntime provider here handles
            with LayerNorm as one op).
        trace_batch: batch size of the example inputs traced. Keep it above 1 so the
            tracer cannot fold the batch axis into a broadcast.
    """

    steps: int = 2
    opset: int = 17
    trace_batch: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STUDENT_STEPS:
            raise OnnxExportError(
                f"ExportOptions.steps must be 1 to {MAX_STUDENT_STEPS}, got {self.steps}"
            )
        if self.opset < 17:
            raise OnnxExportError(f"ExportOptions.opset must be 17 or newer, got {self.opset}")
        if self.trace_batch < 2:
            raise OnnxExportError(
                f"ExportOptions.trace_batch must be at least 2, got {self.trace_batch}"
            )


@dataclass(frozen=True, slots=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        out_dir: the folder.
        files: graph name → its ``.onnx`` file.
        manifest: the contents of ``manifest.json``.
    """

    out_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any] = field(repr=False)


# ---------------------------------------------------------------- graphs


class AvatarGraph(nn.Module):
    """``image`` → pyramid levels, id tokens, source code, source keypoints."""

    def __init__(self, gen: DualBranchGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        state = self.gen.encode_avatar(image)
        return (*state.pyramid, state.id_tokens, state.source_code, state.source_keypoints)


class MotionChunkGraph(nn.Module):
    """One chunk of student motion: audio encoder + ``steps`` unrolled Euler steps.

    It is :func:`avatar.models.chunk.chunk_codes` (what
    :func:`avatar.samplers.chunks.sample_chunk` and ``TorchRunner`` run) with a
    :class:`FlowMatchingStudent`; the noise, the say weights and ``viseme_keep`` are inputs.
    """

    def __init__(self, gen: DualBranchGenerator, steps: int):
        super().__init__()
        self.gen = gen
        self.steps = steps

    def forward(
        self,
        mel: Tensor,
        visemes: Tensor,
        viseme_keep: Tensor,
        context: Tensor,
        id_tokens: Tensor,
        noise: Tensor,
        say: Tensor,
    ) -> Tensor:
        return chunk_codes(
            self.gen,
            FlowMatchingStudent(StudentOptions(steps=self.steps)),
            mel=mel,
            visemes=visemes,
            viseme_keep=viseme_keep,
            context=context,
            id_tokens=id_tokens,
            noise=noise,
            guidance=say,
        )


class RendererGraph(nn.Module):
    """Pyramid levels, id tokens, source keypoints, codes ``[B, T, D]`` → frames."""

    def __init__(self, gen: DualBranchGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, *inputs: Tensor) -> Tensor:
        n = len(self.gen.config.appearance.channels)
        pyramid, (id_tokens, kp_source, codes) = inputs[:n], inputs[n:]
        state = AvatarState(tuple(pyramid), id_tokens, codes[:, 0], kp_source)
        return self.gen.render(state, codes)


def graph_modules(gen: DualBranchGenerator, steps: int) -> dict[str, nn.Module]:
    """The torch module of every graph (what :func:`export_onnx` traces and
    ``parity_report`` compares against), keyed by graph name."""
    return {
        AVATAR_GRAPH: AvatarGraph(gen),
        MOTION_GRAPH: MotionChunkGraph(gen, steps),
        RENDERER_GRAPH: RendererGraph(gen),
    }


def graph_io(config: GeneratorConfig) -> dict[str, dict[str, list[str]]]:
    """Input and output names of every graph, in order."""
    levels = [f"pyramid_{i}" for i in range(len(config.appearance.channels))]
    return {
        AVATAR_GRAPH: {
            "inputs": ["image"],
            "outputs": [*levels, "id_tokens", "source_code", "source_keypoints"],
        },
        MOTION_GRAPH: {
            "inputs": ["mel", "visemes", "viseme_keep", "context", "id_tokens", "noise", "say"],
            "outputs": ["codes"],
        },
        RENDERER_GRAPH: {
            "inputs": [*levels, "id_tokens", "source_keypoints", "codes"],
            "outputs": ["frames"],
        },
    }


def example_inputs(
    gen: DualBranchGenerator, batch: int, frames: int | None = None, seed: int = 0
) -> dict[str, dict[str, Tensor]]:
    """Plausible inputs of every graph (random, seeded), keyed by graph then input name.

    The renderer's and the motion graph's avatar inputs come from running the avatar
    encoder on the random image, so they have realistic statistics.

    Args:
        gen: the generator (any device; the tensors are made on its device).
        batch: batch size.
        frames: frames per batch item for the renderer (K when None).
        seed: seed of the random values.
    """
    config = gen.config
    d, a = config.dit, config.audio
    device = next(gen.parameters()).device
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    coarse = torch.rand(batch, 3, max(s // 8, 1), max(s // 8, 1), generator=g)
    image = (torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear") * 2 - 1).to(
        device
    )
    with torch.no_grad():
        state = gen.encode_avatar(image)
    w = config.window_frames
    k = d.chunk_frames
    t = k if frames is None else frames
    codes = state.source_code[:, None] + 0.1 * torch.randn(
        batch, t, config.code_dim, generator=g
    ).to(device)
    io = graph_io(config)
    levels = dict(zip(io[AVATAR_GRAPH]["outputs"], state.pyramid, strict=False))
    return {
        AVATAR_GRAPH: {"image": image},
        MOTION_GRAPH: {
            "mel": (-6.0 + 2.0 * torch.randn(batch, w * a.mel_per_frame, a.n_mels, generator=g)).to(
                device
            ),
            "visemes": torch.randint(0, a.n_visemes, (batch, w), generator=g).to(device),
            "viseme_keep": (torch.arange(batch) % 2 == 0).float().to(device),
            "context": state.source_code[:, None].repeat(1, d.context_frames, 1),
            "id_tokens": state.id_tokens,
            "noise": torch.randn(batch, k, config.code_dim, generator=g).to(device),
            "say": torch.tensor([[1.0 + 0.5 * i, 1.0] for i in range(batch)]).to(device),
        },
        RENDERER_GRAPH: {
            **levels,
            "id_tokens": state.id_tokens,
            "source_keypoints": state.source_keypoints,
            "codes": codes,
        },
    }


# ---------------------------------------------------------------- hashing and metadata


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), hex."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name = "likeness"
    onnx.save(model, str(path))


# ---------------------------------------------------------------- export


def _export_graph(
    module: nn.Module,
    inputs: dict[str, Tensor],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    path: Path,
    opset: int,
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # The tracer warns about Python-side shape checks; the graphs are checked for
        # parity at several batch sizes instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(tmp),
            input_names=list(inputs),
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    os.replace(tmp, path)


@torch.no_grad()
def export_onnx(
    gen: DualBranchGenerator,
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    checkpoint_sha256: str = "",
) -> OnnxExport:
    """Export a distilled student's three graphs to ``out_dir`` (created if needed).

    Args:
        gen: a student generator (``GeneratorConfig.as_student()``), on the CPU; it is
            not changed (eval mode is restored as it was).
        out_dir: the folder for ``avatar.onnx``, ``motion.onnx``, ``renderer.onnx`` and
            ``manifest.json``; existing files of those names are replaced.
        options: steps, opset, trace batch.
        checkpoint_sha256: SHA-256 of the checkpoint file the weights came from, if any
            (:func:`export_checkpoint` fills it).

    Returns:
        The files written; load them with
        :meth:`avatar.deploy.onnx_runner.OnnxRunner.load` (check parity with
        :func:`avatar.deploy.onnx_runner.parity_report`).

    Raises:
        OnnxExportError: a teacher generator, or a model not on the CPU.
    """
    options = options or ExportOptions()
    config = gen.config
    if not config.dit.guidance_embed:
        raise OnnxExportError(
            "this generator is a teacher (no say-weight embedding); only a distilled student "
            "is exported: distil it first (likeness train distill) and export the student"
        )
    device = next(gen.parameters()).device
    if device.type != "cpu":
        raise OnnxExportError(f"export from the CPU: move the generator there (it is on {device})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    io = graph_io(config)
    was_training = gen.training
    gen.eval()
    try:
        inputs = example_inputs(gen, options.trace_batch)
        batch = {0: "batch"}
        modules = graph_modules(gen, options.steps)
        dynamic: dict[str, dict[str, dict[int, str]]] = {
            AVATAR_GRAPH: {
                n: batch for n in io[AVATAR_GRAPH]["inputs"] + io[AVATAR_GRAPH]["outputs"]
            },
            MOTION_GRAPH: {
                n: batch for n in io[MOTION_GRAPH]["inputs"] + io[MOTION_GRAPH]["outputs"]
            },
            RENDERER_GRAPH: {
                **{n: batch for n in io[RENDERER_GRAPH]["inputs"]},
                "codes": {0: "batch", 1: "frames"},
                "frames": {0: "batch", 1: "frames"},
            },
        }
        metadata = {
            KEY_CONFIG: json.dumps(config_to_dict(config), sort_keys=True),
            KEY_CONFIG_VERSION: str(CONFIG_VERSION),
            KEY_EXPORT_VERSION: str(EXPORT_VERSION),
            KEY_CHECKPOINT: checkpoint_sha256,
            KEY_WEIGHTS: weights_sha256(gen),
            KEY_STEPS: str(options.steps),
        }
        files = {}
        for name in GRAPHS:
            path = out / f"{name}.onnx"
            _export_graph(
                modules[name],
                inputs[name],
                io[name]["outputs"],
                dynamic[name],
                path,
                options.opset,
            )
            _add_metadata(path, {KEY_GRAPH: name, **metadata})
            files[name] = path
    finally:
        gen.train(was_training)
    manifest = {
        "format": "likeness-onnx",
        "export_version": EXPORT_VERSION,
        "opset": options.opset,
        "student_steps": options.steps,
        "config_version": CONFIG_VERSION,
        "config": config_to_dict(config),
        "checkpoint_sha256": checkpoint_sha256,
        "weights_sha256": metadata[KEY_WEIGHTS],
        "torch": torch.__version__,
        "graphs": {
            name: {"file": files[name].name, "sha256": file_sha256(files[name]), **io[name]}
            for name in GRAPHS
        },
    }
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)
    return OnnxExport(out, files, manifest)


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
) -> OnnxExport:
    """Load a student checkpoint (``save_pretrained`` folder or ``.safetensors``) and export it.

    Returns:
        The files written (see :func:`export_onnx`); the checkpoint file's SHA-256 is in
        every graph's metadata and the manifest.

    Raises:
        ModelNotFoundError: no checkpoint there.
        CheckpointError: the checkpoint is unusable.
        OnnxExportError: it holds a teacher.
    """
    gen = DualBranchGenerator.from_pretrained(checkpoint, attention_backend="math")
    return export_onnx(
        gen, out_dir, options, checkpoint_sha256=file_sha256(weights_path(checkpoint))
    )
