"""One neural chunk, one module (``avatar.models.chunk``): every caller gives the same chunk.

The callers (``sample_chunk`` for one shot and streaming, ``TorchRunner``, the torch
modules the ONNX export traces, ``DualBranchGenerator.render``) all go through the shared
module; these tests hold them to the same bits for the same seed, and hold the shared
module to the chunk written out by hand here, so breaking it is seen even though every
caller would break alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.deploy.onnx import MotionChunkGraph, RendererGraph
from avatar.models.chunk import chunk_codes
from avatar.models.generator import AvatarState
from avatar.pipelines.runner import EncodedAvatar, TorchRunner, TorchRunnerOptions
from avatar.samplers import (
    ChunkLayout,
    FlowMatchingStudent,
    FlowMatchingTeacher,
    StudentOptions,
    TeacherOptions,
    chunk_noise,
    sample_chunk,
)
from tests.avatar.neural.helpers import reference_images, speech_mel

SEED, INDEX = 7, 3
SAY = (1.5, 0.5)
CPU = TorchRunnerOptions(device="cpu", steps=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _avatars(runner: TorchRunner, batch: int = 2) -> list[EncodedAvatar]:
    """``batch`` avatars, each encoded alone (as sessions are)."""
    crops = reference_images(batch, runner.spec.image_size, seed=4).numpy()
    return [runner.encode_avatar(crops[i : i + 1]) for i in range(batch)]


def _chunk_inputs(model, avatars: list[EncodedAvatar]) -> dict[str, torch.Tensor]:
    """One chunk's window (mel, visemes), context and the avatars' identity tokens."""
    layout = ChunkLayout.from_config(model.config)
    w, b = layout.window_frames, len(avatars)
    source = torch.from_numpy(np.concatenate([a.source_code for a in avatars]))
    g = torch.Generator().manual_seed(5)
    return {
        "mel_window": speech_mel(b, w * layout.mel_per_frame, seed=6),
        "viseme_window": torch.randint(0, model.config.audio.n_visemes, (b, w), generator=g),
        "context": source[:, None].repeat(1, layout.context_frames, 1)
        + 0.1 * torch.randn(b, layout.context_frames, model.config.code_dim, generator=g),
        "id_tokens": torch.cat([a.id_tokens for a in avatars]),
    }


def _noise(model, batch: int = 2) -> torch.Tensor:
    shape = (batch, model.config.dit.chunk_frames, model.config.code_dim)
    return chunk_noise(SEED, INDEX, shape, "cpu", torch.float32)


def _written_out_chunk(model, sampler, inputs, guidance=None):
    """The chunk as the README defines it, spelled out without ``avatar.models.chunk``:
    the audio encoder over the window (last C + K tokens), normalised context, Euler steps
    of the sampler over the transformer, denormalised."""
    d = model.config.dit
    dit = model.motion_dit
    audio = model.audio_encoder(inputs["mel_window"], inputs["viseme_window"])
    audio = audio[:, -(d.context_frames + d.chunk_frames) :]
    ctx = dit.normalize(inputs["context"])
    ids = inputs["id_tokens"]

    def velocity(x, t, ak, ik, g):
        n = x.shape[0] // ctx.shape[0]
        rep = [z.repeat(n, 1, 1) for z in (ctx, audio, ids)]
        return dit(x, t, *rep, ak, ik, g if guidance is None else guidance)

    return dit.denormalize(sampler.sample(velocity, _noise(model)))


def test_the_shared_chunk_is_the_written_out_chunk(gen, student):
    """chunk_codes = the chunk spelled out by hand, teacher (guided) and student."""
    teacher = FlowMatchingTeacher(TeacherOptions(steps=3, audio_weight=2.0, identity_weight=1.5))
    s_sampler = FlowMatchingStudent(StudentOptions(2, *SAY))
    for model, sampler in ((gen, teacher), (student, s_sampler)):
        inputs = _chunk_inputs(model, _avatars(TorchRunner(model, CPU)))
        with torch.inference_mode():
            want = _written_out_chunk(model, sampler, inputs)
            got = chunk_codes(
                model,
                sampler,
                mel=inputs["mel_window"],
                visemes=inputs["viseme_window"],
                context=inputs["context"],
                id_tokens=inputs["id_tokens"],
                noise=_noise(model),
            )
        assert torch.equal(got, want)


def _runner_chunk(runner, avatars, inputs, weights):
    """The runner's chunk for the same rows (say weights per row)."""
    vis = inputs["viseme_window"]
    return runner.motion_chunk(
        avatars,
        _noise(runner.model).numpy(),
        inputs["context"].numpy(),
        inputs["mel_window"].numpy(),
        None if vis is None else vis.numpy(),
        np.array([weights] * len(avatars), np.float32),
    )


@pytest.mark.parametrize("visemes", [True, False], ids=["visemes", "no-visemes"])
def test_torch_runner_student_chunk_is_sample_chunk(student, visemes):
    """The batch runner (say weights per row) = sample_chunk (the sampler's weights)."""
    runner = TorchRunner(student, CPU)
    avatars = _avatars(runner)
    inputs = _chunk_inputs(student, avatars)
    if not visemes:
        inputs["viseme_window"] = None
    sampler = FlowMatchingStudent(StudentOptions(2, *SAY))
    with torch.inference_mode():
        want = sample_chunk(student, sampler, seed=SEED, index=INDEX, **inputs)
    got = _runner_chunk(runner, avatars, inputs, SAY)
    np.testing.assert_array_equal(got, want.numpy())


def test_torch_runner_teacher_chunk_is_sample_chunk(gen):
    """A teacher in the runner runs the same guided chunk as sample_chunk."""
    runner = TorchRunner(gen, TorchRunnerOptions(device="cpu", steps=3))
    avatars = _avatars(runner)
    inputs = _chunk_inputs(gen, avatars)
    sampler = FlowMatchingTeacher(TeacherOptions(steps=3, audio_weight=2.0, identity_weight=1.5))
    with torch.inference_mode():
        want = sample_chunk(gen, sampler, seed=SEED, index=INDEX, **inputs)
    np.testing.assert_array_equal(_runner_chunk(runner, avatars, inputs, (2.0, 1.5)), want.numpy())


def test_exported_motion_graph_is_sample_chunk(student):
    """The module the ONNX export traces = sample_chunk, per row with and without visemes
    (``viseme_keep`` selects, exactly)."""
    inputs = _chunk_inputs(student, _avatars(TorchRunner(student, CPU)))
    sampler = FlowMatchingStudent(StudentOptions(2, *SAY))
    graph = MotionChunkGraph(student, steps=2)
    with torch.inference_mode():
        with_vis = sample_chunk(student, sampler, seed=SEED, index=INDEX, **inputs)
        no_vis = sample_chunk(
            student, sampler, seed=SEED, index=INDEX, **{**inputs, "viseme_window": None}
        )
        got = graph(
            inputs["mel_window"],
            inputs["viseme_window"],
            torch.tensor([1.0, 0.0]),
            inputs["context"],
            inputs["id_tokens"],
            _noise(student),
            torch.tensor([SAY] * 2),
        )
    assert torch.equal(got[0], with_vis[0])
    assert torch.equal(got[1], no_vis[1])
    assert not torch.equal(with_vis, no_vis), "the visemes must matter"


def test_render_callers_give_the_same_frames(student):
    """DualBranchGenerator.render = the exported renderer module = TorchRunner.render."""
    runner = TorchRunner(student, CPU)
    avatars = _avatars(runner)
    state = AvatarState(
        tuple(torch.cat(level) for level in zip(*[a.pyramid for a in avatars], strict=True)),
        torch.cat([a.id_tokens for a in avatars]),
        torch.from_numpy(np.concatenate([a.source_code for a in avatars])),
        torch.cat([a.source_keypoints for a in avatars]),
    )
    g = torch.Generator().manual_seed(8)
    noise = torch.randn(2, 5, student.config.code_dim, generator=g)
    codes = state.source_code[:, None] + 0.2 * noise
    with torch.inference_mode():
        want = student.render(state, codes)
        graph = RendererGraph(student)(
            *state.pyramid, state.id_tokens, state.source_keypoints, codes
        )
    assert want.shape == (2, 5, 3, 64, 64)
    assert torch.equal(graph, want)
    # Frame j of row b is the renderer on avatar b with code [b, j] (written out; one
    # frame per call, so to rounding only).
    with torch.inference_mode():
        for b, j in ((0, 0), (1, 3), (1, 4)):
            rgb, _, _ = student.renderer(
                tuple(level[b : b + 1] for level in state.pyramid),
                state.id_tokens[b : b + 1],
                state.source_keypoints[b : b + 1],
                student.keypoints(codes[b : b + 1, j]),
            )
            torch.testing.assert_close(want[b, j], rgb[0], atol=1e-5, rtol=0)
    frames = runner.render(avatars, codes.numpy())
    expect = np.clip(np.rint((want.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(frames, np.moveaxis(expect, 2, -1))
