"""likeness avatar prepare / animate / avatar synth / bench avatar / bench face, as real
processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from avatar.export import probe
from tests.conftest import espeak_wav
from tests.runtime.test_cli import run


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return espeak_wav("Hello, it is good to see you today.", tmp_path_factory.mktemp("s") / "s.wav")


def test_prepare_prints_id_box_and_pose(astronaut):
    result = run("avatar", "prepare", str(astronaut), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    x0, y0, x1, y1 = info["face_box"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert len(info["id"]) == 64 and abs(info["pose"]["yaw"]) < 40
    again = json.loads(run("avatar", "prepare", str(astronaut), "--json").stdout)
    assert again["id"] == info["id"], "the id must be stable for the same photo"


def test_prepare_bad_input_exits_2(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(blank)
    result = run("avatar", "prepare", str(blank))
    assert result.returncode == 2 and "face" in result.stderr.lower()
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    result = run("avatar", "prepare", str(garbage))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert run("avatar", "prepare", str(tmp_path / "missing.jpg")).returncode == 2


@pytest.mark.slow
def test_animate_photo_without_a_grant_writes_nothing(astronaut, speech, tmp_path):
    # A real person's photo needs a grant (tests/runtime/test_cli_consent.py covers the
    # granted path: a playable mp4, labelled and watermarked with the grant's id).
    out = tmp_path / "out.mp4"
    result = run("animate", str(astronaut), str(speech), "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert "no permission to use this face" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_synth_with_text_writes_clip_and_landmarks(tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("avatar", "synth", "synthetic", "--say", "Good morning to you.", "-o", str(out))
    assert result.returncode == 0, result.stderr
    marks = np.load(tmp_path / "clip.landmarks.npz")
    info = probe(out)
    assert marks["landmarks"].shape == (int(info["video_frames"]), 68, 2)
    assert marks["speaking"].any() and np.isfinite(marks["landmarks"]).all()


def test_animate_needs_exactly_one_speech_source(speech, tmp_path):
    result = run("animate", "synthetic", "-o", str(tmp_path / "x.mp4"))
    assert result.returncode == 2 and "--say" in result.stderr
    result = run("animate", "nobody", str(speech), "-o", str(tmp_path / "x.mp4"))
    assert result.returncode == 2 and "synthetic" in result.stderr


def test_bench_face_tracks_each_backend_on_one_core(tmp_path):
    """The figures' shape only (no timing bound: they go to docs/benchmarks.md)."""
    out = tmp_path / "face.json"
    result = run("bench", "face", "--frames", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["pinned_core"] is not None and data["config"]["size"] == 512
    for name in ("dlib", "mediapipe"):
        figures = data["per_backend"][name]
        assert figures["detections"] == 1 and figures["frames"] == 10, figures  # tracked
        assert 0 < figures["pose_ms"] < figures["frame_ms_mean"] < figures["first_frame_ms"]
        assert data["metrics"][f"{name}_frame_ms_p50"] == figures["frame_ms_p50"]
    assert "mediapipe_frame_ms_p50" in result.stdout
    bad = run("bench", "face", "--backend", "insightface")
    assert bad.returncode == 2 and "insightface" in bad.stderr


@pytest.mark.slow
def test_bench_avatar_one_core_25_fps(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "avatar", "--seconds", "4", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    metrics = data["metrics"]
    assert data["machine"]["pinned_core"] is not None
    for key in ("fps", "frame_ms_p50", "frame_ms_p95", "first_frame_ms", "cpu_use"):
        assert key in metrics, key
    assert metrics["fps"] >= 25, metrics
