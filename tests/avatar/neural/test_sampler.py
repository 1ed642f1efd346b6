"""Flow-matching samplers and chunked generation on tiny real models: determinism,
chunked == one-shot, causality after the look-ahead, and the say weights."""

from __future__ import annotations

import pytest
import torch

from avatar.models import ModelConfigError, ModelInputError
from avatar.samplers import (
    ChunkLayout,
    FlowMatchingStudent,
    FlowMatchingTeacher,
    MotionStream,
    StudentOptions,
    TeacherOptions,
    chunk_noise,
    condition_dropout,
    flow_matching_pair,
    generate_motion,
    sample_chunk,
)
from tests.avatar.neural.helpers import reference_images, speech_mel

TEACHER = FlowMatchingTeacher(TeacherOptions(steps=6, audio_weight=2.0, identity_weight=1.5))
STUDENT = FlowMatchingStudent(StudentOptions(steps=2))


def _avatar(model, batch=2):
    with torch.inference_mode():
        avatar = model.encode_avatar(reference_images(batch, model.config.image_size, seed=5))
    c = model.config.dit.context_frames
    return avatar.id_tokens, avatar.source_code[:, None].repeat(1, c, 1)


def _visemes(batch, frames, seed=0):
    return torch.randint(0, 16, (batch, frames), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_same_seed_same_motion_other_seed_other_motion(gen, student, kind):
    model, sampler = (gen, TEACHER) if kind == "teacher" else (student, STUDENT)
    ids, ctx = _avatar(model)
    mel = speech_mel(2, 4 * 30)
    a = generate_motion(model, sampler, mel, ids, seed=11, context=ctx)
    b = generate_motion(model, sampler, mel, ids, seed=11, context=ctx)
    c = generate_motion(model, sampler, mel, ids, seed=12, context=ctx)
    assert a.shape == (2, 30, model.config.code_dim) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.std() > 0.1


@torch.inference_mode()
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_chunked_equals_one_shot(gen, student, kind):
    model, sampler = (gen, TEACHER) if kind == "teacher" else (student, STUDENT)
    ids, ctx = _avatar(model)
    frames = 37  # not a multiple of K: the last chunk is cut
    mel = speech_mel(2, 4 * frames + 3, seed=1)
    vis = _visemes(2, frames)
    one = generate_motion(model, sampler, mel, ids, seed=5, context=ctx, visemes=vis)
    stream = MotionStream(model, sampler, ids, seed=5, context=ctx, with_visemes=True)
    chunks, pos, vpos = [], 0, 0
    for rows in (1, 9, 0, 40, 17, 5, 33):  # audio arrives in uneven pieces
        fr = min(rows // 4 + 1, frames - vpos)
        chunks += stream.push(mel[:, pos : pos + rows], vis[:, vpos : vpos + fr])
        pos, vpos = pos + rows, vpos + fr
    chunks += stream.push(mel[:, pos:], vis[:, vpos:])
    chunks += stream.flush()
    assert [c.shape[1] for c in chunks] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.cat(chunks, dim=1), one)
    assert stream.flush() == []
    with pytest.raises(ModelInputError, match="flushed"):
        stream.push(mel[:, :4], vis[:, :1])


@torch.inference_mode()
def test_a_chunk_comes_out_as_soon_as_its_lookahead_has_arrived(gen):
    ids, ctx = _avatar(gen)
    layout = ChunkLayout.from_config(gen.config)
    need = layout.mel_needed(0)
    assert need == 4 * (8 + 2)  # K = 8 frames + L = 2 frames of look-ahead, 4 mel rows each
    mel = speech_mel(2, layout.mel_needed(1), seed=2)
    stream = MotionStream(gen, TEACHER, ids, seed=0, context=ctx)
    assert stream.push(mel[:, : need - 1]) == []
    assert len(stream.push(mel[:, need - 1 : need])) == 1
    assert stream.push(mel[:, need : layout.mel_needed(1) - 1]) == []
    assert len(stream.push(mel[:, layout.mel_needed(1) - 1 :])) == 1
    assert stream.next_index == 2 and stream.mel_rows == layout.mel_needed(1)


@torch.inference_mode()
@pytest.mark.parametrize("i", [0, 2])
def test_audio_after_the_lookahead_leaves_earlier_chunks_bit_identical(gen, i):
    ids, ctx = _avatar(gen)
    layout = ChunkLayout.from_config(gen.config)
    frames = 48
    mel = speech_mel(2, 4 * frames, seed=3)
    vis = _visemes(2, frames, seed=3)
    base = generate_motion(gen, TEACHER, mel, ids, seed=1, context=ctx, visemes=vis)
    cut = layout.mel_needed(i)  # first mel row chunk i may not hear
    changed_mel = mel.clone()
    changed_mel[:, cut:] = speech_mel(2, 4 * frames - cut, seed=99)
    changed_vis = vis.clone()
    changed_vis[:, layout.window_end(i) :] = 0
    out = generate_motion(gen, TEACHER, changed_mel, ids, seed=1, context=ctx, visemes=changed_vis)
    k = layout.chunk_frames
    assert torch.equal(out[:, : (i + 1) * k], base[:, : (i + 1) * k])
    assert not torch.allclose(out[:, (i + 1) * k : (i + 2) * k], base[:, (i + 1) * k : (i + 2) * k])
    # One row earlier is inside chunk i's look-ahead: chunk i changes.
    earlier = mel.clone()
    earlier[:, cut - 1] += 5.0
    out = generate_motion(gen, TEACHER, earlier, ids, seed=1, context=ctx, visemes=vis)
    assert torch.equal(out[:, : i * k], base[:, : i * k])
    assert not torch.equal(out[:, i * k : (i + 1) * k], base[:, i * k : (i + 1) * k])


def _chunk_velocity(model, seed=0):
    """The velocity function of chunk 0 (as sample_chunk builds it) and its noise."""
    ids, ctx = _avatar(model)
    layout = ChunkLayout.from_config(model.config)
    mel = speech_mel(2, layout.window_frames * 4, seed=seed)
    audio = model.audio_encoder(mel)[:, -(layout.context_frames + layout.chunk_frames) :]
    dit = model.motion_dit

    def velocity(x, t, ak, ik, g):
        n = x.shape[0] // 2
        return dit(x, t, ctx.repeat(n, 1, 1), audio.repeat(n, 1, 1), ids.repeat(n, 1, 1), ak, ik, g)

    noise = chunk_noise(seed, 0, (2, layout.chunk_frames, model.config.code_dim), "cpu", ctx.dtype)
    return velocity, noise


def _plain_euler(velocity, noise, steps, audio_keep, id_keep):
    x = noise
    for i in range(steps):
        t = torch.full((2,), i / steps)
        x = x + (1 / steps) * velocity(
            x, t, torch.full((2,), audio_keep), torch.full((2,), id_keep), None
        )
    return x


@torch.inference_mode()
def test_say_weights_zero_is_the_unconditional_path_one_is_the_conditional(gen):
    velocity, noise = _chunk_velocity(gen)
    steps = 5
    zero = FlowMatchingTeacher(TeacherOptions(steps=steps, audio_weight=0.0, identity_weight=0.0))
    assert zero.passes() == ((1.0, 0.0, 0.0),)
    uncond = _plain_euler(velocity, noise, steps, 0.0, 0.0)
    assert torch.equal(zero.sample(velocity, noise), uncond)
    one = FlowMatchingTeacher(TeacherOptions(steps=steps, audio_weight=1.0, identity_weight=1.0))
    cond = _plain_euler(velocity, noise, steps, 1.0, 1.0)
    assert torch.equal(one.sample(velocity, noise), cond)
    assert not torch.allclose(uncond, cond)
    # Audio weight 1, identity weight 0: the audio-only pass.
    audio_only = FlowMatchingTeacher(
        TeacherOptions(steps=steps, audio_weight=1.0, identity_weight=0.0)
    )
    assert torch.equal(
        audio_only.sample(velocity, noise), _plain_euler(velocity, noise, steps, 1.0, 0.0)
    )


@torch.inference_mode()
def test_guided_velocity_is_the_two_weight_cfg_formula(gen):
    velocity, noise = _chunk_velocity(gen, seed=4)
    t = torch.full((2,), 0.3)

    def v(a, i):
        return velocity(noise, t, torch.full((2,), a), torch.full((2,), i), None)

    wa, wi = 2.5, 1.5
    expected = v(0, 0) + wa * (v(1, 0) - v(0, 0)) + wi * (v(1, 1) - v(1, 0))
    for batched in (True, False):
        teacher = FlowMatchingTeacher(
            TeacherOptions(steps=1, audio_weight=wa, identity_weight=wi, batched=batched)
        )
        assert len(teacher.passes()) == 3
        assert (teacher.velocity(velocity, noise, t) - expected).abs().max() < 1e-5


@torch.inference_mode()
def test_teacher_runs_one_batched_call_per_step_student_one_pass_per_step(gen, student):
    calls = []
    velocity, noise = _chunk_velocity(gen)

    def counted(x, t, ak, ik, g):
        calls.append((x.shape[0], g))
        return velocity(x, t, ak, ik, g)

    TEACHER.sample(counted, noise)
    assert [n for n, _ in calls] == [6] * 6  # 6 steps, 3 passes of batch 2 in one call
    calls.clear()
    s_velocity, s_noise = _chunk_velocity(student)

    def s_counted(x, t, ak, ik, g):
        calls.append((x.shape[0], g))
        return s_velocity(x, t, ak, ik, g)

    out = FlowMatchingStudent(StudentOptions(steps=3, audio_weight=2.0)).sample(s_counted, s_noise)
    assert [n for n, _ in calls] == [2, 2, 2]
    assert torch.equal(calls[0][1], torch.tensor([[2.0, 1.5], [2.0, 1.5]]))
    assert out.shape == s_noise.shape and not torch.allclose(out, s_noise)


@torch.inference_mode()
def test_the_sampler_must_match_the_model(gen, student):
    ids, ctx = _avatar(gen)
    mel = speech_mel(2, 40)
    with pytest.raises(ModelInputError, match="takes no `guidance`"):
        generate_motion(gen, STUDENT, mel, ids, seed=0, context=ctx)
    with pytest.raises(ModelInputError, match="needs `guidance`"):
        generate_motion(student, TEACHER, mel, ids, seed=0, context=ctx)


def test_bad_inputs_and_options_say_what_is_wrong(gen):
    ids, ctx = _avatar(gen)
    mel = speech_mel(2, 40)
    with pytest.raises(ModelInputError, match=r"context must be \[B, 4, 42\]"):
        generate_motion(gen, TEACHER, mel, ids, seed=0, context=ctx[:, :2])
    with pytest.raises(ModelInputError, match=r"viseme ids must be in \[0, 15\]"):
        bad = torch.full((2, 10), 16)
        generate_motion(gen, TEACHER, mel, ids, seed=0, context=ctx, visemes=bad)
    with pytest.raises(ModelInputError, match="no frames"):
        generate_motion(gen, TEACHER, mel[:, :3], ids, seed=0, context=ctx)
    with pytest.raises(ModelInputError, match="takes no visemes"):
        MotionStream(gen, TEACHER, ids, seed=0, context=ctx).push(mel, torch.zeros(2, 10).long())
    with pytest.raises(ModelConfigError, match="steps must be 1 to 4"):
        StudentOptions(steps=5)
    with pytest.raises(ModelConfigError, match="audio_weight must be a finite number"):
        TeacherOptions(audio_weight=float("nan"))


def test_chunk_noise_is_per_chunk_and_reproducible():
    a = chunk_noise(3, 0, (1, 8, 4), "cpu", torch.float32)
    assert torch.equal(a, chunk_noise(3, 0, (1, 8, 4), "cpu", torch.float32))
    assert not torch.equal(a, chunk_noise(3, 1, (1, 8, 4), "cpu", torch.float32))
    assert not torch.equal(a, chunk_noise(4, 0, (1, 8, 4), "cpu", torch.float32))


@torch.inference_mode()
def test_sample_chunk_is_a_pure_function_of_its_inputs(gen):
    ids, ctx = _avatar(gen)
    layout = ChunkLayout.from_config(gen.config)
    mel = speech_mel(2, layout.window_frames * 4)
    args = dict(mel_window=mel, viseme_window=None, context=ctx, id_tokens=ids, seed=2, index=3)
    a = sample_chunk(gen, TEACHER, **args)
    assert torch.equal(a, sample_chunk(gen, TEACHER, **args))
    assert not torch.equal(a, sample_chunk(gen, TEACHER, **{**args, "index": 4}))


def test_training_helpers():
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(4, 8, 3, generator=g), torch.randn(4, 8, 3, generator=g)
    x, target = flow_matching_pair(data, noise, torch.tensor([0.0, 1.0, 0.5, 0.25]))
    assert torch.equal(x[0], noise[0]) and torch.equal(x[1], data[1])
    assert torch.allclose(x[2], (data[2] + noise[2]) / 2) and torch.equal(target, data - noise)
    ak, ik = condition_dropout(20_000, 0.3, 0.1, torch.Generator().manual_seed(1))
    assert abs(float(1 - ak.mean()) - 0.3) < 0.02 and abs(float(1 - ik.mean()) - 0.1) < 0.02
    both = float(((1 - ak) * (1 - ik)).mean())  # dropped together as often as chance says
    assert abs(both - 0.03) < 0.01
