"""ONNX export and the onnxruntime runner on a tiny real student: files and metadata,
parity with PyTorch (every graph, a whole chunk + frames, batch 1 and 3), refusals, the
CLI, and the runner streaming through the neural generator's contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from avatar.deploy.onnx import (
    GRAPHS,
    KEY_CHECKPOINT,
    KEY_CONFIG,
    KEY_STEPS,
    KEY_WEIGHTS,
    OnnxExportError,
    export_onnx,
    file_sha256,
    weights_sha256,
)
from avatar.deploy.onnx_runner import (
    CPU,
    CUDA,
    OnnxRunner,
    OnnxRunnerOptions,
    parity_report,
    select_providers,
)
from avatar.errors import ModelNotFoundError
from avatar.models import CheckpointError, ModelConfigError, ModelInputError
from avatar.models.checkpoint import weights_path
from avatar.models.config import GeneratorConfig, config_from_dict
from avatar.pipelines.neural import NeuralGenerator, NeuralOptions
from avatar.pipelines.runner import Runner, TorchRunner, TorchRunnerOptions
from avatar.procedural.bench import speech_like_audio
from avatar.samplers import FlowMatchingStudent, StudentOptions, chunk_noise, sample_chunk
from avatar.synthetic import make_demo_avatar
from tests.avatar import contract
from tests.avatar.neural.helpers import reference_images, speech_mel
from tests.runtime.test_cli import run

TOL = 1e-3


@pytest.fixture(scope="module")
def checkpoint(student, tmp_path_factory):
    return student.save_pretrained(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def runner(checkpoint, tmp_path_factory) -> OnnxRunner:
    """The student exported through the runner's own checkpoint path (cached export)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    return OnnxRunner.load(checkpoint, device="cpu", cache_dir=str(cache), steps=2)


@pytest.fixture(scope="module")
def export_dir(runner):
    return runner.export_dir


def test_export_files_carry_config_hashes_opset_and_dynamic_batch(student, checkpoint, export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["student_steps"] == 2 and manifest["opset"] == 17
    assert config_from_dict(GeneratorConfig, manifest["config"]) == student.config
    assert manifest["checkpoint_sha256"] == file_sha256(checkpoint)
    assert manifest["weights_sha256"] == weights_sha256(student)
    for graph in GRAPHS:
        path = export_dir / f"{graph}.onnx"
        assert manifest["graphs"][graph]["sha256"] == file_sha256(path)
        model = onnx.load(str(path))
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert config_from_dict(GeneratorConfig, json.loads(meta[KEY_CONFIG])) == student.config
        assert meta[KEY_CHECKPOINT] == file_sha256(checkpoint)
        assert meta[KEY_WEIGHTS] == weights_sha256(student) and meta[KEY_STEPS] == "2"
        for value in model.graph.input:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (graph, value.name)
    codes = onnx.load(str(export_dir / "renderer.onnx")).graph.input[-1]
    assert [d.dim_param for d in codes.type.tensor_type.shape.dim[:2]] == ["batch", "frames"]


def test_every_graph_matches_pytorch_at_batch_1_and_3(student, runner):
    diffs = parity_report(student, runner, batches=(1, 3), seed=4)
    assert set(diffs) == set(GRAPHS)
    assert all(0.0 <= d <= TOL for d in diffs.values()), diffs


def _batch(student, b, seed):
    """Crops, mel windows, visemes, context noise and weights for ``b`` sessions."""
    c = student.config
    crops = reference_images(b, c.image_size, seed=seed).numpy()
    mel = speech_mel(b, c.window_frames * c.audio.mel_per_frame, seed=seed).numpy()
    g = torch.Generator().manual_seed(seed)
    vis = torch.randint(0, c.audio.n_visemes, (b, c.window_frames), generator=g).numpy()
    shape = (1, c.dit.chunk_frames, c.code_dim)
    noise = torch.cat([chunk_noise(100 + i, 3 + i, shape, "cpu", torch.float32) for i in range(b)])
    noise = noise.numpy()
    weights = np.array([[0.5 + i, 1.5 - 0.5 * i] for i in range(b)], np.float32)
    return crops, mel.astype(np.float32), vis.astype(np.int64), noise, weights


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("with_visemes", [False, True])
def test_a_chunk_and_its_frames_match_the_pytorch_path(student, runner, b, with_visemes):
    """The runner (one graph run for all rows) against the real torch path per row:
    ``encode_avatar`` → ``sample_chunk`` with the student sampler → ``render``."""
    c = student.config
    crops, mel, vis, noise, weights = _batch(student, b, seed=10 * b + with_visemes)
    avatars = [runner.encode_avatar(crops[i : i + 1]) for i in range(b)]
    context = np.concatenate(
        [np.repeat(a.source_code[:, None], c.dit.context_frames, 1) for a in avatars]
    )
    visemes = vis if with_visemes else None
    codes = runner.motion_chunk(avatars, noise, context, mel, visemes, weights)
    frames = runner.render_float(avatars, codes)
    frames_u8 = runner.render(avatars, codes)
    assert codes.shape == (b, c.dit.chunk_frames, c.code_dim) and codes.dtype == np.float32
    assert frames_u8.shape == (b, c.dit.chunk_frames, c.image_size, c.image_size, 3)
    assert frames_u8.dtype == np.uint8 and frames_u8.std() > 1.0
    with torch.inference_mode():
        for i in range(b):
            state = student.encode_avatar(torch.from_numpy(crops[i : i + 1]))
            assert np.abs(state.source_code.numpy() - avatars[i].source_code).max() <= TOL
            sampler = FlowMatchingStudent(StudentOptions(2, *weights[i].tolist()))
            ref = sample_chunk(
                student,
                sampler,
                mel_window=torch.from_numpy(mel[i : i + 1]),
                viseme_window=torch.from_numpy(vis[i : i + 1]) if with_visemes else None,
                context=state.source_code[:, None].repeat(1, c.dit.context_frames, 1),
                id_tokens=state.id_tokens,
                seed=100 + i,
                index=3 + i,
            )
            assert np.abs(ref.numpy() - codes[i : i + 1]).max() <= TOL
            ref_frames = student.render(state, ref).numpy()
            assert np.abs(ref_frames - frames[i : i + 1]).max() <= TOL
    # The same rows through the PyTorch runner: uint8 frames within one level.
    torch_runner = TorchRunner(student, TorchRunnerOptions(device="cpu", steps=2))
    t_avatars = [torch_runner.encode_avatar(crops[i : i + 1]) for i in range(b)]
    t_codes = torch_runner.motion_chunk(t_avatars, noise, context, mel, visemes, weights)
    assert np.abs(t_codes - codes).max() <= TOL
    t_frames = torch_runner.render(t_avatars, codes)
    assert np.abs(t_frames.astype(int) - frames_u8.astype(int)).max() <= 1


def test_visemes_and_weights_change_the_motion(student, runner):
    crops, mel, vis, noise, weights = _batch(student, 2, seed=3)
    avatar = runner.encode_avatar(crops[:1])
    c = student.config
    ctx = np.repeat(avatar.source_code[:, None], c.dit.context_frames, 1)
    pair = [avatar, avatar]
    base = runner.motion_chunk(pair, noise[[0, 0]], ctx[[0, 0]], mel[[0, 0]], None, weights)
    with_v = runner.motion_chunk(pair, noise[[0, 0]], ctx[[0, 0]], mel[[0, 0]], vis, weights)
    assert np.abs(base[0] - base[1]).max() > 1e-3, "rows with other say weights must differ"
    assert np.abs(base - with_v).max() > 1e-3, "visemes must reach the motion"


def test_runner_fits_the_protocol_and_refuses_bad_input(student, runner):
    assert isinstance(runner, Runner)
    assert runner.name == "onnx" and runner.steps == 2 and runner.providers[-1] == CPU
    assert runner.spec.student and runner.spec.image_size == student.config.image_size
    crops, mel, vis, noise, weights = _batch(student, 1, seed=1)
    with pytest.raises(ModelInputError, match="crop must be float32"):
        runner.encode_avatar(crops[:, :, :10])
    avatar = runner.encode_avatar(crops)
    ctx = np.repeat(avatar.source_code[:, None], student.config.dit.context_frames, 1)
    with pytest.raises(ModelInputError, match="mel must be float32"):
        runner.motion_chunk([avatar], noise, ctx, mel[:, :5], None, weights)
    with pytest.raises(ModelInputError, match="codes must be float32"):
        runner.render([avatar], noise.astype(np.float64))
    with pytest.raises(ModelInputError, match="runner"):
        torch_runner = TorchRunner(student, TorchRunnerOptions(device="cpu"))
        runner.render([torch_runner.encode_avatar(crops)], noise)


def test_teacher_is_refused_with_a_plain_reason(gen, tmp_path):
    with pytest.raises(OnnxExportError, match="distil"):
        export_onnx(gen, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.onnx"))


def test_load_refuses_missing_mixed_and_other_step_exports(export_dir, tmp_path, checkpoint):
    with pytest.raises(ModelNotFoundError, match="likeness export onnx"):
        OnnxRunner.load(tmp_path / "nothing", device="cpu")
    with pytest.raises(CheckpointError, match="3 were asked"):
        OnnxRunner.load(export_dir, device="cpu", steps=3)
    mixed = tmp_path / "mixed"
    shutil.copytree(export_dir, mixed)
    model = onnx.load(str(mixed / "motion.onnx"))
    for prop in model.metadata_props:
        if prop.key == KEY_WEIGHTS:
            prop.value = "0" * 64
    onnx.save(model, str(mixed / "motion.onnx"))
    with pytest.raises(CheckpointError, match="different exports"):
        OnnxRunner.load(mixed, device="cpu")
    with pytest.raises(ModelConfigError, match="device"):
        OnnxRunnerOptions(device="gpu")


def test_a_checkpoint_is_exported_once_and_reused(runner, checkpoint):
    folder = runner.export_dir
    stamp = (folder / "motion.onnx").stat().st_mtime_ns
    again = OnnxRunner.load(checkpoint, device="cpu", cache_dir=str(folder.parent))
    assert again.export_dir == folder
    assert (folder / "motion.onnx").stat().st_mtime_ns == stamp
    assert weights_path(checkpoint).is_file()


def test_providers_follow_the_device_and_say_what_is_missing():
    assert select_providers(OnnxRunnerOptions(device="cpu"), [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelConfigError, match="gpu extra"):
        select_providers(OnnxRunnerOptions(device="cuda"), [CPU])
    if not torch.cuda.is_available():
        assert select_providers(OnnxRunnerOptions(device="auto"), [CUDA, CPU]) == [CPU]
        with pytest.raises(ModelConfigError, match="no GPU"):
            select_providers(OnnxRunnerOptions(device="cuda:0"), [CUDA, CPU])


def test_cli_exports_checks_parity_and_refuses_bad_input(checkpoint, gen, tmp_path):
    out = tmp_path / "export"
    result = run("export", "onnx", str(checkpoint.parent), str(out), "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert "renderer" in result.stdout and f"wrote {out}" in result.stderr
    diffs = [float(x) for x in result.stdout.split() if "e-" in x and x[0].isdigit()]
    assert len(diffs) == 3 and max(diffs) <= TOL, result.stdout
    loaded = OnnxRunner.load(out, device="cpu")
    assert loaded.steps == 1
    missing = run("export", "onnx", str(tmp_path / "none"), str(out))
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr
    teacher = gen.save_pretrained(tmp_path / "teacher")
    refused = run("export", "onnx", str(teacher), str(tmp_path / "t"))
    assert refused.returncode == 2 and "distil" in refused.stderr


@pytest.fixture(scope="module")
def onnx_backend(runner) -> contract.Backend:
    """The neural generator on the onnxruntime runner, as the contract suite builds it."""
    face = make_demo_avatar(size=128)

    def make(size: int = 128, underrun_timeout: float = 1.0) -> NeuralGenerator:
        options = NeuralOptions(size=size, seed=3, underrun_timeout=underrun_timeout)
        return NeuralGenerator.load(face, options, runner)

    # 0.5 s of unflushed audio covers chunk 0 (K + L = 10 frames of audio), not chunk 1.
    return contract.Backend("neural", make, first_s=0.5, early_frames=8)


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
async def test_onnx_runner_contract(onnx_backend, check):
    """The onnxruntime path streams through the same AvatarGenerator contract checks."""
    speech = contract.Speech(speech_like_audio(1.3, 16_000, seed=2), 16_000)
    await check(onnx_backend, speech)


async def test_onnx_and_torch_generators_show_the_same_frames(student, runner):
    """A whole utterance through NeuralGenerator: onnxruntime vs PyTorch runner."""
    from avatar.pipelines.neural import generate_clip

    face = make_demo_avatar(size=128)
    pcm = speech_like_audio(0.8, 16_000, seed=5)
    options = NeuralOptions(size=128, seed=9, audio_weight=1.5)
    torch_runner = TorchRunner(student, TorchRunnerOptions(device="cpu", steps=2))
    a = await generate_clip(face, pcm, 16_000, None, options, runner)
    b = await generate_clip(face, pcm, 16_000, None, options, torch_runner)
    assert len(a) == len(b) == 20
    pairs = zip(a, b, strict=True)
    diff = max(int(np.abs(x.image.astype(int) - y.image.astype(int)).max()) for x, y in pairs)
    assert diff <= 2, diff
    assert np.abs(a[0].image.astype(int) - a[-1].image.astype(int)).max() > 0


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU and onnxruntime-gpu (gpu extra)"
)
def test_cuda_provider_matches_pytorch(student, export_dir):
    cuda_runner = OnnxRunner.load(export_dir, device="cuda")
    assert cuda_runner.providers[0] == CUDA
    diffs = parity_report(student, cuda_runner, batches=(1, 3))
    assert all(d <= TOL for d in diffs.values()), diffs
