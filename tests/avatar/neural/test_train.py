"""Training: the three stages learn, resume exactly, save EMA weights; the CLI drives them.

Real parts only: eSpeak NG speech, the procedural generator's clips, lossless H.264 + AAC
mp4s, face tracking by the default backend (MediaPipe's mesh), safetensors shards, tiny
generators trained on the CPU. These tests prove the machinery on small synthetic data,
not the quality of a model trained on real video.

The corpus: 4 training clips (4 drawn faces, 6 s each); one clip of an unseen face
("held-out face", for the renderer's PSNR and the held-out flow-matching loss); and two
clips of two of the training faces saying other sentences in other voices ("held-out
audio", for the student and the say weights).

Determinism: the corpus is lossless (the same frames on every machine, whatever x264's
thread count), made in a fresh interpreter (eSpeak NG carries state), the CPU kernels are
pinned to AVX2 (tests/conftest.py), torch runs one thread with deterministic algorithms
only, and every stage seeds itself. Two runs give the same figures bit for bit. The
ranges below span the kernel sets, to show the margin left if a pin did not hold on
some CPU: AVX2 (pinned: what every AVX2 machine runs) and no SIMD (ATen default, MKL
compatible, oneDNN SSE4.1); this machine has no AVX-512, which the figures before the
mesh (2026-12-07) also spanned.

Figures (2 cores, 1 torch thread; pinned value first): corpus ≈ 10 s; renderer 150 steps
≈ 20 s, PSNR 11.0 → 21.4 (21.4) dB; motion 800 steps ≈ 15 s, fixed-batch loss 2.03
→ 0.095 (0.095-0.096); distillation 400 steps ≈ 23 s, student/teacher RMSE at the default
say weights 0.28 (0.28) × the untrained student's. The whole file: about 3 minutes.

The mouth: the lip gap is a pixel or two on these 64 px crops, and the motion encoder
reads it only because its head sees a grid of places (``MotionCodeConfig.encoder_grid``):
with one image-wide mean, the mesh's crops taught no mouth-audio link and dlib's only on
a lucky seed (docs/training.md). With the grid, over the training seeds 0-4 on the
mesh's crops the teacher's mouth-audio correlation at w_a 1 was 0.55, 0.64, 0.09, 0.55
and 0.40 (scripts outside this file, so not this file's figures): seed 2's stage 1
learned no lip gap in 150 steps. 300 steps taught all five (0.51-0.63) but then the
distillation missed its bound here (0.54 × at (2, 1.5)): still to be understood.

Known limit: these figures are for this corpus (seed 0). With every corpus seed moved by
200 the tiny models learned far less (measured before the grid head; the codes of the
held-out audio barely moved); a corpus that teaches the tiny model reliably is still to be built.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avatar.face import FaceOptions
from avatar.models import DualBranchGenerator
from avatar.models.audio_encoder import SILENCE_LOG_MEL
from avatar.samplers import FlowMatchingStudent, FlowMatchingTeacher, generate_motion
from avatar.samplers.chunks import ChunkLayout, _rows
from avatar.samplers.flow_matching import StudentOptions, TeacherOptions
from avatar.synthetic import make_demo_avatar
from avatar.train import PreprocessError, PreprocessOptions, preprocess
from avatar.train.loop import (
    EMA,
    LoopOptions,
    TrainError,
    learning_rate,
    read_scalars,
)
from avatar.train.stage1 import (
    RendererTrainOptions,
    mouth_opening,
    train_renderer,
    training_config,
)
from avatar.train.stage2 import MotionCorpus, MotionTrainOptions, smooth_codes, train_motion
from avatar.train.stage3 import DistillOptions, distill, make_student, sampler_gap
from avatar.train.synthetic import make_synthetic_corpus
from runtime.cli_train import espeak_speaker
from tests.runtime.test_cli import LIKENESS, run


def _make_corpora(root: str) -> None:
    speak, root_dir = espeak_speaker(), Path(root)
    make_synthetic_corpus(root_dir / "train_src", 4, 6.0, 128, seed=0, speak=speak)
    make_synthetic_corpus(root_dir / "face_src", 1, 6.0, 128, seed=7, speak=speak)
    faces = [make_demo_avatar(size=128, seed=0), make_demo_avatar(size=128, seed=2)]
    make_synthetic_corpus(root_dir / "audio_src", 2, 6.0, 128, seed=9, speak=speak, avatars=faces)


@pytest.fixture(scope="module", autouse=True)
def _deterministic():
    """One thread (tiny models on a shared 2-core machine also run several times faster
    on one) and deterministic kernels only: with the corpus made losslessly and the CPU
    kernels pinned (tests/conftest.py), a run repeats its figures bit for bit."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])


FAST = {"lr": 2e-3, "warmup_steps": 20, "log_every": 10, "checkpoint_every": 0, "cpu_threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic clips preprocessed into tiny (64 px) shards, made once per module."""
    root = tmp_path_factory.mktemp("train-data")
    # eSpeak NG carries state from one synthesis to the next (the same sentence twice
    # differs by a few ms), so the corpus is made in a fresh interpreter: the same
    # clips whatever the tests before this one spoke.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
        fresh.submit(_make_corpora, str(root)).result()
    face = FaceOptions(max_side=400, min_face_px=32)  # the default backend: the mesh
    options = PreprocessOptions.preset("tiny", shard_frames=50, face=face)
    out = {}
    for name in ("train", "face", "audio"):
        preprocess(root / f"{name}_src", root / name, options)
        out[name] = root / name
    return SimpleNamespace(root=root, **out)


@pytest.fixture(scope="module")
def untrained(data):
    """A fresh tiny training-config generator saved as a checkpoint (machinery tests)."""
    torch.manual_seed(0)
    path = data.root / "untrained"
    DualBranchGenerator(training_config("tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def renderer_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("renderer")
    return train_renderer(
        data.train, run_dir, loop=LoopOptions(max_steps=150, **FAST), heldout=data.face
    )


@pytest.fixture(scope="module")
def motion_run(data, renderer_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("motion")
    return train_motion(
        data.train,
        run_dir,
        renderer=renderer_run.model_path,
        loop=LoopOptions(max_steps=800, **FAST),
        heldout=data.face,
    )


@pytest.fixture(scope="module")
def distill_run(data, motion_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("distill")
    return distill(
        data.train,
        run_dir,
        teacher=motion_run.model_path,
        options=DistillOptions(pool_size=1024, pool_refresh=1000),
        loop=LoopOptions(max_steps=400, **{**FAST, "lr": 1e-3}),
    )


# ---------------------------------------------------------------- learning is real


@pytest.mark.slow
def test_renderer_psnr_rises_6_db_on_an_unseen_face(renderer_run):
    """PSNR of 32 fixed (source, driving) pairs of the held-out face's clip, before the
    first step and with the final EMA weights (measured: 11.0 → 21.4 dB, the same on both
    kernel sets)."""
    before, after = renderer_run.first_eval, renderer_run.last_eval
    print(f"renderer PSNR {before['psnr']:.1f} → {after['psnr']:.1f} dB, landmark error "
          f"{before['landmark_px']:.1f} → {after['landmark_px']:.2f} px")  # fmt: skip
    assert after["psnr"] - before["psnr"] >= 6.0
    assert after["landmark_px"] < 2.0, "the guided keypoints follow the landmarks"
    lines = (renderer_run.run_dir / "scalars.jsonl").read_text().splitlines()
    tags = {json.loads(line)["tag"] for line in lines}
    assert {"train/loss", "train/l1", "train/perceptual", "train/equivariance", "lr",
            "val/psnr", "val/ema_psnr"} <= tags  # fmt: skip


@pytest.mark.slow
def test_motion_loss_falls_80_percent(motion_run):
    """The flow-matching MSE on a fixed validation batch (64 chunks of the training
    videos drawn with a fixed seed, fixed noise, t = (i + 0.5) / 64, every condition
    kept) with the final EMA weights is at most 20 % of its value before training
    (measured: 2.03 → 0.095; 0.095-0.096 over the kernel sets). On the unseen face it must
    at least halve (measured 1.56 → 0.63: × 0.40; × 0.38-0.40)."""
    before, after = motion_run.first_eval, motion_run.last_eval
    losses = [v for _, v in read_scalars(motion_run.run_dir, "train/loss")]
    tenth = max(len(losses) // 10, 1)
    print(f"motion val {before['fm_mse']:.3f} → {after['fm_mse']:.3f}, held-out face "
          f"{before['heldout_fm_mse']:.3f} → {after['heldout_fm_mse']:.3f}, training loss "
          f"{np.mean(losses[:tenth]):.3f} → {np.mean(losses[-tenth:]):.3f}")  # fmt: skip
    assert after["fm_mse"] <= 0.2 * before["fm_mse"]
    assert after["heldout_fm_mse"] <= 0.5 * before["heldout_fm_mse"]


@pytest.mark.slow
def test_distilled_student_is_close_to_the_teacher(data, motion_run, distill_run):
    """On held-out audio, chunk by chunk through the real samplers (25-step guided teacher,
    2-step student, same noise, teacher-forced context; :func:`sampler_gap`):

    - at the samplers' default say weights (2, 1.5) the student's RMSE is at most 0.3 ×
      the spread of the codes (RMS around their mean; measured 0.13 ×, 0.13 × over
      the kernel sets);
    - at (2, 1.5) and (3, 0.5) it is at most 0.5 × that of the untrained student (the
      teacher's copy before distillation: it ignores the weights), measured 0.28 and
      0.31 × (0.28, 0.31-0.32);
    - at (1, 1), where the untrained student is already the teacher's conditional velocity
      with 2 Euler steps, the gain is smaller: at most 0.85 × (measured 0.68 ×, 0.68-0.69).
    """
    teacher = DualBranchGenerator.from_pretrained(motion_run.model_path)
    student = DualBranchGenerator.from_pretrained(distill_run.model_path)
    untrained = make_student(teacher).eval()
    corpus = MotionCorpus.extract(teacher, data.audio, reference_frames=1, smooth_frames=1.0)
    with torch.inference_mode():
        for (wa, wid), ratio in (((2.0, 1.5), 0.5), ((3.0, 0.5), 0.5), ((1.0, 1.0), 0.85)):
            (err, base), spread = sampler_gap(
                teacher, [student, untrained], corpus, audio_weight=wa, identity_weight=wid
            )
            print(f"say weights {wa, wid}: student RMSE {err:.2e}, untrained {base:.2e}, "
                  f"codes' spread {spread:.2e}")  # fmt: skip
            assert err <= ratio * base, (wa, wid)
            if (wa, wid) == (2.0, 1.5):
                assert err <= 0.3 * spread
    assert distill_run.last_eval["rmse"] < 0.5 * distill_run.first_eval["rmse"]


def _mouth_audio_correlation(model, sampler, corpus) -> float:
    """Mean over clips and seeds of corr(mouth opening of the generated codes, the audio's
    per-frame log energy)."""
    c = model.config.dit.context_frames
    values = []
    for video in corpus.videos:
        envelope = torch.logsumexp(video.mel, dim=1).reshape(-1, 4).mean(dim=1)
        context = video.ref_codes[:1, None].expand(1, c, -1)
        for seed in range(3):
            codes = generate_motion(
                model, sampler, video.mel[None], video.ref_tokens[:1], seed=seed, context=context
            )[0]
            opening = mouth_opening(codes, model.config.motion.n_kp)
            values.append(np.corrcoef(opening.numpy(), envelope.numpy())[0, 1])
    return float(np.mean(values))


@pytest.mark.slow
def test_audio_weight_raises_mouth_audio_correlation(data, motion_run, distill_run):
    """Mouth opening (lower minus upper inner-lip keypoint of the generated codes) against
    the audio envelope on held-out audio, whole clips generated chunk after chunk.
    Measured (pinned; then the range over the kernel sets): teacher w_a 0 → -0.041
    (-0.041..-0.039), 1 → 0.634 (0.633..0.634), 2 → 0.704 (0.702..0.704); student 0 → 0.114
    (0.114..0.122), 1 → 0.638 (0.637..0.638). Past w_a 1 this tiny teacher gains little
    (t[2] - t[1]: 0.069..0.070; -0.018..0.085 before the grid head), so 2 is asked not to
    be worse than 1; from 0 to 2 the rise is large everywhere (0.74)."""
    teacher = DualBranchGenerator.from_pretrained(motion_run.model_path)
    student = DualBranchGenerator.from_pretrained(distill_run.model_path)
    corpus = MotionCorpus.extract(teacher, data.audio, reference_frames=1, smooth_frames=1.0)
    with torch.inference_mode():
        t = [
            _mouth_audio_correlation(
                teacher, FlowMatchingTeacher(TeacherOptions(25, wa, 1.0)), corpus
            )
            for wa in (0.0, 1.0, 2.0)
        ]
        s = [
            _mouth_audio_correlation(
                student, FlowMatchingStudent(StudentOptions(2, wa, 1.0)), corpus
            )
            for wa in (0.0, 1.0)
        ]
    print(f"teacher corr at w_a 0, 1, 2: {np.round(t, 3)}; student at 0, 1: {np.round(s, 3)}")
    assert t[0] < 0.15 and t[1] > t[0] + 0.3  # rise 0.67..0.68
    assert t[2] > t[0] + 0.35 and t[2] > t[1] - 0.05  # 0.74; 0.069..0.070
    assert s[1] > s[0] + 0.2  # 0.515..0.524


# ---------------------------------------------------------------- machinery


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _interrupt_at(step: int):
    def on_step(info) -> None:
        if info.step == step:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, handled by the loop

    return on_step


def _stage(name: str, data, untrained):
    """(function, kwargs) of a short run of stage ``name``."""
    if name == "renderer":
        return train_renderer, {
            "options": RendererTrainOptions(batch_size=4, eval_pairs=4),
            "loop": LoopOptions(max_steps=6, **FAST),
        }
    if name == "motion":
        return train_motion, {
            "renderer": untrained,
            "options": MotionTrainOptions(batch_size=8, eval_chunks=8),
            "loop": LoopOptions(max_steps=10, **FAST),
        }
    return distill, {
        "teacher": untrained,
        "options": DistillOptions(
            batch_size=8, pool_size=16, pool_refresh=3, teacher_steps=4, eval_chunks=4
        ),
        "loop": LoopOptions(max_steps=8, **FAST),
    }


@pytest.mark.parametrize("stage", ["renderer", "motion", "distill"])
def test_resume_after_ctrl_c_is_bit_identical(stage, data, untrained, tmp_path):
    """Ctrl-C mid-run saves; rerunning continues from that step and ends with exactly
    the weights, EMA weights and logged losses of an uninterrupted run (CPU, same seed)."""
    fn, kwargs = _stage(stage, data, untrained)
    whole = fn(data.train, tmp_path / "whole", **kwargs)
    assert whole.status == "finished" and whole.resumed_from == 0
    cut = fn(data.train, tmp_path / "cut", on_step=_interrupt_at(3), **kwargs)
    assert cut.status == "interrupted" and cut.step == 3
    saved = torch.load(tmp_path / "cut/checkpoint/state.pt", weights_only=True)
    assert saved["step"] == 3 and saved["stage"] == stage
    rest = fn(data.train, tmp_path / "cut", **kwargs)
    assert rest.status == "finished" and rest.resumed_from == 3 and rest.step == whole.step
    for name in ("checkpoint/model.safetensors", "checkpoint/ema.safetensors",
                 "model/model.safetensors"):  # fmt: skip
        a, b = _tensors(whole.run_dir / name), _tensors(rest.run_dir / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def losses(run_dir):
        records = map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())
        return [(r["step"], r["tag"], r["value"]) for r in records if r["tag"][:6] == "train/"]

    assert losses(whole.run_dir) == losses(rest.run_dir)


def test_worker_processes_load_the_same_batches(data, tmp_path):
    """Stage 1's batches depend only on (seed, step): loading them in 2 worker processes
    trains exactly the same weights as loading them in the training process."""
    kwargs = {"options": RendererTrainOptions(batch_size=4, eval_pairs=4)}
    runs = []
    for workers in (0, 2):
        loop = LoopOptions(max_steps=3, num_workers=workers, **FAST)
        result = train_renderer(data.train, tmp_path / f"w{workers}", loop=loop, **kwargs)
        runs.append(_tensors(result.run_dir / "checkpoint/model.safetensors"))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_ema_weights_are_saved_and_averaged(data, untrained, tmp_path):
    fn, kwargs = _stage("motion", data, untrained)
    result = fn(data.train, tmp_path / "run", **kwargs)
    weights = _tensors(tmp_path / "run/checkpoint/model.safetensors")
    ema = _tensors(tmp_path / "run/checkpoint/ema.safetensors")
    final = _tensors(result.model_path)
    assert all(torch.equal(ema[k], final[k]) for k in ema), "the model to use is the EMA"
    trained = [k for k in weights if k.startswith("motion_dit.blocks")]
    assert any(not torch.equal(weights[k], ema[k]) for k in trained)
    frozen = [k for k in weights if k.startswith("renderer.")]
    assert all(torch.equal(weights[k], ema[k]) for k in frozen)
    loaded = DualBranchGenerator.from_pretrained(result.model_path)
    assert loaded.config == training_config("tiny")
    info = json.loads((tmp_path / "run/run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 10 and info["stage"] == "motion"
    # The average itself: decay ramps up as min(decay, (1 + n) / (10 + n)).
    p = torch.nn.Parameter(torch.zeros(3))
    avg = EMA([("p", p)], decay=0.5)
    expected = torch.zeros(3)
    for n, value in enumerate((1.0, 2.0, 4.0), start=1):
        p.data.fill_(value)
        avg.update([("p", p)])
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    assert torch.allclose(avg.shadow["p"], expected)


def test_time_budget_stops_and_saves(data, untrained, tmp_path):
    fn, kwargs = _stage("motion", data, untrained)
    loop = LoopOptions(max_steps=10, time_budget_s=1e-3, **FAST)
    result = fn(data.train, tmp_path / "run", **{**kwargs, "loop": loop})
    assert result.status == "time_budget" and result.step == 1
    assert (tmp_path / "run/checkpoint/state.pt").is_file() and result.model_path.is_file()
    again = fn(data.train, tmp_path / "run", **kwargs)
    assert again.resumed_from == 1 and again.step == 10 and again.status == "finished"


def test_learning_rate_schedule():
    o = LoopOptions(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, o) == pytest.approx(0.1) and learning_rate(9, o) == 1.0
    assert learning_rate(10, o) == 1.0 and learning_rate(60, o) == pytest.approx(0.55)
    assert learning_rate(110, o) == pytest.approx(0.1)
    flat = LoopOptions(max_steps=50, lr=0.5, warmup_steps=0, schedule="constant")
    assert {learning_rate(s, flat) for s in range(50)} == {0.5}


def test_training_chunks_see_what_the_sampler_sees(data, untrained):
    """A training chunk's audio window and context are built as the chunk sampler builds
    them at inference (same mel rows, silence outside the audio, the reference code
    before frame 0)."""
    model = DualBranchGenerator.from_pretrained(untrained)
    corpus = MotionCorpus.extract(model, data.train, reference_frames=2)
    layout = ChunkLayout.from_config(model.config)
    video = corpus.videos[0]
    m, w = layout.mel_per_frame, layout.window_frames
    for index in (0, 1, 5):
        chunk = corpus.chunk(0, index * layout.chunk_frames, 1)
        start = layout.window_start(index)
        expected = _rows(video.mel[None], 0, start * m, w * m, SILENCE_LOG_MEL)[0]
        assert torch.equal(chunk["mel"], expected)
    first = corpus.chunk(0, 0, 1)
    assert torch.equal(first["context"], video.ref_codes[1].expand(layout.context_frames, -1))
    assert torch.equal(first["target"], video.codes[: layout.chunk_frames])
    later = corpus.chunk(0, 10, 0)
    assert torch.equal(later["context"], video.codes[10 - layout.context_frames : 10])
    last = corpus.chunk(0, len(video.codes) - layout.chunk_frames, 0)
    assert (last["mel"][-layout.lookahead_frames * m :] == SILENCE_LOG_MEL).all()


def test_smoothing_keeps_constants_and_ramps():
    t = torch.arange(40, dtype=torch.float32)
    codes = torch.stack([torch.full_like(t, 3.0), 0.5 * t, torch.sin(t)], dim=1)
    out = smooth_codes(codes, 1.0)
    assert torch.allclose(out[:, 0], codes[:, 0])
    assert torch.allclose(out[5:-5, 1], codes[5:-5, 1], atol=1e-5)
    assert out[:, 2].abs().max() < 0.75, "fast wiggles are damped"
    assert torch.equal(smooth_codes(codes, 0.0), codes)


def test_clear_errors(data, untrained, tmp_path):
    with pytest.raises(TrainError, match="64 px crops but the model renders 256 px"):
        train_renderer(
            data.train, tmp_path / "r", config=training_config("base"),
            loop=LoopOptions(max_steps=1, cpu_threads=1),
        )  # fmt: skip
    with pytest.raises(TrainError, match="unknown size 'huge'"):
        training_config("huge")
    with pytest.raises(PreprocessError, match="no preprocessed video"):
        train_motion(tmp_path / "nothing", tmp_path / "m", renderer=untrained)
    student = make_student(DualBranchGenerator.from_pretrained(untrained))
    student.save_pretrained(tmp_path / "student")
    with pytest.raises(TrainError, match="holds a student generator; this stage needs a teacher"):
        distill(data.train, tmp_path / "d", teacher=tmp_path / "student")
    fn, kwargs = _stage("motion", data, untrained)
    fn(data.train, tmp_path / "m2", **{**kwargs, "loop": LoopOptions(max_steps=2, **FAST)})
    with pytest.raises(TrainError, match="started with seed 0, not 5"):
        fn(data.train, tmp_path / "m2", **{**kwargs, "loop": LoopOptions(max_steps=4, seed=5)})
    with pytest.raises(TrainError, match="holds a motion run, not a distill run"):
        distill(data.train, tmp_path / "m2", teacher=untrained,
                options=DistillOptions(batch_size=4, pool_size=8, eval_chunks=2),
                loop=LoopOptions(max_steps=4, **FAST))  # fmt: skip
    with pytest.raises(TrainError, match="lr must be positive"):
        LoopOptions(lr=0.0)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="torch sees no CUDA GPU"):
            _ = LoopOptions(device="cuda").torch_device


# ---------------------------------------------------------------- command line


def _cli(*args: str):
    return run("train", *args, timeout=300)


@pytest.mark.slow
def test_train_commands_run_and_resume(data, tmp_path):
    shards = str(data.train)
    r1, r2, r3 = (str(tmp_path / n) for n in ("r1", "r2", "r3"))
    common = ("--lr", "2e-3", "--threads", "1")
    result = _cli("renderer", shards, r1, "--size", "tiny", "--steps", "4", "--batch", "4",
                  *common)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "renderer: finished at step 4" in result.stderr and "psnr" in result.stderr
    assert (tmp_path / "r1/model/model.safetensors").is_file()
    result = _cli("motion", shards, r2, "--renderer", f"{r1}/model", "--steps", "6", *common)
    assert result.returncode == 0, result.stderr
    assert "motion: finished at step 6" in result.stderr and "fm_mse" in result.stderr
    result = _cli("distill", shards, r3, "--teacher", f"{r2}/model", "--steps", "3",
                  "--pool", "32", "--batch", "8", "--teacher-steps", "4", *common)  # fmt: skip
    assert result.returncode == 0, result.stderr
    student = DualBranchGenerator.from_pretrained(tmp_path / "r3/model")
    assert student.config.dit.guidance_embed
    # Ctrl-C: the process saves, says how to resume, exits 130; the rerun resumes.
    proc = subprocess.Popen(
        [
            *LIKENESS,
            "train",
            "motion",
            shards,
            str(tmp_path / "r4"),
            "--renderer",
            f"{r1}/model",
            "--steps",
            "100000",
            *common,
        ],  # fmt: skip
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    scalars = tmp_path / "r4/scalars.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        scalars.is_file() and '"train/loss"' in scalars.read_text()
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted (Ctrl-C), saved at step" in stderr and "run the same command" in stderr
    stopped = torch.load(tmp_path / "r4/checkpoint/state.pt", weights_only=True)["step"]
    again = _cli("motion", shards, str(tmp_path / "r4"), "--renderer", f"{r1}/model",
                 "--steps", str(stopped + 2), *common)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"finished at step {stopped + 2} (resumed from step {stopped})" in again.stderr
    bad = _cli("renderer", shards, str(tmp_path / "r5"), "--size", "huge")
    assert bad.returncode == 2 and "unknown size 'huge'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    mismatch = _cli("renderer", shards, str(tmp_path / "r6"), "--size", "base", "--steps", "1")
    assert mismatch.returncode == 2 and "64 px crops" in mismatch.stderr


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stages_train_on_cuda_in_bf16(data, tmp_path):
    """All three stages on the GPU under bf16 autocast: finite losses that fall."""
    loop = {**FAST, "cpu_threads": None, "device": "cuda", "bf16": True}
    r1 = train_renderer(data.train, tmp_path / "r1", loop=LoopOptions(max_steps=60, **loop))
    assert r1.last_eval["psnr"] > r1.first_eval["psnr"] + 3
    r2 = train_motion(data.train, tmp_path / "r2", renderer=r1.model_path,
                      loop=LoopOptions(max_steps=200, **loop))  # fmt: skip
    assert r2.last_eval["fm_mse"] < 0.7 * r2.first_eval["fm_mse"]
    r3 = distill(data.train, tmp_path / "r3", teacher=r2.model_path,
                 options=DistillOptions(pool_size=256, pool_refresh=1000),
                 loop=LoopOptions(max_steps=100, **loop))  # fmt: skip
    assert np.isfinite(r3.last_eval["rmse"]) and r3.last_eval["rmse"] < r3.first_eval["rmse"]
    model = DualBranchGenerator.from_pretrained(r3.model_path)
    assert next(model.parameters()).dtype == torch.float32, "checkpoints stay float32"
