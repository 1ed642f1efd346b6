"""The neural generator's models at tiny size on CPU: shapes, dtypes, causality, identity
warp, condition dropout and attention backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avatar.models import (
    AttentionBackend,
    GeneratorConfig,
    ModelConfigError,
    ModelInputError,
    MotionDiTConfig,
    available_backends,
    get_backend,
    keypoints_from_code,
    register_backend,
    split_code,
)
from avatar.models.attention import Attention
from avatar.models.blocks import identity_grid
from avatar.models.motion_code import join_code, rotation_matrix
from tests.avatar.neural.helpers import make_generator, reference_images, speech_mel

F32 = torch.float32


def _dit_inputs(config: GeneratorConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d, dim = config.dit, config.code_dim
    return dict(
        x=torch.randn(batch, d.chunk_frames, dim, generator=g),
        t=torch.rand(batch, generator=g),
        context=torch.randn(batch, d.context_frames, dim, generator=g),
        audio=torch.randn(
            batch, d.context_frames + d.chunk_frames, config.audio.width, generator=g
        ),
        id_tokens=torch.randn(
            batch, config.appearance.n_id_tokens, config.appearance.token_dim, generator=g
        ),
        audio_keep=torch.ones(batch),
        id_keep=torch.ones(batch),
    )


def test_sizes_are_what_their_names_say(tiny):
    assert tiny.image_size == 64
    assert GeneratorConfig.base().image_size == 256
    assert GeneratorConfig.large().image_size == 512
    params = sum(p.numel() for p in make_generator(tiny).parameters())
    assert 50_000 < params < 2_000_000, params
    assert tiny.code_dim == 6 * tiny.motion.n_kp + 6
    # Level sizes of the pyramid: 64², 32², 16² at 256 px.
    assert GeneratorConfig.base().appearance.level_sizes == (64, 32, 16)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: MotionDiTConfig(width=30, heads=4), "heads (4) must divide width (30)"),
        (lambda: GeneratorConfig(fps=30.0), "mel_per_frame"),
        (lambda: MotionDiTConfig(chunk_frames=0), "chunk_frames must be positive"),
    ],
)
def test_bad_configs_name_the_field(build, words):
    with pytest.raises(ModelConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build()


@torch.inference_mode()
def test_every_module_shapes_and_dtypes(gen, tiny):
    b, s = 2, tiny.image_size
    image = reference_images(b, s)
    pyramid, tokens = gen.appearance(image)
    assert [tuple(p.shape) for p in pyramid] == [
        (b, c, n, n) for c, n in zip(tiny.appearance.channels, (16, 8, 4), strict=True)
    ]
    assert tokens.shape == (b, tiny.appearance.n_id_tokens, tiny.appearance.token_dim)
    code = gen.motion_encoder(image)
    assert code.shape == (b, tiny.code_dim)
    kp = keypoints_from_code(code, tiny.motion.n_kp)
    assert kp.shape == (b, tiny.motion.n_kp, 3)

    flow, occ = gen.renderer.dense_motion(pyramid[0], kp, kp.flip(0))
    assert flow.shape == (b, 16, 16, 2) and occ.shape == (b, 3, 16, 16)
    assert float(occ.min()) > 0 and float(occ.max()) < 1
    rgb, flow2, occ2 = gen.renderer(pyramid, tokens, kp, kp.flip(0))
    assert rgb.shape == (b, 3, s, s) and float(rgb.abs().max()) <= 1
    assert flow2.shape == flow.shape and occ2.shape == occ.shape

    w = tiny.window_frames
    mel = speech_mel(b, w * 4)
    audio = gen.audio_encoder(mel)
    assert audio.shape == (b, w, tiny.audio.width)
    with_vis = gen.audio_encoder(mel, torch.randint(0, 16, (b, w)))
    assert with_vis.shape == audio.shape and not torch.equal(with_vis, audio)

    v = gen.motion_dit(**_dit_inputs(tiny, b))
    assert v.shape == (b, tiny.dit.chunk_frames, tiny.code_dim)

    avatar = gen.encode_avatar(image)
    frames = gen.render(avatar, torch.stack([avatar.source_code] * 3, dim=1))
    assert frames.shape == (b, 3, 3, s, s)
    for t in (*pyramid, tokens, code, flow, occ, rgb, audio, v, frames):
        assert t.dtype == F32
        assert torch.isfinite(t).all()
    assert rgb.std() > 1e-3 and v.std() > 1e-3  # real signal, not a zero-initialised path


@torch.inference_mode()
def test_student_needs_say_weights_teacher_refuses_them(gen, student, tiny):
    inputs = _dit_inputs(tiny)
    with pytest.raises(ModelInputError, match="needs `guidance`"):
        student.motion_dit(**inputs)
    with pytest.raises(ModelInputError, match="takes no `guidance`"):
        gen.motion_dit(**inputs, guidance=torch.ones(2, 2))
    low = student.motion_dit(**inputs, guidance=torch.zeros(2, 2))
    high = student.motion_dit(**inputs, guidance=torch.full((2, 2), 3.0))
    assert low.shape == (2, tiny.dit.chunk_frames, tiny.code_dim)
    assert not torch.equal(low, high)


@torch.inference_mode()
def test_audio_encoder_is_causal_within_its_receptive_field(gen, tiny):
    rf = tiny.audio.receptive_field
    frames = 3 * rf
    mel = speech_mel(1, frames * 4)
    vis = torch.randint(0, 16, (1, frames))
    base = gen.audio_encoder(mel, vis)
    j = rf + 2
    changed = mel.clone()
    changed[:, j * 4 : (j + 1) * 4] += 3.0  # perturb video frame j only
    out = gen.audio_encoder(changed, vis)
    assert torch.equal(out[:, :j], base[:, :j])  # earlier frames: bit-identical
    assert not torch.allclose(out[:, j], base[:, j])
    assert not torch.allclose(out[:, j + rf - 1], base[:, j + rf - 1])  # still inside the field
    assert torch.equal(out[:, j + rf :], base[:, j + rf :])  # beyond the receptive field
    vis2 = vis.clone()
    vis2[:, j] = (vis[:, j] + 1) % 16
    out = gen.audio_encoder(mel, vis2)
    assert torch.equal(out[:, :j], base[:, :j]) and not torch.allclose(out[:, j], base[:, j])


@torch.inference_mode()
def test_motion_dit_attention_is_causal_over_frames(gen, tiny):
    inputs = _dit_inputs(tiny)
    base = gen.motion_dit(**inputs)
    j = 5
    x = inputs["x"].clone()
    x[:, j] += 1.0
    out = gen.motion_dit(**{**inputs, "x": x})
    assert torch.equal(out[:, :j], base[:, :j])
    assert not torch.allclose(out[:, j:], base[:, j:])


@torch.inference_mode()
def test_dropped_conditions_are_ignored(gen, tiny):
    inputs = _dit_inputs(tiny)
    other = _dit_inputs(tiny, seed=9)
    drop_audio = {**inputs, "audio_keep": torch.zeros(2)}
    a = gen.motion_dit(**drop_audio)
    assert torch.equal(a, gen.motion_dit(**{**drop_audio, "audio": other["audio"]}))
    assert not torch.allclose(a, gen.motion_dit(**inputs))
    drop_id = {**inputs, "id_keep": torch.zeros(2)}
    i = gen.motion_dit(**drop_id)
    assert torch.equal(i, gen.motion_dit(**{**drop_id, "id_tokens": other["id_tokens"]}))
    assert not torch.allclose(i, gen.motion_dit(**inputs))


@torch.inference_mode()
def test_identity_keypoints_give_the_identity_warp(gen, tiny):
    image = reference_images(2, tiny.image_size, seed=3)
    avatar = gen.encode_avatar(image)
    kp = avatar.source_keypoints
    warped, flow, occ = gen.renderer.warp(avatar.pyramid, kp, kp)
    assert torch.allclose(flow, identity_grid(16).expand_as(flow), atol=1e-6)
    for level, (w, p) in enumerate(zip(warped, avatar.pyramid, strict=True)):
        # Every level is sampled at its own cells: only the occlusion map multiplies it.
        side = p.shape[-1]
        o = occ[:, level : level + 1]
        o = o if level == 0 else F.interpolate(o, size=(side, side), mode="bilinear")
        assert w.shape == p.shape
        assert torch.allclose(w, p * o, atol=1e-5)
    rgb, _, _ = gen.renderer(avatar.pyramid, avatar.id_tokens, kp, kp)
    warp_free = gen.renderer.decode(avatar.pyramid, avatar.id_tokens)
    assert rgb.shape == warp_free.shape == (2, 3, tiny.image_size, tiny.image_size)
    # Moving the keypoints moves the flow away from the identity.
    moved = kp + torch.tensor([0.2, -0.1, 0.0])
    _, flow_moved, _ = gen.renderer.warp(avatar.pyramid, kp, moved)
    assert (flow_moved - flow).abs().max() > 0.05


def test_motion_code_pose_and_keypoints():
    n_kp = 4
    g = torch.Generator().manual_seed(0)
    kp, delta = torch.randn(n_kp, 3, generator=g), torch.randn(n_kp, 3, generator=g)
    code = join_code(kp, delta, torch.zeros(6))
    k2, d2, pose = split_code(code, n_kp)
    assert torch.equal(k2, kp) and torch.equal(d2, delta) and torch.equal(pose, torch.zeros(6))
    assert torch.allclose(keypoints_from_code(code, n_kp), kp + delta, atol=1e-6)
    r = rotation_matrix(torch.tensor(0.3), torch.tensor(-0.2), torch.tensor(0.1))
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
    # Yaw a quarter turn, then shift and double: x goes to -z, then the shift applies.
    pose = torch.tensor([math.pi / 2, 0.0, 0.0, 0.1, -0.2, math.log(2.0)])
    one = join_code(torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1, 3), pose)
    assert torch.allclose(keypoints_from_code(one, 1), torch.tensor([[0.1, -0.2, -2.0]]), atol=1e-6)


def test_attention_backends_agree_and_check_constraints():
    assert {"sdpa", "math"} <= set(available_backends())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    for m in (None, mask):
        a = get_backend("sdpa").fn(q, k, v, m)
        b = get_backend("math").fn(q, k, v, m)
        assert (a - b).abs().max() < 1e-5
    with pytest.raises(ModelConfigError, match="unknown attention backend 'nope'; known: .*math"):
        get_backend("nope")
    with pytest.raises(ModelConfigError, match="mask dtype torch.float32"):
        get_backend("math").check(q, k, v, mask.float())
    # A backend with constraints refuses what it cannot run, per instance.
    register_backend(
        AttentionBackend(
            "test-half-only", get_backend("math").fn, dtypes=frozenset({torch.float16})
        )
    )
    layer = Attention(8, 2, backend="test-half-only")
    with pytest.raises(ModelConfigError, match="'test-half-only' cannot take dtype torch.float32"):
        layer(torch.randn(1, 3, 8))
    other = Attention(8, 2)  # another instance keeps its own backend
    assert other(torch.randn(1, 3, 8)).shape == (1, 3, 8)


@torch.inference_mode()
def test_whole_generator_agrees_across_backends(tiny):
    gen = make_generator(tiny, seed=4)
    image = reference_images(1, tiny.image_size)
    inputs = _dit_inputs(tiny, 1)

    def run():
        avatar = gen.encode_avatar(image)
        codes = avatar.source_code[:, None] + 0.1 * torch.randn(1, 2, tiny.code_dim)
        torch.manual_seed(0)
        return gen.render(avatar, codes), gen.motion_dit(**inputs)

    torch.manual_seed(1)
    sdpa = run()
    assert gen.set_attention_backend("math") > 0
    torch.manual_seed(1)
    math_ = run()
    for a, b in zip(sdpa, math_, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_generator_input_errors(gen, tiny):
    with pytest.raises(ModelInputError, match=r"reference image must be \[B, 3, 64, 64\]"):
        gen.encode_avatar(torch.zeros(1, 3, 32, 32))
    with torch.inference_mode():
        avatar = gen.encode_avatar(reference_images(1, 64))
    with pytest.raises(ModelInputError, match="motion codes must be"):
        gen.render(avatar, torch.zeros(1, 3, tiny.code_dim + 1))


def test_costs_are_counted_per_part(tiny):
    from avatar.models.costs import measure_costs

    costs = measure_costs(tiny)
    model = make_generator(tiny)
    assert costs.total_params == sum(p.numel() for p in model.parameters())
    assert set(costs.params) == {
        "appearance",
        "motion_encoder",
        "renderer",
        "audio_encoder",
        "motion_dit",
    }
    assert min(costs.renderer_gflops, costs.dit_gflops, costs.audio_gflops) > 0
    # A teacher pass count costs more per frame than a one-step student.
    assert costs.per_frame_gflops(96) > costs.per_frame_gflops(1) > costs.renderer_gflops


@torch.inference_mode()
def test_a_fresh_student_starts_as_its_teachers_conditional(gen, tiny):
    from avatar.models import DualBranchGenerator

    student = DualBranchGenerator(tiny.as_student()).eval()
    result = student.load_state_dict(gen.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".w_embed." in k for k in result.missing_keys)
    inputs = _dit_inputs(tiny)
    teacher_v = gen.motion_dit(**inputs)
    for weights in (torch.zeros(2, 2), torch.tensor([[2.0, 1.5], [0.5, 3.0]])):
        assert torch.equal(student.motion_dit(**inputs, guidance=weights), teacher_v)
