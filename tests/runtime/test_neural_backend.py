"""avatar.backend = "neural" in ``likeness animate`` and in a live session, as real processes.

The checkpoint is a tiny student with random (seeded) weights, saved with
``save_pretrained`` and loaded through the real loading path: its faces are meaningless;
these tests prove the wiring (mp4 length, one media clock, start-up errors).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf
import torch

from avatar.export import probe
from avatar.models import GeneratorConfig
from avatar.synthetic import make_demo_avatar
from runtime.rtc_client import CompanionClient
from tests.avatar.neural.helpers import make_generator
from tests.conftest import espeak_wav, piper_speech
from tests.runtime.test_cli import run
from tests.serving import Server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-student"
    make_generator(GeneratorConfig.tiny().as_student(), seed=1).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return espeak_wav("Hello, it is good to see you today.", tmp_path_factory.mktemp("s") / "s.wav")


def neural_env(checkpoint: str, **more: str) -> dict[str, str]:
    return {"LIKENESS_AVATAR__CHECKPOINT": checkpoint, "OMP_NUM_THREADS": "1", **more}


def test_animate_with_the_neural_backend_writes_a_playable_mp4(checkpoint, speech, tmp_path):
    out = tmp_path / "out.mp4"
    result = run(
        "animate", "synthetic", str(speech), "-o", str(out), "--backend", "neural",
        env=neural_env(checkpoint, LIKENESS_AVATAR__SIZE="256"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = probe(out)
    assert info["width"] == 256 and info["height"] == 256
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / info["fps"]
    assert abs(info["video_duration"] - sf.info(speech).duration) <= 1 / info["fps"] + 1e-6


def test_the_backend_setting_chooses_the_generator(checkpoint):
    from avatar.pipelines import NeuralGenerator
    from avatar.procedural import ProceduralGenerator
    from runtime.avatar_components import avatar_generator, load_avatar_engine
    from runtime.config import load_config
    from runtime.errors import ConfigError

    face = make_demo_avatar(size=256)
    plain = load_config(None, avatar={"size": 128})
    assert load_avatar_engine(plain) is None  # procedural: no model to load
    assert isinstance(avatar_generator(plain, face), ProceduralGenerator)
    neural = load_config(None, avatar={"backend": "neural", "size": 128, "checkpoint": checkpoint})
    with pytest.raises(ConfigError, match="no neural model was loaded"):
        avatar_generator(neural, face)
    engine = load_avatar_engine(neural)
    gen = avatar_generator(neural, face, engine)
    assert isinstance(gen, NeuralGenerator) and gen.size == 128

    async def first_frame():
        frame = await anext(aiter(gen))
        await gen.aclose()
        await engine.aclose()
        return frame

    assert asyncio.run(first_frame()).image.shape == (128, 128, 3)


def test_unusable_checkpoints_are_config_errors(checkpoint, tmp_path):
    from runtime.avatar_components import load_avatar_engine
    from runtime.config import load_config
    from runtime.errors import ConfigError

    def settings(**avatar):
        return load_config(None, avatar={"backend": "neural", **avatar})

    with pytest.raises(ConfigError, match="needs avatar.checkpoint"):
        load_avatar_engine(settings())
    with pytest.raises(ConfigError, match="avatar.checkpoint=.*no checkpoint at"):
        load_avatar_engine(settings(checkpoint=str(tmp_path / "no-such-folder")))
    with pytest.raises(ConfigError, match="steps must be 1 to 4"):
        load_avatar_engine(settings(checkpoint=checkpoint, steps=8))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' asked for"):
            load_avatar_engine(settings(checkpoint=checkpoint, device="cuda"))
    with pytest.raises(ConfigError, match="avatar.compile = true needs avatar.runtime = 'torch'"):
        load_avatar_engine(settings(checkpoint=checkpoint, runtime="onnx", compile=True))
    engine = load_avatar_engine(settings(checkpoint=checkpoint, steps=3))
    assert engine.runner.spec.student and engine.runner.steps == 3
    asyncio.run(engine.aclose())


def test_animate_neural_without_a_usable_checkpoint_exits_2(speech, tmp_path):
    out = str(tmp_path / "x.mp4")
    args = ("animate", "synthetic", str(speech), "-o", out, "--backend", "neural")
    missing = run(*args)
    assert missing.returncode == 2 and "avatar.checkpoint" in missing.stderr
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    bad = run(*args, env=neural_env(str(garbage)))
    assert bad.returncode == 2 and "not a readable safetensors file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.mp4").exists()


def test_a_server_with_a_bad_checkpoint_fails_at_start_up(tmp_path):
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    server = Server(
        tmp_path / "data",
        LIKENESS_AVATAR__BACKEND="neural",
        LIKENESS_AVATAR__CHECKPOINT=str(garbage),
    )
    (tmp_path / "data").mkdir()
    with pytest.raises(RuntimeError, match="avatar.checkpoint"):
        server.start(ready_within_s=60)


@pytest.mark.slow
async def test_a_live_session_streams_neural_frames_on_one_clock(checkpoint, tmp_path, piper_tts):
    question = piper_speech(piper_tts, "Hello! What is your favourite colour?")
    (tmp_path / "data").mkdir()
    server = Server(
        tmp_path / "data",
        LIKENESS_AVATAR__BACKEND="neural",
        LIKENESS_AVATAR__CHECKPOINT=checkpoint,
        LIKENESS_DIALOGUE__MAX_TOKENS="40",
        LIKENESS_DIALOGUE__TEMPERATURE="0",
        OMP_NUM_THREADS="1",
    ).start()
    try:
        async with CompanionClient(server.url) as client:
            await client.wait_for("state", 20, state="listening")
            client.mic.say(question.pcm, question.sample_rate)
            await client.wait_for("reply", 60)
            metrics = await client.wait_for("metrics", 60)
            await asyncio.sleep(1.5)
    finally:
        server.stop()
    stages = metrics["stages_ms"]
    assert "first_video_sent" in stages and "first_audio_sent" in stages, stages
    # One media clock: the reply's first frame and first sample go out together (within
    # one 40 ms frame slot; a float hair over 40.0 is still that slot).
    assert abs(stages["first_video_sent"] - stages["first_audio_sent"]) <= 40 + 1e-3, stages
    got = client.got
    started = got.first("reply")
    during = [image for t, image in got.video if t >= started]
    assert len(during) > 25
    first, last = got.video[0][0], got.video[-1][0]
    fps = (len(got.video) - 1) / (last - first)
    assert fps > 15, f"video delivered at {fps:.1f} fps"
    # The neural model drew the face: the face region is not the photo at rest, the
    # corners (outside the pasted crop) are, up to VP8 at 500 kbps and the invisible
    # watermark (measured up to 6.2 grey levels on average; the face differed by 58).
    rest = make_demo_avatar(size=512).image.astype(np.float32)
    frame = during[-1].astype(np.float32)
    face = np.abs(frame[200:330, 190:320] - rest[200:330, 190:320]).mean()
    corner = np.abs(frame[:48, -48:] - rest[:48, -48:]).mean()
    assert face > 8 and corner < 10, (face, corner)
    print(f"neural session: {fps:.1f} fps, stages {stages}, face {face:.0f}, corner {corner:.1f}")


@pytest.mark.slow
def test_compile_setting_compiles_every_batch_size_at_load(checkpoint):
    """``avatar.compile``: the engine compiles each padded batch size up to
    ``server.max_sessions`` before it is returned (inductor on this CPU)."""
    from torch._dynamo.utils import counters

    from runtime.avatar_components import load_avatar_engine
    from runtime.config import load_config

    settings = load_config(
        None,
        avatar={"backend": "neural", "checkpoint": checkpoint, "compile": True},
        server={"max_sessions": 2},
    )
    before = counters["stats"]["unique_graphs"]
    engine = load_avatar_engine(settings)
    try:
        assert engine.runner.options.compile
        compiled = counters["stats"]["unique_graphs"]
        assert compiled > before
        assert engine.warm_up(2) == [1, 2]  # the padded buckets...
        assert counters["stats"]["unique_graphs"] == compiled  # ...compiled already
    finally:
        asyncio.run(engine.aclose())


def test_a_compile_that_cannot_write_its_cache_is_a_config_error(checkpoint, monkeypatch, tmp_path):
    """torch.compile's cache folder cannot be made (a file is in the way: like a
    read-only or full disk): the engine does not start, and the error names the setting."""
    from runtime.avatar_components import load_avatar_engine
    from runtime.config import load_config
    from runtime.errors import ConfigError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "cache"))
    settings = load_config(
        None,
        avatar={"backend": "neural", "checkpoint": checkpoint, "compile": True},
        server={"max_sessions": 1},
    )
    with pytest.raises(ConfigError, match="set avatar.compile = false") as caught:
        load_avatar_engine(settings)
    assert "Not a directory" in str(caught.value)
